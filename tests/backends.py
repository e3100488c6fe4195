"""The two storage back-ends the tests run on, and helpers that work on either: the PostgreSQL test
server and its schemas, raw reads of a test database, and the environment of CLI subprocesses.

Tests whose subject is SQLite itself (its query plans, its file handling) are marked `sqlite_only`
(or `module_sqlite_only` for module-scoped data): they keep the [sqlite] id and never get a
[postgres] case.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import uuid
from typing import Any

import pytest

from cityos.store import is_postgres

POSTGRES = os.environ.get("CITYOS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = [name for name in os.environ.get("CITYOS_TEST_BACKENDS", "sqlite,postgres").split(",") if name]

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
module_sqlite_only = pytest.mark.parametrize("module_db_url", ["sqlite"], indirect=True)


async def admin(sql: str) -> None:
    """One statement on the test server's database, outside any test schema."""
    import asyncpg

    connection = await asyncpg.connect(POSTGRES, timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def postgres_schema_url(schema: str) -> str:
    return f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}search_path={schema},public"


def stored_json(doc: bytes | str) -> Any:
    """A stored entity document as JSON, whichever the back-end (SQLite deflates it, sqlite_layout.py)."""
    import orjson

    from cityos.store.sqlite_layout import inflate

    return orjson.loads(inflate(doc) if isinstance(doc, bytes) else doc)


