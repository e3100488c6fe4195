"""The data channel's records in the SQLite back-end (store/dataspace_base.py): one append-only table,
and the nonces and rate buckets of partners' signed requests that every worker shares."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from cityos.errors import AlreadyExists
from cityos.store.dataspace_base import RATE_ROW_SECONDS, DataspaceRow, refill, take

T = TypeVar("T")
DATASPACE_SCHEMA = """
CREATE TABLE IF NOT EXISTS dataspace_versions (
    version INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, id TEXT NOT NULL, doc BLOB,
    changed_by TEXT NOT NULL, changed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dataspace_versions_id ON dataspace_versions (kind, id, version);
CREATE TABLE IF NOT EXISTS dataspace_nonces (
    keyid TEXT NOT NULL, nonce TEXT NOT NULL, until REAL NOT NULL, PRIMARY KEY (keyid, nonce)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dataspace_nonces_until ON dataspace_nonces (until);
CREATE TABLE IF NOT EXISTS dataspace_rates (key TEXT PRIMARY KEY, tokens REAL NOT NULL, at REAL NOT NULL);
"""
_COLUMNS = "kind, id, version, doc, changed_by, changed_at"


def _row(record: tuple[Any, ...]) -> DataspaceRow:
    kind, record_id, version, doc, by, at = record
    return DataspaceRow(kind, record_id, version, None if doc is None else orjson.loads(doc), by, at)


class SQLiteDataspace:
    """Data channel methods of the storage contract, mixed into SQLiteStore."""

    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def change_record(
        self, kind: str, record_id: str, document: dict[str, Any] | None, *, by: str, create: bool = False
    ) -> DataspaceRow | None:
        def run(connection: sqlite3.Connection) -> DataspaceRow | None:
            current = connection.execute(
                "SELECT doc FROM dataspace_versions WHERE kind = ? AND id = ? ORDER BY version DESC LIMIT 1",
                (kind, record_id),
            ).fetchone()
            exists = current is not None and current[0] is not None
            if create and exists:
                raise AlreadyExists(f"{kind} {record_id} already exists")
            if document is None and not exists:
                return None
            doc = None if document is None else orjson.dumps(document)
            at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            cursor = connection.execute(
                "INSERT INTO dataspace_versions (kind, id, doc, changed_by, changed_at) VALUES (?, ?, ?, ?, ?)",
                (kind, record_id, doc, by, at),
            )
            assert cursor.lastrowid is not None
            return DataspaceRow(kind, record_id, cursor.lastrowid, document, by, at)

        return await self._write(run)

    async def load_records(self, kind: str) -> tuple[int, list[DataspaceRow]]:
        def run(connection: sqlite3.Connection) -> tuple[int, list[DataspaceRow]]:
            latest = connection.execute("SELECT coalesce(max(version), 0) FROM dataspace_versions").fetchone()[0]
            sql = (
                f"SELECT {_COLUMNS} FROM dataspace_versions p WHERE kind = ? AND version = (SELECT max(version)"
                " FROM dataspace_versions q WHERE q.kind = p.kind AND q.id = p.id) AND doc IS NOT NULL ORDER BY id"
            )
            return latest, [_row(r) for r in connection.execute(sql, (kind,))]

        return await self._read(run)

    async def record_history(self, kind: str, record_id: str) -> list[DataspaceRow]:
        def run(connection: sqlite3.Connection) -> list[DataspaceRow]:
            sql = f"SELECT {_COLUMNS} FROM dataspace_versions WHERE kind = ? AND id = ? ORDER BY version"
            return [_row(r) for r in connection.execute(sql, (kind, record_id))]

        return await self._read(run)

    async def first_use(self, keyid: str, nonce: str, until: float, now: float) -> bool:
        def run(connection: sqlite3.Connection) -> bool:
            connection.execute("DELETE FROM dataspace_nonces WHERE until < ?", (now,))
            cursor = connection.execute(
                "INSERT OR IGNORE INTO dataspace_nonces (keyid, nonce, until) VALUES (?, ?, ?)", (keyid, nonce, until)
            )
            return cursor.rowcount == 1

        return await self._write(run)

    async def take_token(self, key: str, per_minute: int, now: float) -> float:
        def run(connection: sqlite3.Connection) -> float:
            connection.execute("DELETE FROM dataspace_rates WHERE at < ?", (now - RATE_ROW_SECONDS,))
            row = connection.execute("SELECT tokens, at FROM dataspace_rates WHERE key = ?", (key,)).fetchone()
            left, wait = take(
                refill(None if row is None else row[0], 0.0 if row is None else row[1], now, per_minute), per_minute
            )
            connection.execute(
                "INSERT INTO dataspace_rates (key, tokens, at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, at = excluded.at",
                (key, left, now),
            )
            return wait

        return await self._write(run)
