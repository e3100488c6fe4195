"""The embedded back-end: one SQLite file in WAL mode, one writer thread, a pool of reader threads.

Writes are serialised through a single-thread executor (SQLite allows one writer anyway), each
call one transaction; reads run on their own connections in parallel. Entity documents are stored
as orjson blobs, with side tables for the pushed-down filters: types, attribute names and an R*Tree
of GeoProperty bounding boxes.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

from cityos.entities.expiry import next_expiry, now_key, visible
from cityos.entities.model import Entity
from cityos.entities.update import Mutator
from cityos.errors import NgsiLdError
from cityos.store.base import EntityChange, EntityQuery, MutationResult, QueryResult, StoredContextRow

T = TypeVar("T")
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entities (
    pk INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    doc BLOB NOT NULL,
    modified_at TEXT NOT NULL,
    expires_at TEXT,
    UNIQUE (tenant, id)
);
CREATE INDEX IF NOT EXISTS entities_expiry ON entities (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS entity_types (
    type TEXT NOT NULL, pk INTEGER NOT NULL, PRIMARY KEY (type, pk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_types_pk ON entity_types (pk);
CREATE TABLE IF NOT EXISTS entity_attrs (
    attr TEXT NOT NULL, pk INTEGER NOT NULL, PRIMARY KEY (attr, pk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_attrs_pk ON entity_attrs (pk);
CREATE VIRTUAL TABLE IF NOT EXISTS entity_geo USING rtree (gid, min_x, max_x, min_y, max_y);
CREATE TABLE IF NOT EXISTS entity_geo_attrs (gid INTEGER PRIMARY KEY, pk INTEGER NOT NULL, attr TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entity_geo_attrs_pk ON entity_geo_attrs (pk);
CREATE TABLE IF NOT EXISTS jsonld_contexts (
    tenant TEXT NOT NULL, local_id TEXT NOT NULL, kind TEXT NOT NULL, doc BLOB NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (tenant, local_id)
);
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
"""


def _connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=30000")
    connection.execute("PRAGMA cache_size=-32000")
    connection.execute("PRAGMA temp_store=MEMORY")
    return connection


def _regexp(pattern: str, value: str | None) -> bool:
    return value is not None and re.search(pattern, value) is not None


def geometry_bbox(geometry: Any) -> tuple[float, float, float, float] | None:
    """(min_x, max_x, min_y, max_y) of a GeoJSON geometry, for the R*Tree prefilter."""
    xs: list[float] = []
    ys: list[float] = []

    def walk(node: Any) -> None:
        if isinstance(node, list) and node and isinstance(node[0], int | float):
            xs.append(float(node[0]))
            ys.append(float(node[1]))
        elif isinstance(node, list):
            for child in node:
                walk(child)

    if not isinstance(geometry, dict):
        return None
    if geometry.get("type") == "GeometryCollection":
        for member in geometry.get("geometries", []):
            box = geometry_bbox(member)
            if box:
                xs.extend(box[:2])
                ys.extend(box[2:])
    else:
        walk(geometry.get("coordinates"))
    if not xs:
        return None
    return min(xs), max(xs), min(ys), max(ys)


