"""The audit trail's part of the storage contract (audit/chain.py says what a record is).

Every back-end seals the audit rows of a write (those its change listeners return, and those of
its own other writes) into the chain inside that write's transaction: after the entity's rows,
before the commit, under a lock that makes appends one at a time across processes, so the chain
has no fork and no gap, and an acknowledged write always has its record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from cityos.audit.chain import AuditCheckpoint, AuditQuery, AuditRecord, AuditRow, ChainHead

# Given the last record retention removes, returns the signed anchor that takes its place.
AnchorMaker = Callable[[AuditRecord], AuditRecord]


class AuditStore(Protocol):
    async def append_audit(self, rows: Sequence[AuditRow]) -> None:
        """Seal rows into the chain in a small transaction of their own (events that are not
        entity writes: denied requests, admin changes, reads of personal data)."""

    async def audit_head(self) -> ChainHead:
        """The last record's seq and hash."""

    async def read_audit(self, query: AuditQuery) -> list[AuditRecord]:
        """Records matching `query`, in seq order (a truncation anchor included, as the first)."""

    async def save_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        """Keep a signed checkpoint (one per seq: a second for the same seq is ignored)."""

    async def audit_checkpoints(self, since_seq: int = 0, until_seq: int | None = None) -> list[AuditCheckpoint]:
        """Checkpoints with since_seq <= seq (<= until_seq), in seq order."""

    async def truncate_audit(self, before: str, anchor: AnchorMaker, note: AuditRow) -> int:
        """Retention, in one transaction: remove the records older than `before` (a prefix of the
        chain, up to the last record with time < before), put the anchor made of the last removed
        one in their place, drop the checkpoints before it and seal `note` (what was removed) at the
        head. Returns how many records were removed (0: nothing to do, nothing written)."""
