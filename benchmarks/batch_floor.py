"""Where a batch upsert's microseconds go on the event loop, and the floor of pure Python there.

    python -m benchmarks.batch_floor [ROUNDS]
    python -m benchmarks.batch_floor floor [ROUNDS] [history|bare]   # part 3 alone: the floor of a
                                                    # batch upsert (with, without history; both if unsaid)

Part 1 times the steps of the batch handler before the store, each alone, on the body of 1,000
benchmark OffStreetParking entities (benchmarks.entities, ten attributes): orjson.loads, the nesting
check, parse_entity (validation and expansion) and the upsert mutator; beside them two floors that
no validating parser can beat: a loop that only rebuilds the internal form (no checks) and
orjson.dumps of the body. The best of ROUNDS interleaved runs, `time.thread_time()`, per entity.

Part 2 sends 1,000-entity batch upserts through the whole ASGI app (benchmarks.write_path) and
splits the process's CPU into the event-loop thread, the writer thread (`SQLiteStore._flush`) and
the garbage collector (`gc.callbacks`, whichever thread it ran on).

Part 3 (`floor`) is the least any Python implementation of scenario 3 must do per entity, in one
thread, on 1,000 stored ids refreshed with new values: orjson.loads of the body, the expansion of
each attribute name (the registry's cached TermMap) into the internal form with createdAt and
modifiedAt, orjson.dumps of each document, one history row per attribute (interned attribute id, the
time, the value's JSON) and, in one transaction, one executemany of the documents (by primary key)
and one of the history rows (a table with the broker's history index). Beside it the raw SQLite
1,000-row insert of the benchmark (benchmarks/rawsqlite.py), and the floor without history. Under
callgrind, the difference of two ROUNDS is the floor's instructions per entity.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks.entities import make_entity
from benchmarks.write_path import BATCH, batches, timed_writer, upsert_all
from cityos.app import create_app
from cityos.entities import update
from cityos.entities.model import parse_entity
from cityos.entities.values import check_nesting, now
from cityos.jsonld.registry import ContextRegistry
from cityos.net import OutboundPolicy
from cityos.settings import Settings


def steps(rounds: int) -> None:
    terms = ContextRegistry(OutboundPolicy()).core_terms()
    body = orjson.dumps([make_entity(i) for i in range(BATCH)])
    items = orjson.loads(body)
    stamp = now()

    def rebuild() -> None:  # the internal form with no check at all: the floor of any Python parser
        for item in items:
            attrs = {}
            for name, raw in item.items():
                if name != "id" and name != "type":
                    attrs[terms.expand(name)] = [{**raw, "createdAt": stamp, "modifiedAt": stamp}]
            entity = {"id": item["id"], "type": [terms.expand(item["type"])], "createdAt": stamp}
            entity["modifiedAt"] = stamp
            entity["attrs"] = attrs

    runs: dict[str, Callable[[], Any]] = {
        "orjson.loads of the body": lambda: orjson.loads(body),
        "check_nesting (max_nesting_depth 64)": lambda: check_nesting(items, 64),
        "parse_entity (validate, expand)": lambda: [parse_entity(item, terms, stamp=stamp) for item in items],
        "parse_entity + upsert mutator (new id)": lambda: [
            update.upsert(parse_entity(item, terms, stamp=stamp), mode="replace")(None) for item in items
        ],
        "floor: rebuild the internal form, no checks": rebuild,
        "floor: orjson.dumps of the body": lambda: orjson.dumps(items),
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for label, run in runs.items():
            started = time.thread_time()
            run()
            best[label] = min(best[label], time.thread_time() - started)
    for label, seconds in best.items():
        print(f"{label:45s} {seconds / BATCH * 1e6:6.1f} µs per entity")


async def whole(rounds: int) -> None:
    collected = [0.0, 0]
    started_at = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started_at[0] = time.thread_time()
        else:
            collected[0] += time.thread_time() - started_at[0]
            collected[1] += 1

    gc.callbacks.append(on_gc)
    app = create_app(
        Settings(database=str(Path(tempfile.mkdtemp(prefix="cityos-floor-")) / "b.db"), log_level="warning")
    )
    writer = timed_writer(None)
    try:
        async with app.router.lifespan_context(app):
            bodies = batches(0, rounds)
            await upsert_all(app, batches(10**6, 1))  # warm-up
            for phase in ("new ids", "existing ids"):
                writer[0], collected[0], collected[1] = 0.0, 0.0, 0
                process, loop = time.process_time(), time.thread_time()
                await upsert_all(app, bodies)
                loop, process = time.thread_time() - loop, time.process_time() - process
                per = 1e6 / (rounds * BATCH)
                print(
                    f"{phase}: {process * per:.0f} µs per entity: event loop {loop * per:.0f}, writer thread"
                    f" {writer[0] * per:.0f}; of these, the garbage collector {collected[0] * per:.0f}"
                    f" ({collected[1]} collections)"
                )
    finally:
        gc.callbacks.remove(on_gc)


def floor(rounds: int, modes: tuple[bool, ...]) -> None:
    import sqlite3

    from benchmarks.rawsqlite import RawStore, documents

    folder = Path(tempfile.mkdtemp(prefix="cityos-floor-"))
    raw_rate = 0.0
    if len(modes) > 1:
        raw = RawStore(folder / "raw.db")
        raw_rate = raw.write_rate(documents(0, BATCH * 4))
        raw.close()
    db = sqlite3.connect(folder / "floor.db", isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-32000", "temp_store=MEMORY"):
        db.execute(f"PRAGMA {pragma}")
    db.execute("CREATE TABLE entities (pk INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, doc BLOB NOT NULL)")
    db.execute("CREATE TABLE history (pk INTEGER PRIMARY KEY, epk INTEGER, attr INTEGER, modified_us INTEGER, value)")
    db.execute("CREATE INDEX history_time ON history (epk, attr, modified_us)")
    db.executemany("INSERT INTO entities (id, doc) VALUES (?, ?)", documents(0, BATCH))
    pks = dict(db.execute("SELECT id, pk FROM entities").fetchall())
    terms = ContextRegistry(OutboundPolicy()).core_terms()
    # at least three bodies made whatever `rounds`: two runs under callgrind differ only in the writes
    made = range(1, max(rounds, 3) + 1)
    bodies = [orjson.dumps([make_entity(i, seed=seed) for i in range(BATCH)]) for seed in made][:rounds]
    attr_ids: dict[str, int] = {}

    def write(body: bytes, history: bool) -> None:
        stamp = now()
        micros = time.time_ns() // 1000
        docs, instances = [], []
        for item in orjson.loads(body):
            attrs = {}
            pk = pks[item["id"]]
            for name, raw_attr in item.items():
                if name != "id" and name != "type":
                    iri = terms.expand(name)
                    attrs[iri] = [{**raw_attr, "createdAt": stamp, "modifiedAt": stamp}]
                    if history:
                        attr = attr_ids.setdefault(iri, len(attr_ids) + 1)
                        instances.append((pk, attr, micros, orjson.dumps(raw_attr.get("value"))))
            entity = {"id": item["id"], "type": [terms.expand(item["type"])], "createdAt": stamp}
            entity["modifiedAt"] = stamp
            entity["attrs"] = attrs
            docs.append((orjson.dumps(entity), pk))
        db.execute("BEGIN IMMEDIATE")
        db.executemany("UPDATE entities SET doc = ? WHERE pk = ?", docs)
        if history:
            db.executemany("INSERT INTO history (epk, attr, modified_us, value) VALUES (?, ?, ?, ?)", instances)
        db.execute("COMMIT")

    for history in modes:
        started = time.thread_time()
        for body in bodies:
            write(body, history)
        spent = time.thread_time() - started
        label = "floor, history on" if history else "floor, no history"
        print(
            f"{label}: {rounds * BATCH / spent:,.0f} entities/s CPU ({spent / rounds / BATCH * 1e6:.1f} µs per entity)"
        )
    if raw_rate:
        print(f"raw SQLite write, 1,000 rows/txn: {raw_rate:,.0f} rows/s (wall)")
    db.close()


def main() -> None:
    if sys.argv[1:2] == ["floor"]:
        mode = sys.argv[3] if len(sys.argv) > 3 else "both"
        floor(
            int(sys.argv[2]) if len(sys.argv) > 2 else 4,
            {"history": (True,), "bare": (False,)}.get(mode, (True, False)),
        )
        return
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    steps(rounds)
    asyncio.run(whole(max(2, rounds // 5)))


if __name__ == "__main__":
    main()
