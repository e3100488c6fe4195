"""Import runs in the SQLite back-end (store/import_runs_base.py): one additive table, created with
the others at open (files made before it gain it; no schema step: the entity layout is unchanged)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import orjson

from cityos.store.import_runs_base import KEEP, ImportRun

T = TypeVar("T")
IMPORT_RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS import_runs (  -- ingest/runs.py: one row per import run, newest = highest pk
    pk INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc BLOB NOT NULL
);
"""


class SQLiteImportRuns:
    """Import run methods of the storage contract, mixed into SQLiteStore."""

    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def save_import_run(self, run: ImportRun) -> None:
        doc = orjson.dumps(run.as_dict())

        def save(connection: sqlite3.Connection) -> None:
            updated = connection.execute("UPDATE import_runs SET doc = ? WHERE id = ?", (doc, run.id)).rowcount
            if not updated:
                connection.execute("INSERT INTO import_runs (id, doc) VALUES (?, ?)", (run.id, doc))
                connection.execute(
                    "DELETE FROM import_runs WHERE pk <="
                    " (SELECT pk FROM import_runs ORDER BY pk DESC LIMIT 1 OFFSET ?)",
                    (KEEP,),
                )

        await self._write(save)

    async def list_import_runs(self, limit: int, offset: int = 0) -> list[ImportRun]:
        sql = "SELECT doc FROM import_runs ORDER BY pk DESC LIMIT ? OFFSET ?"
        rows = await self._read(lambda c: c.execute(sql, (limit, offset)).fetchall())
        return [ImportRun.from_dict(orjson.loads(doc)) for (doc,) in rows]

    async def get_import_run(self, run_id: str) -> ImportRun | None:
        found = await self._read(lambda c: c.execute("SELECT doc FROM import_runs WHERE id = ?", (run_id,)).fetchone())
        return None if found is None else ImportRun.from_dict(orjson.loads(found[0]))
