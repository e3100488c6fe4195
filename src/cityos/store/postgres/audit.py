"""The audit trail on PostgreSQL (store/audit_base.py), mixed into PostgresStore.

Many connections and workers write at once, yet the chain must stay one chain (no fork, no gap).
Sealing inside each write, under a lock on the chain's head held until COMMIT, was measured first:
it makes every write's commit (and its WAL flush) wait for the one before, and halved the write
rate of two workers with 16 concurrent writers. So a write only inserts its audit rows into
`audit_pending`, in its own transaction (an acknowledged write always has its record, also across
SIGKILL), and a sealer chains the committed pending rows in batches: it holds the audit_head row
FOR UPDATE (one sealer at a time, whichever worker), moves the rows it sees into audit_log in id
order with the next seqs and hashes, and commits. Each worker runs one, woken by its writes (SEAL_DELAY
later, so that under load one seal takes many writes' rows; and every second, and before every read
of the trail, so a query sees every committed record). A seal is two statements: the head's lock
with the pending rows it takes, then the chained records with the new head.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from cityos.audit.chain import AuditCheckpoint, AuditQuery, AuditRecord, AuditRow, ChainHead, seal
from cityos.errors import log_failure
from cityos.store.audit_base import AnchorMaker
from cityos.store.postgres.busy import Transactions, read_again_once
from cityos.store.postgres.sql import Params
from cityos.store.postgres.write_plan import recordset
from cityos.tasks import stop_task

if TYPE_CHECKING:
    from collections.abc import Callable

    from cityos.store.postgres.schema import Connection

AUDIT_SQL = """
CREATE TABLE audit_log (            -- the hash chain (audit/chain.py)
    seq bigint PRIMARY KEY,
    time text COLLATE "C" NOT NULL,
    principal text NOT NULL,
    operation text NOT NULL,
    tenant text NOT NULL,
    targets text[] NOT NULL,
    outcome text NOT NULL,
    request_id text NOT NULL,
    detail text NOT NULL,           -- JSON text, kept as written (its values are hashed)
    prev text NOT NULL,
    hash text NOT NULL,
    signature text                  -- only on a truncation anchor
);
CREATE INDEX audit_log_time ON audit_log (time);
CREATE INDEX audit_log_principal ON audit_log (principal, seq);
CREATE INDEX audit_log_targets ON audit_log USING gin (targets);
CREATE TABLE audit_head (id integer PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL, hash text NOT NULL);
INSERT INTO audit_head VALUES (1, 0, repeat('0', 64));
CREATE TABLE audit_pending (        -- committed with their writes, not chained yet (the sealer's queue)
    id bigserial PRIMARY KEY,
    time text NOT NULL,
    principal text NOT NULL,
    operation text NOT NULL,
    tenant text NOT NULL,
    targets text[] NOT NULL,
    outcome text NOT NULL,
    request_id text NOT NULL,
    detail text NOT NULL
);
CREATE TABLE audit_checkpoints (
    seq bigint PRIMARY KEY, hash text NOT NULL, time text NOT NULL, key_id text NOT NULL, signature text NOT NULL
);
"""
_COLUMNS = "seq, time, principal, operation, tenant, targets, outcome, request_id, detail, prev, hash, signature"
log = logging.getLogger("cityos.store.postgres")
_INSERT = f"INSERT INTO audit_log ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
SEAL_BATCH = 2000
SEAL_EVERY = 1.0  # seconds between sealer runs when no write woke it
SEAL_DELAY = 0.05  # a woken sealer waits this long: the writes commit, and more join its batch
# The sealer's first statement: the head's lock (a one-time filter: held before any pending row is
# taken, so sealers take turns), then the oldest pending rows, deleted, in id order, each with the
# head's seq and hash (a lone row of NULLs with the head's when nothing is pending).
_TAKE = """
WITH head AS MATERIALIZED (SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE),
taken AS (
    DELETE FROM audit_pending WHERE id IN (
        SELECT id FROM audit_pending WHERE (SELECT seq FROM head) IS NOT NULL ORDER BY id LIMIT $1
    ) RETURNING *
)
SELECT t.*, h.seq AS head_seq, h.hash AS head_hash FROM head h LEFT JOIN taken t ON true ORDER BY t.id
"""
# The second: the sealed records and the new head, in one statement.
_CHAIN = f"""
WITH chained AS (
    INSERT INTO audit_log ({_COLUMNS})
    SELECT r.seq, r.time, r.principal, r.operation, r.tenant,
        ARRAY(SELECT x FROM json_array_elements_text(r.targets) WITH ORDINALITY AS j(x, n) ORDER BY n),
        r.outcome, r.request_id, r.detail, r.prev, r.hash, r.signature
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::json[], $7::text[],
        $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
        AS r(seq, time, principal, operation, tenant, targets, outcome, request_id, detail, prev, hash, signature)
)
UPDATE audit_head SET seq = $13, hash = $14 WHERE id = 1
"""


def pending_cte(rows: Sequence[AuditRow], p: Params) -> str:
    """A data-modifying CTE queueing audit rows (ids in row order), for the write's own statement."""
    records = [
        {
            "time": r.time,
            "principal": r.principal,
            "operation": r.operation,
            "tenant": r.tenant,
            "targets": list(r.targets),
            "outcome": r.outcome,
            "request_id": r.request_id,
            "detail": orjson.dumps(r.detail).decode(),
        }
        for r in rows
    ]
    columns = "time text, principal text, operation text, tenant text, targets text[], outcome text,"
    columns += " request_id text, detail text"
    return (
        "audit_queued AS (INSERT INTO audit_pending"
        " (time, principal, operation, tenant, targets, outcome, request_id, detail)"
        " SELECT r.time, r.principal, r.operation, r.tenant, r.targets, r.outcome, r.request_id, r.detail"
        f" FROM {recordset(p, records, 'r', columns)} ORDER BY r.n)"
    )


def _values(record: AuditRecord) -> tuple[Any, ...]:
    return (
        record.seq,
        record.time,
        record.principal,
        record.operation,
        record.tenant,
        list(record.targets),
        record.outcome,
        record.request_id,
        orjson.dumps(record.detail).decode(),
        record.prev,
        record.hash,
        record.signature,
    )


def _record(row: asyncpg.Record) -> AuditRecord:
    return AuditRecord(
        seq=row["seq"],
        time=row["time"],
        principal=row["principal"],
        operation=row["operation"],
        tenant=row["tenant"],
        targets=list(row["targets"]),
        outcome=row["outcome"],
        request_id=row["request_id"],
        detail=orjson.loads(row["detail"]),
        prev=row["prev"],
        hash=row["hash"],
        signature=row["signature"],
    )


STOP_SEAL_SECONDS = 10.0  # the last seal at close waits at most this long (the rows stay pending otherwise)


class PostgresAudit(Transactions):
    """The AuditStore methods; PostgresStore supplies the pool and the listeners."""

    _sealer: asyncio.Task[None] | None = None
    _audit_wake: asyncio.Event | None = None

    if TYPE_CHECKING:
        _listeners: dict[str, Any]

    @property
    def _audit_on(self) -> bool:
        """The write recorder is installed (--audit on)."""
        return "audit" in self._listeners

    async def _seal_audit(self, connection: Connection, rows: Sequence[AuditRow]) -> None:
        """Queue rows for the sealer in the caller's transaction (committed with its write)."""
        if not rows:
            return
        p = Params()
        await connection.execute(f"WITH {pending_cte(rows, p)} SELECT 1", *p.values)
        self._wake_sealer()

    def _wake_sealer(self) -> None:
        """Rows were queued (the sealer runs once they are committed, SEAL_DELAY later)."""
        self._sealer_wake().set()

    def _sealer_wake(self) -> asyncio.Event:
        wake = self._audit_wake
        if wake is None:
            wake = self._audit_wake = asyncio.Event()
        return wake

    async def seal_pending(self) -> int:
        """Chain every committed pending row (in batches); returns how many were sealed."""

        async def batch(connection: Connection) -> int:
            pending = await connection.fetch(_TAKE, SEAL_BATCH)
            if not pending or pending[0]["id"] is None:  # the first row: the head alone
                return 0
            head = pending[0]
            rows = [
                AuditRow(
                    p["operation"],
                    p["tenant"],
                    p["targets"],
                    p["principal"],
                    p["request_id"],
                    p["outcome"],
                    orjson.loads(p["detail"]),
                    p["time"],
                )
                for p in pending
            ]
            records, new_head = seal(ChainHead(head["head_seq"], head["head_hash"]), rows)
            columns: list[list[Any]] = [list(column) for column in zip(*(_values(r) for r in records), strict=True)]
            columns[5] = [orjson.dumps(targets).decode() for targets in columns[5]]  # arrays as JSON
            await connection.execute(_CHAIN, *columns, new_head.seq, new_head.hash)
            return len(pending)

        total = 0
        while True:
            sealed: int = await self._write(batch)
            total += sealed
            if sealed < SEAL_BATCH:
                return total

    async def _keep_sealing(self) -> None:
        wake = self._sealer_wake()
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 a wait_for whose timeout fires as the task
            # is cancelled swallows the cancellation, and this loop ran on while the stop waited
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SEAL_EVERY):
                    await wake.wait()
            wake.clear()
            await asyncio.sleep(SEAL_DELAY)
            try:
                await self.seal_pending()
            except Exception:  # the next round tries again; nothing is lost (the rows stay pending)
                log_failure(log, "sealing audit records failed")

    async def _start_sealer(self) -> None:
        await self.seal_pending()  # what a killed worker left
        self._sealer = asyncio.create_task(self._keep_sealing(), name="cityos-audit-sealer")

    async def _stop_sealer(self) -> None:
        sealer, self._sealer = self._sealer, None
        await stop_task(sealer)
        # one last seal, bounded: a stop must not hang on a lock; what stays pending is sealed by the
        # next start (_start_sealer), nothing is lost
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.seal_pending(), STOP_SEAL_SECONDS)

    async def _audit_after(self, connection: Connection, made: Callable[[], AuditRow | None]) -> None:
        """A catalogue write's record (made only when the trail is on), sealed as its last step."""
        if self._audit_on and (row := made()) is not None:
            await self._seal_audit(connection, [row])

    async def _audit_after_all(self, connection: Connection, rows: Sequence[AuditRow]) -> None:
        if self._audit_on:
            await self._seal_audit(connection, rows)

    async def append_audit(self, rows: Sequence[AuditRow]) -> None:
        if rows:
            await self._write(lambda connection: self._seal_audit(connection, rows))

    async def audit_head(self) -> ChainHead:
        await self.seal_pending()
        return await self._read_head()

    @read_again_once
    async def _read_head(self) -> ChainHead:
        row = await self.pool.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1")
        assert row is not None
        return ChainHead(row["seq"], row["hash"])

    async def read_audit(self, query: AuditQuery) -> list[AuditRecord]:
        await self.seal_pending()
        return await self._read_audit(query)

    @read_again_once
    async def _read_audit(self, query: AuditQuery) -> list[AuditRecord]:
        params: list[Any] = [query.after_seq]
        clauses = ["seq > $1"]

        def add(clause: str, value: Any) -> None:
            params.append(value)
            clauses.append(clause.replace("?", f"${len(params)}"))

        for column, value in (("principal", query.principal), ("operation", query.operation), ("tenant", query.tenant)):
            if value is not None:
                add(f"{column} = ?", value)
        if query.target is not None:
            add("targets @> ARRAY[?::text]", query.target)
        if query.since is not None:
            add("time >= ?", query.since)
        if query.until is not None:
            add("time < ?", query.until)
        sql = f"SELECT {_COLUMNS} FROM audit_log WHERE {' AND '.join(clauses)} ORDER BY seq"
        if query.limit is not None:
            params.append(query.limit)
            sql += f" LIMIT ${len(params)}"
        return [_record(row) for row in await self.pool.fetch(sql, *params)]

    async def save_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        await self._write_one(
            "INSERT INTO audit_checkpoints VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING RETURNING true",
            checkpoint.seq,
            checkpoint.hash,
            checkpoint.time,
            checkpoint.key_id,
            checkpoint.signature,
        )

    @read_again_once
    async def audit_checkpoints(self, since_seq: int = 0, until_seq: int | None = None) -> list[AuditCheckpoint]:
        rows = await self.pool.fetch(
            "SELECT seq, hash, time, key_id, signature FROM audit_checkpoints WHERE seq BETWEEN $1 AND $2 ORDER BY seq",
            since_seq,
            until_seq if until_seq is not None else 2**62,
        )
        return [AuditCheckpoint(r["seq"], r["hash"], r["time"], r["key_id"], r["signature"]) for r in rows]

    async def truncate_audit(self, before: str, anchor: AnchorMaker, note: AuditRow) -> int:
        await self.seal_pending()

        async def work(connection: Connection) -> int:
            # the head's lock first: no write seals meanwhile (an anchor at the head stays consistent)
            await connection.execute("SELECT 1 FROM audit_head WHERE id = 1 FOR UPDATE")
            found = await connection.fetchrow(
                f"SELECT {_COLUMNS} FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log WHERE time < $1)",
                before,
            )
            if found is None or found["signature"] is not None:
                return 0
            last = _record(found)
            removed: int = await connection.fetchval(
                "SELECT count(*) FROM audit_log WHERE seq <= $1 AND signature IS NULL", last.seq
            )
            await connection.execute("DELETE FROM audit_log WHERE seq <= $1", last.seq)
            await connection.execute(_INSERT, *_values(anchor(last)))
            await connection.execute("DELETE FROM audit_checkpoints WHERE seq < $1", last.seq)
            note.detail = {**note.detail, "removed": removed, "through": last.seq}
            head = await connection.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1")
            assert head is not None
            [record], new_head = seal(ChainHead(head["seq"], head["hash"]), [note])
            await connection.execute(_INSERT, *_values(record))
            await connection.execute(
                "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", new_head.seq, new_head.hash
            )
            return removed

        result: int = await self._write(work)
        return result
