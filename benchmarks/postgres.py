"""PostgreSQL for the benchmark: a throw-away schema per run and the raw-PostgreSQL storage floor.

The schema is `cityos_bench_<random>` in the server named by --postgres (or CITYOS_BENCH_POSTGRES);
the broker reaches it through `?search_path=<schema>,public` (asyncpg sends unknown URL parameters
as server settings; PostGIS stays in `public`). It is migrated with `cityos db upgrade`, as a user
would, and dropped at the end of the run, also on failure or Ctrl-C. Only a killed harness
(SIGKILL) leaves it behind: `DROP SCHEMA cityos_bench_... CASCADE` then.

The floor mirrors rawsqlite.py: the same documents in a plain `(id text PRIMARY KEY, doc json)` table
(json, not jsonb, like the broker's `entities.doc`), written with asyncpg in-process, one transaction
per 1,000 rows or per row, and read back one at a time by primary key over one connection.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import uvloop

from benchmarks.servers import SERVER_SRC_ENV, StartFailed
from benchmarks.workloads import BATCH_SIZE

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
URL_ENV = "CITYOS_BENCH_POSTGRES"
REQUIRE_ENV = "CITYOS_TEST_REQUIRE_POSTGRES"  # set by CI: an unreachable server is a failure, not a skip
ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def default_url() -> str:
    return os.environ.get(URL_ENV, DEFAULT_URL)


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def schema_url(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}search_path={schema},public"


async def _execute(url: str, *statements: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url, timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def unreachable(url: str) -> str | None:
    """Why the benchmark cannot use this server (None: it can): no answer, or no PostGIS."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[dev]')"
    try:
        asyncio.run(_execute(url, "CREATE EXTENSION IF NOT EXISTS postgis"))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"no usable PostgreSQL at {redact(url)} ({type(exc).__name__}: {exc})"
    return None


class BenchSchema:
    """`with BenchSchema(url) as schema`: a new, migrated schema; schema.url is the broker's database
    setting. Dropped on exit, whatever the exit."""

    def __init__(self, url: str) -> None:
        self.admin_url = url
        self.name = f"cityos_bench_{uuid.uuid4().hex[:12]}"
        self.url = schema_url(url, self.name)

    def __enter__(self) -> BenchSchema:
        asyncio.run(_execute(self.admin_url, f'CREATE SCHEMA "{self.name}"'))
        try:
            upgrade = [sys.executable, "-m", "cityos", "db", "upgrade", "--database", self.url]
            env = dict(os.environ)
            if server_src := env.get(SERVER_SRC_ENV):  # the schema of the server measured (--server-src)
                env["PYTHONPATH"] = server_src
            done = subprocess.run(upgrade, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
            if done.returncode != 0:
                raise StartFailed(f"cityos db upgrade failed:\n{done.stdout}{done.stderr}")
        except BaseException:
            self.drop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.drop()

    def analyze(self) -> float:
        """VACUUM (ANALYZE) every table of the schema: the planner's statistics, and the visibility map
        that index-only scans need; what autovacuum does some time after a bulk load (a server run with
        autovacuum off never does). Returns the seconds it took."""
        start = time.perf_counter()
        asyncio.run(self._analyze())
        return time.perf_counter() - start

    async def _analyze(self) -> None:
        for table, _ in await self._tables():
            await _execute(self.admin_url, f"VACUUM (ANALYZE) {table}")

    async def _tables(self) -> list[tuple[str, int]]:
        """(schema-qualified name, pg_total_relation_size: indexes and TOAST included) of each table
        of the schema, partitions and their parents included (a parent's own size is 0)."""
        import asyncpg

        connection = await asyncpg.connect(self.admin_url, timeout=10)
        try:
            rows = await connection.fetch(
                "SELECT format('%I.%I', n.nspname, c.relname), pg_total_relation_size(c.oid) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')",
                self.name,
            )
            return [(name, size) for name, size in rows]
        finally:
            await connection.close()

    def table_sizes(self) -> list[tuple[str, int]]:
        """(table name, bytes) of each table of the schema (the scaling table's bytes on disk)."""
        return [(name.rpartition(".")[2].strip('"'), size) for name, size in asyncio.run(self._tables())]

    def count(self, table: str) -> int | None:
        """The rows of one table of the schema (None: no such table)."""
        import asyncpg

        async def counted() -> int | None:
            connection = await asyncpg.connect(self.admin_url, timeout=10)
            try:
                rows: int = await connection.fetchval(f'SELECT count(*) FROM "{self.name}"."{table}"')
                return rows
            except asyncpg.PostgresError:
                return None
            finally:
                await connection.close()

        return asyncio.run(counted())

    def drop(self) -> None:
        # a second Ctrl-C during the drop would leave the schema: retry once, then say so
        for _ in range(2):
            try:
                asyncio.run(_execute(self.admin_url, f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
                return
            except KeyboardInterrupt:
                continue
            except Exception as exc:
                print(f"could not drop schema {self.name}: {exc}", file=sys.stderr, flush=True)
                return
        print(f"schema {self.name} left behind: DROP SCHEMA {self.name} CASCADE", file=sys.stderr, flush=True)


class RawPostgres:
    """The storage floor on PostgreSQL, with RawStore's interface: one table in the bench schema, one
    connection, driven from this process on its own (uvloop) event loop, like the broker's."""

    def __init__(self, url: str) -> None:
        import asyncpg

        self._runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        self.connection: Any = self._run(asyncpg.connect(url, timeout=10))
        self._run(self.connection.execute("CREATE TABLE raw_entities (id text PRIMARY KEY, doc json NOT NULL)"))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coroutine)

    def write_rate(self, rows: list[tuple[str, bytes]], batch_size: int = BATCH_SIZE) -> float:
        """Rows/s inserting `rows`, one transaction per batch (batch_size=1: one statement per row, in
        its own implicit transaction, like a create)."""
        texts = [(id_, doc.decode()) for id_, doc in rows]  # asyncpg's json codec takes str
        return len(rows) / self._run(self._write(texts, batch_size))

    async def _write(self, rows: list[tuple[str, str]], batch_size: int) -> float:
        insert = "INSERT INTO raw_entities (id, doc) VALUES ($1, $2)"
        connection = self.connection
        start = time.perf_counter()
        if batch_size == 1:
            for id_, doc in rows:
                await connection.execute(insert, id_, doc)
        else:
            for first in range(0, len(rows), batch_size):
                async with connection.transaction():
                    await connection.executemany(insert, rows[first : first + batch_size])
        return time.perf_counter() - start

    def read_rate(self, reads: int, seed: int = 0) -> float:
        """Rows/s fetching stored documents one at a time by primary key, in random order."""
        return reads / self._run(self._read(reads, seed))

    async def _read(self, reads: int, seed: int) -> float:
        connection = self.connection
        ids = [record[0] for record in await connection.fetch("SELECT id FROM raw_entities")]
        rng = random.Random(seed)
        chosen = [ids[rng.randrange(len(ids))] for _ in range(reads)]
        select = await connection.prepare("SELECT doc FROM raw_entities WHERE id = $1")
        start = time.perf_counter()
        for id_ in chosen:
            document = await select.fetchval(id_)
            assert document is not None
        return time.perf_counter() - start

    def close(self) -> None:
        try:
            self._run(self.connection.close())
        finally:
            self._runner.close()
