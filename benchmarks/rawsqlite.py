"""The storage floor: the benchmark's entity documents written straight to SQLite and read back by
primary key, in-process, with the pragmas of cityos/store/sqlite.py. No HTTP, no validation, no side
tables: the rates the broker's batch upsert and retrieve are compared with."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import orjson

from benchmarks.entities import entity_id, make_entity
from benchmarks.workloads import BATCH_SIZE


def documents(first: int, count: int) -> list[tuple[str, bytes]]:
    """(id, orjson bytes) of entities first..first+count-1: exactly what the batch upsert scenario sends."""
    return [(entity_id(i), orjson.dumps(make_entity(i))) for i in range(first, first + count)]


class RawStore:
    """One table (id TEXT PRIMARY KEY, doc BLOB) in a new file, with the broker's pragmas."""

    def __init__(self, path: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        self.connection = sqlite3.connect(path, isolation_level=None)
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "busy_timeout=30000",
            "cache_size=-32000",
            "temp_store=MEMORY",
        ):
            self.connection.execute(f"PRAGMA {pragma}")
        self.connection.execute("CREATE TABLE entities (id TEXT PRIMARY KEY, doc BLOB NOT NULL)")

    def write_rate(self, rows: list[tuple[str, bytes]], batch_size: int = BATCH_SIZE) -> float:
        """Rows/s inserting `rows`, one transaction per batch (batch_size=1: one per row, like a create)."""
        start = time.perf_counter()
        for first in range(0, len(rows), batch_size):
            self.connection.execute("BEGIN IMMEDIATE")
            self.connection.executemany(
                "INSERT INTO entities (id, doc) VALUES (?, ?)", rows[first : first + batch_size]
            )
            self.connection.execute("COMMIT")
        return len(rows) / (time.perf_counter() - start)

    def read_rate(self, reads: int, seed: int = 0) -> float:
        """Rows/s fetching stored documents one at a time by primary key, in random order."""
        ids = [row[0] for row in self.connection.execute("SELECT id FROM entities")]
        rng = random.Random(seed)
        chosen = [ids[rng.randrange(len(ids))] for _ in range(reads)]
        start = time.perf_counter()
        for id_ in chosen:
            row = self.connection.execute("SELECT doc FROM entities WHERE id = ?", (id_,)).fetchone()
            assert row is not None
        return reads / (time.perf_counter() - start)

    def close(self) -> None:
        self.connection.close()
