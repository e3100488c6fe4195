"""The storage contract of the data channel between cities (dataspace/): the deployment's key,
partners, offers and agreements as versioned documents in one append-only table, so an agreement's
whole life (made, countersigned, revoked) stays provable. Back-ends: sqlite_dataspace.py,
postgres/dataspace.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

DATASPACE_KINDS = ("key", "partner", "offer", "agreement")


@dataclass(frozen=True, slots=True)
class DataspaceRow:
    """One version of one record. `document` None: the record was removed in this version."""

    kind: str  # one of DATASPACE_KINDS
    id: str
    version: int  # increases with every change of any record (the set's version is the largest)
    document: dict[str, Any] | None
    changed_by: str
    changed_at: str  # ISO 8601 UTC


class DataspaceStore(Protocol):
    async def change_record(
        self, kind: str, record_id: str, document: dict[str, Any] | None, *, by: str, create: bool = False
    ) -> DataspaceRow | None:
        """Write a new version in one transaction: with `create`, AlreadyExists if the record
        exists; `document` None removes it (None if it does not exist)."""

    async def load_records(self, kind: str) -> tuple[int, list[DataspaceRow]]:
        """(the latest version of any record, 0 if none; every existing record of `kind`, by id)."""

    async def record_history(self, kind: str, record_id: str) -> list[DataspaceRow]:
        """Every version of one record, oldest first (removals included)."""
