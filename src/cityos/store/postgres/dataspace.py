"""The data channel's records in the PostgreSQL back-end (store/dataspace_base.py): one append-only
table (migration 13), and the nonces and rate buckets of partners' signed requests (migration 15).
Workers see a change of the records at their next version poll (dataspace/service.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from cityos.errors import AlreadyExists
from cityos.store.dataspace_base import RATE_ROW_SECONDS, DataspaceRow, refill, take
from cityos.store.postgres.busy import Transactions, read_again_once

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

DATASPACE_SQL = """
CREATE TABLE dataspace_versions (
    version bigserial PRIMARY KEY,
    kind text NOT NULL,             -- key, partner, offer, agreement
    id text NOT NULL,
    doc json,                       -- NULL: the record was removed in this version
    changed_by text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dataspace_versions_id ON dataspace_versions (kind, id, version);
"""
# migration 15: what the workers and processes serving one database share about partners' signed
# requests: the nonces seen within the signature window (a replay to any of them is refused) and the
# agreements' rate buckets (a partner spreading requests over them gets the rate once)
NONCES_SQL = """
CREATE TABLE dataspace_nonces (
    keyid text NOT NULL,
    nonce text NOT NULL,
    until double precision NOT NULL,   -- epoch seconds: forgotten after this
    PRIMARY KEY (keyid, nonce)
);
CREATE INDEX dataspace_nonces_until ON dataspace_nonces (until);
CREATE TABLE dataspace_rates (
    key text PRIMARY KEY,               -- the agreement
    tokens double precision NOT NULL,
    at double precision NOT NULL        -- epoch seconds of the last take
);
"""
_LOCK = 0x64617461  # pg_advisory_xact_lock key: data channel changes one at a time ("data")
_AT = "to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
_COLUMNS = f"kind, id, version, doc, changed_by, {_AT} AS at"


def _row(record: asyncpg.Record) -> DataspaceRow:
    doc = record["doc"]
    return DataspaceRow(
        record["kind"],
        record["id"],
        record["version"],
        None if doc is None else orjson.loads(doc),
        record["changed_by"],
        record["at"],
    )


class PostgresDataspace(Transactions):
    """Data channel methods of the storage contract, mixed into PostgresStore."""

    durability: str = "normal"

    async def _relaxed(self, connection: Connection) -> None:
        """A nonce's or a bucket's commit does not wait for the WAL flush unless --durability full
        (as the outbox's): that wait was most of a signed request's added time (about 10 ms per
        commit on a busy disk). A crash of the database that loses the last such commits could let a
        request seen just before be replayed within its window, or a bucket refill early."""
        if self.durability != "full":
            await connection.execute("SET LOCAL synchronous_commit = off")

    async def change_record(
        self, kind: str, record_id: str, document: dict[str, Any] | None, *, by: str, create: bool = False
    ) -> DataspaceRow | None:
        doc = None if document is None else orjson.dumps(document).decode()

        async def work(connection: Connection) -> DataspaceRow | None:  # run again as a whole on a conflict
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            current = await connection.fetchrow(
                "SELECT doc FROM dataspace_versions WHERE kind = $1 AND id = $2 ORDER BY version DESC LIMIT 1",
                kind,
                record_id,
            )
            exists = current is not None and current["doc"] is not None
            if create and exists:
                raise AlreadyExists(f"{kind} {record_id} already exists")
            if document is None and not exists:
                return None
            record = await connection.fetchrow(
                "INSERT INTO dataspace_versions (kind, id, doc, changed_by) VALUES ($1, $2, $3, $4)"
                f" RETURNING {_COLUMNS}",
                kind,
                record_id,
                doc,
                by,
            )
            assert record is not None
            return _row(record)

        return await self._write(work)

    @read_again_once
    async def load_records(self, kind: str) -> tuple[int, list[DataspaceRow]]:
        async with (
            self.pool.acquire() as connection,
            connection.transaction(readonly=True, isolation="repeatable_read"),
        ):
            latest = await connection.fetchval("SELECT coalesce(max(version), 0) FROM dataspace_versions")
            records = await connection.fetch(
                f"SELECT DISTINCT ON (id) {_COLUMNS} FROM dataspace_versions WHERE kind = $1 ORDER BY id, version DESC",
                kind,
            )
        return latest, [_row(r) for r in records if r["doc"] is not None]

    @read_again_once
    async def record_history(self, kind: str, record_id: str) -> list[DataspaceRow]:
        records = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM dataspace_versions WHERE kind = $1 AND id = $2 ORDER BY version", kind, record_id
        )
        return [_row(r) for r in records]

    async def first_use(self, keyid: str, nonce: str, until: float, now: float) -> bool:
        async def work(connection: Connection) -> bool:
            await self._relaxed(connection)
            await connection.execute("DELETE FROM dataspace_nonces WHERE until < $1", now)
            added = await connection.fetchval(
                "INSERT INTO dataspace_nonces (keyid, nonce, until) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING RETURNING true",
                keyid,
                nonce,
                until,
            )
            return bool(added)

        return await self._write(work)

    async def take_token(self, key: str, per_minute: int, now: float) -> float:
        async def work(connection: Connection) -> float:
            await self._relaxed(connection)
            await connection.execute("DELETE FROM dataspace_rates WHERE at < $1", now - RATE_ROW_SECONDS)
            await connection.execute(
                "INSERT INTO dataspace_rates (key, tokens, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                key,
                float(per_minute),
                now,
            )
            row = await connection.fetchrow("SELECT tokens, at FROM dataspace_rates WHERE key = $1 FOR UPDATE", key)
            assert row is not None
            left, wait = take(refill(row["tokens"], row["at"], now, per_minute), per_minute)
            await connection.execute("UPDATE dataspace_rates SET tokens = $2, at = $3 WHERE key = $1", key, left, now)
            return wait

        return await self._write(work)