def db_rows(database: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of one read-only statement on a test database, whichever the back-end. Write `?`
    placeholders (they become $1, $2, ... for PostgreSQL); a PostgreSQL json column comes back as
    text, an array as a list."""
    if not is_postgres(database):
        with contextlib.closing(sqlite3.connect(database)) as db:
            return db.execute(sql, params).fetchall()
    import asyncpg

    pieces = sql.split("?")
    numbered = pieces[0] + "".join(f"${n}{piece}" for n, piece in enumerate(pieces[1:], start=1))

    async def fetch() -> list[tuple[Any, ...]]:
        connection = await asyncpg.connect(database, timeout=5)
        try:
            return [tuple(record) for record in await connection.fetch(numbered, *params)]
        finally:
            await connection.close()

    return asyncio.run(fetch())


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI or server subprocess, without the CITYOS_ settings of whoever runs
    the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
    env.update(extra)
    return env


def make_key(database: str, *args: str) -> str:
    """An API key made as an operator makes one (`cityos keys create ARGS`): its token, printed once."""
    done = subprocess.run(
        [sys.executable, "-m", "cityos", "keys", "create", *args, "--database", database],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.count(".") == 1 and token.startswith("ck_"), token
    return token


# What lives in a schema (tables, sequences, functions, types: every object that depends on it; an
# index goes with its table), by catalogue, kind and name. Read through pg_depend's index: the test
# server's pg_class is large and churned, and scanning it costs tens of milliseconds.
_SHAPE = """
SELECT d.classid::regclass::text, coalesce(c.relkind::text, ''),
       coalesce(c.relname, p.proname, t.typname, d.objid::text)
FROM pg_depend d
LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
LEFT JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
LEFT JOIN pg_type t ON d.classid = 'pg_type'::regclass AND t.oid = d.objid
WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = (SELECT oid FROM pg_namespace WHERE nspname = $1)
"""


class PostgresSchemas:
    """Migrated schemas in the test server, handed to one test at a time.

    Creating and migrating a schema, then dropping it, costs several times what a test on it does, so
    a schema a test is done with is reset to exactly what migration left (its rows deleted and the
    rows migration wrote put back, the tables the test made, such as temporal partitions, dropped,
    its sequences restarted) and handed to a later test; a schema whose migrated objects a test
    changed or removed is dropped instead.
    TRUNCATE would be the obvious reset, but it rewrites every table and index file and costs as much
    as a new schema. CITYOS_TEST_SCHEMA_POOL=0 turns reuse off (a new schema for every test)."""

    def __init__(self) -> None:
        self.reuse = os.environ.get("CITYOS_TEST_SCHEMA_POOL", "1") != "0"
        self._loop = asyncio.new_event_loop()
        self._connection: Any = None
        self._free: list[str] = []
        self._shapes: dict[str, set[tuple[str, str, str]]] = {}
        self._versions: dict[str, list[int]] = {}
        self._tables: dict[str, list[str]] = {}  # what to empty, in order
        self._seeds: dict[str, list[tuple[str, list[Any]]]] = {}  # the rows migration wrote, by table

    def _run(self, coroutine: Any) -> Any:
        return self._loop.run_until_complete(coroutine)

    async def _admin(self) -> Any:
        import asyncpg

        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(POSTGRES, timeout=5)
        return self._connection

    def acquire(self) -> str:
        """The URL of an empty, migrated schema for one test (or module)."""
        schema = self._free.pop() if self._free else self._run(self._create())
        return postgres_schema_url(schema)

    def release(self, url: str, *, reuse: bool = True) -> None:
        """Done with: reset for another test, or dropped (always, when not `reuse`)."""
        schema = schema_of(url)
        try:
            reset = reuse and self.reuse and self._run(self._reset(schema))
        except Exception:
            reset = False
        if reset:
            self._free.append(schema)
        else:
            self._run(self._drop(schema))

    def close(self) -> None:
        for schema in self._free:
            self._run(self._drop(schema))
        self._free.clear()
        if self._connection is not None:
            self._run(self._connection.close())
        self._loop.close()

    async def _create(self) -> str:
        from cityos.store.postgres import upgrade

        schema = f"cityos_test_{uuid.uuid4().hex[:12]}"
        connection = await self._admin()
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        try:
            await connection.execute("SELECT set_config('search_path', $1, false)", f'"{schema}", public')
            await upgrade(connection)
        finally:
            await connection.execute("RESET search_path")
        self._shapes[schema] = await self._shape(connection, schema)
        self._versions[schema] = await self._schema_versions(connection, schema)
        rows = await connection.fetch(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = $1::regnamespace AND c.relkind IN ('r', 'p')"
            " AND NOT c.relispartition AND c.relname <> 'schema_version' ORDER BY c.oid DESC",
            schema,
        )
        self._tables[schema] = [row[0] for row in rows]
        seeds = []
        for table in reversed(self._tables[schema]):  # in creation order
            records = await connection.fetch(f'SELECT * FROM "{schema}"."{table}"')
            if records:
                seeds.append((table, [tuple(record) for record in records]))
        self._seeds[schema] = seeds
        return schema

    @staticmethod
    async def _shape(connection: Any, schema: str) -> set[tuple[str, str, str]]:
        return {tuple(row) for row in await connection.fetch(_SHAPE, schema)}

    @staticmethod
    async def _schema_versions(connection: Any, schema: str) -> list[int]:
        return [row[0] for row in await connection.fetch(f'SELECT version FROM "{schema}".schema_version ORDER BY 1')]

    async def _reset(self, schema: str) -> bool:
        """Back to what migration made; False when that cannot be done (then the schema is dropped)."""
        migrated = self._shapes[schema]
        connection = await self._admin()
        async with connection.transaction():
            await connection.execute("SET LOCAL lock_timeout = '5s'")
            now = await self._shape(connection, schema)
            if not migrated <= now or await self._schema_versions(connection, schema) != self._versions[schema]:
                return False
            made = [name for kind, flag, name in now - migrated if kind == "pg_class" and flag in ("r", "p")]
            if made:  # with their indexes
                await connection.execute("DROP TABLE " + ", ".join(f'"{schema}"."{n}"' for n in made) + " CASCADE")
                now = await self._shape(connection, schema)
            if now != migrated:
                return False
            # one round trip: the tables the latest made first (rows that reference others go before
            # those), a partitioned table with its partitions; then every sequence from its start
            await connection.execute(
                "".join(f'DELETE FROM "{schema}"."{name}";' for name in self._tables[schema])
                + "SELECT setval(format('%I.%I', schemaname, sequencename), start_value, false)"
                f" FROM pg_sequences WHERE schemaname = '{schema}';"
            )
            for table, records in self._seeds[schema]:
                await connection.copy_records_to_table(table, records=records, schema_name=schema)
        return True

    async def _drop(self, schema: str) -> None:
        self._shapes.pop(schema, None)
        self._versions.pop(schema, None)
        self._tables.pop(schema, None)
        self._seeds.pop(schema, None)
        connection = await self._admin()
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def schema_of(url: str) -> str:
    """The test schema a postgres_schema_url names."""
    search_path = url.rsplit("search_path=", 1)[1]
    return search_path.split(",", 1)[0]
