"""What the server's memory holds under a read load at city scale (issue 15: RSS ≤ 300 MB at 1,000,000
entities), in-process, on a prebuilt SQLite file (benchmarks/scale_reads.py build, or the write_path
scale file).

    python -m benchmarks.memory FILE [REQUESTS] [--writer-cache MB] [--reader-cache MB] [--render-cache MB]
                                [--writes BATCHES]

Sends REQUESTS read requests (a mix of retrieve, type query at a random offset, q and geo near, as the
scaling table's scenarios 4-5 do) through the whole application, CONCURRENCY at a time so every reader
thread works, then prints after each quarter: the process's RSS (anonymous and file pages apart, and its
peak, VmHWM, which is what the benchmark's "peak RSS" reads), SQLite's own heap (sqlite3_memory_used:
page caches, schemas, statements), each connection's page cache (sqlite3_db_status CACHE_USED) and the
render cache's accounted bytes, and the process's CPU per read over the quarter (all threads). Reads
only (history off), unless --writes: then each quarter also sends BATCHES batch upserts of 1,000 stored
ids with new values (the scaling table's scenario 3, history on) and 100 partial attribute updates, as
the scaling table's write scenarios fill the writer's cache and the heap; the file is changed (use a copy).
"""

from __future__ import annotations

import _sqlite3
import argparse
import asyncio
import ctypes
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.entities import entity_id, make_entity
from benchmarks.instructions import API, call
from benchmarks.scale_reads import _stored, request_of
from cityos.app import create_app
from cityos.entities import render_cache
from cityos.settings import Settings

KINDS = ("retrieve", "query_offset", "q", "geo")
CONCURRENCY = 8
CACHE_USED = 1  # SQLITE_DBSTATUS_CACHE_USED
_lib = ctypes.CDLL(_sqlite3.__file__)  # its libsqlite3's symbols, found through the module's link
_lib.sqlite3_memory_used.restype = ctypes.c_int64
_lib.sqlite3_memory_highwater.restype = ctypes.c_int64
_lib.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
_lib.sqlite3_db_status.argtypes = [
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.POINTER(ctypes.c_int),
    ctypes.POINTER(ctypes.c_int),
    ctypes.c_int,
]


def cache_used(connection: sqlite3.Connection) -> int:
    """Bytes of page cache a connection holds (CPython's connection object starts with its sqlite3*)."""
    handle = ctypes.c_void_p.from_address(id(connection) + object.__basicsize__).value
    current, high = ctypes.c_int(), ctypes.c_int()
    _lib.sqlite3_db_status(handle, CACHE_USED, ctypes.byref(current), ctypes.byref(high), 0)
    return current.value


def status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM of this process, in KiB."""
    wanted = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            found[name] = int(value.split()[0])
    return found


def report(label: str, store: Any) -> None:
    mib = 1024 * 1024
    proc = status()
    with store._lock:
        readers = [cache_used(connection) / mib for connection in store._connections]
    writer = cache_used(store._writer) / mib if store._writer is not None else 0.0
    print(
        f"{label}: RSS {proc['VmRSS'] / 1024:.0f} MiB (anon {proc['RssAnon'] / 1024:.0f}, file "
        f"{proc['RssFile'] / 1024:.0f}), peak {proc['VmHWM'] / 1024:.0f}; SQLite heap "
        f"{_lib.sqlite3_memory_used() / mib:.1f} MiB (peak {_lib.sqlite3_memory_highwater(0) / mib:.1f}); "
        f"page caches: writer {writer:.1f}, readers {', '.join(f'{r:.1f}' for r in readers)} MiB; "
        f"render cache {render_cache.CACHE.size / mib:.1f} MiB",
        flush=True,
    )


async def write(app: Any, stored: int, batches: int, rng: random.Random, seed: int) -> float:
    """BATCHES batch upserts of 1,000 stored ids with new values and 100 partial updates; CPU seconds."""
    started = time.process_time()
    for _ in range(batches):
        first = rng.randrange(max(stored - 1000, 1))
        body = orjson.dumps([make_entity(i, seed=seed) for i in range(first, min(first + 1000, stored))])
        status_code = await call(app, "POST", f"{API}/entityOperations/upsert", body, None)
        assert status_code in (201, 204), f"batch upsert answered {status_code}"
    for number in range(100):
        body = orjson.dumps({"availableSpotNumber": {"type": "Property", "value": number}})
        path = f"{API}/entities/{entity_id(rng.randrange(stored))}/attrs"
        status_code = await call(app, "PATCH", path, body, None)
        assert status_code < 300, f"partial update answered {status_code}"
    return time.process_time() - started


async def run(database: str, requests: int, settings: Settings, writes: int = 0) -> None:
    stored = _stored(database)
    app = create_app(settings)
    rng = random.Random(15)
    async with app.router.lifespan_context(app):
        store = app.state.services.store
        report(f"open, {stored:,} entities", store)
        done = 0

        async def worker(count: int) -> None:
            for _ in range(count):
                kind = rng.choice(KINDS)
                status_code = await call(app, *request_of(kind, stored, rng), None)
                assert status_code < 300, f"{kind} answered {status_code}"

        for quarter in range(4):
            if writes:
                spent = await write(app, stored, writes, rng, quarter + 1)
                report(
                    f"after {writes:,} batches and 100 updates"
                    f" ({spent / (writes * 1000 + 100) * 1e6:.0f} µs CPU per entity)",
                    store,
                )
            share = requests // 4
            started = time.process_time()
            await asyncio.gather(*(worker(share // CONCURRENCY) for _ in range(CONCURRENCY)))
            spent = time.process_time() - started
            done += share
            report(f"after {done:,} reads ({spent / share * 1e6:.0f} µs CPU each)", store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("database")
    parser.add_argument("requests", type=int, nargs="?", default=4000)
    parser.add_argument("--writer-cache", type=int, default=Settings.sqlite_writer_cache_mb)
    parser.add_argument("--reader-cache", type=int, default=Settings.sqlite_reader_cache_mb)
    parser.add_argument("--render-cache", type=int, default=Settings.render_cache_mb)
    parser.add_argument("--writes", type=int, default=0, help="batch upserts of 1,000 stored ids per quarter")
    args = parser.parse_args()
    settings = Settings(
        database=args.database,
        log_level="warning",
        temporal_disabled_tenants="" if args.writes else "*",
        query_timeout=120.0,  # a loaded machine's first deep offsets on a cold file may pass the default 10 s
        sqlite_writer_cache_mb=args.writer_cache,
        sqlite_reader_cache_mb=args.reader_cache,
        render_cache_mb=args.render_cache,
    )
    asyncio.run(run(args.database, args.requests, settings, args.writes))


if __name__ == "__main__":
    main()
