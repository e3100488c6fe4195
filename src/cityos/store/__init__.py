"""Storage back-ends behind one contract (base.EntityStore), chosen by the database setting."""

from __future__ import annotations

from cityos.store.base import EntityStore


def is_postgres(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


def open_store(
    database: str,
    *,
    query_timeout: float = 10.0,
    worker_timeout: float | None = None,
    busy_timeout: float = 5.0,
    client_share: int = 0,
    durability: str = "normal",
    sqlite_cache_mb: tuple[int, int] | None = None,
) -> EntityStore:
    """The store for a database setting: a postgresql:// URL selects PostgreSQL/PostGIS, anything
    else is a SQLite file path. Drivers are imported only when chosen. `client_share`: see store/fair.py;
    `durability`: "normal" or "full", see the durability setting; `sqlite_cache_mb`: the page cache of
    SQLite's writer and of each reader connection, in MiB (None: the store's defaults)."""
    if is_postgres(database):
        try:
            from cityos.store.postgres import PostgresStore
        except ImportError as exc:
            raise ValueError("the PostgreSQL back-end needs its driver: pip install -e '.[postgres]'") from exc
        store = PostgresStore(
            database,
            query_timeout=query_timeout,
            busy_timeout=busy_timeout,
            client_share=client_share,
            durability=durability,
        )
        if worker_timeout is not None:
            store.worker_timeout = worker_timeout
            store.worker_heartbeat = min(store.worker_heartbeat, worker_timeout / 4)
        return store
    from cityos.store.sqlite import READER_CACHE_MB, WRITER_CACHE_MB, SQLiteStore

    writer_cache_mb, reader_cache_mb = sqlite_cache_mb or (WRITER_CACHE_MB, READER_CACHE_MB)
    return SQLiteStore(
        database,
        query_timeout=query_timeout,
        busy_timeout=busy_timeout,
        client_share=client_share,
        durability=durability,
        writer_cache_mb=writer_cache_mb,
        reader_cache_mb=reader_cache_mb,
    )


__all__ = ["EntityStore", "is_postgres", "open_store"]
