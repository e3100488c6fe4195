"""Managing API keys and local users: the framework-free core behind `cityos keys|users` and the
admin API. Secrets are returned once, at creation, and stored only as argon2id hashes; listings show
ids, names and scopes, never a hash. Every change is handed to the audit sink.

Who may manage what: a principal with role admin. An admin scoped to some tenants manages only keys
and users within those tenants, and cannot make a credential valid for every tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cityos.audit.events import AuditEvent, AuditSink
from cityos.auth.errors import AccessDenied, Unauthorized
from cityos.auth.hashing import (
    KEY_PREFIX,
    NAME_RE,
    SESSION_PREFIX,
    epoch_of,
    hash_secret,
    new_credential_id,
    new_secret,
    now_text,
    time_text,
)
from cityos.auth.principal import ADMIN_ROLE, Principal, current_request_id
from cityos.errors import AlreadyExists, BadRequestData, ResourceNotFound
from cityos.ngsild.common import TENANT_RE
from cityos.store.identity_base import CredentialRow, IdentityStore

DEVICE_ROLE = "device"
MAX_NAME = 100
MIN_PASSWORD = 8


@dataclass(frozen=True, slots=True)
class Issued:
    """A new credential and its token, which is shown this once and never stored."""

    row: CredentialRow
    token: str


def require_admin(principal: Principal, *, every_tenant: bool = False) -> None:
    """401 for the anonymous caller, 403 for an authenticated one without role admin. What spans
    the deployment (access policies, the audit trail: `every_tenant`) needs an admin of every
    tenant: one scoped to some tenants would otherwise reach into the others."""
    if principal.kind == "anonymous":
        raise Unauthorized()
    if not principal.is_admin:
        raise AccessDenied("this operation needs the admin role")
    if every_tenant and principal.tenants is not None:
        raise AccessDenied("this operation needs an admin of every tenant")


def _names(values: Iterable[str] | None, what: str) -> list[str]:
    result: list[str] = []
    for value in values or ():
        if not isinstance(value, str) or not NAME_RE.match(value):
            raise BadRequestData(f"invalid {what} {value!r}: 1-64 letters, digits or _-.:@")
        if value not in result:
            result.append(value)
    return result


DEFAULT_TENANT = "@default"  # how the default tenant ("", no NGSILD-Tenant header) is written


def tenant_scope(values: Iterable[str] | None, roles: Iterable[str]) -> list[str] | None:
    """The tenants a new credential is valid for, as given (None: every tenant; "@default" or ""
    is the default tenant). Given nothing, an admin gets every tenant, anyone else the default one;
    "*" alone asks for every tenant."""
    if values is None:
        return None if ADMIN_ROLE in roles else [""]
    chosen = list(values)
    if chosen == ["*"]:
        return None
    result: list[str] = []
    for value in chosen:
        if not isinstance(value, str):
            raise BadRequestData(f"invalid tenant {value!r}")
        name = "" if value in ("", DEFAULT_TENANT) else value
        if name and not TENANT_RE.match(name):
            raise BadRequestData(f"invalid tenant {value!r}")
        if name not in result:
            result.append(name)
    return result


def is_active(row: CredentialRow, now: float) -> bool:
    expires = epoch_of(row.expires_at)
    return row.revoked_at is None and (expires is None or now < expires)


def principal_of(row: CredentialRow) -> Principal:
    """The principal a valid credential stands for."""
    tenants = None if row.tenants is None else frozenset(row.tenants)
    roles, groups = frozenset(row.roles), frozenset(row.groups)
    if row.kind == "key":
        kind = DEVICE_ROLE if DEVICE_ROLE in roles else "key"
        return Principal(id=f"key:{row.id}", kind=kind, tenants=tenants, roles=roles, groups=groups, client=row.name)
    name = row.name  # a user, or a session of the user it is named after
    return Principal(id=f"user:{name}", kind="user", tenants=tenants, roles=roles, groups=groups)


def public_view(row: CredentialRow, now: float) -> dict[str, Any]:
    """What listings and the admin API show: never the hash."""
    status = "revoked" if row.revoked_at else ("active" if is_active(row, now) else "expired")
    view: dict[str, Any] = {"id": row.id, "name": row.name, "tenants": row.tenants, "roles": row.roles}
    view.update(groups=row.groups, createdAt=row.created_at, expiresAt=row.expires_at, status=status)
    if row.revoked_at:
        view["revokedAt"] = row.revoked_at
    return view


class Credentials:
    """Create, list, revoke and delete keys and users. `forget` drops a credential from this
    process's authentication cache (other processes hear of it through the store)."""

    def __init__(
        self,
        store: IdentityStore,
        audit: Callable[[], AuditSink],
        forget: Callable[[str], None] = lambda _credential: None,
    ) -> None:
        self.store = store
        self._audit = audit
        self._forget = forget

    async def _record(self, actor: Principal, operation: str, targets: Sequence[str], **detail: Any) -> None:
        event = AuditEvent(
            principal=actor.id,
            operation=operation,
            tenant="",
            targets=tuple(targets),
            request_id=current_request_id.get(),
            detail=detail,
        )
        await self._audit().record([event])

    def _scope(self, actor: Principal, tenants: Iterable[str] | None, roles: list[str]) -> list[str] | None:
        """The tenants a new credential gets: an admin scoped to tenants may only give those."""
        chosen = tenant_scope(tenants, roles)
        if actor.tenants is None:
            return chosen
        if chosen is None or not set(chosen) <= actor.tenants:
            raise AccessDenied("an admin scoped to tenants can only make credentials within those tenants")
        return chosen

    @staticmethod
    def _manages(actor: Principal, row: CredentialRow) -> bool:
        return actor.tenants is None or (row.tenants is not None and set(row.tenants) <= actor.tenants)

    # -- API keys ----------------------------------------------------------------------------------
    async def create_key(
        self,
        actor: Principal,
        *,
        name: str,
        tenants: Iterable[str] | None = None,
        roles: Iterable[str] = (),
        groups: Iterable[str] = (),
        expires_at: str | None = None,
    ) -> Issued:
        require_admin(actor)
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise BadRequestData(f"a key needs a name of 1-{MAX_NAME} characters")
        secret = new_secret()
        row = CredentialRow(
            kind="key",
            id=new_credential_id(KEY_PREFIX),
            name=name.strip(),
            secret_hash=hash_secret(secret),
            tenants=self._scope(actor, tenants, _names(roles, "role")),
            roles=_names(roles, "role"),
            groups=_names(groups, "group"),
            created_at=now_text(),
            expires_at=expires_at,
        )
        await self.store.add_credential(row)
        await self._record(actor, "key.create", [row.id], name=row.name, roles=row.roles, tenants=row.tenants)
        return Issued(row, f"{row.id}.{secret}")

    async def list_keys(self, actor: Principal) -> list[CredentialRow]:
        require_admin(actor)
        return [row for row in await self.store.list_credentials("key") if self._manages(actor, row)]

    async def get_key(self, actor: Principal, key_id: str) -> CredentialRow:
        require_admin(actor)
        row = await self.store.get_credential("key", key_id)
        if row is None or not self._manages(actor, row):
            raise ResourceNotFound(f"no key {key_id}")
        return row

    async def revoke_key(self, actor: Principal, key_id: str) -> None:
        """Revoked at once, in this process and (through the store) in every other."""
        await self.get_key(actor, key_id)
        revoked = await self.store.revoke_credential("key", key_id, now_text())
        self._forget(f"key:{key_id}")
        if revoked:
            await self._record(actor, "key.revoke", [key_id])

    async def rotate_key(self, actor: Principal, key_id: str) -> Issued:
        """A new secret for a key (its id, name, roles and tenants stay); the old token stops
        working at once, in this process and (through the store) in every other."""
        row = await self.get_key(actor, key_id)
        secret = new_secret()
        await self.store.set_credential_secret("key", key_id, hash_secret(secret))
        self._forget(f"key:{key_id}")
        await self._record(actor, "key.rotate", [key_id])
        return Issued(row, f"{row.id}.{secret}")

    # -- local users -------------------------------------------------------------------------------
    async def create_user(
        self,
        actor: Principal,
        *,
        name: str,
        password: str,
        tenants: Iterable[str] | None = None,
        roles: Iterable[str] = (),
        groups: Iterable[str] = (),
    ) -> CredentialRow:
        require_admin(actor)
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise BadRequestData("a user name is 1-64 letters, digits or _-.:@")
        _check_password(password)
        row = CredentialRow(
            kind="user",
            id=name,
            name=name,
            secret_hash=hash_secret(password, password=True),
            tenants=self._scope(actor, tenants, _names(roles, "role")),
            roles=_names(roles, "role"),
            groups=_names(groups, "group"),
            created_at=now_text(),
        )
        try:
            await self.store.add_credential(row)
        except AlreadyExists as exc:
            raise AlreadyExists(f"user {name} already exists") from exc
        await self._record(actor, "user.create", [f"user:{name}"], roles=row.roles, tenants=row.tenants)
        return row

    async def list_users(self, actor: Principal) -> list[CredentialRow]:
        require_admin(actor)
        return [row for row in await self.store.list_credentials("user") if self._manages(actor, row)]

    async def _user(self, actor: Principal, name: str) -> CredentialRow:
        require_admin(actor)
        row = await self.store.get_credential("user", name)
        if row is None or not self._manages(actor, row):
            raise ResourceNotFound(f"no user {name}")
        return row

    async def delete_user(self, actor: Principal, name: str) -> None:
        """The user and its session tokens go at once."""
        await self._user(actor, name)
        await self.store.delete_credential("user", name)
        self._forget(f"user:{name}")
        await self._record(actor, "user.delete", [f"user:{name}"])

    async def set_password(self, actor: Principal, name: str, password: str) -> None:
        """A new password; the user's session tokens stop working."""
        await self._user(actor, name)
        _check_password(password)
        await self.store.set_credential_secret("user", name, hash_secret(password, password=True))
        self._forget(f"user:{name}")
        await self._record(actor, "user.passwd", [f"user:{name}"])

    async def issue_session(self, user: CredentialRow, lifetime: float, now: float) -> Issued:
        """A short-lived bearer token for a user who proved its password (the token endpoint)."""
        from datetime import UTC, datetime

        secret = new_secret()
        row = CredentialRow(
            kind="session",
            id=new_credential_id(SESSION_PREFIX),
            name=user.name,
            secret_hash=hash_secret(secret),
            tenants=user.tenants,
            roles=user.roles,
            groups=user.groups,
            created_at=now_text(),
            expires_at=time_text(datetime.fromtimestamp(now + lifetime, UTC)),
            owner=f"user:{user.name}",
        )
        await self.store.delete_expired_credentials("session", now_text())  # spent tokens do not pile up
        await self.store.add_credential(row)
        return Issued(row, f"{row.id}.{secret}")


def _check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD or len(password) > 1024:
        raise BadRequestData(f"a password has {MIN_PASSWORD} to 1024 characters")
