"""Snapshots in the SQLite back-end (store/snapshot_base.py): one additive table, created with the
others at open (files made before it gain it; the entity layout is unchanged)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import orjson

from cityos.errors import AlreadyExists
from cityos.store.snapshot_base import SnapshotRow

T = TypeVar("T")
SNAPSHOT_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (  -- spec 5.16: the Snapshot documents (their entities live in a hidden tenant)
    pk INTEGER PRIMARY KEY, tenant TEXT NOT NULL, id TEXT NOT NULL, doc BLOB NOT NULL, UNIQUE (tenant, id)
);
"""


class SQLiteSnapshots:
    """Snapshot methods of the storage contract, mixed into SQLiteStore."""

    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def save_snapshot(self, row: SnapshotRow, *, create: bool) -> None:
        doc = orjson.dumps(row.document)

        def run(connection: sqlite3.Connection) -> None:
            if not create:
                connection.execute(
                    "UPDATE snapshots SET doc = ? WHERE tenant = ? AND id = ?", (doc, row.tenant, row.id)
                )
                return
            try:
                connection.execute(
                    "INSERT INTO snapshots (tenant, id, doc) VALUES (?, ?, ?)", (row.tenant, row.id, doc)
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"snapshot {row.id} already exists") from exc

        await self._write(run)

    async def get_snapshot(self, tenant: str, snapshot_id: str) -> SnapshotRow | None:
        sql = "SELECT doc FROM snapshots WHERE tenant = ? AND id = ?"
        found = await self._read(lambda c: c.execute(sql, (tenant, snapshot_id)).fetchone())
        return None if found is None else SnapshotRow(tenant, snapshot_id, orjson.loads(found[0]))

    async def list_snapshots(self, tenant: str) -> list[SnapshotRow]:
        sql = "SELECT id, doc FROM snapshots WHERE tenant = ? ORDER BY pk"
        rows = await self._read(lambda c: c.execute(sql, (tenant,)).fetchall())
        return [SnapshotRow(tenant, i, orjson.loads(d)) for i, d in rows]

    async def all_snapshots(self) -> list[SnapshotRow]:
        rows = await self._read(lambda c: c.execute("SELECT tenant, id, doc FROM snapshots ORDER BY pk").fetchall())
        return [SnapshotRow(t, i, orjson.loads(d)) for t, i, d in rows]

    async def delete_snapshot(self, tenant: str, snapshot_id: str) -> bool:
        sql = "DELETE FROM snapshots WHERE tenant = ? AND id = ?"
        return await self._write(lambda c: c.execute(sql, (tenant, snapshot_id)).rowcount > 0)
