"""Where a batch upsert's microseconds go on the event loop, and the floor of pure Python there.

    python -m benchmarks.batch_floor [ROUNDS]

Part 1 times the steps of the batch handler before the store, each alone, on the body of 1,000
benchmark OffStreetParking entities (benchmarks.entities, ten attributes): orjson.loads, the nesting
check, parse_entity (validation and expansion) and the upsert mutator; beside them two floors that
no validating parser can beat: a loop that only rebuilds the internal form (no checks) and
orjson.dumps of the body. The best of ROUNDS interleaved runs, `time.thread_time()`, per entity.

Part 2 sends 1,000-entity batch upserts through the whole ASGI app (benchmarks.write_path) and
splits the process's CPU into the event-loop thread, the writer thread (`SQLiteStore._flush`) and
the garbage collector (`gc.callbacks`, whichever thread it ran on).
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


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    steps(rounds)
    asyncio.run(whole(max(2, rounds // 5)))


if __name__ == "__main__":
    main()
