"""The write paths in-process, on both back-ends, paired with the raw 1,000-row write of each.

`python -m benchmarks.writes [--backend sqlite|postgres|both] [--repeat 3] [--singles 200]` sends
requests through the whole ASGI application (no sockets, as benchmarks.instructions does) with
history on: a 1,000-entity batch upsert of new ids and of existing ids (the OffStreetParking
entities of the main benchmark), single attribute updates and single creates (8 at a time, as the
main benchmark's connections). It prints, per scenario and back-end, the median rate over the
repeats (wall clock), the CPU time of this process per operation, and for PostgreSQL the CPU time
of the server's backends that served the run (read from /proc: the server must run on this host).
On a busy machine the CPU columns are the ones to compare.
The floors are the main benchmark's (rawsqlite.py, postgres.py): the same documents written 1,000
rows per transaction into a bare (id, doc) table. PostgreSQL runs in a throw-away schema of
--postgres (default CITYOS_BENCH_POSTGRES, else the local test server), dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from benchmarks.entities import entity_id, make_entity, timestamp
from benchmarks.instructions import call
from benchmarks.postgres import BenchSchema, RawPostgres, default_url
from benchmarks.rawsqlite import RawStore
from cityos.app import create_app
from cityos.settings import Settings

API = "/ngsi-ld/v1"
BATCH = 1000
LANES = 8  # concurrent single writes, as the main benchmark's connections
APP_NAME = "cityos-bench-writes"
STORED = 2000  # loaded before measuring: the "existing ids" batches and the updates hit these


def _batch(first: int) -> bytes:
    return orjson.dumps([make_entity(i) for i in range(first, first + BATCH)])


Sample = tuple[float, float, float]  # operations per wall second; CPU ms per operation here, and in PostgreSQL


class ServerCpu:
    """CPU seconds so far of each PostgreSQL backend serving this run, found by the application_name
    the run's URL sets and read from /proc (the server on this host, as the harness requires); none
    for SQLite, whose work is done in this process."""

    def __init__(self, url: str | None) -> None:
        self.url = url

    async def seconds(self) -> dict[int, float]:
        if self.url is None:
            return {}
        import asyncpg

        connection = await asyncpg.connect(self.url.split("?")[0])
        try:
            pids = await connection.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", APP_NAME)
        finally:
            await connection.close()
        found: dict[int, float] = {}
        for (pid,) in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return found


async def _timed(
    label: str, operations: int, send: Callable[[], Awaitable[None]], results: dict[str, list[Sample]], cpu: ServerCpu
) -> None:
    """Run send() once, record its Sample."""
    server = await cpu.seconds()
    wall, own = time.perf_counter(), time.process_time()
    await send()
    wall, own = time.perf_counter() - wall, time.process_time() - own
    spent = sum(seconds - server.get(pid, 0.0) for pid, seconds in (await cpu.seconds()).items())
    results.setdefault(label, []).append((operations / wall, own * 1000 / operations, spent * 1000 / operations))


async def _lanes(count: int, send: Callable[[int], Awaitable[None]]) -> None:
    """`count` requests from LANES concurrent clients (the main benchmark's connections), each
    sending its next request when the previous one is answered."""
    sequence = iter(range(count))

    async def lane() -> None:
        for seq in sequence:
            await send(seq)

    await asyncio.gather(*(lane() for _ in range(LANES)))


async def measure(database: str, repeat: int, singles: int) -> dict[str, list[Sample]]:
    results: dict[str, list[Sample]] = {}
    postgres = database.startswith("postgresql://")
    if postgres:
        database += f"&application_name={APP_NAME}"
    server = ServerCpu(database if postgres else None)
    app = create_app(Settings(database=database, log_level="warning"))
    async with app.router.lifespan_context(app):

        async def upsert(first: int) -> None:
            status = await call(app, "POST", f"{API}/entityOperations/upsert", _batch(first), None)
            assert status in (201, 204), status

        for first in range(0, STORED, BATCH):
            await upsert(first)
        fresh = 10**6
        for round_ in range(repeat):
            await _timed("batch upsert, 1,000 new ids", BATCH, functools.partial(upsert, fresh), results, server)
            fresh += BATCH
            existing = functools.partial(upsert, round_ % 2 * BATCH)
            await _timed("batch upsert, 1,000 existing ids", BATCH, existing, results, server)

            async def update(seq: int, r: int = round_) -> None:
                body = orjson.dumps({"value": seq, "observedAt": timestamp(random.Random(seq))})
                path = f"{API}/entities/{entity_id((r * singles + seq) % STORED)}/attrs/availableSpotNumber"
                assert await call(app, "PATCH", path, body, None) == 204

            async def create(seq: int, r: int = round_) -> None:
                body = orjson.dumps(make_entity(seq, id_=f"urn:ngsi-ld:OffStreetParking:c{r}-{seq}"))
                assert await call(app, "POST", f"{API}/entities", body, None) == 201

            async def updates() -> None:
                await _lanes(singles, update)

            async def creates() -> None:
                await _lanes(singles, create)

            await _timed("partial attribute update", singles, updates, results, server)
            await _timed("create one entity", singles, creates, results, server)
    return results


def floor(backend: str, url: str | None, repeat: int) -> float:
    rows = [(entity_id(i), orjson.dumps(make_entity(i))) for i in range(5 * BATCH)]
    rates = []
    for _ in range(repeat):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as folder:
                store = RawStore(Path(folder) / "raw.db")
                rates.append(store.write_rate(rows))
                store.close()
        else:
            assert url is not None
            raw = RawPostgres(url)
            rates.append(raw.write_rate(rows))
            raw._run(raw.connection.execute("DROP TABLE raw_entities"))
            raw.close()
    return statistics.median(rates)


def run(backend: str, repeat: int, singles: int, postgres: str) -> tuple[dict[str, list[Sample]], float]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            return asyncio.run(measure(str(Path(folder) / "bench.db"), repeat, singles)), floor("sqlite", None, repeat)
    with BenchSchema(postgres) as schema:
        return asyncio.run(measure(schema.url, repeat, singles)), floor("postgres", schema.url, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--postgres", default=default_url())
    args = parser.parse_args()
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    rates: dict[tuple[str, str], float] = {}
    print(
        "| scenario | back-end | rate (median) | min-max | CPU ms/op here | CPU ms/op PostgreSQL | of the raw write |"
    )
    print("|---|---|---|---|---|---|---|")
    for backend in backends:
        results, raw = run(backend, args.repeat, args.singles, args.postgres)
        print(f"| raw write, 1,000 rows/txn | {backend} | {raw:,.0f} rows/s | | | | |")
        for label, samples in results.items():
            rate = statistics.median(r for r, _, _ in samples)
            rates[(label, backend)] = rate
            low, high = min(r for r, _, _ in samples), max(r for r, _, _ in samples)
            own, server = statistics.median(c for _, c, _ in samples), statistics.median(c for _, _, c in samples)
            share = f"{rate / raw:.1%}" if label.startswith("batch") else ""
            server_text = f"{server:.2f}" if backend == "postgres" else "-"
            spread = f"{low:,.0f}-{high:,.0f}"
            print(f"| {label} | {backend} | {rate:,.0f}/s | {spread} | {own:.2f} | {server_text} | {share} |")
    if len(backends) == 2:
        for label in dict.fromkeys(label for label, _ in rates):
            print(f"{label}: PostgreSQL / SQLite = {rates[(label, 'postgres')] / rates[(label, 'sqlite')]:.2f}")


if __name__ == "__main__":
    main()
