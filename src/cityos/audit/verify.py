"""Offline verification of an export (`cityos audit verify`): the chain links, every hash, and the
signed checkpoints, with nothing but the export and the deployment's public key.

An export is JSON Lines: one record per line (AuditRecord.as_dict), in seq order, and checkpoint
lines `{"checkpoint": {...}}`. What each check catches:
- a record whose content changed: its recomputed hash differs from the one it carries;
- ... and whose hash was recomputed too: the next record's `prev` no longer matches;
- ... and every later hash recomputed: the signed checkpoints no longer match (the key is needed);
- a removed, inserted or moved record: seq numbers are not consecutive and `prev` breaks;
- records removed from the end: a checkpoint names a record that is not there (every export ends
  with one signed at export time);
- records removed from the start: the first record is neither seq 1 (prev = 64 zeros) nor a
  signed truncation anchor (an export of a time range starts inside the chain: `--partial`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cityos.audit.chain import GENESIS, AuditCheckpoint, AuditRecord, record_hash
from cityos.audit.signing import anchor_valid, checkpoint_valid

TRUNCATE = "audit.truncate"


@dataclass(slots=True)
class VerifyReport:
    records: int = 0
    checkpoints: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    signed_through: int = 0  # the highest seq a valid checkpoint vouches for
    partial: bool = False  # the export starts inside the chain (a time range): what precedes is not checked
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_lines(lines: Iterable[bytes | str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(records, checkpoints, problems) of an export's lines."""
    records: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            problems.append(f"line {number}: not JSON")
            continue
        if not isinstance(value, dict):
            problems.append(f"line {number}: not a JSON object")
        elif "checkpoint" in value:
            checkpoints.append(value["checkpoint"])
        else:
            records.append(value)
    return records, checkpoints, problems


def verify(
    lines: Iterable[bytes | str], public: Ed25519PublicKey, *, allow_unsigned_tail: bool = False, partial: bool = False
) -> VerifyReport:
    """Check an export; `partial`: it may start inside the chain (an export of a time range)."""
    records_raw, checkpoints_raw, problems = parse_lines(lines)
    report = VerifyReport(problems=problems)
    records: list[AuditRecord] = []
    for raw in records_raw:
        try:
            records.append(AuditRecord.from_dict(raw))
        except (KeyError, TypeError, ValueError):
            report.problems.append(f"a record lacks a member or has the wrong type: {str(raw)[:80]}")
    report.records = len(records)
    report.checkpoints = len(checkpoints_raw)
    if not records:
        report.problems.append("the export holds no record")
        return report
    report.first_seq, report.last_seq = records[0].seq, records[-1].seq
    _check_links(records, report, public)
    if report.partial and not partial:
        report.problems.append(
            f"the export starts at seq {report.first_seq}, neither the chain's first record nor a signed"
            " truncation record: records before it were removed (a time-range export: verify with --partial)"
        )
    by_seq = {record.seq: record for record in records}
    for raw in checkpoints_raw:
        try:
            checkpoint = AuditCheckpoint.from_dict(raw)
        except ValueError:
            report.problems.append("a checkpoint lacks a member or has the wrong type")
            continue
        if not checkpoint_valid(public, checkpoint):
            report.problems.append(f"checkpoint at seq {checkpoint.seq}: the signature is not valid for this key")
            continue
        record = by_seq.get(checkpoint.seq)
        if record is None:
            if report.first_seq <= checkpoint.seq <= report.last_seq or checkpoint.seq > report.last_seq:
                report.problems.append(f"checkpoint at seq {checkpoint.seq}: that record is missing (records removed)")
            continue
        if record.hash != checkpoint.hash:
            report.problems.append(
                f"checkpoint at seq {checkpoint.seq}: the record's hash differs from the signed one (records changed)"
            )
            continue
        report.signed_through = max(report.signed_through, checkpoint.seq)
    if report.signed_through < report.last_seq and not allow_unsigned_tail:
        report.problems.append(
            f"records {report.signed_through + 1}-{report.last_seq} are after the last signed checkpoint:"
            " removing them could not be detected (export with the key, or --allow-unsigned-tail)"
        )
    return report


def _check_links(records: list[AuditRecord], report: VerifyReport, public: Ed25519PublicKey) -> None:
    first = records[0]
    if first.operation == TRUNCATE and first.signature is not None:
        # the anchor stands for the removed records: its hash is theirs, vouched for by its signature
        if anchor_valid(public, first):
            report.signed_through = first.seq
        else:
            report.problems.append(f"seq {first.seq}: the truncation record's signature is not valid for this key")
        expected_prev = first.hash
        rest = records[1:]
        expected_seq = first.seq + 1
    else:
        rest = records
        expected_seq = first.seq
        expected_prev = first.prev
        if first.seq == 1:
            if first.prev != GENESIS:
                report.problems.append("seq 1: prev is not the genesis value")
        else:
            report.partial = True
    for record in rest:
        if record.signature is not None:
            report.problems.append(f"seq {record.seq}: a signed (truncation) record inside the chain")
        if record.seq != expected_seq:
            report.problems.append(
                f"seq {record.seq} where {expected_seq} was expected: a record was removed, inserted or moved"
            )
        if record.prev != expected_prev:
            report.problems.append(f"seq {record.seq}: prev does not match the previous record's hash (link broken)")
        if record_hash(record.as_dict()) != record.hash:
            report.problems.append(f"seq {record.seq}: the content does not match its hash (record edited)")
        expected_seq = record.seq + 1
        expected_prev = record.hash
