"""PostgresStore: the entity half of the storage contract on PostgreSQL/PostGIS (asyncpg).

Writes follow SQLiteStore exactly: one transaction per call, each entity locked (an advisory lock on
its key, then SELECT ... FOR UPDATE) before its mutator runs in Python, a SAVEPOINT per operation
when atomic=False. Unlike SQLite there is no single writer: many connections (and many workers)
write at once, and the row locks keep their read-modify-write cycles apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from cityos.entities.expiry import next_expiry, now_key, visible
from cityos.entities.model import Entity
from cityos.entities.update import Mutator
from cityos.errors import BadRequestData, NgsiLdError, QueryTimeout
from cityos.store.base import (
    ChangeListener,
    EntityChange,
    EntityQuery,
    MutationResult,
    QueryResult,
    StoredContextRow,
)
from cityos.store.paging import Pager, exact_in_sql
from cityos.store.postgres.schema import require_current
from cityos.store.postgres.sql import Params, where
from cityos.store.postgres.unfinished import Unfinished, missing

# engine-independent document helpers, shared with the SQLite back-end (to move into a common module
# once the concurrent edits to sqlite.py have landed)
from cityos.store.sqlite import _geo_values, _indexed_values, _own_expiry, geometry_bbox

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

_CURSOR_PREFETCH = 200


class PostgresStore(Unfinished):
    def __init__(self, dsn: str, *, query_timeout: float = 10.0, pool_size: int = 10) -> None:
        self.dsn = dsn
        self.query_timeout = query_timeout
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    async def open(self) -> None:
        """Connect and check the schema version; the schema itself is changed only by `cityos db upgrade`."""
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size)
        try:
            async with pool.acquire() as connection:
                await require_current(connection, self.dsn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def set_change_listener(
        self, listener: ChangeListener | None, wake: Callable[[], None] | None, *, name: str = "subscriptions"
    ) -> None:
        if listener is not None:
            missing("set_change_listener")

    # -- tenants and entities --------------------------------------------------------------------
    async def tenant_exists(self, tenant: str) -> bool:
        if tenant == "":
            return True
        found = await self.pool.fetchval("SELECT 1 FROM tenants WHERE name = $1", tenant)
        return found is not None

    async def get_entity(self, tenant: str, entity_id: str) -> Entity | None:
        doc = await self.pool.fetchval("SELECT doc FROM entities WHERE tenant = $1 AND id = $2", tenant, entity_id)
        return visible(orjson.loads(doc)) if doc is not None else None

    async def mutate(
        self, tenant: str, operations: Sequence[tuple[str, Mutator]], *, atomic: bool
    ) -> list[MutationResult]:
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("INSERT INTO tenants (name) VALUES ($1) ON CONFLICT DO NOTHING", tenant)
            results: list[MutationResult] = []
            for entity_id, mutator in operations:
                if atomic:
                    results.append(await self._apply(connection, tenant, entity_id, mutator))
                    continue
                try:
                    async with connection.transaction():  # nested: a SAVEPOINT
                        result = await self._apply(connection, tenant, entity_id, mutator)
                except NgsiLdError as error:
                    result = MutationResult(entity_id, error=error)
                results.append(result)
            return results

    async def _apply(self, connection: Connection, tenant: str, entity_id: str, mutator: Mutator) -> MutationResult:
        # the advisory lock also covers an entity that does not exist yet, so two concurrent
        # creates of one id serialise instead of failing on the unique index
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))", tenant, entity_id)
        row = await connection.fetchrow(
            "SELECT pk, doc FROM entities WHERE tenant = $1 AND id = $2 FOR UPDATE", tenant, entity_id
        )
        before = visible(orjson.loads(row["doc"])) if row is not None else None
        outcome = mutator(before)
        after = outcome.entity
        if after is None:
            if row is not None:
                await connection.execute("DELETE FROM entities WHERE pk = $1", row["pk"])  # side rows cascade
        else:
            await self._store(connection, tenant, entity_id, row["pk"] if row is not None else None, after)
        return MutationResult(entity_id, outcome=outcome, change=EntityChange(tenant, entity_id, before, after))

    async def _store(self, connection: Connection, tenant: str, entity_id: str, pk: int | None, entity: Entity) -> None:
        """Write the document and rebuild its side rows (every time: an expired, invisible
        previous version may still have some)."""
        columns = (
            orjson.dumps(entity).decode(),
            list(entity["type"]),
            list(entity["attrs"]),
            entity["modifiedAt"],
            _own_expiry(entity),
            next_expiry(entity),
        )
        if pk is None:
            pk = await connection.fetchval(
                "INSERT INTO entities (doc, types, attrs, modified_at, expires_at, next_expiry, tenant, id)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING pk",
                *columns,
                tenant,
                entity_id,
            )
        else:
            await connection.execute(
                "UPDATE entities SET doc = $1, types = $2, attrs = $3, modified_at = $4, expires_at = $5,"
                " next_expiry = $6 WHERE pk = $7",
                *columns,
                pk,
            )
            await connection.execute(
                "WITH gone AS (DELETE FROM attr_values WHERE pk = $1) DELETE FROM entity_geo WHERE pk = $1", pk
            )
        values = list(_indexed_values(entity))
        if values:
            await connection.execute(
                "INSERT INTO attr_values (pk, attr, num, txt)"
                " SELECT $1, * FROM unnest($2::text[], $3::float8[], $4::text[])",
                pk,
                [attr for attr, _, _ in values],
                [num for _, num, _ in values],
                [txt for _, _, txt in values],
            )
        boxes = [(attr, box) for attr, geometry in _geo_values(entity) if (box := geometry_bbox(geometry))]
        if boxes:
            await connection.execute(
                "INSERT INTO entity_geo (pk, attr, min_x, max_x, min_y, max_y, box)"
                " SELECT $1, a, x0, x1, y0, y1, ST_MakeEnvelope(x0, y0, x1, y1, 4326)"
                " FROM unnest($2::text[], $3::float8[], $4::float8[], $5::float8[], $6::float8[])"
                " AS b(a, x0, x1, y0, y1)",
                pk,
                [attr for attr, _ in boxes],
                *([box[i] for _, box in boxes] for i in range(4)),
            )

    # -- queries -----------------------------------------------------------------------------------
    async def query_entities(self, tenant: str, query: EntityQuery) -> QueryResult:
        now = now_key()
        p = Params()
        condition = where(tenant, query, now, p)
        try:
            async with asyncio.timeout(self.query_timeout):
                async with self.pool.acquire() as connection, connection.transaction(readonly=True):
                    await connection.execute(
                        "SELECT set_config('statement_timeout', $1, true)", f"{int(self.query_timeout * 1000)}"
                    )
                    if exact_in_sql(query):
                        return await self._page_in_sql(connection, condition, p.values, query)
                    pager = Pager(query, now)
                    sql = f"SELECT e.doc FROM entities e WHERE {condition} ORDER BY e.pk"
                    async for record in connection.cursor(sql, *p.values, prefetch=_CURSOR_PREFETCH):
                        if not pager.offer(orjson.loads(record["doc"])):
                            break
                    return pager.result()
        except (TimeoutError, asyncpg.QueryCanceledError) as exc:
            raise QueryTimeout(f"the query took longer than {self.query_timeout} s") from exc
        except asyncpg.InvalidRegularExpressionError as exc:
            raise BadRequestData(f"idPattern is not a valid regular expression: {exc}") from exc

    @staticmethod
    async def _page_in_sql(
        connection: Connection, condition: str, params: list[Any], query: EntityQuery
    ) -> QueryResult:
        """Every filter is exact in SQL: page there and decode only the page."""
        sql = f"SELECT e.doc FROM entities e WHERE {condition} ORDER BY e.pk"
        page_params = list(params)
        if query.limit is not None:
            sql += f" LIMIT ${len(params) + 1} OFFSET ${len(params) + 2}"
            page_params += [query.limit + 1, query.offset]
        rows = await connection.fetch(sql, *page_params)
        entities = [entity for row in rows if (entity := visible(orjson.loads(row["doc"]))) is not None]
        has_more = query.limit is not None and len(entities) > query.limit
        if has_more:
            entities.pop()
        total = None
        if query.count:
            total = await connection.fetchval(f"SELECT count(*) FROM entities e WHERE {condition}", *params)
        return QueryResult(entities, total, has_more)

    async def purge_expired(self, now: str) -> list[EntityChange]:
        """Sweep transient entities and attributes; SKIP LOCKED lets several workers sweep at once."""
        changes: list[EntityChange] = []
        async with self.pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                "SELECT pk, tenant, id, doc FROM entities WHERE next_expiry IS NOT NULL AND next_expiry <= $1"
                " ORDER BY next_expiry, pk FOR UPDATE SKIP LOCKED",
                now,
            )
            for row in rows:
                before: Entity = orjson.loads(row["doc"])
                after = visible(before, now)
                if after is None:
                    await connection.execute("DELETE FROM entities WHERE pk = $1", row["pk"])
                else:
                    await self._store(connection, row["tenant"], row["id"], row["pk"], after)
                changes.append(EntityChange(row["tenant"], row["id"], before, after))
        return changes

    # -- hosted @contexts --------------------------------------------------------------------------
    async def save_context(self, row: StoredContextRow) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            # delete + insert, like SQLite's INSERT OR REPLACE: a replaced context loads last
            await connection.execute(
                "DELETE FROM jsonld_contexts WHERE tenant = $1 AND local_id = $2", row.tenant, row.local_id
            )
            await connection.execute(
                "INSERT INTO jsonld_contexts (tenant, local_id, kind, doc, created_at) VALUES ($1, $2, $3, $4, $5)",
                row.tenant,
                row.local_id,
                row.kind,
                orjson.dumps(row.document).decode(),
                row.created_at,
            )

    async def delete_context(self, tenant: str, local_id: str) -> None:
        await self.pool.execute("DELETE FROM jsonld_contexts WHERE tenant = $1 AND local_id = $2", tenant, local_id)

    async def load_contexts(self) -> list[StoredContextRow]:
        rows = await self.pool.fetch("SELECT tenant, local_id, kind, doc, created_at FROM jsonld_contexts ORDER BY seq")
        return [
            StoredContextRow(r["tenant"], r["local_id"], r["kind"], orjson.loads(r["doc"]), r["created_at"])
            for r in rows
        ]
