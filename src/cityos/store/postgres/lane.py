"""A few pooled connections kept out of asyncpg's pool, lent at the cost of a list pop.

asyncpg's `Pool.acquire` and `release` cost more than the statement they wrap: under callgrind a
`pool.fetchrow` of a one-row prepared statement took 177.7 K instructions of the process, the same
`fetchrow` on a connection 60.5 K (the acquire's holder, proxy and futures; the release's shielded
task, timeout scope and reset; uvloop, asyncpg 0.32). For a retrieve by id, one statement, that
was a quarter of the whole request. The lane keeps up to `size` connections taken from the pool
(its public acquire, once each) and lends them to the retrieve's read, write transactions
(busy.py), entity queries and temporal reads; when none is free the caller gets one of the pool's,
which stays in the lane afterwards while the lane is not full.

What goes back into the lane is a connection whose block ended without an error, outside any
transaction; anything else (an error, a cancellation, a lost connection) goes to the pool's own
release, which waits for a cancelled statement, rolls back or cuts the connection. A connection
lost while free in the lane is dropped when next taken (asyncpg released its holder already). The
lane holds at most a third of the pool and takes a connection only while the pool could lend another
at once, so the pool's other users (the outbox worker, the sealer, the catalogue) are not starved;
`close` gives the free ones back before the pool closes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Leased = PoolConnectionProxy[asyncpg.Record]


class Lane:
    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[Leased] = []
        self._held = 0  # connections taken from the pool: free, or lent out now
        self._closed = False

    def _take(self) -> Leased | None:
        while self._free:
            connection = self._free.pop()
            if _alive(connection):
                return connection
            self._held -= 1  # lost while free: asyncpg gave its holder back to the pool already
        return None

    async def acquire(self, pool: asyncpg.Pool, timeout: float | None = None) -> tuple[Leased, bool]:
        """A free lane connection, else the pool's (TimeoutError after `timeout`), and whether it
        belongs to the lane: one from the pool joins it while the lane is not full and the pool could
        still lend another connection at once (an idle one, or room for a new one)."""
        connection = self._take()
        if connection is not None:
            return connection, True
        connection = await pool.acquire(timeout=timeout)
        spare = pool.get_idle_size() > 0 or pool.get_size() < pool.get_max_size()
        laned = not self._closed and self._held < self.size and spare
        if laned:
            self._held += 1
        return connection, laned

    async def release(self, pool: asyncpg.Pool, connection: Leased, *, laned: bool, clean: bool) -> None:
        """After use: a lane connection back into the lane when `clean` (its block ended without an
        error, no transaction open); anything else to the pool's own release, which resets or cuts it."""
        if laned:
            if clean and not self._closed and _alive(connection) and not connection.is_in_transaction():
                self._free.append(connection)
                return
            self._held -= 1
        await pool.release(connection)  # a connection released already (lost) is left as it is

    @contextlib.asynccontextmanager
    async def lease(self, pool: asyncpg.Pool, timeout: float | None = None) -> AsyncIterator[Leased]:
        """`acquire` and `release` around a block."""
        connection, laned = await self.acquire(pool, timeout)
        clean = False
        try:
            yield connection
            clean = True
        finally:
            await self.release(pool, connection, laned=laned, clean=clean)

    async def fetchrow(self, pool: asyncpg.Pool, sql: str, *args: Any) -> asyncpg.Record | None:
        """One statement's first row (the hottest read: no context manager)."""
        connection, laned = await self.acquire(pool)
        try:
            row: asyncpg.Record | None = await connection.fetchrow(sql, *args)
        except BaseException:
            await self.release(pool, connection, laned=laned, clean=False)
            raise
        await self.release(pool, connection, laned=laned, clean=True)
        return row

    async def close(self, pool: asyncpg.Pool) -> None:
        """Every free connection back to the pool; those lent out now go back when their block ends."""
        self._closed = True
        free, self._free = self._free, []
        for connection in free:
            self._held -= 1
            await pool.release(connection)


def _alive(connection: Leased) -> bool:
    """Open, and still lent by the pool: a lost connection's proxy is released by asyncpg itself, and
    any call on it then raises InterfaceError."""
    try:
        return not connection.is_closed()
    except asyncpg.exceptions.InterfaceError:
        return False


def lane_size(pool_size: int) -> int:
    """A third of the pool, none for a pool under three connections."""
    return pool_size // 3
