"""The audit trail on SQLite (store/audit_base.py), mixed into SQLiteStore.

The writer thread gathers a transaction's audit rows in `_audit_rows` (cut back when a savepoint
rolls back) and seals them into the chain just before COMMIT: one read of the log's last record
(the head), one insert per record. BEGIN IMMEDIATE already makes the file's writers (a server, a
`cityos import`) take turns, so the head read there is the chain's true head.

Stored compactly (layout 4, issue 15: the trail was 350 of the 2,200 bytes per entity after a load,
one record per entity written): `hash` as its 32 bytes, not 64 hex digits, and `prev` as '' when it
is the hash of the record just before (always, but for the first record and a truncation anchor).
Every read goes through the view `audit_records`, which gives both back as hex text (rows of older
files, hex in both columns, read the same).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from cityos.audit.chain import AuditCheckpoint, AuditQuery, AuditRecord, AuditRow, ChainHead, chained
from cityos.store.audit_base import AnchorMaker

T = TypeVar("T")

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (  -- the hash chain (audit/chain.py); targets and detail as JSON text
    seq INTEGER PRIMARY KEY, time TEXT NOT NULL, principal TEXT NOT NULL, operation TEXT NOT NULL,
    tenant TEXT NOT NULL, targets TEXT NOT NULL, outcome TEXT NOT NULL, request_id TEXT NOT NULL,
    detail TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL, signature TEXT
);
CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (time);
CREATE INDEX IF NOT EXISTS audit_log_principal ON audit_log (principal, seq);
CREATE VIEW IF NOT EXISTS audit_records AS SELECT
    seq, time, principal, operation, tenant, targets, outcome, request_id, detail,
    CASE WHEN a.prev <> '' THEN a.prev ELSE (
        SELECT CASE WHEN typeof(p.hash) = 'blob' THEN lower(hex(p.hash)) ELSE p.hash END
        FROM audit_log p WHERE p.seq = a.seq - 1
    ) END AS prev,
    CASE WHEN typeof(a.hash) = 'blob' THEN lower(hex(a.hash)) ELSE a.hash END AS hash,
    signature
FROM audit_log a;
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, time TEXT NOT NULL, key_id TEXT NOT NULL, signature TEXT NOT NULL
);
"""
_COLUMNS = "seq, time, principal, operation, tenant, targets, outcome, request_id, detail, prev, hash, signature"
_INSERT = f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _values(record: AuditRecord) -> tuple[Any, ...]:
    """A record with its `prev` spelled out (a truncation anchor's predecessor is gone)."""
    return (
        record.seq,
        record.time,
        record.principal,
        record.operation,
        record.tenant,
        orjson.dumps(record.targets).decode(),
        record.outcome,
        record.request_id,
        orjson.dumps(record.detail).decode(),
        record.prev,
        bytes.fromhex(record.hash),
        record.signature,
    )


