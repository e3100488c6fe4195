"""Versioned schema migrations of a SQLite file, numbered like PostgreSQL's (store/postgres/schema.py).

The version is the file's PRAGMA user_version. Steps 1-5 are the layouts files went through before
this list existed (store/sqlite_history.py, store/sqlite_layout.py): a file of any of them is brought
to 5 by one conversion, as before. Later steps run in order, each in its own transaction with the
version it sets, so a step that fails leaves the file at the version before it. A file newer than
this CityOS is refused. Steps are append-only: never edit a released one.

The server upgrades a file when it opens it (the one process that writes it; every step is
all-or-nothing), and logs each step it applies: `cityos db status` shows what it would do and
`cityos db upgrade` does it ahead of the start (docs/operations.md, "Upgrades"). A PostgreSQL
database is never changed by the server: its workers on several hosts must agree on one version.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cityos.store.cell_key import cell_key
from cityos.store.sqlite_history import Names, file_layout
from cityos.store.sqlite_layout import LAYOUT
from cityos.store.sqlite_layout import migrate as migrate_layout

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SQLiteMigration:
    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None] | None  # None: one of the layouts of before (migrate_layout)


def _value_index(connection: sqlite3.Connection) -> None:
    """6: long history values are deleted with the last row that refers to them (sqlite_temporal
    prune_values); the index finds those rows. The values already left behind go now. The row of the
    highest id stays, so an id is never given to another value (readers cache texts by id)."""
    connection.execute("CREATE INDEX IF NOT EXISTS temporal_rows_vref ON temporal_rows (vref) WHERE vref IS NOT NULL")
    connection.execute(
        "DELETE FROM temporal_values WHERE id < (SELECT max(id) FROM temporal_values)"
        " AND NOT EXISTS (SELECT 1 FROM temporal_rows r WHERE r.vref = temporal_values.id)"
    )


def _cell_keys(connection: sqlite3.Connection) -> None:
    """7: each geo walk row gains its cell key (store/cell_key.py), indexed with its box, so a map
    tile's cluster grid is one index range grouped by a shift (sqlite_grid.py). A file without the
    walk table gets it, keys and all, when the store opens it (sqlite_query.create_query_schema)."""
    if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'entity_geo_walk'").fetchone() is None:
        return
    if "cell" not in {row[1] for row in connection.execute("PRAGMA table_info(entity_geo_walk)")}:
        connection.execute("ALTER TABLE entity_geo_walk ADD COLUMN cell INTEGER")
    connection.create_function("cityos_cell_key", 4, cell_key, deterministic=True)
    try:
        connection.execute("UPDATE entity_geo_walk SET cell = cityos_cell_key(min_x, max_x, min_y, max_y)")
    finally:
        connection.create_function("cityos_cell_key", 4, None)
    connection.execute(
        "CREATE INDEX IF NOT EXISTS entity_geo_walk_cell ON entity_geo_walk (attr, cell, min_x, max_x, min_y, max_y)"
    )


def _cell_types(connection: sqlite3.Connection) -> None:
    """8: each geo walk row gains its entity's first type (the smallest interned id of its types),
    and the cell index becomes (attr, type, cell, box), so a map tile's grid filtered by type, or
    over a city of several types, is read from an index alone (sqlite_grid.py); one index, as
    before, so a write costs what it did. 100,000 rows: about 6 s."""
    if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'entity_geo_walk'").fetchone() is None:
        return
    if "type" not in {row[1] for row in connection.execute("PRAGMA table_info(entity_geo_walk)")}:
        connection.execute("ALTER TABLE entity_geo_walk ADD COLUMN type INTEGER")
    connection.execute(
        "UPDATE entity_geo_walk SET type = (SELECT min(t.type) FROM entity_types t WHERE t.pk = entity_geo_walk.pk)"
    )
    connection.execute("DROP INDEX IF EXISTS entity_geo_walk_cell")
    connection.execute(
        "CREATE INDEX IF NOT EXISTS entity_geo_walk_typed"
        " ON entity_geo_walk (attr, type, cell, min_x, max_x, min_y, max_y)"
    )


def _zstd_documents(connection: sqlite3.Connection) -> None:
    """9: entity documents are written as zstd with a trained dictionary (sqlite_layout.ZSTD_1); the
    deflated ones stay and are read as before, each rewritten as zstd by its entity's next write. Nothing
    to convert: the step exists so that a CityOS from before it refuses the file (it would take a zstd
    document for plain JSON) instead of failing on its first read."""
    del connection


MIGRATIONS: tuple[SQLiteMigration, ...] = (
    SQLiteMigration(1, "compact history rows with interned names (temporal_rows)", None),
    SQLiteMigration(2, "interned side tables and deflated entity documents", None),
    SQLiteMigration(3, "history createdAt stored relative to modifiedAt", None),
    SQLiteMigration(4, "geo attributes interned; the audit trail's compact hashes", None),
    SQLiteMigration(5, "long history values stored once (temporal_values); history types interned", None),
    SQLiteMigration(6, "long history values pruned with their last row (index on temporal_rows.vref)", _value_index),
    SQLiteMigration(7, "map cell keys of the geo walk rows, indexed (entity_geo_walk.cell)", _cell_keys),
    SQLiteMigration(8, "map cells by type: the entity's first type in each geo walk row, indexed", _cell_types),
    SQLiteMigration(
        9, "entity documents written as zstd with a trained dictionary (deflated ones still read)", _zstd_documents
    ),
)
LATEST = MIGRATIONS[-1].version
assert MIGRATIONS[LAYOUT - 1].apply is None and MIGRATIONS[LAYOUT].apply is not None


def file_version(connection: sqlite3.Connection) -> int:
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    return version


def upgrade(connection: sqlite3.Connection, names: Names) -> list[SQLiteMigration]:
    """Apply the pending steps on the writer connection, before anything else reads the file;
    returns those applied. A new file goes through them as an old one does (they are cheap on it)."""
    current = file_layout(connection, LATEST, "the schema version")
    applied = [m for m in MIGRATIONS if m.version > current]
    new_file = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    if current < LAYOUT:
        migrate_layout(connection, names)  # the layouts of before, in one conversion
    for migration in MIGRATIONS[LAYOUT:]:
        if migration.version <= current or migration.apply is None:
            continue
        connection.execute("BEGIN IMMEDIATE")
        try:
            migration.apply(connection)
            connection.execute(f"PRAGMA user_version = {migration.version}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    if new_file:  # nothing was migrated: one line, not one per step
        logger.info("new database file at schema version %d", LATEST)
        return applied
    for migration in applied:
        logger.info("schema migration %d applied: %s", migration.version, migration.description)
    return applied


def status(path: str) -> tuple[int, list[SQLiteMigration]] | None:
    """The file's version and its pending steps, read without changing it (None: no such file)."""
    if not Path(path).expanduser().is_file():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{Path(path).expanduser()}?mode=ro", uri=True)) as connection:
        current = file_version(connection)
    return current, [m for m in MIGRATIONS if m.version > current]
