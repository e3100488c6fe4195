"""The floor of a single-entity write over HTTP in Python: what the constant-JSON app costs once it
also writes one SQLite row per request, committed on a writer thread, against what CityOS costs.

    python -m benchmarks.write_floor KIND N
    python -m benchmarks.write_floor served [ROUNDS]     # over HTTP, paired with the constant app

sends N requests of one kind through an ASGI app in-process (benchmarks.instructions.call: no
sockets, so uvicorn's protocol, the same for every app, is left out) and prints the CPU time per
request; under callgrind (CITYOS_INSTRUCTIONS_CALLGRIND=1, as for benchmarks.instructions) it counts
the instructions of the measured loop only. Kinds:

- constant: GET of the constant-JSON app (benchmarks.constant_app), the HTTP floor's app;
- update: PATCH /entities/{id}/attrs/{attr} with scenario 2's body: Starlette route, `orjson.loads`
  of the body, then on one writer thread (the future settled with `call_soon_threadsafe`, as
  CityOS's writer does) BEGIN IMMEDIATE, `UPDATE entities SET doc = ? WHERE id = ?` of a stored
  2 KB document (the body's bytes spliced in, no JSON round trip), COMMIT; 204;
- create: POST /entities with scenario 1's OffStreetParking body: the same, with an INSERT of the
  body as the document; 201 with a Location.

The served app also answers GET /entities/{id} and scenario 6b's GET /temporal/entities/{id} (an
average per day in one GROUP BY) from a reader connection on the event loop (benchmarks/pg_floor.py
drives them against the same floors on PostgreSQL).

`served` runs the constant app and the write app (`serve PORT FILE`, uvicorn as `cityos serve`
runs it) in their own processes and drives them with the benchmark's load generator (8 connections,
2 s, scenario 2's and 1's workloads), the three alternated ROUNDS times; it prints the median rates,
the servers' CPU per request and the write floors' ratios to the constant app.

The database is WAL with synchronous=NORMAL, as `cityos serve` runs it by default. What the floor
leaves out and CityOS must do (validation and expansion, history, side tables for queries, the
audit trail, subscriptions) is the difference; docs/performance.md, "Issue 15, fourth pass".
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.constant_app import create_app as constant_app
from benchmarks.entities import entity_id as bench_id
from benchmarks.entities import make_entity
from benchmarks.instructions import API, WARM_UP, call, cli, timed

STORED = 2000


def _writer_connection(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("CREATE TABLE IF NOT EXISTS entities (pk INTEGER PRIMARY KEY, id TEXT UNIQUE, doc BLOB)")
    # pg_floor's aggregation floor: one entity's instances, a covering index (entity, time, value)
    connection.execute("CREATE TABLE IF NOT EXISTS history (e INTEGER, t INTEGER, num REAL)")
    connection.execute("CREATE INDEX IF NOT EXISTS history_e_t ON history (e, t, num)")
    return connection


# the average per day from 2026-01-01 (scenario 6b's request), over history's rows of one entity
AVG_PER_DAY = (
    "SELECT (t - {o}) / 86400000000 AS k, avg(num) FROM history WHERE e = {e} AND t >= {o} GROUP BY k ORDER BY k"
)
ORIGIN_US = 1767225600000000


def write_app(path: str) -> Starlette:
    """The minimal write app: one route per kind, one writer thread, one statement per transaction."""
    connection = _writer_connection(path)
    writer = ThreadPoolExecutor(max_workers=1)

    async def write(sql: str, args: tuple[Any, ...]) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(sql, args)
            connection.execute("COMMIT")
            loop.call_soon_threadsafe(future.set_result, None)

        writer.submit(run)
        await future

    async def update(request: Request) -> Response:
        body = orjson.loads(await request.body())
        doc = b'{"attr":' + orjson.dumps(body) + b',"rest":"' + b"x" * 2000 + b'"}'
        await write("UPDATE entities SET doc = ? WHERE id = ?", (doc, request.path_params["entity_id"]))
        return Response(status_code=204)

    async def create(request: Request) -> Response:
        raw = await request.body()
        entity = orjson.loads(raw)
        await write("INSERT INTO entities (id, doc) VALUES (?, ?)", (entity["id"], raw))
        return Response(status_code=201, headers={"Location": f"{API}/entities/{entity['id']}"})

    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    async def retrieve(request: Request) -> Response:
        """A read on the event loop from a reader connection of its own (CityOS's SQLite reads)."""
        row = reader.execute("SELECT doc FROM entities WHERE id = ?", (request.path_params["entity_id"],)).fetchone()
        return Response(row[0], media_type="application/json")

    async def aggregate(request: Request) -> Response:
        """Scenario 6b's average per day, one GROUP BY on the event loop's reader."""
        rows = reader.execute(AVG_PER_DAY.format(o="?", e="?"), (ORIGIN_US, 1, ORIGIN_US)).fetchall()
        return Response(orjson.dumps(rows), media_type="application/json")

    return floor_app(retrieve, update, create, aggregate)


Handler = Callable[[Request], Awaitable[Response]]


def floor_app(retrieve: Handler, update: Handler, create: Handler, aggregate: Handler, **options: Any) -> Starlette:
    """The floor's routes (scenarios 4, 2, 1 and 6b's paths, and /constant to tell it is up)."""

    async def ready(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    return Starlette(
        routes=[
            Route(API + "/temporal/entities/{entity_id}", aggregate, methods=["GET"]),
            Route(API + "/entities/{entity_id}", retrieve, methods=["GET"]),
            Route(API + "/entities/{entity_id}/attrs/{attr}", update, methods=["PATCH"]),
            Route(API + "/entities", create, methods=["POST"]),
            Route("/constant", ready, methods=["GET"]),
        ],
        **options,
    )


def _seed(path: str, count: int) -> None:
    seed = _writer_connection(path)
    seed.executemany(
        "INSERT INTO entities (id, doc) VALUES (?, ?)", [(bench_id(n), b"{}" * 1000) for n in range(count)]
    )
    seed.close()


def served(rounds: int) -> None:
    """The floors over HTTP: constant app, write app's update and create, alternated."""
    import statistics

    from benchmarks.loadgen import LoadSpec, run_load
    from benchmarks.servers import ServerProcess, constant_server, free_port
    from benchmarks.workloads import Workload

    folder = Path(tempfile.mkdtemp(prefix="cityos-write-floor-"))
    path = str(folder / "floor.db")
    _seed(path, 20000)
    port = free_port()
    args = [sys.executable, "-m", "benchmarks.write_floor", "serve", str(port), path]
    rates: dict[str, list[float]] = {"constant": [], "update": [], "create": []}
    cpu: dict[str, list[float]] = {name: [] for name in rates}
    with (
        constant_server(folder) as constant,
        ServerProcess("write floor", args, port, "/constant", folder / "w.log") as floor,
    ):
        for index in range(rounds):
            for name, server, workload in (
                ("constant", constant, Workload("constant")),
                ("update", floor, Workload("update", stored=20000)),
                ("create", floor, Workload("create", stored=20000, start=20000, tag=f"floor{index}")),
            ):
                before = server.cpu_seconds()
                result = run_load(LoadSpec(server.host, server.port, workload, connections=8, duration=2.0, seed=index))
                assert not result.errors, result.error_sample
                rates[name].append(result.rate)
                cpu[name].append((server.cpu_seconds() - before) * 1000 / result.ops)
    base = statistics.median(rates["constant"])
    for name in rates:
        rate, spent = statistics.median(rates[name]), statistics.median(cpu[name])
        spread = f"{min(rates[name]):,.0f}-{max(rates[name]):,.0f}"
        print(f"{name}: {rate:,.0f} req/s ({spread}), {spent:.3f} CPU ms/op, {rate / base:.1%} of the constant app")


def request_of(kind: str, seq: int) -> tuple[str, str, bytes]:
    """Scenario 2's and 1's requests (benchmarks.instructions spot and parking), or the constant GET."""
    if kind == "constant":
        return "GET", "/constant", b""
    if kind == "update":
        body = orjson.dumps({"value": seq % 600, "observedAt": f"2026-11-22T00:00:{seq % 60:02d}Z"})
        return "PATCH", f"{API}/entities/{bench_id(seq % STORED)}/attrs/availableSpotNumber", body
    if kind == "create":
        return "POST", f"{API}/entities", orjson.dumps(make_entity(seq, id_=f"urn:ngsi-ld:OffStreetParking:c{seq}"))
    raise SystemExit(f"unknown kind {kind!r}")


async def measure(kind: str, count: int) -> float:
    """CPU seconds per request of `count` requests of `kind`, after a warm-up."""
    path = str(Path(tempfile.mkdtemp(prefix="cityos-write-floor-")) / "floor.db")
    app = constant_app() if kind == "constant" else write_app(path)
    _seed(path, STORED)
    offset = 10**6 if kind == "create" else 0  # warm-up creates must not collide with measured ones
    for seq in range(WARM_UP):
        assert await call(app, *request_of(kind, seq + offset), None) < 300
    return await timed(app, [request_of(kind, seq) for seq in range(count)], None)


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        import uvicorn

        from benchmarks.constant_app import uvicorn_options

        uvicorn.run(write_app(sys.argv[3]), **uvicorn_options("127.0.0.1", int(sys.argv[2])))
        return
    if sys.argv[1:2] == ["served"]:
        served(int(sys.argv[2]) if len(sys.argv) > 2 else 3)
        return
    cli(measure, __doc__)


if __name__ == "__main__":
    main()
