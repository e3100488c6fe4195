"""The hash chain: how a record is serialized, hashed and linked to the one before it.

A record's hash is SHA-256 over its canonical serialization: the record as a JSON object without
its `hash` and `signature` members, keys sorted (by code point, at every depth), no whitespace,
UTF-8, strings escaped only where JSON requires it (orjson with OPT_SORT_KEYS; for the values a
record holds, strings, integers, booleans, null, arrays and objects, this is RFC 8785's form).
Each record carries the hash of the one before it in `prev` (the first one: 64 zeros), so
changing, removing, inserting or moving any record breaks every link after it. Framework-free:
the store seals rows with it, and `cityos audit verify` checks an export with it offline.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from cityos.clock import second_text

GENESIS = "0" * 64  # the `prev` of the very first record
UNSIGNED = ("hash", "signature")  # members outside the hashed form


def canonical(value: dict[str, Any]) -> bytes:
    """The canonical serialization hashed and signed (see the module docstring)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of a record's canonical form, its own hash and signature left out."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k not in UNSIGNED})).hexdigest()


def utc_now() -> str:
    """Record time: UTC, microseconds, a `Z` suffix (sorts as text). Every write makes one, so the
    date and time of day are formatted once per second, not once per record."""
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{second_text(second)}.{str(1_000_000 + micro)[1:]}Z"  # micro zero-padded, no format spec parsed


@dataclass(slots=True)
class AuditRow:
    """One record before it is sealed into the chain (the store gives it its seq, prev and hash in
    the transaction that writes it)."""

    operation: str  # "entity.create", "entity.update", "entity.delete", "temporal.*", "request.denied", ...
    tenant: str
    targets: Sequence[str]
    principal: str
    request_id: str = ""
    outcome: str = "ok"
    detail: dict[str, Any] = field(default_factory=dict)
    time: str = field(default_factory=utc_now)


@dataclass(slots=True)
class AuditRecord:
    """A sealed record, as stored and exported. `signature` only on a truncation anchor."""

    seq: int
    time: str
    principal: str
    operation: str
    tenant: str
    targets: list[str]
    outcome: str
    request_id: str
    detail: dict[str, Any]
    prev: str
    hash: str
    signature: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "time": self.time,
            "principal": self.principal,
            "operation": self.operation,
            "tenant": self.tenant,
            "targets": self.targets,
            "outcome": self.outcome,
            "request_id": self.request_id,
            "detail": self.detail,
            "prev": self.prev,
            "hash": self.hash,
        }
        if self.signature is not None:
            out["signature"] = self.signature
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditRecord:
        """From an export line; ValueError when a member is missing or of the wrong type."""
        texts = ("time", "principal", "operation", "tenant", "outcome", "request_id", "prev", "hash")
        if (
            not isinstance(data.get("seq"), int)
            or isinstance(data.get("seq"), bool)
            or not all(isinstance(data.get(name), str) for name in texts)
            or not isinstance(data.get("targets"), list)
            or not all(isinstance(target, str) for target in data["targets"])
            or not isinstance(data.get("detail"), dict)
            or not isinstance(data.get("signature", ""), str)
        ):
            raise ValueError("not an audit record")
        return cls(
            seq=data["seq"],
            time=data["time"],
            principal=data["principal"],
            operation=data["operation"],
            tenant=data["tenant"],
            targets=list(data["targets"]),
            outcome=data["outcome"],
            request_id=data["request_id"],
            detail=dict(data["detail"]),
            prev=data["prev"],
            hash=data["hash"],
            signature=data.get("signature"),
        )


class ChainHead(NamedTuple):
    """The last record's seq and hash (seq 0 and GENESIS before the first record). A named tuple:
    every write reads one, so it is cheap to make."""

    seq: int = 0
    hash: str = GENESIS


def chained(head: ChainHead, rows: Iterable[AuditRow]) -> list[tuple[int, list[str], str, str, AuditRow]]:
    """Chain `rows` after `head`: (seq, targets, prev, hash, row) of each, one SHA-256 per record.
    The stores turn these into their column values directly (no AuditRecord in between)."""
    out = []
    seq, prev = head
    for row in rows:
        seq += 1
        targets = list(row.targets)
        body = {
            "seq": seq,
            "time": row.time,
            "principal": row.principal,
            "operation": row.operation,
            "tenant": row.tenant,
            "targets": targets,
            "outcome": row.outcome,
            "request_id": row.request_id,
            "detail": row.detail,
            "prev": prev,
        }
        digest = hashlib.sha256(canonical(body)).hexdigest()
        out.append((seq, targets, prev, digest, row))
        prev = digest
    return out


def seal(head: ChainHead, rows: Iterable[AuditRow]) -> tuple[list[AuditRecord], ChainHead]:
    """Chain `rows` after `head`: each gets the next seq, the previous hash and its own hash."""
    sealed = [
        AuditRecord(
            seq,
            row.time,
            row.principal,
            row.operation,
            row.tenant,
            targets,
            row.outcome,
            row.request_id,
            row.detail,
            prev,
            digest,
        )
        for seq, targets, prev, digest, row in chained(head, rows)
    ]
    return sealed, (ChainHead(sealed[-1].seq, sealed[-1].hash) if sealed else head)


@dataclass(slots=True)
class AuditCheckpoint:
    """A signed statement "the chain's record `seq` has hash `hash`": it vouches for every record
    up to `seq`, since each hash covers all those before it."""

    seq: int
    hash: str
    time: str
    key_id: str
    signature: str = ""

    def signed_part(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "time": self.time, "key_id": self.key_id}

    def as_dict(self) -> dict[str, Any]:
        return {**self.signed_part(), "signature": self.signature}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditCheckpoint:
        """From an export line; ValueError when a member is missing or of the wrong type."""
        if not isinstance(data, dict) or not isinstance(data.get("seq"), int):
            raise ValueError("not a checkpoint")
        members = [data.get(name) for name in ("hash", "time", "key_id", "signature")]
        if not all(isinstance(member, str) for member in members):
            raise ValueError("not a checkpoint")
        return cls(data["seq"], data["hash"], data["time"], data["key_id"], data["signature"])


@dataclass(slots=True)
class AuditQuery:
    """What the query API and the export select; None does not filter. Records come in seq order,
    those after `after_seq` (the paging cursor) first."""

    principal: str | None = None
    target: str | None = None  # an entity (or key, policy) id among the record's targets
    operation: str | None = None
    tenant: str | None = None
    since: str | None = None  # time >= since (same text form as utc_now)
    until: str | None = None  # time < until
    after_seq: int = 0
    limit: int | None = 100