class SQLiteStore:
    def __init__(self, path: str, *, readers: int = 4) -> None:
        self.path = path
        self._writer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cityos-writer")
        self._reader_pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="cityos-reader")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None

    # -- plumbing ------------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = _connect(self.path)
            connection.create_function("regexp", 2, _regexp, deterministic=True)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader_pool, lambda: fn(self._reader()))

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._writer is not None
            connection = self._writer
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = fn(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer_pool, run)

    async def open(self) -> None:
        def setup() -> None:
            connection = _connect(self.path)
            connection.executescript(SCHEMA)
            row = connection.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                connection.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} has schema version {row[0]}, newer than this CityOS")
            self._writer = connection

        await asyncio.get_running_loop().run_in_executor(self._writer_pool, setup)

    async def close(self) -> None:
        def close_all() -> None:
            with self._lock:
                for connection in self._connections:
                    connection.close()
                self._connections.clear()
            if self._writer is not None:
                self._writer.close()
                self._writer = None

        await asyncio.get_running_loop().run_in_executor(self._writer_pool, close_all)
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)

    # -- tenants and entities --------------------------------------------------------------------
    async def tenant_exists(self, tenant: str) -> bool:
        if tenant == "":
            return True
        return await self._read(
            lambda c: c.execute("SELECT 1 FROM tenants WHERE name = ?", (tenant,)).fetchone() is not None
        )

    async def get_entity(self, tenant: str, entity_id: str) -> Entity | None:
        def fetch(connection: sqlite3.Connection) -> Entity | None:
            row = connection.execute(
                "SELECT doc FROM entities WHERE tenant = ? AND id = ?", (tenant, entity_id)
            ).fetchone()
            return visible(orjson.loads(row[0])) if row else None

        return await self._read(fetch)

    async def mutate(
        self, tenant: str, operations: Sequence[tuple[str, Mutator]], *, atomic: bool
    ) -> list[MutationResult]:
        def run(connection: sqlite3.Connection) -> list[MutationResult]:
            connection.execute(
                "INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, datetime('now'))", (tenant,)
            )
            results: list[MutationResult] = []
            for index, (entity_id, mutator) in enumerate(operations):
                if not atomic:
                    connection.execute(f"SAVEPOINT op{index}")
                try:
                    results.append(self._apply(connection, tenant, entity_id, mutator))
                except NgsiLdError as error:
                    if atomic:
                        raise
                    connection.execute(f"ROLLBACK TO op{index}")
                    results.append(MutationResult(entity_id, error=error))
                if not atomic:
                    connection.execute(f"RELEASE op{index}")
            return results

        return await self._write(run)

    def _apply(self, connection: sqlite3.Connection, tenant: str, entity_id: str, mutator: Mutator) -> MutationResult:
        row = connection.execute(
            "SELECT pk, doc FROM entities WHERE tenant = ? AND id = ?", (tenant, entity_id)
        ).fetchone()
        before = visible(orjson.loads(row[1])) if row else None
        outcome = mutator(before)
        after = outcome.entity
        if after is None:
            if row is not None:
                self._unindex(connection, row[0])
                connection.execute("DELETE FROM entities WHERE pk = ?", (row[0],))
        else:
            doc = orjson.dumps(after)
            if row is None:
                pk = connection.execute(
                    "INSERT INTO entities (tenant, id, doc, modified_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                    (tenant, entity_id, doc, after["modifiedAt"], next_expiry(after)),
                ).lastrowid
                assert pk is not None
            else:
                pk = row[0]
                connection.execute(
                    "UPDATE entities SET doc = ?, modified_at = ?, expires_at = ? WHERE pk = ?",
                    (doc, after["modifiedAt"], next_expiry(after), pk),
                )
            self._index(connection, pk, before, after)
        change = EntityChange(tenant, entity_id, before, after)
        return MutationResult(entity_id, outcome=outcome, change=change)

    def _unindex(self, connection: sqlite3.Connection, pk: int) -> None:
        connection.execute("DELETE FROM entity_types WHERE pk = ?", (pk,))
        connection.execute("DELETE FROM entity_attrs WHERE pk = ?", (pk,))
        gids = connection.execute("SELECT gid FROM entity_geo_attrs WHERE pk = ?", (pk,)).fetchall()
        if gids:
            connection.executemany("DELETE FROM entity_geo WHERE gid = ?", gids)
            connection.execute("DELETE FROM entity_geo_attrs WHERE pk = ?", (pk,))

    def _index(self, connection: sqlite3.Connection, pk: int, before: Entity | None, after: Entity) -> None:
        if before is not None:
            same_keys = before["type"] == after["type"] and before["attrs"].keys() == after["attrs"].keys()
            if same_keys and _geo_values(before) == _geo_values(after):
                return
            self._unindex(connection, pk)
        connection.executemany(
            "INSERT OR IGNORE INTO entity_types (type, pk) VALUES (?, ?)", [(t, pk) for t in after["type"]]
        )
        connection.executemany(
            "INSERT OR IGNORE INTO entity_attrs (attr, pk) VALUES (?, ?)", [(a, pk) for a in after["attrs"]]
        )
        for attr, geometry in _geo_values(after):
            box = geometry_bbox(geometry)
            if box is None:
                continue
            gid = connection.execute("INSERT INTO entity_geo_attrs (pk, attr) VALUES (?, ?)", (pk, attr)).lastrowid
            connection.execute("INSERT INTO entity_geo VALUES (?, ?, ?, ?, ?)", (gid, *box))

    async def query_entities(self, tenant: str, query: EntityQuery) -> QueryResult:
        sql, params = _select_sql(tenant, query)

        def run(connection: sqlite3.Connection) -> QueryResult:
            rows: Iterator[tuple[bytes]] = connection.execute(sql, params)
            matched: list[Entity] = []
            total = 0
            start = query.offset
            stop = None if query.limit is None else start + query.limit
            now = now_key()
            for (doc,) in rows:
                entity = visible(orjson.loads(doc), now)
                if entity is None:
                    continue
                if query.predicate is not None and not query.predicate(entity):
                    continue
                if start <= total and (stop is None or total < stop):
                    matched.append(entity)
                total += 1
                if stop is not None and total >= stop and not query.count:
                    break
            return QueryResult(matched, total if query.count else None)

        return await self._read(run)

    async def purge_expired(self, now: str) -> list[EntityChange]:
        def run(connection: sqlite3.Connection) -> list[EntityChange]:
            rows = connection.execute(
                "SELECT pk, tenant, id, doc FROM entities WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now,),
            ).fetchall()
            changes = []
            for pk, tenant, entity_id, doc in rows:
                before = orjson.loads(doc)
                after = visible(before, now)
                if after is None:
                    self._unindex(connection, pk)
                    connection.execute("DELETE FROM entities WHERE pk = ?", (pk,))
                else:
                    connection.execute(
                        "UPDATE entities SET doc = ?, expires_at = ? WHERE pk = ?",
                        (orjson.dumps(after), next_expiry(after), pk),
                    )
                    self._index(connection, pk, before, after)
                changes.append(EntityChange(tenant, entity_id, before, after))
            return changes

        return await self._write(run)

    # -- hosted @contexts --------------------------------------------------------------------------
    async def save_context(self, row: StoredContextRow) -> None:
        await self._write(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO jsonld_contexts VALUES (?, ?, ?, ?, ?)",
                (row.tenant, row.local_id, row.kind, orjson.dumps(row.document), row.created_at),
            )
        )

    async def delete_context(self, tenant: str, local_id: str) -> None:
        await self._write(
            lambda c: c.execute("DELETE FROM jsonld_contexts WHERE tenant = ? AND local_id = ?", (tenant, local_id))
        )

    async def load_contexts(self) -> list[StoredContextRow]:
        def run(connection: sqlite3.Connection) -> list[StoredContextRow]:
            rows = connection.execute("SELECT tenant, local_id, kind, doc, created_at FROM jsonld_contexts").fetchall()
            return [StoredContextRow(t, i, k, orjson.loads(d), c) for t, i, k, d, c in rows]

        return await self._read(run)


