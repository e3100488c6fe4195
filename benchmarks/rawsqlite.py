"""The storage floor: the benchmark's entity documents written straight to SQLite and read back by
primary key, in-process, with the pragmas of cityos/store/sqlite.py. No HTTP, no validation, no
indexes beyond the key: the rate the broker's batch upsert and retrieve are compared with."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import orjson

from benchmarks.entities import entity_id, make_entity
from benchmarks.workloads import BATCH_SIZE


def _connect(path: Path) -> sqlite3.Connection:
    """The same pragmas as cityos.store.sqlite._connect."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=30000")
    connection.execute("PRAGMA cache_size=-32000")
    connection.execute("PRAGMA temp_store=MEMORY")
    return connection


def documents(count: int) -> list[tuple[str, bytes]]:
    """(id, orjson bytes) for entities 0..count-1: exactly the entities the batch upsert scenario sends."""
    return [(entity_id(i), orjson.dumps(make_entity(i))) for i in range(count)]


def write_rate(path: Path, rows: list[tuple[str, bytes]]) -> float:
    """Rows/s inserting `rows` into a new table, one transaction per 1,000-row batch."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    connection = _connect(path)
    connection.execute("CREATE TABLE entities (id TEXT PRIMARY KEY, doc BLOB NOT NULL)")
    start = time.perf_counter()
    for first in range(0, len(rows), BATCH_SIZE):
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany("INSERT INTO entities (id, doc) VALUES (?, ?)", rows[first : first + BATCH_SIZE])
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - start
    connection.close()
    return len(rows) / elapsed


def read_rate(path: Path, ids: list[str], reads: int, seed: int = 0) -> float:
    """Rows/s fetching documents one at a time by primary key, in random order."""
    rng = random.Random(seed)
    chosen = [ids[rng.randrange(len(ids))] for _ in range(reads)]
    connection = _connect(path)
    start = time.perf_counter()
    for id_ in chosen:
        row = connection.execute("SELECT doc FROM entities WHERE id = ?", (id_,)).fetchone()
        assert row is not None
    elapsed = time.perf_counter() - start
    connection.close()
    return reads / elapsed