def _record(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(
        seq=row[0],
        time=row[1],
        principal=row[2],
        operation=row[3],
        tenant=row[4],
        targets=orjson.loads(row[5]),
        outcome=row[6],
        request_id=row[7],
        detail=orjson.loads(row[8]),
        prev=row[9],
        hash=row[10],
        signature=row[11],
    )


def _head(connection: sqlite3.Connection) -> ChainHead:
    """The last record (a truncation anchor stands for the removed ones): no head row to rewrite,
    so a commit touches no page but the log's last ones."""
    row = connection.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    if row is None:
        return ChainHead()
    seq, digest = row  # stored whole in every row (bytes; hex text in rows of before): no view needed
    return ChainHead(seq, digest.hex() if isinstance(digest, bytes) else digest)


def seal_into(connection: sqlite3.Connection, rows: Sequence[AuditRow]) -> None:
    """Chain rows after the head, inside the caller's transaction (one insert statement for them all).
    A record's `prev` is stored as '' when the record before it is in the log: the head, or the one
    before it here (all but the chain's very first record)."""
    dumps = orjson.dumps
    fromhex = bytes.fromhex
    values = [
        (
            seq,
            row.time,
            row.principal,
            row.operation,
            row.tenant,
            dumps(targets).decode(),
            row.outcome,
            row.request_id,
            dumps(row.detail).decode() if row.detail else "{}",
            "" if seq > 1 else prev,
            fromhex(digest),
            None,
        )
        for seq, targets, prev, digest, row in chained(_head(connection), rows)
    ]
    if len(values) == 1:
        connection.execute(_INSERT, values[0])
    else:
        connection.executemany(_INSERT, values)


class SQLiteAudit:
    """The AuditStore methods; SQLiteStore supplies the connections, transactions and `_audit_rows`."""

    _audit_rows: list[AuditRow]

    if TYPE_CHECKING:
        _listeners: dict[str, Any]

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T], *, groupable: bool = True) -> T: ...

    def _audit_note(self, row: Callable[[], AuditRow | None]) -> None:
        """Writer thread, inside a write: add the row this write makes, when the trail is on."""
        if "audit" in self._listeners and (made := row()) is not None:
            self._audit_rows.append(made)

    async def append_audit(self, rows: Sequence[AuditRow]) -> None:
        if rows:
            await self._write(lambda connection: self._audit_rows.extend(rows))

    async def audit_head(self) -> ChainHead:
        return await self._read(_head)

    async def read_audit(self, query: AuditQuery) -> list[AuditRecord]:
        clauses: list[str] = ["seq > ?"]
        params: list[Any] = [query.after_seq]
        for column, value in (("principal", query.principal), ("operation", query.operation), ("tenant", query.tenant)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.target is not None:
            clauses.append("EXISTS (SELECT 1 FROM json_each(audit_records.targets) WHERE value = ?)")
            params.append(query.target)
        if query.since is not None:
            clauses.append("time >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("time < ?")
            params.append(query.until)
        sql = f"SELECT {_COLUMNS} FROM audit_records WHERE {' AND '.join(clauses)} ORDER BY seq"
        if query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit)
        return await self._read(lambda c: [_record(row) for row in c.execute(sql, params)])

    async def save_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        await self._write(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO audit_checkpoints VALUES (?, ?, ?, ?, ?)",
                (checkpoint.seq, checkpoint.hash, checkpoint.time, checkpoint.key_id, checkpoint.signature),
            )
        )

    async def audit_checkpoints(self, since_seq: int = 0, until_seq: int | None = None) -> list[AuditCheckpoint]:
        upper = until_seq if until_seq is not None else 2**62
        rows = await self._read(
            lambda c: c.execute(
                "SELECT seq, hash, time, key_id, signature FROM audit_checkpoints"
                " WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (since_seq, upper),
            ).fetchall()
        )
        return [AuditCheckpoint(*row) for row in rows]

    async def truncate_audit(self, before: str, anchor: AnchorMaker, note: AuditRow) -> int:
        def run(connection: sqlite3.Connection) -> int:
            found = connection.execute(
                f"SELECT {_COLUMNS} FROM audit_records WHERE seq = (SELECT max(seq) FROM audit_log WHERE time < ?)",
                (before,),
            ).fetchone()
            if found is None or found[11] is not None:  # nothing old enough, or only the anchor itself
                return 0
            last = _record(found)
            removed: int = connection.execute(
                "SELECT count(*) FROM audit_log WHERE seq <= ? AND signature IS NULL", (last.seq,)
            ).fetchone()[0]
            connection.execute("DELETE FROM audit_log WHERE seq <= ?", (last.seq,))
            made = anchor(last)
            connection.execute(_INSERT, _values(made))
            connection.execute("DELETE FROM audit_checkpoints WHERE seq < ?", (last.seq,))
            note.detail = {**note.detail, "removed": removed, "through": last.seq}
            self._audit_rows.append(note)
            return removed

        return await self._write(run, groupable=False)
