"""Storage back-ends behind one contract (base.EntityStore), chosen by the database setting."""

from __future__ import annotations

from cityos.store.base import EntityStore


def open_store(database: str, *, query_timeout: float = 10.0) -> EntityStore:
    """The store for a database setting; drivers are imported only when chosen."""
    if database.startswith(("postgresql://", "postgres://")):
        raise ValueError("the PostgreSQL back-end is not available yet; use a SQLite file path")
    from cityos.store.sqlite import SQLiteStore

    return SQLiteStore(database, query_timeout=query_timeout)


__all__ = ["EntityStore", "open_store"]
