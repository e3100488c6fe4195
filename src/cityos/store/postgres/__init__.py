"""The PostgreSQL/PostGIS back-end. Importing this package imports asyncpg,
so only open_store and `cityos db` do, and only for a postgresql:// database."""

from __future__ import annotations

from cityos.store.postgres.schema import LATEST, MIGRATIONS, SchemaNotCurrent, redact, schema_version, upgrade
from cityos.store.postgres.store import PostgresStore

__all__ = [
    "LATEST",
    "MIGRATIONS",
    "PostgresStore",
    "SchemaNotCurrent",
    "redact",
    "schema_version",
    "upgrade",
]
