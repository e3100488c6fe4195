"""The audit chain of a restored backup, checked as `cityos audit verify` checks an export."""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from cityos.audit.chain import AuditQuery
from cityos.backup import BackupReport
from cityos.store.base import EntityStore

PAGE = 5000


async def audit_lines(store: EntityStore) -> list[bytes]:
    """The whole trail as export lines (records, then their stored checkpoints), signing nothing."""
    lines: list[bytes] = []
    after = 0
    while True:
        page = await store.read_audit(AuditQuery(after_seq=after, limit=PAGE))
        lines += [orjson.dumps(record.as_dict()) for record in page]
        if len(page) < PAGE:
            break
        after = page[-1].seq
    for checkpoint in await store.audit_checkpoints(0, None):
        lines.append(orjson.dumps({"checkpoint": checkpoint.as_dict()}))
    return lines


def _records_only(lines: list[bytes]) -> Iterator[bytes]:
    return (line for line in lines if not line.startswith(b'{"checkpoint"'))


async def check_store(store: EntityStore, report: BackupReport, public_pem: bytes | None) -> None:
    """Add the chain's problems to `report`. With the deployment's public key every checkpoint's
    signature is checked too; without it, every hash and link (a record changed, removed or moved)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cityos.audit.signing import load_public
    from cityos.audit.verify import verify

    lines = await audit_lines(store)
    if not lines:
        return
    if public_pem is not None:
        found = verify(lines, load_public(public_pem), allow_unsigned_tail=True)
    else:  # links and hashes only: the checkpoints cannot be checked, a throwaway key never signs one
        found = verify(_records_only(lines), Ed25519PrivateKey.generate().public_key(), allow_unsigned_tail=True)
    report.audit_records = found.records
    report.signed_through = found.signed_through
    report.problems += [f"audit: {problem}" for problem in found.problems]
