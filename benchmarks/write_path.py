"""The SQLite write path in-process: 1,000-entity batch upserts of the benchmark's OffStreetParking
entities through the whole ASGI app (benchmarks.instructions.call), on a new file.

    python -m benchmarks.write_path rate [ROUNDS]       # entities/s of CPU: new ids, existing ids (same
                                                        # bodies), existing ids with new values
    python -m benchmarks.write_path profile [ROUNDS]    # the same under cProfile: event loop and writer
    python -m benchmarks.write_path scale N FILE        # load N, upsert all again; bytes per entity and
                                                        # per history instance (dbstat)
    python -m benchmarks.write_path load N FILE [ROUNDS]  # ROUNDS (1) upserts of N entities, each round new
                                                        # values (seed = round); round 1 is the scaling
                                                        # table's load; then `bytes`
    python -m benchmarks.write_path bytes FILE          # the history's bytes per instance, table by table
                                                        # and index by index (dbstat: pages, fill), as the
                                                        # scaling table counts them (every temporal_*)
    python -m benchmarks.write_path refresh ROUNDS      # load 1,000, then ROUNDS upserts of them with new
                                                        # values (scenario 3); under callgrind with
                                                        # CITYOS_INSTRUCTIONS_CALLGRIND=1 and
                                                        # --instr-atstart=no only these upserts count

Rates divide entities by `time.process_time()`; the writer thread's own share is `time.thread_time()`
around `SQLiteStore._flush`. Run it with PYTHONPATH pointing at another checkout's src/ to measure
that commit (docs/performance.md, issue 15).
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks.entities import make_entity
from benchmarks.instructions import API, call, callgrind
from cityos.app import create_app
from cityos.settings import Settings
from cityos.store.sqlite import SQLiteStore

BATCH = 1000
# the history instances' table and indexes, in this layout and in the one before issue 15
HISTORY = frozenset({"temporal_rows", "temporal_series_time", "temporal_instance_ids", "temporal_instances"})
HISTORY |= {"temporal_observed", "temporal_created", "temporal_modified", "temporal_deleted", "temporal_series"}
HISTORY |= {"sqlite_autoindex_temporal_instances_1"}


def batches(first: int, count: int, changed: bool = False, seed: int = 0) -> list[bytes]:
    """Request bodies of `count` batches from entity `first` on; `changed` alters two values, another
    `seed` gives every entity new values (the benchmark's refresh of stored ids, scenario 3)."""
    bodies = []
    for start in range(first, first + count * BATCH, BATCH):
        entities = [make_entity(i, seed=seed) for i in range(start, start + BATCH)]
        if changed:
            for entity in entities:
                entity["availableSpotNumber"]["value"] += 1
                entity["occupancy"]["value"] = round(entity["occupancy"]["value"] / 2, 3)
        bodies.append(orjson.dumps(entities))
    return bodies


def timed_writer(profile: cProfile.Profile | None) -> list[float]:
    """Count the writer thread's CPU seconds (and profile it) from now on."""
    spent = [0.0]
    original: Callable[..., Any] = SQLiteStore._flush

    def flush(self: SQLiteStore, loop: asyncio.AbstractEventLoop) -> None:
        started = time.thread_time()
        if profile is not None:
            profile.enable()
        try:
            original(self, loop)
        finally:
            if profile is not None:
                profile.disable()
            spent[0] += time.thread_time() - started

    SQLiteStore._flush = flush  # type: ignore[method-assign]
    return spent


async def upsert_all(app: Any, bodies: list[bytes]) -> None:
    for body in bodies:
        status = await call(app, "POST", f"{API}/entityOperations/upsert", body, None)
        assert status in (201, 204), status


async def rate(rounds: int, profiled: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="cityos-write-path-"))
    app = create_app(Settings(database=str(folder / "bench.db"), log_level="warning"))
    loop_profile = cProfile.Profile(time.thread_time) if profiled else None
    writer_profile = cProfile.Profile(time.thread_time) if profiled else None
    spent = timed_writer(writer_profile)
    async with app.router.lifespan_context(app):
        bodies = batches(0, rounds)
        await upsert_all(app, batches(10**6, 1))  # warm-up
        refreshed = batches(0, rounds, seed=1)
        for phase, sent in (("new ids", bodies), ("existing ids", bodies), ("existing ids, new values", refreshed)):
            spent[0] = 0.0
            started = time.process_time()
            if loop_profile is not None:
                loop_profile.enable()
            await upsert_all(app, sent)
            if loop_profile is not None:
                loop_profile.disable()
            cpu = time.process_time() - started
            entities = rounds * BATCH
            print(
                f"{phase}: {entities / cpu:,.0f} entities/s CPU ({cpu / rounds * 1000:.0f} ms per 1,000;"
                f" writer thread {spent[0] / rounds * 1000:.0f} ms)"
            )
    for name, profile in (("event loop", loop_profile), ("writer thread", writer_profile)):
        if profile is not None:
            print(f"\n== {name}")
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)


