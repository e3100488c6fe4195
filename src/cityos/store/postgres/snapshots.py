"""Snapshots in the PostgreSQL back-end (store/snapshot_base.py): one table (migration 12)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from cityos.errors import AlreadyExists
from cityos.store.postgres.busy import Transactions, read_again_once
from cityos.store.snapshot_base import SnapshotRow

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

SNAPSHOT_SQL = """
CREATE TABLE snapshots (            -- spec 5.16: the Snapshot documents (their entities live in a hidden tenant)
    pk bigserial PRIMARY KEY,
    tenant text NOT NULL,
    id text NOT NULL,
    doc json NOT NULL,
    UNIQUE (tenant, id)
);
"""


class PostgresSnapshots(Transactions):
    """Snapshot methods of the storage contract, mixed into PostgresStore."""

    async def save_snapshot(self, row: SnapshotRow, *, create: bool) -> None:
        document = orjson.dumps(row.document).decode()
        if not create:
            await self._write_one(
                "UPDATE snapshots SET doc = $1 WHERE tenant = $2 AND id = $3 RETURNING true",
                document,
                row.tenant,
                row.id,
            )
            return

        async def work(connection: Connection) -> None:
            saved = await connection.fetchval(
                "INSERT INTO snapshots (tenant, id, doc) VALUES ($1, $2, $3) ON CONFLICT (tenant, id) DO NOTHING"
                " RETURNING true",
                row.tenant,
                row.id,
                document,
            )
            if not saved:
                raise AlreadyExists(f"snapshot {row.id} already exists")

        await self._write(work)

    @read_again_once
    async def get_snapshot(self, tenant: str, snapshot_id: str) -> SnapshotRow | None:
        doc = await self.pool.fetchval("SELECT doc FROM snapshots WHERE tenant = $1 AND id = $2", tenant, snapshot_id)
        return None if doc is None else SnapshotRow(tenant, snapshot_id, orjson.loads(doc))

    @read_again_once
    async def list_snapshots(self, tenant: str) -> list[SnapshotRow]:
        rows = await self.pool.fetch("SELECT id, doc FROM snapshots WHERE tenant = $1 ORDER BY pk", tenant)
        return [SnapshotRow(tenant, r["id"], orjson.loads(r["doc"])) for r in rows]

    @read_again_once
    async def all_snapshots(self) -> list[SnapshotRow]:
        rows = await self.pool.fetch("SELECT tenant, id, doc FROM snapshots ORDER BY pk")
        return [SnapshotRow(r["tenant"], r["id"], orjson.loads(r["doc"])) for r in rows]

    async def delete_snapshot(self, tenant: str, snapshot_id: str) -> bool:
        return await self._write_one(
            "DELETE FROM snapshots WHERE tenant = $1 AND id = $2 RETURNING true", tenant, snapshot_id
        )
