"""The Principal: who a request (or a subscription's delivery) acts for, whatever proved it.

Everything downstream (policies, audit, rate limits, subscription ownership) speaks of a Principal,
never of keys, passwords or tokens, so a new way to log in changes nothing past the door.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

ADMIN_ROLE = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `id` is stable and unique across kinds ("key:<key id>",
    "user:<name>", "oidc:<issuer>#<sub>"), so it can own subscriptions and appear in the audit trail.
    `tenants` None means every tenant (an admin key made without a tenant, or auth off)."""

    id: str
    kind: str  # "key", "device", "user", "oidc", "anonymous", "open"
    tenants: frozenset[str] | None = frozenset()
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    client: str | None = None  # the OAuth client (azp) or the key's name
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    @property
    def unrestricted(self) -> bool:
        """Auth off: no policy applies (the fast path; behaviour is exactly that of an open broker)."""
        return self.kind == "open"

    def may_use_tenant(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def may_manage(self, owner: str | None) -> bool:
        """What a principal made (a subscription, an entity map) belongs to it: its maker (`owner`,
        a principal id) or an admin manages it; one made with auth off (no owner) only an admin."""
        return self.unrestricted or self.is_admin or (owner is not None and owner == self.id)

    @property
    def owner_id(self) -> str | None:
        """What a resource this principal makes records as its owner (None with auth off)."""
        return None if self.unrestricted else self.id


# auth off (--auth off): every request acts as this principal and nothing is filtered
OPEN = Principal(id="open", kind="open", tenants=None, roles=frozenset({ADMIN_ROLE}))
# auth required and no credentials: what the policies grant to the public (e.g. open data)
ANONYMOUS = Principal(id="anonymous", kind="anonymous", tenants=None)

# set by the auth middleware for the request being served; OPEN where nothing set it
current_principal: ContextVar[Principal] = ContextVar("cityos_principal", default=OPEN)
# the request id (X-Request-Id or generated) that logs and audit records carry
current_request_id: ContextVar[str] = ContextVar("cityos_request_id", default="")


class PrincipalDirectory(Protocol):
    """Finds a principal again by its id, e.g. when a notification is delivered long after the
    subscription was made: None means it no longer exists (revoked key, deleted user), which stops
    everything acting for it."""

    async def lookup(self, principal_id: str) -> Principal | None: ...


class OpenDirectory:
    """Auth off: every id is the unrestricted principal."""

    async def lookup(self, principal_id: str) -> Principal | None:
        return OPEN
