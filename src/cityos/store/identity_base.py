"""The identity part of the storage contract: API keys, local users and their session tokens.

Only slow hashes of secrets are stored (auth/hashing.py). Every write that takes something away
(revoke, delete, new password) bumps a version the authenticators of other processes poll (a `cityos
keys revoke` on the SQLite file a server uses), and on PostgreSQL it also sends a "credential"
StoreEvent that every worker hears when it commits. Adding a credential invalidates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

CREDENTIAL_EVENT = "credential"  # StoreEvent.kind; key "<kind>:<id>"


@dataclass(slots=True)
class CredentialRow:
    """A key ("key"), a local user ("user") or a user's short-lived session token ("session").
    `tenants` None: every tenant. Times are ISO 8601 UTC text (compared as text)."""

    kind: str
    id: str  # the key id, the user name, the session id
    name: str  # what an operator calls it (the key's name; the user name)
    secret_hash: str  # argon2id of the secret or password
    tenants: list[str] | None = None
    roles: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    created_at: str = ""
    expires_at: str | None = None
    revoked_at: str | None = None
    owner: str | None = None  # "user:<name>" for a session: deleted with its user


class IdentityStore(Protocol):
    async def add_credential(self, row: CredentialRow) -> None:
        """Insert; AlreadyExists if (kind, id) is taken."""

    async def get_credential(self, kind: str, credential_id: str) -> CredentialRow | None:
        """One credential, revoked or expired too (validity is the caller's rule); None if none."""

    async def list_credentials(self, kind: str) -> list[CredentialRow]:
        """Every credential of a kind, in creation order."""

    async def revoke_credential(self, kind: str, credential_id: str, at: str) -> bool:
        """Mark revoked at `at`; False if there is none or it was revoked already."""

    async def delete_credential(self, kind: str, credential_id: str) -> bool:
        """Remove it and the credentials it owns (a user's sessions); False if there was none."""

    async def set_credential_secret(self, kind: str, credential_id: str, secret_hash: str) -> bool:
        """Replace the secret hash (a new password); the credentials it owns are deleted. False if none."""

    async def delete_expired_credentials(self, kind: str, now: str) -> int:
        """Remove the credentials of a kind whose expiry is at or before `now` (spent session
        tokens); how many went. Nothing is cached for them, so no version bump."""

    async def credentials_version(self) -> int:
        """A number that changes with every credential write, by any process."""
