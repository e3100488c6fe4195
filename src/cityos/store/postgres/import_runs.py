"""Import runs in the PostgreSQL back-end (store/import_runs_base.py): one table (migration 18)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from cityos.store.import_runs_base import KEEP, ImportRun
from cityos.store.postgres.busy import Transactions, read_again_once

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

IMPORT_RUNS_SQL = """
CREATE TABLE import_runs (          -- ingest/runs.py: one row per import run, newest = highest pk
    pk bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    doc json NOT NULL
);
"""


class PostgresImportRuns(Transactions):
    """Import run methods of the storage contract, mixed into PostgresStore."""

    async def save_import_run(self, run: ImportRun) -> None:
        document = orjson.dumps(run.as_dict()).decode()

        async def work(connection: Connection) -> None:
            inserted = await connection.fetchval(
                "INSERT INTO import_runs (id, doc) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc"
                " RETURNING xmax = 0",
                run.id,
                document,
            )
            if inserted:
                await connection.execute(
                    "DELETE FROM import_runs WHERE pk <="
                    " (SELECT pk FROM import_runs ORDER BY pk DESC LIMIT 1 OFFSET $1)",
                    KEEP,
                )

        await self._write(work)

    @read_again_once
    async def list_import_runs(self, limit: int, offset: int = 0) -> list[ImportRun]:
        rows = await self.pool.fetch("SELECT doc FROM import_runs ORDER BY pk DESC LIMIT $1 OFFSET $2", limit, offset)
        return [ImportRun.from_dict(orjson.loads(r["doc"])) for r in rows]

    @read_again_once
    async def get_import_run(self, run_id: str) -> ImportRun | None:
        doc = await self.pool.fetchval("SELECT doc FROM import_runs WHERE id = $1", run_id)
        return None if doc is None else ImportRun.from_dict(orjson.loads(doc))
