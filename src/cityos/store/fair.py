"""Fair use of the store's query capacity (SQLite's reader threads, PostgreSQL's pooled connections):
one client holds at most `share` of them at once, its further queries wait their turn outside the
pool, so a client firing many slow queries slows itself, not everyone else.

A client is the remote address of the request (set by the HTTP layer in `current_client`); work with
no client (notifications, history, imports) is not limited. Behind a reverse proxy every request has
the proxy's address: then the limit applies to all clients together (docs/security.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

current_client: ContextVar[str] = ContextVar("cityos_client", default="")


class FairShare:
    def __init__(self, share: int) -> None:
        self.share = share
        self._slots: dict[str, tuple[asyncio.Semaphore, int]] = {}  # client -> (its slots, users)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the current client's slots while the block runs."""
        client = current_client.get()
        if not client or self.share <= 0:
            yield
            return
        semaphore, users = self._slots.get(client) or (asyncio.Semaphore(self.share), 0)
        self._slots[client] = (semaphore, users + 1)
        try:
            async with semaphore:
                yield
        finally:
            semaphore, users = self._slots[client]
            if users == 1:
                del self._slots[client]
            else:
                self._slots[client] = (semaphore, users - 1)
