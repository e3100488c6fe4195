"""Storage back-ends behind one contract (base.EntityStore), chosen by the database setting."""

from __future__ import annotations

import os

from cityos.store.base import EntityStore

EXPERIMENTAL_POSTGRES = "CITYOS_EXPERIMENTAL_POSTGRES"


def is_postgres(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


def open_store(
    database: str, *, query_timeout: float = 10.0, worker_timeout: float | None = None, experimental: bool | None = None
) -> EntityStore:
    """The store for a database setting; drivers are imported only when chosen.

    The PostgreSQL back-end implements only part of the contract so far, so it is handed out only
    when asked for explicitly (experimental=True, or CITYOS_EXPERIMENTAL_POSTGRES=1): a user must
    never be given half a back-end without knowing it."""
    if is_postgres(database):
        if experimental is None:
            experimental = os.environ.get(EXPERIMENTAL_POSTGRES) == "1"
        if not experimental:
            raise ValueError(
                "the PostgreSQL back-end is incomplete (entities, queries, expiry and @contexts only; no "
                "subscriptions, temporal API, entity maps, discovery or IoT provisioning yet, see "
                f"docs/deployment.md); use a SQLite file path, or set {EXPERIMENTAL_POSTGRES}=1 to try it anyway"
            )
        try:
            from cityos.store.postgres import PostgresStore
        except ImportError as exc:
            raise ValueError("the PostgreSQL back-end needs its driver: pip install 'cityos[postgres]'") from exc
        store = PostgresStore(database, query_timeout=query_timeout)
        if worker_timeout is not None:
            store.worker_timeout = worker_timeout
            store.worker_heartbeat = min(store.worker_heartbeat, worker_timeout / 4)
        return store
    from cityos.store.sqlite import SQLiteStore

    return SQLiteStore(database, query_timeout=query_timeout)


__all__ = ["EXPERIMENTAL_POSTGRES", "EntityStore", "is_postgres", "open_store"]