def _geo_values(entity: Entity) -> list[tuple[str, Any]]:
    return [
        (attr, instance["value"])
        for attr, instances in entity["attrs"].items()
        for instance in instances
        if instance.get("type") == "GeoProperty"
    ]


def _select_sql(tenant: str, query: EntityQuery) -> tuple[str, list[Any]]:
    """The SQL for the pushed-down part of a query: tenant, ids, id pattern, types, attributes."""
    clauses = ["e.tenant = ?"]
    params: list[Any] = [tenant]
    if query.ids is not None:
        clauses.append(f"e.id IN ({','.join('?' * len(query.ids))})")
        params.extend(query.ids)
    if query.id_pattern is not None:
        clauses.append("regexp(?, e.id)")
        params.append(query.id_pattern)
    if query.types is not None:
        clauses.append(f"e.pk IN (SELECT pk FROM entity_types WHERE type IN ({','.join('?' * len(query.types))}))")
        params.extend(query.types)
    if query.attrs is not None:
        clauses.append(f"e.pk IN (SELECT pk FROM entity_attrs WHERE attr IN ({','.join('?' * len(query.attrs))}))")
        params.extend(query.attrs)
    return f"SELECT e.doc FROM entities e WHERE {' AND '.join(clauses)} ORDER BY e.pk", params
