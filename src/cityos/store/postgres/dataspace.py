"""The data channel's records in the PostgreSQL back-end (store/dataspace_base.py): one append-only
table (migration 12). Workers see a change at their next version poll (dataspace/service.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from cityos.errors import AlreadyExists
from cityos.store.dataspace_base import DataspaceRow
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
