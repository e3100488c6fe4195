"""The audit chain of a restored backup, checked as `cityos audit verify` checks an export."""

from __future__ import annotations

from cityos.audit.check import verify_store
from cityos.backup import BackupReport
from cityos.store.base import EntityStore


async def check_store(store: EntityStore, report: BackupReport, public_pem: bytes | None) -> None:
    """Add the chain's problems to `report` (audit/check.py verify_store)."""
    found = await verify_store(store, public_pem)
    if found is None:
        return
    report.audit_records = found.records
    report.signed_through = found.signed_through
    report.problems += [f"audit: {problem}" for problem in found.problems]
