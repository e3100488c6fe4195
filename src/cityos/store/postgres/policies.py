"""Access policies in the PostgreSQL back-end (store/policy_base.py): one append-only table
(migration 5); a change notifies the other workers when its transaction commits, so every worker
enforces the new set at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from cityos.errors import AlreadyExists
from cityos.store.base import StoreEvent
from cityos.store.policy_base import PolicyChange, PolicyRow
from cityos.store.postgres.busy import Transactions, read_again_once

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

POLICY_SQL = """
CREATE TABLE policy_versions (
    version bigserial PRIMARY KEY,
    id text NOT NULL,
    doc json,                       -- NULL: the policy was deleted in this version
    changed_by text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    source text NOT NULL            -- "api" or "file"
);
CREATE INDEX policy_versions_id ON policy_versions (id, version);
"""
_LOCK = 0x706F6C69  # pg_advisory_xact_lock key: policy changes one at a time ("poli")
_AT = "to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
_COLUMNS = f"id, version, doc, changed_by, {_AT} AS at, source"


def _row(record: asyncpg.Record) -> PolicyRow:
    doc = record["doc"]
    return PolicyRow(
        record["id"],
        record["version"],
        None if doc is None else orjson.loads(doc),
        record["changed_by"],
        record["at"],
        record["source"],
    )


class PostgresPolicies(Transactions):
    """Policy methods of the storage contract, mixed into PostgresStore."""

    if TYPE_CHECKING:

        async def _notify(self, connection: Connection, event: StoreEvent) -> None: ...

    async def change_policy(
        self, change: PolicyChange, policy_id: str, document: dict[str, Any] | None, *, by: str, source: str = "api"
    ) -> PolicyRow | None:
        doc = None if change == "delete" else orjson.dumps(document).decode()

        async def work(connection: Connection) -> PolicyRow | None:  # run again as a whole on a conflict
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            current = await connection.fetchrow(
                "SELECT doc FROM policy_versions WHERE id = $1 ORDER BY version DESC LIMIT 1", policy_id
            )
            exists = current is not None and current["doc"] is not None
            if change == "create" and exists:
                raise AlreadyExists(f"policy {policy_id} already exists")
            if change != "create" and not exists:
                return None
            record = await connection.fetchrow(
                "INSERT INTO policy_versions (id, doc, changed_by, source) VALUES ($1, $2, $3, $4)"
                f" RETURNING {_COLUMNS}",
                policy_id,
                doc,
                by,
                source,
            )
            await self._notify(connection, StoreEvent("policy", "", policy_id))
            assert record is not None
            return _row(record)

        return await self._write(work)

    @read_again_once
    async def load_policies(self) -> tuple[int, list[PolicyRow]]:
        async with (
            self.pool.acquire() as connection,
            connection.transaction(readonly=True, isolation="repeatable_read"),
        ):
            latest = await connection.fetchval("SELECT coalesce(max(version), 0) FROM policy_versions")
            records = await connection.fetch(
                f"SELECT DISTINCT ON (id) {_COLUMNS} FROM policy_versions ORDER BY id, version DESC"
            )
        return latest, [_row(r) for r in records if r["doc"] is not None]

    @read_again_once
    async def policy_history(self, policy_id: str) -> list[PolicyRow]:
        records = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM policy_versions WHERE id = $1 ORDER BY version", policy_id
        )
        return [_row(r) for r in records]
