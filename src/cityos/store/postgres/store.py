"""PostgresStore: the storage contract on PostgreSQL/PostGIS (asyncpg); the catalogue and the
temporal store are mixins (catalog.py, temporal.py).

Writes (writes.py) keep SQLiteStore's semantics: one transaction per call, each entity locked (an
advisory lock on its key, the keys of a batch all at once in id order so batches that share ids
cannot deadlock, then SELECT ... FOR UPDATE) before its mutator runs in Python, the change
listeners' outbox and history rows inserted in the same transaction; the rows of a whole batch go
in a few set-based statements. Unlike SQLite there is no single writer: many connections (and many
workers) write at once, and the locks keep their read-modify-write cycles apart.

The contract's synchronous reads (the EntityLookup handed to change listeners, lookup_in_query for
q paths that follow relationships) cannot await asyncpg, so listeners and query predicates run on
a thread of their own while the event loop stays free to run the reads they ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from cityos.entities.expiry import now_key, visible_at
from cityos.entities.model import Entity
from cityos.errors import BadRequestData, QueryTimeout
from cityos.query import budget
from cityos.query.patterns import id_pattern_in_python
from cityos.store.base import (
    ChangeListener,
    EntityQuery,
    EventListener,
    QueryResult,
    StoredContextRow,
    StoreEvent,
    SubscriptionRow,
)
from cityos.store.fair import FairShare
from cityos.store.paging import Pager, bounded, exact_in_sql, listed_type
from cityos.store.postgres.audit import PostgresAudit
from cityos.store.postgres.busy import read_again_once, session_settings
from cityos.store.postgres.catalog import PostgresCatalog
from cityos.store.postgres.dataspace import PostgresDataspace
from cityos.store.postgres.events import RESYNC, EventFollower, channel_for, notify
from cityos.store.postgres.grid import PostgresGrid
from cityos.store.postgres.identity import PostgresIdentity
from cityos.store.postgres.import_runs import PostgresImportRuns
from cityos.store.postgres.lane import Lane, lane_size
from cityos.store.postgres.outbox import subscription_rows
from cityos.store.postgres.pages import (
    ANCHOR_STEP,
    Anchors,
    decode,
    geo_in_python,
    page_at_once,
    page_in_sql,
    stored_form,
)
from cityos.store.postgres.policies import PostgresPolicies
from cityos.store.postgres.schema import LATEST, require_current, schema_version
from cityos.store.postgres.snapshots import PostgresSnapshots
from cityos.store.postgres.sql import Params, access_in_python, matches_in_python, near_point, where
from cityos.store.postgres.temporal import PostgresTemporal
from cityos.store.postgres.writes import PostgresWrites
from cityos.store.registration_cache import REGISTRATION_EVENT, RegistrationCache

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

_CURSOR_PREFETCH = 200
log = logging.getLogger("cityos.store")
POOL_CLOSE_SECONDS = 10.0  # close() waits this long for busy pool connections, then cuts them


async def _keep_session(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's reset of a released connection: none. asyncpg's default (RESET ALL, UNLISTEN *,
    CLOSE ALL, pg_advisory_unlock_all) is one more round trip per acquire, and there is nothing for
    it to undo: pooled connections only take transaction-level locks and settings, LISTEN runs on a
    connection of its own (events.py), cursors end with their transaction. An open transaction is
    still rolled back by asyncpg before this is called."""


# The query's first statement: its statement timeout, the listings' version (schema.py) and whether
# some entity of the tenant holds an expired part the sweeper has not removed yet ($4: asked): its
# side rows (attrs, attr_values) still describe what readers no longer see, and the anchors'
# positions count it.
_FIRST = """
SELECT set_config('statement_timeout', $1, true),
    (SELECT version FROM listing_version WHERE id = 0 AND $5) AS version,
    $4 AND EXISTS (
        SELECT 1 FROM entities WHERE next_expiry IS NOT NULL AND next_expiry <= $3 AND tenant = $2
    ) AS stale
"""


