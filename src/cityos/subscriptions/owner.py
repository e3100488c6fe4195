"""The owner of a subscription: the principal it acts for, kept with it in the store (never in the
NGSI-LD representation), and who may manage it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cityos.auth.principal import Principal

# principals the directory cannot find again by id (their proof was a token): the subscription keeps
# a snapshot of their tenants, roles, groups and client, which the policies are evaluated against at
# delivery in every worker (subscriptions/access.py owner_principal); an update by the owner renews it
SNAPSHOT_KINDS = frozenset({"oidc"})


@dataclass(frozen=True, slots=True)
class Owner:
    """The principal a subscription acts for. `snapshot`: for SNAPSHOT_KINDS only."""

    id: str
    kind: str
    snapshot: Principal | None = None

    @classmethod
    def of(cls, principal: Principal) -> Owner | None:
        """The owner to record for a subscription `principal` creates; None with auth off (the stored
        row stays exactly as it was before access control existed)."""
        if principal.unrestricted:
            return None
        return cls(principal.id, principal.kind, principal if principal.kind in SNAPSHOT_KINDS else None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind}
        snapshot = self.snapshot
        if snapshot is not None:
            out["tenants"] = None if snapshot.tenants is None else sorted(snapshot.tenants)
            out["roles"] = sorted(snapshot.roles)
            out["groups"] = sorted(snapshot.groups)
            out["client"] = snapshot.client
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Owner | None:
        if not raw:
            return None
        snapshot = None
        if "roles" in raw:
            tenants = raw.get("tenants")
            snapshot = Principal(
                id=raw["id"],
                kind=raw["kind"],
                tenants=None if tenants is None else frozenset(tenants),
                roles=frozenset(raw.get("roles", ())),
                groups=frozenset(raw.get("groups", ())),
                client=raw.get("client"),
            )
        return cls(raw["id"], raw["kind"], snapshot)


def may_manage(principal: Principal, owner: Owner | None) -> bool:
    """Retrieve, list, update and delete: the owner, or an admin (the tenant was checked before).
    A subscription made while auth was off has no owner: only admins manage it with auth on."""
    if principal.unrestricted or principal.is_admin:
        return True
    return owner is not None and owner.id == principal.id
