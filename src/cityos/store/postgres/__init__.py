"""The PostgreSQL/PostGIS back-end (issue 8, first slice). Importing this package imports asyncpg,
so only open_store and `cityos db` do, and only for a postgresql:// database."""

from __future__ import annotations

from cityos.store.postgres.schema import LATEST, MIGRATIONS, SchemaNotCurrent, redact, schema_version, upgrade
from cityos.store.postgres.store import PostgresStore
from cityos.store.postgres.unfinished import BackendIncomplete

__all__ = [
    "LATEST",
    "MIGRATIONS",
    "BackendIncomplete",
    "PostgresStore",
    "SchemaNotCurrent",
    "redact",
    "schema_version",
    "upgrade",
]
