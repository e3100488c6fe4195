"""The embedded back-end: one SQLite file in WAL mode, one writer thread, a pool of reader threads.

Writes are serialised through a single-thread executor (SQLite allows one writer anyway), each
call one transaction; reads run on their own connections in parallel. Entity documents are stored
deflated (store/sqlite_layout.py), with side tables for the pushed-down filters: types, attribute
names and values (interned, sqlite_layout.SIDE_SCHEMA) and an R*Tree of GeoProperty bounding boxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import orjson

from cityos.audit.chain import AuditRow
from cityos.entities.expiry import now_key, visible_at
from cityos.entities.model import Entity
from cityos.errors import DatabaseBusy, QueryTimeout
from cityos.query import budget
from cityos.query.patterns import found
from cityos.store.base import (
    ChangeListener,
)
from cityos.store.fair import FairShare
from cityos.store.registration_cache import RegistrationCache
from cityos.store.sqlite_audit import AUDIT_SCHEMA, SQLiteAudit, seal_into
from cityos.store.sqlite_catalog import SQLiteCatalog
from cityos.store.sqlite_checkpoint import BACKSTOP_PAGES, Checkpointer
from cityos.store.sqlite_dataspace import DATASPACE_SCHEMA, SQLiteDataspace
from cityos.store.sqlite_downsample import SQLiteDownsample
from cityos.store.sqlite_grid import SQLiteGrid
from cityos.store.sqlite_history import Names, TimeCodec, instance_prefix
from cityos.store.sqlite_identity import IDENTITY_SCHEMA, SQLiteIdentity
from cityos.store.sqlite_import_runs import IMPORT_RUNS_SCHEMA, SQLiteImportRuns
from cityos.store.sqlite_layout import inflate, register
from cityos.store.sqlite_policies import POLICY_SCHEMA, SQLitePolicies
from cityos.store.sqlite_query import SQLiteQueries, create_query_schema, decode, register_geo_functions, stored_form
from cityos.store.sqlite_retention import SQLiteRetention
from cityos.store.sqlite_schema import upgrade as upgrade_schema
from cityos.store.sqlite_snapshots import SNAPSHOT_SCHEMA, SQLiteSnapshots
from cityos.store.sqlite_temporal import TEMPORAL_SCHEMA, SQLiteTemporal
from cityos.store.sqlite_writes import SQLiteWrites

T = TypeVar("T")
logger = logging.getLogger(__name__)
SCHEMA_VERSION = 2
CHECKPOINT_BUSY_TIMEOUT = 0.1  # seconds the checkpoint thread's connection waits for a lock
LOOP_BUSY_TIMEOUT = 0.0  # the event loop's connection never waits for a lock (SQLiteStore._point)
POINT_READ = "SELECT doc, next_expiry FROM entities WHERE tenant = ? AND id = ?"
SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entities (
    pk INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    doc BLOB NOT NULL,
    modified_at TEXT NOT NULL,
    expires_at TEXT,    -- the entity's own expiresAt (normalized UTC), for exact visibility in SQL
    next_expiry TEXT,   -- the earliest expiresAt of the entity or any attribute, for the sweeper
    UNIQUE (tenant, id)
);
CREATE INDEX IF NOT EXISTS entities_expiry ON entities (next_expiry) WHERE next_expiry IS NOT NULL;
CREATE VIRTUAL TABLE IF NOT EXISTS entity_geo USING rtree (gid, min_x, max_x, min_y, max_y);
CREATE TABLE IF NOT EXISTS entity_geo_attrs (  -- attr: the interned IRI (temporal_names), as in entity_geo_walk
    gid INTEGER PRIMARY KEY, pk INTEGER NOT NULL, attr INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entity_geo_attrs_pk ON entity_geo_attrs (pk);
CREATE TABLE IF NOT EXISTS jsonld_contexts (
    tenant TEXT NOT NULL, local_id TEXT NOT NULL, kind TEXT NOT NULL, doc BLOB NOT NULL,
    created_at TEXT NOT NULL, PRIMARY KEY (tenant, local_id)
);
CREATE TABLE IF NOT EXISTS entity_maps (
    tenant TEXT NOT NULL, id TEXT NOT NULL,
    expires_at TEXT NOT NULL,  -- normalized UTC (entity_maps.expiry_key), compared by the sweeper
    entity_ids BLOB NOT NULL,  -- orjson array, in the order the query returned them
    query TEXT NOT NULL,       -- the query string that selected them
    owner TEXT,                -- the principal that made it (NULL with auth off)
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS entity_maps_expiry ON entity_maps (expires_at);
CREATE TABLE IF NOT EXISTS subscriptions (
    pk INTEGER PRIMARY KEY, tenant TEXT NOT NULL, id TEXT NOT NULL, doc BLOB NOT NULL, status BLOB NOT NULL,
    UNIQUE (tenant, id)
);
CREATE TABLE IF NOT EXISTS outbox (  -- notifications owed, written in the transaction of their change
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, subscription_id TEXT NOT NULL, lane TEXT NOT NULL,
    payload BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, claimed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_unclaimed ON outbox (id) WHERE claimed = 0;
CREATE INDEX IF NOT EXISTS outbox_subscription ON outbox (tenant, subscription_id);
CREATE TABLE IF NOT EXISTS registrations (  -- context source registrations (spec 5.9)
    pk INTEGER PRIMARY KEY, tenant TEXT NOT NULL, id TEXT NOT NULL, doc BLOB NOT NULL, UNIQUE (tenant, id)
);
CREATE TABLE IF NOT EXISTS ingest_records (  -- IoT Agent service groups and devices
    pk INTEGER PRIMARY KEY, kind TEXT NOT NULL, tenant TEXT NOT NULL, key TEXT NOT NULL, doc BLOB NOT NULL,
    UNIQUE (kind, tenant, key)
);
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
"""
    + AUDIT_SCHEMA
)  # the audit trail's tables (sqlite_audit.py)


