"""History retention on SQLite (`--temporal-retention-days`, `--temporal-retention-types`;
docs/operations.md, "Retention"), mixed into SQLiteStore next to SQLiteTemporal: the sweep deletes
old instances in bounded chunks, each a write of its own, so other writes go between them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from cityos.store.sqlite_history import Names, prune_values
from cityos.store.sqlite_layout import name_ids

T = TypeVar("T")
PURGE_CHUNK = 5000  # history rows a retention sweep deletes per write (the writer is free between them)


class SQLiteRetention:
    if TYPE_CHECKING:
        _wnames: Names

        async def _write(self, fn: Callable[[sqlite3.Connection], T], *, groupable: bool = True) -> T: ...

    async def temporal_purge(self, before: int, types: Sequence[str] | None = None) -> int:
        """Delete the instances older than `before` PURGE_CHUNK at a time, each chunk a write of its
        own (other writes go between them), oldest rows first (they lead the pk order, so the scan
        stops early); then the temporal entities left without instances and the long values left
        without rows."""
        age = "COALESCE(observed_us, modified_us, created_us, deleted_us)"
        of_types = ""
        if types is not None:
            if not types:
                return 0
            of_types = f" AND epk IN (SELECT epk FROM temporal_types WHERE type IN {name_ids(len(types))})"

        after = [0]  # every old row up to this pk is gone: the next chunk scans on from there

        def run(connection: sqlite3.Connection) -> int:
            rows = connection.execute(
                "DELETE FROM temporal_rows WHERE pk IN (SELECT pk FROM temporal_rows"
                f" WHERE pk > ? AND {age} < ?{of_types} ORDER BY pk LIMIT {PURGE_CHUNK}) RETURNING pk, epk, vref",
                (after[0], before, *(types or ())),
            ).fetchall()
            after[0] = max((pk for pk, _, _ in rows), default=after[0])
            epks = {epk for _, epk, _ in rows}
            for epk in epks:
                if connection.execute("SELECT 1 FROM temporal_rows WHERE epk = ? LIMIT 1", (epk,)).fetchone() is None:
                    connection.execute("DELETE FROM temporal_types WHERE epk = ?", (epk,))
                    connection.execute("DELETE FROM temporal_entities WHERE pk = ?", (epk,))
            prune_values(connection, self._wnames, {vref for _, _, vref in rows if vref is not None})
            return len(rows)

        removed = 0
        while True:
            chunk = await self._write(run, groupable=False)
            removed += chunk
            if chunk < PURGE_CHUNK:
                return removed
