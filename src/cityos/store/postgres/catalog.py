"""The PostgreSQL store's catalogue: subscriptions and their outbox (claimed by many workers at
once) and worker liveness (outbox.py), context source registrations, entity maps, discovery
aggregates and ingestion records. A mixin: PostgresStore supplies the pool.

The semantics are the SQLite back-end's (sqlite_catalog.py), method by method; listings come back
in creation order and sorted names in code point order (COLLATE "C", as SQLite and Python sort).
Writes to what other workers cache (ingestion records here; subscriptions in outbox.py) send a
StoreEvent when their transaction commits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import orjson

from cityos.audit.recorder import ingest_row
from cityos.audit.recorder import row as audit_row
from cityos.entities.expiry import now_key
from cityos.errors import AlreadyExists, QueryTimeout
from cityos.query.entity_maps import EntityMap, expiry_key, from_expiry_key
from cityos.store.base import (
    AttributeStats,
    EntityTypeStats,
    IngestRecord,
    RegistrationRow,
    StoreEvent,
)
from cityos.store.postgres.busy import read_again_once
from cityos.store.postgres.outbox import TENANT_INSERT, PostgresOutbox
from cityos.store.registration_cache import REGISTRATION_EVENT, RegistrationCache

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

T = TypeVar("T")
# the tenant's entities a reader may see ($1 tenant, $2 now); expired attributes wait for the sweeper
VISIBLE = "e.tenant = $1 AND (e.expires_at IS NULL OR e.expires_at > $2)"
C = 'COLLATE "C"'  # code point order, whatever the database's locale


class PostgresCatalog(PostgresOutbox):
    """Catalogue methods of the storage contract, mixed into PostgresStore."""

    registrations_kept: RegistrationCache  # made by PostgresStore.__init__, forgotten on other workers' events

    if TYPE_CHECKING:
        query_timeout: float

    async def _purge_expired_maps(self, connection: Connection, now: str) -> None:
        """Called inside purge_expired's transaction: delete the entity maps expired at `now`."""
        await connection.execute("DELETE FROM entity_maps WHERE expires_at <= $1", now)

    # -- context source registrations ---------------------------------------------------------------
    async def save_registration(self, row: RegistrationRow, *, create: bool) -> None:
        document = orjson.dumps(row.document).decode()

        async def work(connection: Connection) -> None:
            if not create:
                status = await connection.execute(
                    "UPDATE registrations SET doc = $1 WHERE tenant = $2 AND id = $3", document, row.tenant, row.id
                )
                if status != "UPDATE 0":
                    await self._audit_after(connection, lambda: audit_row("registration.update", row.tenant, [row.id]))
                    await self._notify(connection, StoreEvent(REGISTRATION_EVENT, row.tenant, row.id))
                return
            await connection.execute(TENANT_INSERT, row.tenant)
            saved = await connection.fetchval(
                "INSERT INTO registrations (doc, tenant, id) VALUES ($1, $2, $3)"
                " ON CONFLICT (tenant, id) DO NOTHING RETURNING true",
                document,
                row.tenant,
                row.id,
            )
            if not saved:
                raise AlreadyExists(f"context source registration {row.id} already exists")
            await self._audit_after(connection, lambda: audit_row("registration.create", row.tenant, [row.id]))
            await self._notify(connection, StoreEvent(REGISTRATION_EVENT, row.tenant, row.id))

        try:
            await self._write(work)
        finally:
            self.registrations_kept.forget(row.tenant)

    @read_again_once
    async def get_registration(self, tenant: str, registration_id: str) -> RegistrationRow | None:
        doc = await self.pool.fetchval(
            "SELECT doc FROM registrations WHERE tenant = $1 AND id = $2", tenant, registration_id
        )
        return None if doc is None else RegistrationRow(tenant, registration_id, orjson.loads(doc))

    async def delete_registration(self, tenant: str, registration_id: str) -> bool:
        async def work(connection: Connection) -> bool:
            deleted = await connection.fetchval(
                "DELETE FROM registrations WHERE tenant = $1 AND id = $2 RETURNING true", tenant, registration_id
            )
            if deleted:
                await self._audit_after(connection, lambda: audit_row("registration.delete", tenant, [registration_id]))
                await self._notify(connection, StoreEvent(REGISTRATION_EVENT, tenant, registration_id))
            return bool(deleted)

        try:
            return await self._write(work)
        finally:
            self.registrations_kept.forget(tenant)

    def registrations_none(self, tenant: str) -> bool:
        return tenant in self.registrations_kept.none

    async def list_registrations(self, tenant: str) -> list[RegistrationRow]:
        kept = self.registrations_kept.get(tenant)
        if kept is not None:
            return kept
        generation = self.registrations_kept.generation
        return self.registrations_kept.keep(tenant, await self._registration_rows(tenant), generation)

    @read_again_once
    async def _registration_rows(self, tenant: str) -> list[tuple[str, bytes]]:
        rows = await self.pool.fetch("SELECT id, doc FROM registrations WHERE tenant = $1 ORDER BY pk", tenant)
        return [(r["id"], r["doc"].encode()) for r in rows]

    # -- entity maps ---------------------------------------------------------------------------------
    async def save_entity_map(self, tenant: str, entity_map: EntityMap) -> None:
        await self._write_one(
            "INSERT INTO entity_maps (tenant, id, expires_at, entity_ids, query, owner) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (tenant, id) DO UPDATE SET expires_at = excluded.expires_at,"
            " entity_ids = excluded.entity_ids, query = excluded.query, owner = excluded.owner",
            tenant,
            entity_map.id,
            expiry_key(entity_map.expires_at),
            orjson.dumps(list(entity_map.entity_ids)).decode(),
            entity_map.query,
            entity_map.owner,
        )

    @read_again_once
    async def get_entity_map(self, tenant: str, map_id: str) -> EntityMap | None:
        row = await self.pool.fetchrow(
            "SELECT expires_at, entity_ids, query, owner FROM entity_maps WHERE tenant = $1 AND id = $2", tenant, map_id
        )
        if row is None:
            return None
        entity_ids = tuple(orjson.loads(row["entity_ids"]))
        return EntityMap(map_id, from_expiry_key(row["expires_at"]), entity_ids, row["query"], row["owner"])

    async def update_entity_map(
        self, tenant: str, map_id: str, *, expires_at: datetime | None = None, entity_ids: Sequence[str] | None = None
    ) -> bool:
        changes: dict[str, Any] = {}
        if expires_at is not None:
            changes["expires_at"] = expiry_key(expires_at)
        if entity_ids is not None:
            changes["entity_ids"] = orjson.dumps(list(entity_ids)).decode()
        if not changes:
            return await self.get_entity_map(tenant, map_id) is not None
        assignments = ", ".join(f"{column} = ${n}" for n, column in enumerate(changes, start=3))
        return await self._write_one(
            f"UPDATE entity_maps SET {assignments} WHERE tenant = $1 AND id = $2 RETURNING true",
            tenant,
            map_id,
            *changes.values(),
        )

    async def delete_entity_map(self, tenant: str, map_id: str) -> bool:
        return await self._write_one(
            "DELETE FROM entity_maps WHERE tenant = $1 AND id = $2 RETURNING true", tenant, map_id
        )

    # -- discovery: aggregated in SQL over the entities' type and attribute arrays; documents are
    # -- read only for attribute types -------------------------------------------------------------
    @read_again_once
    async def _discover(self, run: Callable[[Connection], Awaitable[T]]) -> T:
        """A read-only transaction that PostgreSQL aborts once query_timeout has passed (QueryTimeout)."""
        try:
            async with asyncio.timeout(self.query_timeout):
                async with self.pool.acquire() as connection, connection.transaction(readonly=True):
                    await connection.execute(
                        "SELECT set_config('statement_timeout', $1, true)", f"{int(self.query_timeout * 1000)}"
                    )
                    return await run(connection)
        except (TimeoutError, asyncpg.QueryCanceledError) as exc:
            raise QueryTimeout(f"the query took longer than {self.query_timeout} s") from exc

    async def _discover_rows(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        async def run(connection: Connection) -> list[asyncpg.Record]:
            return list(await connection.fetch(sql, *params))

        return await self._discover(run)

    async def entity_types(self, tenant: str) -> list[str]:
        sql = (
            f"SELECT DISTINCT t.type {C} AS type FROM entities e CROSS JOIN LATERAL unnest(e.types) AS t(type)"
            f" WHERE {VISIBLE} ORDER BY 1"
        )
        return [row["type"] for row in await self._discover_rows(sql, tenant, now_key())]

    async def entity_type_attributes(self, tenant: str) -> dict[str, list[str]]:
        sql = (
            f"SELECT t.type {C} AS type, a.attr {C} AS attr FROM entities e"
            " CROSS JOIN LATERAL unnest(e.types) AS t(type) LEFT JOIN LATERAL unnest(e.attrs) AS a(attr) ON true"
            f" WHERE {VISIBLE} GROUP BY 1, 2 ORDER BY 1, 2"
        )
        result: dict[str, list[str]] = {}
        for row in await self._discover_rows(sql, tenant, now_key()):
            names = result.setdefault(row["type"], [])
            if row["attr"] is not None:
                names.append(row["attr"])
        return result

    async def entity_type_stats(self, tenant: str, entity_type: str) -> EntityTypeStats | None:
        of_type = f"e.types @> ARRAY[$3::text] AND {VISIBLE}"
        count_sql = f"SELECT count(*) FROM entities e WHERE {of_type}"
        types_sql = (
            f"SELECT a.key {C} AS attr, i.value ->> 'type' {C} AS kind FROM entities e"
            " CROSS JOIN LATERAL json_each(e.doc -> 'attrs') AS a"
            " CROSS JOIN LATERAL json_array_elements(a.value) AS i"
            f" WHERE {of_type} GROUP BY 1, 2 ORDER BY 1, 2"
        )
        params = (tenant, now_key(), entity_type)

        async def run(connection: Connection) -> EntityTypeStats | None:
            count: int = await connection.fetchval(count_sql, *params)
            if count == 0:
                return None
            attribute_types: dict[str, list[str]] = {}
            for row in await connection.fetch(types_sql, *params):
                attribute_types.setdefault(row["attr"], []).append(row["kind"])
            return EntityTypeStats(entity_type, count, attribute_types)

        return await self._discover(run)

    async def attribute_names(self, tenant: str) -> list[str]:
        sql = (
            f"SELECT DISTINCT a.attr {C} AS attr FROM entities e CROSS JOIN LATERAL unnest(e.attrs) AS a(attr)"
            f" WHERE {VISIBLE} ORDER BY 1"
        )
        return [row["attr"] for row in await self._discover_rows(sql, tenant, now_key())]

    async def attribute_type_names(self, tenant: str) -> dict[str, list[str]]:
        sql = (
            f"SELECT a.attr {C} AS attr, t.type {C} AS type FROM entities e"
            " CROSS JOIN LATERAL unnest(e.attrs) AS a(attr) CROSS JOIN LATERAL unnest(e.types) AS t(type)"
            f" WHERE {VISIBLE} GROUP BY 1, 2 ORDER BY 1, 2"
        )
        result: dict[str, list[str]] = {}
        for row in await self._discover_rows(sql, tenant, now_key()):
            result.setdefault(row["attr"], []).append(row["type"])
        return result

    async def attribute_stats(self, tenant: str, attr: str) -> AttributeStats | None:
        with_attr = f"e.attrs @> ARRAY[$3::text] AND {VISIBLE}"
        kinds_sql = (
            f"SELECT i.value ->> 'type' {C} AS kind, count(*) AS n FROM entities e"
            " CROSS JOIN LATERAL json_array_elements(e.doc -> 'attrs' -> $3::text) AS i"
            f" WHERE {with_attr} GROUP BY 1 ORDER BY 1"
        )
        types_sql = (
            f"SELECT DISTINCT t.type {C} AS type FROM entities e CROSS JOIN LATERAL unnest(e.types) AS t(type)"
            f" WHERE {with_attr} ORDER BY 1"
        )
        params = (tenant, now_key(), attr)

        async def run(connection: Connection) -> AttributeStats | None:
            kinds = await connection.fetch(kinds_sql, *params)
            if not kinds:
                return None
            type_names = [row["type"] for row in await connection.fetch(types_sql, *params)]
            return AttributeStats(attr, sum(row["n"] for row in kinds), [row["kind"] for row in kinds], type_names)

        return await self._discover(run)

    # -- ingestion configuration ---------------------------------------------------------------------
    async def add_ingest_records(self, rows: Sequence[IngestRecord]) -> None:
        if not rows:
            return

        async def work(connection: Connection) -> None:
            inserted = await connection.fetch(
                "INSERT INTO ingest_records (kind, tenant, key, doc)"
                " SELECT k, t, y, d FROM unnest($1::text[], $2::text[], $3::text[], $4::json[])"
                " WITH ORDINALITY AS r(k, t, y, d, n) ORDER BY n"
                " ON CONFLICT (kind, tenant, key) DO NOTHING RETURNING kind, tenant, key",
                [row.kind for row in rows],
                [row.tenant for row in rows],
                [row.key for row in rows],
                [orjson.dumps(row.document).decode() for row in rows],
            )
            if len(inserted) < len(rows):  # taken before, or twice in `rows`: the first such row
                fresh = {(r["kind"], r["tenant"], r["key"]) for r in inserted}
                seen: set[tuple[str, str, str]] = set()
                for row in rows:
                    identity = (row.kind, row.tenant, row.key)
                    if identity not in fresh or identity in seen:
                        raise AlreadyExists(f"{row.kind} {row.key} already exists")  # rolls every row back
                    seen.add(identity)
            for row in rows:
                await self._notify(connection, StoreEvent("ingest", row.tenant, f"{row.kind}:{row.key}"))
            made = [ingest_row(row.kind, "create", row.tenant, row.key) for row in rows]
            await self._audit_after_all(connection, [m for m in made if m is not None])

        await self._write(work)

    async def delete_ingest_record(self, kind: str, tenant: str, key: str) -> bool:
        async def work(connection: Connection) -> bool:
            deleted = await connection.fetchval(
                "DELETE FROM ingest_records WHERE kind = $1 AND tenant = $2 AND key = $3 RETURNING true",
                kind,
                tenant,
                key,
            )
            if deleted:
                await self._notify(connection, StoreEvent("ingest", tenant, f"{kind}:{key}"))
                await self._audit_after(connection, lambda: ingest_row(kind, "delete", tenant, key))
            return bool(deleted)

        return await self._write(work)

    @read_again_once
    async def load_ingest_records(self, kind: str) -> list[IngestRecord]:
        rows = await self.pool.fetch("SELECT tenant, key, doc FROM ingest_records WHERE kind = $1 ORDER BY pk", kind)
        return [IngestRecord(kind, r["tenant"], r["key"], orjson.loads(r["doc"])) for r in rows]
