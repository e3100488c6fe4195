"""Write transactions that give up when the database is busy: a pool with no free connection, or a
lock (a row lock, an entity's advisory lock) held by another transaction for longer than the
db_busy_timeout setting (PostgreSQL's lock_timeout, set on every pooled connection). Both become
DatabaseBusy, the 503 that SQLite's busy timeout gives too; the transaction is rolled back whole."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import asyncpg

from cityos.errors import DatabaseBusy

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection


def lock_settings(busy_timeout: float) -> dict[str, str]:
    """The server settings of a pooled connection: lock waits end at the busy timeout."""
    return {"lock_timeout": f"{max(1, int(busy_timeout * 1000))}ms"}


class Transactions:
    """Mixed into PostgresStore (through its catalogue and temporal halves)."""

    busy_timeout: float = 5.0

    if TYPE_CHECKING:

        @property
        def pool(self) -> asyncpg.Pool: ...

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection in a transaction, committed when the block ends without error."""
        try:
            connection = await self.pool.acquire(timeout=self.busy_timeout)
        except TimeoutError as exc:
            raise DatabaseBusy(f"the database is busy: no connection was free within {self.busy_timeout:g} s") from exc
        try:
            async with connection.transaction():
                yield connection
        except asyncpg.exceptions.LockNotAvailableError as exc:
            raise DatabaseBusy(
                f"the database is busy: what the write needs stayed locked by another transaction"
                f" (waited {self.busy_timeout:g} s)"
            ) from exc
        finally:
            await self.pool.release(connection)