def _feed(pager: Pager, documents: list[Entity]) -> bool:
    """Offer documents until the pager has enough; False once it has."""
    return all(pager.offer(document) for document in documents)


POINT_READ = "SELECT doc, next_expiry FROM entities WHERE tenant = $1 AND id = $2"


class PostgresStore(
    PostgresWrites,
    PostgresGrid,
    PostgresCatalog,
    PostgresTemporal,
    PostgresIdentity,
    PostgresPolicies,
    PostgresAudit,
    PostgresSnapshots,
    PostgresDataspace,
    PostgresImportRuns,
):
    throttles_in_store = True  # several workers: throttling is decided on the subscription's row (outbox.py)
    _exclusive: dict[tuple[str, str], asyncio.Lock] | None = None

    @contextlib.asynccontextmanager
    async def exclusive(self, tenant: str, name: str) -> AsyncIterator[None]:
        """A transaction of its own holds an advisory lock on (tenant, name) while the block runs
        (released at its end, or by the server if the connection is lost; a wait is bounded by
        lock_timeout, the busy timeout). The callers of one process queue on a lock of its own
        first, so that waiting for it takes one pooled connection per process, not one each."""
        if self._exclusive is None:
            self._exclusive = {}
        local = self._exclusive.setdefault((tenant, name), asyncio.Lock())
        async with local, self._transaction() as connection:
            await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{tenant}|{name}")
            yield

    def __init__(
        self,
        dsn: str,
        *,
        query_timeout: float = 10.0,
        pool_size: int = 10,
        busy_timeout: float = 5.0,
        client_share: int = 0,
        durability: str = "normal",
    ) -> None:
        self.dsn = dsn
        self.durability = durability
        self.query_timeout = query_timeout
        self.busy_timeout = busy_timeout
        self._fair = FairShare(client_share)  # queries of one client hold at most this many connections
        self.pool_size = pool_size
        self._lane = Lane(lane_size(pool_size))  # connections lent without the pool's acquire (lane.py)
        self.worker_id = uuid.uuid4().hex  # this process's name in outbox claims and events
        self._pool: asyncpg.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # change listeners by name (subscriptions, history), replaced whole so a running call sees a snapshot
        self._listeners: dict[str, tuple[ChangeListener, Callable[[], None] | None]] = {}
        # listeners and query predicates run here, one at a time, as on SQLite's writer thread
        self._sync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cityos-pg-sync")
        self._events = EventFollower(dsn, self.worker_id)
        self._events.listener = self._on_event
        self._event_listener: EventListener | None = None
        self.registrations_kept = RegistrationCache()
        self._refresher: Callable[[list[SubscriptionRow]], Awaitable[None]] | None = None
        self._subscriptions_seen = -1  # the catalogue version the refresher last loaded
        self._refreshing = asyncio.Lock()
        self._tenants_made: set[str] = set()  # writes.py
        self._anchors: dict[tuple[str, str], Anchors] = {}  # type listings' offset anchors (tenant, type)

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    async def open(self) -> None:
        """Connect and check the schema version; the schema itself is changed only by `cityos db upgrade`."""
        pool = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            server_settings=session_settings(self.busy_timeout, self.durability),
            reset=_keep_session,
        )
        try:
            async with pool.acquire() as connection:
                await require_current(connection, self.dsn)
                self._events.channel = channel_for(await connection.fetchval("SELECT current_schema()"))
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        self._lane = Lane(lane_size(self.pool_size))
        self._loop = asyncio.get_running_loop()
        await self._start_worker()
        await self._start_sealer()
        self._events.start()

    async def close(self) -> None:
        await self._events.stop()
        if self._pool is not None:
            await self._stop_sealer()
            await self._stop_worker()
            await self._lane.close(self._pool)
            try:  # connections still busy after this long are cut: a stop must not hang
                await asyncio.wait_for(self._pool.close(), POOL_CLOSE_SECONDS)
            except TimeoutError:
                log.warning("closing the database pool took over %s s; its connections were cut", POOL_CLOSE_SECONDS)
                self._pool.terminate()
            self._pool = None
        self._sync_pool.shutdown(wait=False)

    async def health(self, timeout: float) -> dict[str, bool | str]:
        checks: dict[str, bool | str] = {}
        try:
            async with asyncio.timeout(timeout), self.pool.acquire() as connection:
                version = await schema_version(connection)
            checks["database"] = True if version == LATEST else f"schema version {version}, not {LATEST}"
        except TimeoutError:
            checks["database"] = f"no connection within {timeout} s"
        except Exception as exc:  # a refused or cut connection, a closed pool
            checks["database"] = f"unreachable: {exc}"
        beating = self._heartbeat_task
        # the worker's heartbeat keeps its outbox claims and lanes (outbox.py): writes need no thread here
        checks["writer"] = True if beating is not None and not beating.done() else "the worker heartbeat stopped"
        return checks

    def set_change_listener(
        self, listener: ChangeListener | None, wake: Callable[[], None] | None, *, name: str = "subscriptions"
    ) -> None:
        listeners = {k: v for k, v in self._listeners.items() if k != name}
        if listener is not None:
            listeners[name] = (listener, wake)
        self._listeners = listeners

    def set_event_listener(self, listener: EventListener | None) -> None:
        self._event_listener = listener

    def _on_event(self, event: StoreEvent) -> None:
        """Another worker's write: the store's own caches first, then the app's listener."""
        if event.kind in (REGISTRATION_EVENT, RESYNC):
            self.registrations_kept.forget(event.tenant if event.kind == REGISTRATION_EVENT else None)
        if self._event_listener is not None:
            self._event_listener(event)

    def set_catalog_refresher(self, refresher: Callable[[list[SubscriptionRow]], Awaitable[None]] | None) -> None:
        self._refresher = refresher
        self._subscriptions_seen = -1

    async def publish(self, event: StoreEvent) -> None:
        async def work(connection: Connection) -> None:
            await self._notify(connection, event)

        await self._write(work)

    async def _notify(self, connection: Connection, event: StoreEvent) -> None:
        """Tell the other workers, when this transaction commits; a subscription created, changed
        or deleted also bumps the catalogue version that writes check (_fresh_subscriptions)."""
        await notify(connection, self._events.channel, self.worker_id, event)
        if event.kind == "subscription":
            version: int = await connection.fetchval(
                "UPDATE catalog_versions SET version = version + 1 WHERE name = 'subscriptions' RETURNING version"
            )
            if version == self._subscriptions_seen + 1:  # nobody else changed them: this worker's caches
                self._subscriptions_seen = version  # are updated by its own write (a rollback costs a reload)

    async def _fresh_subscriptions(self, connection: Connection, version: int | None = None) -> None:
        """Inside a write, before its changes are matched: reload the subscriptions if any was
        created, changed or deleted (by any worker) since the last reload. The version is read in
        this transaction (or given, read by the write's own statement after its locks), so every
        subscription committed before it is matched."""
        refresher = self._refresher
        if refresher is None:
            return
        if version is None:
            version = await connection.fetchval("SELECT version FROM catalog_versions WHERE name = 'subscriptions'")
        if version == self._subscriptions_seen:
            return
        async with self._refreshing:
            if version != self._subscriptions_seen:
                # read through this transaction's connection: waiting for another one from the
                # pool while holding this one could starve the pool
                await refresher(await subscription_rows(connection))
                self._subscriptions_seen = max(version, self._subscriptions_seen)

    def _block_on(self, coroutine: Any) -> Any:
        """Run a coroutine on the store's event loop from one of its threads, and wait for it."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the store is not open")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coroutine.close()
            raise RuntimeError("a synchronous store read was called on the event loop thread")
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(self.query_timeout)

    # -- tenants and entities --------------------------------------------------------------------
    async def refresh_statistics(self) -> None:
        """ANALYZE the tables queries filter on (a partitioned table's months included); VACUUM the
        geo boxes and the q values too, whose visibility maps let a map tile's grid read their
        indexes alone (grid.py: after a load of 100,000 entities, without it, every index entry
        visits the heap, 4-6 times the time of a zoom-10 tile)."""
        await self.pool.execute("ANALYZE entities, temporal_entities, temporal_instances", timeout=600)
        await self.pool.execute("VACUUM (ANALYZE) entity_geo, attr_values", timeout=600)

    @read_again_once
    async def tenant_exists(self, tenant: str) -> bool:
        if tenant == "":
            return True
        found = await self.pool.fetchval("SELECT 1 FROM tenants WHERE name = $1", tenant)
        return found is not None

    @read_again_once
    async def get_entity(self, tenant: str, entity_id: str) -> Entity | None:
        row = await self._lane.fetchrow(self.pool, POINT_READ, tenant, entity_id)
        return visible_at(orjson.loads(row[0]), row[1]) if row is not None else None

    @read_again_once
    async def get_stored(self, tenant: str, entity_id: str) -> bytes | Entity | None:
        """The json column's text as UTF-8 when nothing in it has expired (the rule of _stored)."""
        row = await self._lane.fetchrow(self.pool, POINT_READ, tenant, entity_id)
        return None if row is None else stored_form(row[0], row[1], now_key())

    decode_stored = staticmethod(decode)

    # -- queries -----------------------------------------------------------------------------------
    def lookup_in_query(self, tenant: str, entity_id: str) -> Entity | None:
        """Called by query predicates, which run on the store's sync thread (never on the loop)."""
        found: Entity | None = self._block_on(self.get_entity(tenant, entity_id))
        return found

    @read_again_once
    async def query_entities(self, tenant: str, query: EntityQuery) -> QueryResult:
        now = now_key()
        query = id_pattern_in_python(query)  # PostgreSQL's regex dialect gets only what it reads as RE2 does
        query = access_in_python(matches_in_python(query))
        exact = exact_in_sql(query)  # before bounded() wraps the predicate
        in_sql = dataclasses.replace(query, predicate=None)
        query = bounded(query, self.query_timeout)  # the Python half stops at the deadline too
        fresh_rows_needed = query.attrs is not None or bool(query.value_filters) or query.geo is not None
        listed = listed_type(in_sql) if exact else None
        anchored = (
            listed is not None and in_sql.limit is not None and (in_sql.offset >= 2 * ANCHOR_STEP or in_sql.count)
        )
        p = Params()
        condition = where(tenant, query, now, p)
        cached = self._anchors.get((tenant, listed)) if anchored and listed is not None else None
        # one statement when nothing needs to be read first: not a shape test the Python predicate
        # must make, and (offsets over a listing) anchors to seek from
        at_once = exact and (query.geo is None or near_point(query.geo)) and (cached is not None or not anchored)
        try:
            async with (
                self._fair.slot(),  # before the timeout: waiting for one's own earlier queries is not counted
                asyncio.timeout(self.query_timeout),  # cancels the statement in the server too (asyncpg)
                self._lane.lease(self.pool) as connection,
            ):
                if at_once:
                    page = await page_at_once(
                        connection,
                        tenant,
                        condition,
                        p.values,
                        in_sql,
                        now=now,
                        check_stale=fresh_rows_needed or anchored,
                        anchors=cached,
                    )
                    if page is not None:
                        return page
                async with connection.transaction(readonly=True):
                    return await self._query_in_transaction(
                        connection, tenant, query, in_sql, condition, p, now, listed, exact=exact, anchored=anchored
                    )
        except (TimeoutError, asyncpg.QueryCanceledError) as exc:
            raise QueryTimeout(f"the query took longer than {self.query_timeout} s") from exc
        except asyncpg.InvalidRegularExpressionError as exc:
            raise BadRequestData(f"idPattern is not a valid regular expression: {exc}") from exc

    async def _query_in_transaction(
        self,
        connection: Connection,
        tenant: str,
        query: EntityQuery,
        in_sql: EntityQuery,
        condition: str,
        p: Params,
        now: str,
        listed: str | None,
        *,
        exact: bool,
        anchored: bool,
    ) -> QueryResult:
        """The query statement by statement in a read-only transaction: what decides how it runs is
        read first (_FIRST), then the page in SQL or the Python-filtered cursor."""
        fresh_rows_needed = query.attrs is not None or bool(query.value_filters) or query.geo is not None
        # one round trip: the statement timeout, and what decides how the query runs
        first = await connection.fetchrow(
            _FIRST,
            f"{int(self.query_timeout * 1000)}",
            tenant,
            now,
            exact and (fresh_rows_needed or anchored),
            anchored,
        )
        assert first is not None
        stale = bool(first["stale"])
        if exact and not (fresh_rows_needed and stale) and not await geo_in_python(connection, query):
            anchors = None
            if listed is not None and anchored and not stale:
                anchors = await self._anchors_of(connection, tenant, listed, first["version"], condition, p)
            return await page_in_sql(connection, condition, p.values, in_sql, anchors)
        pager = Pager(query, now)
        sql = f"SELECT e.doc FROM entities e WHERE {condition} ORDER BY e.pk"
        cursor = await connection.cursor(sql, *p.values)
        loop = asyncio.get_running_loop()
        while records := await cursor.fetch(_CURSOR_PREFETCH):
            documents = [orjson.loads(record["doc"]) for record in budget.checked(records)]
            if query.predicate is None:
                more = _feed(pager, documents)
            else:  # it may call lookup_in_query, which needs this loop free
                more = await loop.run_in_executor(self._sync_pool, _feed, pager, documents)
            if not more or len(records) < _CURSOR_PREFETCH:
                break
        return pager.result()

    async def _anchors_of(
        self, connection: Connection, tenant: str, listed: str, version: int, condition: str, p: Params
    ) -> Anchors:
        """The anchors of a listing at `version` (read in this transaction), built from this
        snapshot when the cached ones are older: the key at every ANCHOR_STEP-th position, and the
        total, in one statement that sends only those keys."""
        key = (tenant, listed)
        anchors = self._anchors.get(key)
        if anchors is not None and anchors.version == version:
            return anchors
        rows = await connection.fetch(
            "SELECT pk, total FROM (SELECT e.pk, row_number() OVER (ORDER BY e.pk) - 1 AS n,"
            f" count(*) OVER () AS total FROM entities e WHERE {condition}) r"
            f" WHERE r.n % {ANCHOR_STEP} = 0 ORDER BY r.pk",
            *p.values,
        )
        anchors = Anchors(version, [row["pk"] for row in rows], rows[0]["total"] if rows else 0)
        if len(self._anchors) > 256:  # tenants x types listed with offsets: keep it bounded
            self._anchors.clear()
        self._anchors[key] = anchors
        return anchors

    # -- hosted @contexts --------------------------------------------------------------------------
    async def save_context(self, row: StoredContextRow) -> None:
        async def work(connection: Connection) -> None:
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
            await self._notify(connection, StoreEvent("context", row.tenant, row.local_id))

        await self._write(work)

    async def delete_context(self, tenant: str, local_id: str) -> None:
        async def work(connection: Connection) -> None:
            await connection.execute(
                "DELETE FROM jsonld_contexts WHERE tenant = $1 AND local_id = $2", tenant, local_id
            )
            await self._notify(connection, StoreEvent("context", tenant, local_id))

        await self._write(work)

    @read_again_once
    async def load_contexts(self) -> list[StoredContextRow]:
        rows = await self.pool.fetch("SELECT tenant, local_id, kind, doc, created_at FROM jsonld_contexts ORDER BY seq")
        return [
            StoredContextRow(r["tenant"], r["local_id"], r["kind"], orjson.loads(r["doc"]), r["created_at"])
            for r in rows
        ]