MAX_GROUP = 64  # writes committed together at most
# MiB of pages each connection keeps (the sqlite_*_cache_mb settings). A miss is a pread from the
# operating system's file cache (a few µs): a reader's cache only has to hold the indexes' inner
# pages, and 4 MiB read as fast as 32 at 100,000 entities (docs/performance.md, issue 15 fourth pass);
# 128 MiB for the writer saved 3 reads per update at 100,000, about 10 µs of 500: not worth 96 MiB
WRITER_CACHE_MB = 16  # issue 15, sixth pass: with the readers' and the render cache's, under 300 MB at 1M
READER_CACHE_MB = 4


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _settle_all(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in outcomes:
        _settle(future, value, error)


def _connect(
    path: str, busy_timeout: float, durability: str = "normal", cache_mb: int = READER_CACHE_MB
) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
    connection.execute("PRAGMA journal_mode=WAL")
    # the durability setting (docs/deployment.md): NORMAL survives a killed process, FULL also a power
    # loss (an fsync of the WAL at every commit)
    connection.execute("PRAGMA synchronous=FULL" if durability == "full" else "PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    connection.execute(f"PRAGMA cache_size={-1024 * cache_mb}")  # negative: KiB
    connection.execute("PRAGMA temp_store=MEMORY")
    register(connection)  # doc_json(), SQL's view of a stored document
    return connection


def _is_busy(error: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (any extended code): another connection holds the lock."""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(error, sqlite3.OperationalError) and code is not None and code & 0xFF in (5, 6)


def _translated(error: BaseException, path: str, busy_timeout: float) -> BaseException:
    """A lock that was not free in time becomes DatabaseBusy (a 503); anything else stays."""
    if _is_busy(error):
        busy = DatabaseBusy(
            f"the database {path} is busy or locked by another connection (waited {busy_timeout:g} s)",
            retry_after=busy_timeout,
        )
        busy.__cause__ = error
        return busy
    return error


def _regexp(pattern: str, value: str | None) -> bool:
    """idPattern pushed into SQL, matched with RE2 (query/patterns.py) like everywhere else: linear
    time, so a pattern cannot hang a reader (validated before the query reaches the store)."""
    return value is not None and found(pattern, value)


class SQLiteStore(
    SQLiteQueries,
    SQLiteGrid,
    SQLiteCatalog,
    SQLiteWrites,
    SQLiteTemporal,
    SQLiteRetention,
    SQLiteDownsample,
    SQLiteIdentity,
    SQLitePolicies,
    SQLiteAudit,
    SQLiteSnapshots,
    SQLiteDataspace,
    SQLiteImportRuns,
):
    throttles_in_store = False  # one process: the matcher's in-memory throttle sees every notification
    _exclusive: dict[tuple[str, str], asyncio.Lock] | None = None

    @contextlib.asynccontextmanager
    async def exclusive(self, tenant: str, name: str) -> AsyncIterator[None]:
        """One process serves a SQLite file (workers need PostgreSQL): a lock of this process's."""
        if self._exclusive is None:
            self._exclusive = {}
        lock = self._exclusive.setdefault((tenant, name), asyncio.Lock())
        try:
            async with asyncio.timeout(self.busy_timeout):
                await lock.acquire()
        except TimeoutError:
            raise DatabaseBusy(
                f"the database is busy: {name} stayed locked for {self.busy_timeout:g} s", retry_after=self.busy_timeout
            ) from None
        try:
            yield
        finally:
            lock.release()

    def __init__(
        self,
        path: str,
        *,
        readers: int = 4,
        query_timeout: float = 10.0,
        busy_timeout: float = 5.0,
        client_share: int = 0,
        durability: str = "normal",
        writer_cache_mb: int = WRITER_CACHE_MB,
        reader_cache_mb: int = READER_CACHE_MB,
    ) -> None:
        self.path = path
        self.registrations_kept = RegistrationCache()  # one process writes the file (docs/deployment.md)
        self.writer_cache_mb = writer_cache_mb
        self.reader_cache_mb = reader_cache_mb  # also the loop's reader and the checkpointer
        self.durability = durability  # "normal" or "full": PRAGMA synchronous of every connection
        self.query_timeout = query_timeout
        self.busy_timeout = busy_timeout  # seconds a statement waits for a lock another connection holds
        self._fair = FairShare(client_share)  # queries of one client hold at most this many readers
        self._writer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cityos-writer")
        # its connection never waits for the writer's lock: a checkpoint that finds it busy is skipped
        self._checkpointer = Checkpointer(lambda: _connect(path, CHECKPOINT_BUSY_TIMEOUT, durability, reader_cache_mb))
        self._reader_pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="cityos-reader")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        # change listeners by name (subscriptions, history), replaced whole so the writer sees a snapshot
        self._listeners: dict[str, tuple[ChangeListener, Callable[[], None] | None]] = {}
        self._to_wake: list[Callable[[], None]] = []  # set on the writer thread: wakes owed after commit
        self._after_commit: list[Callable[[], None]] = []  # writer thread: the listeners' AfterCommit calls
        self._audit_rows: list[AuditRow] = []  # writer thread: this transaction's rows, sealed before COMMIT
        self._start_buffer()  # writer thread: side, outbox and history rows to drain (sqlite_writes.py)
        self._names = Names()  # interned history names, as readers see them (sqlite_history.py)
        self._wnames = Names(writer=True)
        self._times = TimeCodec()
        self._instance_prefix = ""  # set at open
        # (write, its future, groupable, when it was queued, the submitting request's context)
        self._pending: list[
            tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], bool, float, contextvars.Context]
        ] = []
        self._pending_lock = threading.Lock()
        self.on_group: Callable[[int], None] | None = None  # told each group's size (the metrics)
        self._loop_connection: sqlite3.Connection | None = None
        self._flushing = False
        self._anchors = {}  # listing positions by (tenant, type) (sqlite_query.py)
        self._anchors_lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = _connect(self.path, self.busy_timeout, self.durability, self.reader_cache_mb)
            connection.create_function("regexp", 2, _regexp, deterministic=True)
            register_geo_functions(connection)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            try:
                return fn(self._reader())
            except sqlite3.OperationalError as exc:
                raise _translated(exc, self.path, self.busy_timeout) from exc

        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, run)

    async def _write(self, fn: Callable[[sqlite3.Connection], T], *, groupable: bool = True) -> T:
        """Run `fn` in a write transaction. Writes that queue up while one transaction runs are
        committed together (group commit), each in its own savepoint: a failing write is rolled
        back alone, and every caller is answered only after the commit that holds its write. `fn`
        runs in a copy of the caller's context, so the audit rows it makes name the request's
        principal and request id."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._pending_lock:
            self._pending.append((fn, future, groupable, time.monotonic(), contextvars.copy_context()))
            start = not self._flushing
            self._flushing = True
        if start:  # the writer answers through `future`: nothing awaits the pool's own future
            self._writer_pool.submit(self._flush_logged, loop)
        result: T = await future
        return result

    def queue_depth(self) -> int:
        """Writes waiting for the writer thread (the metrics' writer queue depth)."""
        return len(self._pending)

    def _flush_logged(self, loop: asyncio.AbstractEventLoop) -> None:
        """The commit loop ends only by returning; an error out of it (a bug) is logged, not lost
        (logged here: a done-callback on the pool's future cost every flush two more lock rounds)."""
        try:
            self._flush(loop)
        except BaseException:
            logger.exception("the SQLite writer stopped")
            raise

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Writer thread: commit every pending write in one transaction, then answer them."""
        while True:
            with self._pending_lock:
                if not self._pending:
                    self._flushing = False
                    return
                # small writes share a transaction; a large one (a batch) has its own, since
                # savepoints nested around thousands of others cost time and memory
                count = 1
                if self._pending[0][2]:
                    while count < min(MAX_GROUP, len(self._pending)) and self._pending[count][2]:
                        count += 1
                jobs = [(fn, future, context) for fn, future, _, _, context in self._pending[:count]]
                self._pending = self._pending[count:]
            if self.on_group is not None:
                self.on_group(count)
            assert self._writer is not None
            connection = self._writer
            outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            self._to_wake = []
            audit = self._audit_rows = []
            after = self._after_commit = []
            alone = len(jobs) == 1  # no savepoint needed: a failure rolls back the transaction
            try:
                connection.execute("BEGIN IMMEDIATE")
                for number, (fn, future, context) in enumerate(jobs):
                    if not alone:
                        connection.execute(f"SAVEPOINT job{number}")
                    mark, after_mark = len(audit), len(after)
                    try:
                        value = context.run(fn, connection)
                        self._drain(connection)  # the rows it buffered, in its savepoint
                        outcomes.append((future, value, None))
                    except Exception as refused:  # this write alone is undone
                        connection.execute("ROLLBACK" if alone else f"ROLLBACK TO job{number}")
                        del audit[mark:], after[after_mark:]
                        self._forget()
                        outcomes.append((future, None, _translated(refused, self.path, self.busy_timeout)))
                    if not alone:
                        connection.execute(f"RELEASE job{number}")
                if connection.in_transaction:
                    if audit:  # the writes' audit records, chained in the same transaction
                        seal_into(connection, audit)
                    connection.execute("COMMIT")
                    self._checkpointer.written()
                self._forget(committed=True)
            except BaseException as failure:  # the transaction itself failed: nobody's write stands
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                self._forget()
                after.clear()
                failure = _translated(failure, self.path, self.busy_timeout)
                outcomes = [(future, None, failure) for _, future, _ in jobs]
                if isinstance(failure, DatabaseBusy):
                    outcomes += [(future, None, failure) for future in self._expired_waits()]
            for wake in self._to_wake:
                wake()
            for call in after:  # committed (a failed group cleared them): before its writers resume
                call()
            loop.call_soon_threadsafe(_settle_all, outcomes)  # one wake-up of the loop per group

    def _expired_waits(self) -> list[asyncio.Future[Any]]:
        """After the lock was not free in time: the queued writes that have waited as long as
        that already, taken off the queue, so a burst of writes is not refused one group at a time."""
        cutoff = time.monotonic() - self.busy_timeout
        with self._pending_lock:
            expired = [future for _, future, _, queued, _ in self._pending if queued <= cutoff]
            self._pending = [job for job in self._pending if job[3] > cutoff]
        return expired

    async def open(self) -> None:
        def setup() -> None:
            try:
                connection = _connect(self.path, self.busy_timeout, self.durability, self.writer_cache_mb)
                upgrade_schema(connection, self._wnames)  # versioned migrations (sqlite_schema.py)
                self._instance_prefix = instance_prefix(connection)
                connection.executescript(SCHEMA)
                connection.executescript(TEMPORAL_SCHEMA)
                connection.executescript(POLICY_SCHEMA)  # additive: older files gain the table
                connection.executescript(DATASPACE_SCHEMA)  # additive, as the policies'
                connection.executescript(IDENTITY_SCHEMA)
                connection.executescript(SNAPSHOT_SCHEMA)  # additive: older files gain the table
                connection.executescript(IMPORT_RUNS_SCHEMA)  # additive, as the snapshots'
                if "owner" not in {row[1] for row in connection.execute("PRAGMA table_info(entity_maps)")}:
                    connection.execute("ALTER TABLE entity_maps ADD COLUMN owner TEXT")  # files made before owners
                create_query_schema(connection)  # additive: older files gain the listing index
                row = connection.execute("SELECT version FROM schema_version").fetchone()
                if row is None:
                    connection.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            except sqlite3.OperationalError as exc:
                raise _translated(exc, self.path, self.busy_timeout) from exc
            if row is not None and row[0] != SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {row[0]}; this CityOS uses {SCHEMA_VERSION}. "
                    "Start from a new database file (migrations arrive with `cityos db upgrade`)."
                )
            connection.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")  # the checkpointer does it
            self._tenants = set()  # the writer's tenants of this file (sqlite_writes.py)
            self._writer = connection

        await asyncio.get_running_loop().run_in_executor(self._writer_pool, setup)
        self._checkpointer.start()

    async def close(self) -> None:
        def close_all() -> None:
            with self._lock:
                for connection in self._connections:
                    connection.close()
                self._connections.clear()
                self._loop_connection = None
            if self._writer is not None:
                self._writer.close()
                self._writer = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._checkpointer.stop)
        # reads still running (a cancelled task's query goes on in its thread) are interrupted and
        # end before their connections close: closing a connection another thread is reading from
        # crashes the process (tests/test_store_close_while_reading.py)
        stopped = loop.run_in_executor(None, partial(self._reader_pool.shutdown, wait=True, cancel_futures=True))
        while not stopped.done():  # an interrupt between two statements of a read is lost: again
            with self._lock:
                for connection in self._connections:
                    connection.interrupt()
            await asyncio.wait([stopped], timeout=0.05)
        await loop.run_in_executor(self._writer_pool, close_all)
        self._writer_pool.shutdown(wait=True)

    async def health(self, timeout: float) -> dict[str, bool | str]:
        checks: dict[str, bool | str] = {}
        try:
            async with asyncio.timeout(timeout):
                row = await self._read(lambda c: c.execute("SELECT version FROM schema_version").fetchone())
            version = None if row is None else row[0]
            checks["database"] = (
                True if version == SCHEMA_VERSION else f"schema version {version}, not {SCHEMA_VERSION}"
            )
        except TimeoutError:
            checks["database"] = f"no answer within {timeout} s"
        except Exception as exc:  # whatever stops a read is the answer
            checks["database"] = f"unreachable: {exc}"
        try:  # the writer thread answers between two group commits
            async with asyncio.timeout(timeout):
                open_ = await asyncio.wrap_future(self._writer_pool.submit(lambda: self._writer is not None))
            checks["writer"] = True if open_ else "the writer's connection is closed"
        except TimeoutError:
            checks["writer"] = f"the writer thread did not answer within {timeout} s"
        except RuntimeError as exc:  # submit after shutdown
            checks["writer"] = f"the writer thread is stopped: {exc}"
        return checks

    # -- tenants and entities --------------------------------------------------------------------
    async def refresh_statistics(self) -> None:
        await self._write(lambda c: c.execute("PRAGMA optimize"), groupable=False)

    async def tenant_exists(self, tenant: str) -> bool:
        if tenant == "":
            return True
        return await self._read(
            lambda c: c.execute("SELECT 1 FROM tenants WHERE name = ?", (tenant,)).fetchone() is not None
        )

    async def get_entity(self, tenant: str, entity_id: str) -> Entity | None:
        row = await self._point(tenant, entity_id)
        return visible_at(orjson.loads(inflate(row[0])), row[1]) if row else None

    async def get_stored(self, tenant: str, entity_id: str) -> bytes | Entity | None:
        row = await self._point(tenant, entity_id)
        return None if row is None else stored_form(row[0], row[1], now_key())

    decode_stored = staticmethod(decode)

    async def _point(self, tenant: str, entity_id: str) -> tuple[Any, str | None] | None:
        """An entity's row by its key. A primary-key read takes microseconds: on the event loop's own
        connection it costs less than the hand-off to a reader thread. That connection never waits
        for a lock (busy timeout 0; a WAL reader is not blocked by the writer, only by rare events
        such as another process's exclusive lock or a WAL recovery): a busy read is done again on a
        reader thread, which waits busy_timeout as every read does, so the loop never blocks."""
        try:
            row: tuple[Any, str | None] | None = self._loop_reader().execute(POINT_READ, (tenant, entity_id)).fetchone()
            return row
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        return await self._read(lambda c: c.execute(POINT_READ, (tenant, entity_id)).fetchone())

    def _loop_reader(self) -> sqlite3.Connection:
        if self._loop_connection is None:
            self._loop_connection = _connect(self.path, LOOP_BUSY_TIMEOUT, self.durability, self.reader_cache_mb)
            self._loop_connection.create_function("regexp", 2, _regexp, deterministic=True)  # query pages
            register_geo_functions(self._loop_connection)
            with self._lock:
                self._connections.append(self._loop_connection)
        return self._loop_connection

    async def _read_with_deadline(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read that SQLite aborts once query_timeout has passed (QueryTimeout), holding one of the
        client's fair share of readers (store/fair.py)."""
        timeout = self.query_timeout
        request_end = budget.deadline()  # the request's budget (query/budget.py) may end sooner

        def run(connection: sqlite3.Connection) -> T:
            deadline = time.monotonic() + timeout
            if request_end is not None:
                deadline = min(deadline, request_end)
            connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
            try:
                return fn(connection)
            except sqlite3.OperationalError as exc:
                if "interrupted" in str(exc):
                    raise QueryTimeout(f"the query took longer than {timeout} s") from exc
                raise
            finally:
                connection.set_progress_handler(None, 0)

        async with self._fair.slot():
            return await self._read(run)

    def set_change_listener(
        self, listener: ChangeListener | None, wake: Callable[[], None] | None, *, name: str = "subscriptions"
    ) -> None:
        listeners = {k: v for k, v in self._listeners.items() if k != name}
        if listener is not None:
            listeners[name] = (listener, wake)
        self._listeners = listeners
