"""Write transactions that give up when the database is busy, and survive a lost connection.

Busy: a pool with no free connection, or a lock (a row lock, an entity's advisory lock) held by
another transaction for longer than the db_busy_timeout setting (PostgreSQL's lock_timeout, set on
every pooled connection). Both become DatabaseBusy, the 503 that SQLite's busy timeout gives too;
the transaction is rolled back whole.

Conflicts: with many connections (and workers) writing at once PostgreSQL may abort a transaction
to break a deadlock, or for a serialization failure. Writes lock entities in id order, so this is
rare, but the side tables can still cross; `_write` runs such a transaction again from the start,
a few times, invisibly to the client.

Lost connections: a backend ended by the server (pg_terminate_backend, a restart, a failover)
fails the statement that was running on it. A read is run once more on a fresh connection
(`read_again_once`), and so is a write whose transaction had not started to commit; if the second
try fails too, or the connection went while committing (the write may or may not be applied),
the answer is DatabaseUnavailable: a 503 with Retry-After, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar

import asyncpg

from cityos.errors import DatabaseBusy, DatabaseUnavailable

if TYPE_CHECKING:
    from cityos.store.postgres.lane import Lane
    from cityos.store.postgres.schema import Connection

log = logging.getLogger("cityos.store")


class _Waits(Protocol):
    busy_timeout: float  # seconds; also what a 503's Retry-After says (rounded up)


T = TypeVar("T")
P = ParamSpec("P")
S = TypeVar("S", bound=_Waits)

CONFLICT_ATTEMPTS = 8  # a write aborted for a deadlock or serialization failure is run this often at most
_CONFLICTS = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
_LOST = (
    asyncpg.exceptions.ConnectionDoesNotExistError,  # the connection closed under a statement
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.AdminShutdownError,  # 57P01: pg_terminate_backend, a fast shutdown
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,  # the server is starting or stopping
    ConnectionError,  # a new connection refused or reset
    # asyncpg's protocol state left broken by a server-side termination noticed late (seen at BEGIN
    # on a pooled connection: "cannot switch to state 15; another operation (2) is in progress")
    asyncpg.exceptions.InternalClientError,
)


def session_settings(busy_timeout: float, durability: str = "normal") -> dict[str, str]:
    """The server settings of a pooled connection: lock waits end at the busy timeout. Durability
    "full" asks for synchronous_commit=on, PostgreSQL's own default, even where the server or the
    role turned it off; "normal" keeps what the server is configured with (docs/deployment.md)."""
    settings = {"lock_timeout": f"{max(1, int(busy_timeout * 1000))}ms"}
    if durability == "full":
        settings["synchronous_commit"] = "on"
    return settings


def lost_connection(error: BaseException) -> bool:
    """Whether an error means the database connection is gone (not a fault of the request)."""
    if isinstance(error, _LOST):
        return True
    # asyncpg's "connection is closed" / "connection was closed in the middle of operation"
    return isinstance(error, asyncpg.exceptions.InterfaceError) and "closed" in str(error)


class _LostWhileCommitting(DatabaseUnavailable):
    """The connection was lost during COMMIT: the write may have been applied, so it is not run again."""


def read_again_once(
    method: Callable[Concatenate[S, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
    """For idempotent reads: one more try on a fresh connection when the first one was lost."""

    async def read(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(self, *args, **kwargs)
        except Exception as error:
            if not lost_connection(error):
                raise
            log.warning("a read lost its database connection (%s); trying once more", type(error).__name__)
        try:
            return await method(self, *args, **kwargs)
        except Exception as error:
            if lost_connection(error):
                raise DatabaseUnavailable(
                    "the database connection was lost twice; try again shortly", retry_after=self.busy_timeout
                ) from error
            raise

    functools.update_wrapper(read, method)
    return read


class Transactions:
    """Mixed into PostgresStore (through its catalogue and temporal halves)."""

    busy_timeout: float = 5.0

    if TYPE_CHECKING:
        _lane: Lane

        @property
        def pool(self) -> asyncpg.Pool: ...

    @contextlib.asynccontextmanager
    async def _transaction(self, *, autocommit: bool = False) -> AsyncIterator[Connection]:
        """A pooled connection in a transaction, committed when the block ends without error. A lost
        connection becomes DatabaseUnavailable (with `_write`, the block runs once more first).
        autocommit: no BEGIN/COMMIT, for one idempotent statement (`_write_idempotent`)."""
        committing = False
        try:
            async with self._connection_in_transaction(autocommit=autocommit) as connection:
                yield connection
                committing = True
        except Exception as error:
            if not lost_connection(error):
                raise
            if committing:
                raise _LostWhileCommitting(
                    "the database connection was lost while the write was committing; it may or may not"
                    " have been applied: read it back, or send it again",
                    retry_after=self.busy_timeout,
                ) from error
            raise DatabaseUnavailable(
                "the database connection was lost; nothing was written", retry_after=self.busy_timeout
            ) from error

    @contextlib.asynccontextmanager
    async def _connection_in_transaction(self, *, autocommit: bool = False) -> AsyncIterator[Connection]:
        """A connection of the lane (lane.py) when one is free, else of the pool, in a transaction."""
        try:
            connection, laned = await self._lane.acquire(self.pool, self.busy_timeout)
        except TimeoutError as exc:
            raise DatabaseBusy(
                f"the database is busy: no connection was free within {self.busy_timeout:g} s",
                retry_after=self.busy_timeout,
            ) from exc
        clean = False
        try:
            if autocommit:
                yield connection
            else:
                async with connection.transaction():
                    yield connection
            clean = True
        except asyncpg.exceptions.LockNotAvailableError as exc:
            raise DatabaseBusy(
                f"the database is busy: what the write needs stayed locked by another transaction"
                f" (waited {self.busy_timeout:g} s)",
                retry_after=self.busy_timeout,
            ) from exc
        finally:
            await self._lane.release(self.pool, connection, laned=laned, clean=clean)

    async def _write(self, work: Callable[[Connection], Awaitable[T]], *, autocommit: bool = False) -> T:
        """work(connection) in a transaction, run again from the start (on a fresh connection)
        when PostgreSQL aborted it for a deadlock or a serialization failure (a few times, after a
        short random pause), or when its connection was lost before it started to commit (once).
        work must be safe to run again: everything it did was rolled back. autocommit: work is one
        statement, committed by itself (no BEGIN and COMMIT round trips), whose effect is the same
        when it runs twice: a connection lost under it (before or after its commit) runs it again."""
        conflicts = 0
        lost = 0
        started = time.monotonic()
        while True:
            try:
                async with self._transaction(autocommit=autocommit) as connection:
                    return await work(connection)
            except _CONFLICTS as error:
                conflicts += 1
                if conflicts >= CONFLICT_ATTEMPTS:
                    raise DatabaseBusy(
                        f"the database is busy: the write collided with others {conflicts} times",
                        retry_after=time.monotonic() - started,
                    ) from error
                await asyncio.sleep(random.uniform(0.005, 0.02) * conflicts)
            except DatabaseUnavailable as error:
                lost += 1
                if lost > 1 or isinstance(error, _LostWhileCommitting):
                    raise
                log.warning("a write lost its database connection before committing; running it once more")

    async def _write_one(self, sql: str, *args: Any) -> bool:
        """One statement as a `_write` transaction, so that a connection lost before the commit
        runs it again instead of answering 503 (autocommitted, the loss could not be placed
        before or after the commit). True when it returned a true value (`RETURNING true`)."""

        async def work(connection: Connection) -> bool:
            return bool(await connection.fetchval(sql, *args))

        return await self._write(work)
