"""The storage contract of access policies (policy/): every change is a new row with a new version
number, so the current set, each policy's history and the version a worker has loaded all come from
one append-only table. Back-ends: sqlite_policies.py, postgres/policies.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

PolicyChange = Literal["create", "replace", "delete"]


@dataclass(frozen=True, slots=True)
class PolicyRow:
    """One version of one policy. `document` None: the policy was deleted in this version."""

    id: str
    version: int  # increases with every change to any policy (the set's version is the largest)
    document: dict[str, Any] | None
    changed_by: str  # the principal id (or "file:<path>" for --policy-file)
    changed_at: str  # ISO 8601 UTC
    source: str = "api"  # "api" or "file": a file reload deletes only policies that came from a file


class PolicyStore(Protocol):
    async def change_policy(
        self, change: PolicyChange, policy_id: str, document: dict[str, Any] | None, *, by: str, source: str = "api"
    ) -> PolicyRow | None:
        """Record a change in one transaction: create (AlreadyExists if the policy exists), replace or
        delete (None if it does not exist). Other workers hear of it (StoreEvent kind "policy")."""

    async def load_policies(self) -> tuple[int, list[PolicyRow]]:
        """(the latest version number, 0 if none; every existing policy at its latest version, by id)."""

    async def policy_history(self, policy_id: str) -> list[PolicyRow]:
        """Every version of one policy, oldest first (deletions included); empty if it never existed."""
