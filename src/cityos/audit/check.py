"""The audit chain of a live store, checked as `cityos audit verify` checks an export: the backup's
--verify (backup/audit_check.py) and the admin API's verification status (audit/http.py) use it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson

from cityos.audit.chain import AuditQuery
from cityos.audit.verify import VerifyReport
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


async def verify_store(store: EntityStore, public_pem: bytes | None) -> VerifyReport | None:
    """The chain's report (None: no record yet). With the deployment's public key every checkpoint's
    signature is checked too; without it, every hash and link (a record changed, removed or moved).
    Records after the last checkpoint are accepted (the server signs every few minutes). The hashing
    runs in a thread: a long trail takes seconds of CPU."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cityos.audit.signing import load_public
    from cityos.audit.verify import verify

    lines = await audit_lines(store)
    if not lines:
        return None
    if public_pem is not None:
        return await asyncio.to_thread(verify, lines, load_public(public_pem), allow_unsigned_tail=True)
    # links and hashes only: the checkpoints cannot be checked, a throwaway key never signs one
    throwaway = Ed25519PrivateKey.generate().public_key()
    return await asyncio.to_thread(verify, list(_records_only(lines)), throwaway, allow_unsigned_tail=True)
