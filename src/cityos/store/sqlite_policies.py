"""Access policies in the SQLite back-end (store/policy_base.py): one append-only table."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from cityos.errors import AlreadyExists
from cityos.store.policy_base import PolicyChange, PolicyRow

T = TypeVar("T")
POLICY_SCHEMA = """
CREATE TABLE IF NOT EXISTS policy_versions (
    version INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, doc BLOB, changed_by TEXT NOT NULL,
    changed_at TEXT NOT NULL, source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS policy_versions_id ON policy_versions (id, version);
"""
_COLUMNS = "id, version, doc, changed_by, changed_at, source"
_CURRENT = (
    f"SELECT {_COLUMNS} FROM policy_versions p WHERE version = "
    "(SELECT max(version) FROM policy_versions q WHERE q.id = p.id)"
)


def _row(record: tuple[Any, ...]) -> PolicyRow:
    policy_id, version, doc, by, at, source = record
    return PolicyRow(policy_id, version, None if doc is None else orjson.loads(doc), by, at, source)


class SQLitePolicies:
    """Policy methods of the storage contract, mixed into SQLiteStore."""

    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def change_policy(
        self, change: PolicyChange, policy_id: str, document: dict[str, Any] | None, *, by: str, source: str = "api"
    ) -> PolicyRow | None:
        def run(connection: sqlite3.Connection) -> PolicyRow | None:
            current = connection.execute(
                "SELECT doc FROM policy_versions WHERE id = ? ORDER BY version DESC LIMIT 1", (policy_id,)
            ).fetchone()
            exists = current is not None and current[0] is not None
            if change == "create" and exists:
                raise AlreadyExists(f"policy {policy_id} already exists")
            if change != "create" and not exists:
                return None
            doc = None if change == "delete" else orjson.dumps(document)
            at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            cursor = connection.execute(
                "INSERT INTO policy_versions (id, doc, changed_by, changed_at, source) VALUES (?, ?, ?, ?, ?)",
                (policy_id, doc, by, at, source),
            )
            version = cursor.lastrowid
            assert version is not None
            return PolicyRow(policy_id, version, None if doc is None else document, by, at, source)

        return await self._write(run)

    async def load_policies(self) -> tuple[int, list[PolicyRow]]:
        def run(connection: sqlite3.Connection) -> tuple[int, list[PolicyRow]]:
            latest = connection.execute("SELECT coalesce(max(version), 0) FROM policy_versions").fetchone()[0]
            rows = [_row(r) for r in connection.execute(_CURRENT + " AND doc IS NOT NULL ORDER BY id")]
            return latest, rows

        return await self._read(run)

    async def policy_history(self, policy_id: str) -> list[PolicyRow]:
        def run(connection: sqlite3.Connection) -> list[PolicyRow]:
            sql = f"SELECT {_COLUMNS} FROM policy_versions WHERE id = ? ORDER BY version"
            return [_row(r) for r in connection.execute(sql, (policy_id,))]

        return await self._read(run)
