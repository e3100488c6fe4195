"""The SQLite store's credentials (API keys, local users, sessions): a mixin of SQLiteStore, one
SQL statement group per method. The tables are created with the rest of the schema (open())."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from cityos.errors import AlreadyExists
from cityos.store.identity_base import CredentialRow

T = TypeVar("T")

IDENTITY_SCHEMA = """
CREATE TABLE IF NOT EXISTS credentials (  -- API keys, local users, session tokens: slow hashes only
    pk INTEGER PRIMARY KEY, kind TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,
    secret_hash TEXT NOT NULL, doc BLOB NOT NULL, created_at TEXT NOT NULL, expires_at TEXT,
    revoked_at TEXT, owner TEXT, UNIQUE (kind, id)
);
CREATE INDEX IF NOT EXISTS credentials_owner ON credentials (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS catalog_versions (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
"""  # no row is written at open: a server must start on a file another process holds locked
_COLUMNS = "kind, id, name, secret_hash, doc, created_at, expires_at, revoked_at, owner"
_BUMP = (
    "INSERT INTO catalog_versions VALUES ('credentials', 1)"
    " ON CONFLICT (name) DO UPDATE SET version = catalog_versions.version + 1"
)


def _row(values: tuple[Any, ...]) -> CredentialRow:
    kind, id_, name, secret_hash, doc, created_at, expires_at, revoked_at, owner = values
    scope = orjson.loads(doc)
    return CredentialRow(
        kind, id_, name, secret_hash, scope["tenants"], scope["roles"], scope["groups"],
        created_at, expires_at, revoked_at, owner,
    )  # fmt: skip


def scope_document(row: CredentialRow) -> bytes:
    return orjson.dumps({"tenants": row.tenants, "roles": row.roles, "groups": row.groups})


class SQLiteIdentity:
    """The IdentityStore methods, mixed into SQLiteStore."""

    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def add_credential(self, row: CredentialRow) -> None:
        def run(connection: sqlite3.Connection) -> None:
            try:
                connection.execute(
                    f"INSERT INTO credentials ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.kind, row.id, row.name, row.secret_hash, scope_document(row), row.created_at,
                        row.expires_at, row.revoked_at, row.owner,
                    ),
                )  # fmt: skip
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"{row.kind} {row.id} already exists") from exc
            # no version bump: a new credential invalidates nothing any cache holds

        await self._write(run)

    async def get_credential(self, kind: str, credential_id: str) -> CredentialRow | None:
        sql = f"SELECT {_COLUMNS} FROM credentials WHERE kind = ? AND id = ?"
        found = await self._read(lambda c: c.execute(sql, (kind, credential_id)).fetchone())
        return _row(found) if found else None

    async def list_credentials(self, kind: str) -> list[CredentialRow]:
        sql = f"SELECT {_COLUMNS} FROM credentials WHERE kind = ? ORDER BY pk"
        return [_row(values) for values in await self._read(lambda c: c.execute(sql, (kind,)).fetchall())]

    async def revoke_credential(self, kind: str, credential_id: str, at: str) -> bool:
        def run(connection: sqlite3.Connection) -> bool:
            changed = connection.execute(
                "UPDATE credentials SET revoked_at = ? WHERE kind = ? AND id = ? AND revoked_at IS NULL",
                (at, kind, credential_id),
            ).rowcount
            if changed:
                connection.execute(_BUMP)
            return changed > 0

        return await self._write(run)

    async def delete_credential(self, kind: str, credential_id: str) -> bool:
        def run(connection: sqlite3.Connection) -> bool:
            deleted = connection.execute(
                "DELETE FROM credentials WHERE kind = ? AND id = ?", (kind, credential_id)
            ).rowcount
            if deleted:
                connection.execute("DELETE FROM credentials WHERE owner = ?", (f"{kind}:{credential_id}",))
                connection.execute(_BUMP)
            return deleted > 0

        return await self._write(run)

    async def set_credential_secret(self, kind: str, credential_id: str, secret_hash: str) -> bool:
        def run(connection: sqlite3.Connection) -> bool:
            changed = connection.execute(
                "UPDATE credentials SET secret_hash = ? WHERE kind = ? AND id = ?", (secret_hash, kind, credential_id)
            ).rowcount
            if changed:
                connection.execute("DELETE FROM credentials WHERE owner = ?", (f"{kind}:{credential_id}",))
                connection.execute(_BUMP)
            return changed > 0

        return await self._write(run)

    async def delete_expired_credentials(self, kind: str, now: str) -> int:
        sql = "DELETE FROM credentials WHERE kind = ? AND expires_at IS NOT NULL AND expires_at <= ?"
        return await self._write(lambda c: c.execute(sql, (kind, now)).rowcount)

    async def credentials_version(self) -> int:
        sql = "SELECT version FROM catalog_versions WHERE name = 'credentials'"
        found = await self._read(lambda c: c.execute(sql).fetchone())
        return int(found[0]) if found else 0
