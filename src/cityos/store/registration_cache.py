"""The context source registrations of each tenant, kept in memory by the store.

Every request that may be forwarded (a retrieve, a query, a write: federation, spec 4.3.6) asks
for its tenant's registrations, and a registry changes seldom: reading them from the database each
time cost a retrieve by id a reader-thread hop and about 6% of its CPU. The rows are kept as the
stored JSON bytes and decoded for each caller, so no caller can change another's documents.

A registration written by this process forgets its tenant's rows after the write commits; on
PostgreSQL a registration written by another worker does too (its NOTIFY, store/postgres/events.py),
and a lost LISTEN connection forgets every tenant. A read that raced with a write is not kept: each
forgetting bumps a generation, and rows read under an older generation are returned but not kept.
"""

from __future__ import annotations

import orjson

from cityos.store.base import RegistrationRow

REGISTRATION_EVENT = "registration"  # the StoreEvent kind of a registration created, changed or deleted


class RegistrationCache:
    def __init__(self) -> None:
        self._rows: dict[str, list[tuple[str, bytes]]] = {}
        # the tenants whose registrations are kept and are none: what every request that may be
        # forwarded asks first, in a city without context sources, answered by `tenant in none`
        self.none: set[str] = set()
        self.generation = 0

    def get(self, tenant: str) -> list[RegistrationRow] | None:
        """The tenant's registrations, decoded anew, or None when they are not kept."""
        rows = self._rows.get(tenant)
        if rows is None:
            return None
        return [RegistrationRow(tenant, key, orjson.loads(doc)) for key, doc in rows]

    def keep(self, tenant: str, rows: list[tuple[str, bytes]], generation: int) -> list[RegistrationRow]:
        """Keep rows read from the database under `generation` (unless a write came since), and
        return them decoded."""
        if generation == self.generation:
            self._rows[tenant] = rows
            if rows:
                self.none.discard(tenant)
            else:
                self.none.add(tenant)
        return [RegistrationRow(tenant, key, orjson.loads(doc)) for key, doc in rows]

    def forget(self, tenant: str | None = None) -> None:
        """A registration of `tenant` (None: of any tenant) changed."""
        self.generation += 1
        if tenant is None:
            self._rows.clear()
            self.none.clear()
        else:
            self._rows.pop(tenant, None)
            self.none.discard(tenant)
