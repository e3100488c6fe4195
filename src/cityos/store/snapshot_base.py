"""The storage contract of snapshots (spec 5.16): one row per snapshot, keyed by (tenant, id), holding
the Snapshot document as snapshots/model.py keeps it. The frozen entities themselves are ordinary
entities of the snapshot's own hidden tenant (snapshots/scope.py), written through `mutate` like
every other entity. Back-ends: sqlite_snapshots.py, postgres/snapshots.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class SnapshotRow:
    tenant: str  # the tenant the snapshot was made in (its owner tenant)
    id: str
    document: dict[str, Any]  # the Snapshot as snapshots/model.py stores it


class SnapshotStore(Protocol):
    async def save_snapshot(self, row: SnapshotRow, *, create: bool) -> None:
        """Insert (create=True: AlreadyExists if the id is taken in the tenant) or replace; a replace
        of a snapshot deleted meanwhile writes nothing."""

    async def get_snapshot(self, tenant: str, snapshot_id: str) -> SnapshotRow | None:
        """One stored snapshot; None if there is none."""

    async def list_snapshots(self, tenant: str) -> list[SnapshotRow]:
        """A tenant's snapshots, in creation order."""

    async def all_snapshots(self) -> list[SnapshotRow]:
        """Every tenant's snapshots (the sweep of interrupted fills and expired snapshots)."""

    async def delete_snapshot(self, tenant: str, snapshot_id: str) -> bool:
        """Remove a snapshot's row (not its entities: the caller deletes those); False if there was none."""
