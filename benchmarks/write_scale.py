"""Why writes slow down as the city grows (issue 15: flat from 10,000 to 1,000,000 entities), in-process,
on a copy of a prebuilt SQLite file (benchmarks/write_path.py scale N FILE, or scale_reads build).

    python -m benchmarks.write_scale FILE [COUNT] [--writer-cache MB] [--warm N]

Sends COUNT requests of each write scenario of the scaling table (1. create, 2. partial attribute
update, 3. batch upsert of 1,000 stored ids with new values; the benchmark's own request builders,
benchmarks/workloads.py) through the whole application, one at a time, and prints per entity written:
the pages the writer thread and the whole process read from the operating system (read syscalls and
bytes, /proc/self/io: the writer's page-cache misses; the process's include the checkpoints' reads of
the WAL) and the bytes the WAL grew by. --warm sends N partial updates first, unmeasured, so
the writer's page cache holds what it would in a server that has been writing for a while. A write
whose B-tree pages are not in the writer's page cache (PRAGMA cache_size, the sqlite_writer_cache_mb
setting) reads them with one pread each. Then, per thread (event loop, writer, checkpointer), its
user and system CPU and its write calls per entity (/proc/self/task: jiffies, so send a few hundred).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.instructions import call
from benchmarks.scale_reads import _stored
from benchmarks.workloads import Workload, builder
from cityos.app import create_app
from cityos.settings import Settings
from cityos.store.sqlite import SQLiteStore

SCENARIOS = (("create", 1), ("update", 1), ("batch_existing", 1000))  # (workload kind, entities per request)


def threads() -> dict[str, int]:
    """The threads that work for a write: the event loop's (main), the writer's, the checkpointer's."""
    found = {"event loop": threading.main_thread().native_id or 0}
    for thread in threading.enumerate():
        if thread.name.startswith(("cityos-writer", "cityos-checkpoint")) and thread.native_id is not None:
            found[thread.name.split("_")[0].removeprefix("cityos-")] = thread.native_id
    return found


def usage(thread: int) -> tuple[float, float, int, int]:
    """(user seconds, system seconds, bytes written, write calls) of one thread, from /proc."""
    fields = Path(f"/proc/self/task/{thread}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    counters = io(thread)
    return int(fields[11]) / ticks, int(fields[12]) / ticks, counters["wchar"], counters["syscw"]


def io(thread: int | None = None) -> dict[str, int]:
    """/proc's I/O counters of the process, or of one of its threads."""
    found = {}
    source = Path("/proc/self/io") if thread is None else Path(f"/proc/self/task/{thread}/io")
    for line in source.read_text().splitlines():
        name, _, value = line.partition(":")
        found[name] = int(value)
    return found


async def run(database: str, count: int, writer_cache: int, warm: int) -> None:
    stored = _stored(database)
    settings = Settings(database=database, log_level="warning", sqlite_writer_cache_mb=writer_cache)
    app = create_app(settings)
    writer: list[int] = []  # the writer thread's id, for its own I/O counters
    original = SQLiteStore._flush

    def flush(self: SQLiteStore, loop: asyncio.AbstractEventLoop) -> None:
        if not writer:
            writer.append(threading.get_native_id())
        original(self, loop)

    SQLiteStore._flush = flush  # type: ignore[method-assign]
    wal = Path(f"{database}-wal")
    async with app.router.lifespan_context(app):
        warming = builder(Workload("update", stored=stored, tag="ws-warm"))
        rng = random.Random(0)
        for seq in range(warm):
            request = warming(seq, rng)
            assert await call(app, request.method, request.path, request.body or b"", None) < 300
        for kind, per in SCENARIOS:
            requests = max(1, count // per) if per > 1 else count
            build = builder(Workload(kind, stored=stored, start=stored, tag=f"ws-{kind}"))
            rng = random.Random(15)
            made = [build(seq, rng) for seq in range(requests)]
            before, wal_before, started = io(), wal.stat().st_size if wal.exists() else 0, time.perf_counter()
            own = io(writer[0]) if writer else {"syscr": 0, "rchar": 0}
            working = threads()
            used = {name: usage(tid) for name, tid in working.items()}
            for request in made:
                status = await call(app, request.method, request.path, request.body or b"", None)
                assert status < 300, f"{kind} answered {status}"
            after, elapsed, mine = io(), time.perf_counter() - started, io(writer[0])
            per_thread = []
            for name, tid in threads().items():
                was = used.get(name, (0.0, 0.0, 0, 0))
                now = usage(tid)
                per_thread.append(
                    f"{name} {(now[0] - was[0]) / (requests * per) * 1e6:.0f} µs user +"
                    f" {(now[1] - was[1]) / (requests * per) * 1e6:.0f} µs system,"
                    f" {(now[3] - was[3]) / (requests * per):.1f} writes"
                    f" ({(now[2] - was[2]) / (requests * per) / 1024:.1f} KiB)"
                )
            entities = requests * per
            grown = (wal.stat().st_size if wal.exists() else 0) - wal_before
            print(
                f"{kind} at {stored:,} entities, writer cache {writer_cache} MiB:"
                f" {entities:,} entities in {elapsed:.1f} s;"
                " per entity:"
                f" writer reads {(mine['syscr'] - own['syscr']) / entities:.1f}"
                f" ({(mine['rchar'] - own['rchar']) / entities / 1024:.1f} KiB),"
                f" process reads {(after['syscr'] - before['syscr']) / entities:.1f}"
                f" ({(after['rchar'] - before['rchar']) / entities / 1024:.1f} KiB: the checkpoints' WAL reads"
                " included),"
                f" WAL +{grown / entities / 1024:.1f} KiB\n    per entity, by thread: " + "; ".join(per_thread),
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("database", help="a prebuilt file; a copy is written, the file itself stays as it is")
    parser.add_argument("count", type=int, nargs="?", default=2000)
    parser.add_argument("--writer-cache", type=int, default=Settings.sqlite_writer_cache_mb)
    parser.add_argument("--warm", type=int, default=0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="cityos-write-scale-"))
    copy = folder / "copy.db"
    try:
        for ending in ("", "-wal"):
            if Path(args.database + ending).exists():
                shutil.copyfile(args.database + ending, f"{copy}{ending}")
        asyncio.run(run(str(copy), args.count, args.writer_cache, args.warm))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
