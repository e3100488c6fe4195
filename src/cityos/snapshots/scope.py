"""The hidden tenant that holds a snapshot's entities, and the NGSILD-Snapshot request scope.

A hidden tenant is named `<owner tenant>~snapshot~<key>`: `~` is refused in NGSILD-Tenant
(ngsild/common.TENANT_RE), so no client can name one, and the owner tenant can be read back from
the name, which is how access policies judge a snapshot read by the owner tenant's rules."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

MARK = "~snapshot~"
HEADER = "NGSILD-Snapshot"
SCOPE_KEY = "cityos.snapshot"  # the ASGI scope's key of the request's SnapshotScope (http.py)


@dataclass(frozen=True, slots=True)
class SnapshotScope:
    """What a request naming a snapshot reads: `hidden`, the tenant of the snapshot `snapshot_id`
    made in `owner`."""

    owner: str
    snapshot_id: str
    hidden: str


def new_hidden_tenant(owner: str) -> str:
    return f"{owner}{MARK}{uuid.uuid4().hex}"


def owner_of(tenant: str) -> str:
    """The tenant a hidden tenant belongs to; any other tenant is its own owner."""
    owner, mark, _ = tenant.partition(MARK)
    return owner if mark else tenant