async def refresh(rounds: int) -> None:
    """Scenario 3's request alone: the same 1,000 stored ids upserted `rounds` times with new values."""
    folder = Path(tempfile.mkdtemp(prefix="cityos-write-path-"))
    app = create_app(Settings(database=str(folder / "bench.db"), log_level="warning"))
    spent = timed_writer(None)
    async with app.router.lifespan_context(app):
        await upsert_all(app, batches(0, 1))
        # at least three bodies made whatever `rounds`: two runs under callgrind differ only in the writes
        bodies = [batches(0, 1, seed=seed)[0] for seed in range(1, max(rounds, 3) + 1)][:rounds]
        spent[0] = 0.0
        started = time.process_time()
        callgrind("on")
        await upsert_all(app, bodies)
        callgrind("off")
        cpu = time.process_time() - started
    print(
        f"existing ids, new values: {rounds * BATCH / cpu:,.0f} entities/s CPU"
        f" (writer {spent[0] / rounds * 1000:.0f} ms per 1,000)"
    )


async def scale(count: int, path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    app = create_app(Settings(database=path, log_level="warning"))
    async with app.router.lifespan_context(app):
        for phase, changed in (("load", False), ("upsert again", True)):
            started = time.process_time()
            for first in range(0, count, BATCH):
                await upsert_all(app, batches(first, 1, changed))
            print(f"{phase}: {count / (time.process_time() - started):,.0f} entities/s CPU")
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes = dict(db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
        instances = db.execute("SELECT count(*) FROM temporal_instances").fetchone()[0]
    history = sum(size for name, size in sizes.items() if name in HISTORY)
    total = os.path.getsize(path)
    print(f"file: {total / count:,.0f} bytes per entity, {(total - history) / count:,.0f} without history")
    print(f"history: {instances:,} instances, {history / instances:.1f} bytes each")
    for name, size in sorted(sizes.items(), key=lambda item: -item[1])[:12]:
        print(f"  {name:32s} {size / count:8,.0f} bytes per entity")


async def load(count: int, path: str, rounds: int) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    app = create_app(Settings(database=path, log_level="warning"))
    async with app.router.lifespan_context(app):
        for seed in range(rounds):
            started, cpu = time.monotonic(), time.process_time()
            for first in range(0, count, BATCH):
                await upsert_all(app, batches(first, 1, seed=seed))
            print(
                f"round {seed + 1}: {count / (time.monotonic() - started):,.0f} entities/s wall,"
                f" {count / (time.process_time() - cpu):,.0f}/s CPU",
                flush=True,
            )
    history_bytes(path)


def history_bytes(path: str) -> None:
    """Every history table and index (the scaling table's `temporal_*`, benchmarks/scale.py): bytes per
    instance and per entity, pages, how full its pages are; then the sums the two measures take."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = db.execute(
            "SELECT d.name, m.tbl_name, count(*), sum(d.pgsize), sum(d.unused) FROM dbstat d"
            " JOIN sqlite_master m ON m.name = d.name WHERE m.tbl_name LIKE 'temporal%' GROUP BY d.name"
        ).fetchall()
        (instances,) = db.execute("SELECT count(*) FROM temporal_rows").fetchone()
        (entities,) = db.execute("SELECT count(*) FROM temporal_entities").fetchone()
    print(f"{entities:,} history entities, {instances:,} instances ({instances / max(entities, 1):.1f} each)")
    print(f"  {'table or index':36s} {'B/instance':>10s} {'B/entity':>9s} {'pages':>9s} {'fill':>5s}")
    for name, _, pages, size, unused in sorted(rows, key=lambda row: -row[3]):
        if size >= 4 * 4096:
            print(f"  {name:36s} {size / instances:10.1f} {size / entities:9.1f} {pages:9,} {1 - unused / size:5.2f}")
    total = sum(row[3] for row in rows)
    instance_rows = sum(row[3] for row in rows if row[1] == "temporal_rows")
    print(f"all temporal_* (the scaling table's measure): {total / instances:.1f} bytes per instance")
    print(
        f"temporal_rows and its indexes (the third pass's measure): {instance_rows / instances:.1f} bytes per instance"
    )


def main() -> None:
    args = sys.argv[1:]
    if args[:1] in (["rate"], ["profile"]):
        asyncio.run(rate(int(args[1]) if len(args) > 1 else 4, args[0] == "profile"))
    elif args[:1] == ["refresh"] and len(args) == 2:
        asyncio.run(refresh(int(args[1])))
    elif args[:1] == ["load"] and len(args) in (3, 4):
        asyncio.run(load(int(args[1]), args[2], int(args[3]) if len(args) == 4 else 1))
    elif args[:1] == ["bytes"] and len(args) == 2:
        history_bytes(args[1])
    elif args[:1] == ["scale"] and len(args) == 3:
        asyncio.run(scale(int(args[1]), args[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
