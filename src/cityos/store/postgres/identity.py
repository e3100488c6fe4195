"""The PostgreSQL store's credentials (API keys, local users, sessions): a mixin of PostgresStore
with the SQLite back-end's semantics (sqlite_identity.py). Every write bumps the 'credentials'
catalogue version and sends a "credential" StoreEvent at commit, so a revoke reaches every worker's
authentication cache at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from cityos.errors import AlreadyExists
from cityos.store.base import StoreEvent
from cityos.store.identity_base import CREDENTIAL_EVENT, CredentialRow
from cityos.store.postgres.busy import Transactions, read_again_once

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection


# migration 5 (schema.py)
IDENTITY_SQL = """
CREATE TABLE credentials (          -- API keys, local users, session tokens: slow hashes only
    pk bigserial PRIMARY KEY,
    kind text NOT NULL,
    id text NOT NULL,
    name text NOT NULL,
    secret_hash text NOT NULL,
    doc json NOT NULL,              -- {"tenants": [...] or null, "roles": [...], "groups": [...]}
    created_at text COLLATE "C" NOT NULL,
    expires_at text COLLATE "C",
    revoked_at text COLLATE "C",
    owner text,                     -- "user:<name>" for a session: deleted with its user
    UNIQUE (kind, id)
);
CREATE INDEX credentials_owner ON credentials (owner) WHERE owner IS NOT NULL;
INSERT INTO catalog_versions (name, version) VALUES ('credentials', 0);
"""
_COLUMNS = "kind, id, name, secret_hash, doc, created_at, expires_at, revoked_at, owner"


def _row(record: Any) -> CredentialRow:
    scope = orjson.loads(record["doc"])
    return CredentialRow(
        record["kind"], record["id"], record["name"], record["secret_hash"], scope["tenants"], scope["roles"],
        scope["groups"], record["created_at"], record["expires_at"], record["revoked_at"], record["owner"],
    )  # fmt: skip


class PostgresIdentity(Transactions):
    """The IdentityStore methods, mixed into PostgresStore (which supplies _notify); writes go
    through the retrying transaction (busy.py), reads are tried again once on a lost connection."""

    if TYPE_CHECKING:

        async def _notify(self, connection: Connection, event: StoreEvent) -> None: ...

    async def _changed(self, connection: Connection, kind: str, credential_id: str) -> None:
        await connection.execute("UPDATE catalog_versions SET version = version + 1 WHERE name = 'credentials'")
        await self._notify(connection, StoreEvent(CREDENTIAL_EVENT, "", f"{kind}:{credential_id}"))

    async def add_credential(self, row: CredentialRow) -> None:
        scope = orjson.dumps({"tenants": row.tenants, "roles": row.roles, "groups": row.groups}).decode()

        async def work(connection: Connection) -> None:
            inserted = await connection.fetchval(
                f"INSERT INTO credentials ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                " ON CONFLICT (kind, id) DO NOTHING RETURNING true",
                row.kind, row.id, row.name, row.secret_hash, scope, row.created_at, row.expires_at,
                row.revoked_at, row.owner,
            )  # fmt: skip
            if not inserted:
                raise AlreadyExists(f"{row.kind} {row.id} already exists")
            # no version bump nor event: a new credential invalidates nothing any cache holds

        await self._write(work)

    @read_again_once
    async def get_credential(self, kind: str, credential_id: str) -> CredentialRow | None:
        record = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM credentials WHERE kind = $1 AND id = $2", kind, credential_id
        )
        return _row(record) if record else None

    @read_again_once
    async def list_credentials(self, kind: str) -> list[CredentialRow]:
        records = await self.pool.fetch(f"SELECT {_COLUMNS} FROM credentials WHERE kind = $1 ORDER BY pk", kind)
        return [_row(record) for record in records]

    async def revoke_credential(self, kind: str, credential_id: str, at: str) -> bool:
        async def work(connection: Connection) -> bool:
            changed = await connection.fetchval(
                "UPDATE credentials SET revoked_at = $1 WHERE kind = $2 AND id = $3 AND revoked_at IS NULL"
                " RETURNING true",
                at,
                kind,
                credential_id,
            )
            if changed:
                await self._changed(connection, kind, credential_id)
            return bool(changed)

        return await self._write(work)

    async def delete_credential(self, kind: str, credential_id: str) -> bool:
        async def work(connection: Connection) -> bool:
            deleted = await connection.fetchval(
                "DELETE FROM credentials WHERE kind = $1 AND id = $2 RETURNING true", kind, credential_id
            )
            if deleted:
                await connection.execute("DELETE FROM credentials WHERE owner = $1", f"{kind}:{credential_id}")
                await self._changed(connection, kind, credential_id)
            return bool(deleted)

        return await self._write(work)

    async def set_credential_secret(self, kind: str, credential_id: str, secret_hash: str) -> bool:
        async def work(connection: Connection) -> bool:
            changed = await connection.fetchval(
                "UPDATE credentials SET secret_hash = $1 WHERE kind = $2 AND id = $3 RETURNING true",
                secret_hash,
                kind,
                credential_id,
            )
            if changed:
                await connection.execute("DELETE FROM credentials WHERE owner = $1", f"{kind}:{credential_id}")
                await self._changed(connection, kind, credential_id)
            return bool(changed)

        return await self._write(work)

    async def delete_expired_credentials(self, kind: str, now: str) -> int:
        async def work(connection: Connection) -> int:
            deleted = await connection.fetch(
                "DELETE FROM credentials WHERE kind = $1 AND expires_at IS NOT NULL AND expires_at <= $2 RETURNING 1",
                kind,
                now,
            )
            return len(deleted)

        return await self._write(work)

    @read_again_once
    async def credentials_version(self) -> int:
        version = await self.pool.fetchval("SELECT version FROM catalog_versions WHERE name = 'credentials'")
        return int(version or 0)
