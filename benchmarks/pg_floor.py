"""The floor of PostgreSQL against SQLite: the same bare Python write and read over HTTP on each.

    python -m benchmarks.pg_floor [ROUNDS] [--postgres URL]

Minimal apps (Starlette under uvicorn, as `cityos serve` runs it, each in its own process) serve
scenario 4's retrieve, scenario 2's partial update and scenario 1's create over the same 20,000
OffStreetParking documents (benchmarks/entities.py, about 2 KB each), and scenario 6b's average per
day over 20,000 instances of one entity (`history (e, t, num)`, covered by an index on (e, t, num)
in both, one GROUP BY: benchmarks/write_floor.py's AVG_PER_DAY):

- sqlite: benchmarks.write_floor's app (one writer thread, BEGIN IMMEDIATE / statement / COMMIT,
  WAL with synchronous=NORMAL, as `cityos serve` runs it), and a read on the event loop from a
  reader connection of its own, as CityOS's SQLite store reads;
- postgres: asyncpg, a pool of 10 connections (CityOS's default), one autocommitted statement per
  request (`SELECT doc ... WHERE id = $1`, `UPDATE ... SET doc`, `INSERT`): the least any
  PostgreSQL implementation does, a socket round trip to another process per request;
- postgres-tx: the shape a CityOS write needs (read under a lock, compute in Python, write): BEGIN,
  `SELECT doc ... FOR UPDATE`, the statement, COMMIT, four round trips (retrieve as postgres);
- postgres-unix (with --unix DIR, the server's Unix socket directory): postgres over the Unix socket
  instead of loopback TCP, a deployment's choice of DSN (`?host=DIR`).

They are driven by the benchmark's load generator (8 connections, 2 s, the workloads of scenarios
4, 2, 1 and 6b), each path on each app in turn, ROUNDS times; it prints the median rates, the CPU per
request of the server and its database backends, and the PostgreSQL/SQLite ratio of the floors
per path: what this hardware allows PostgreSQL against SQLite before any broker logic
(docs/performance.md, "Issue 15, fifth pass"). PostgreSQL runs in a new schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from benchmarks.entities import entity_id, make_entity
from benchmarks.instructions import API
from benchmarks.postgres import BenchSchema, default_url, unreachable
from benchmarks.write_floor import AVG_PER_DAY, ORIGIN_US, floor_app

STORED = 20_000
PATHS = {"retrieve": "retrieve", "update": "update", "create": "create", "avg/day": "temporal_aggr"}  # -> workload
WRITES = ("update", "create")
INSTANCES = 20_000  # the aggregation's rows: one a minute from ORIGIN_US, as scenario 6 loads them


def documents() -> list[tuple[str, bytes]]:
    return [(entity_id(n), orjson.dumps(make_entity(n))) for n in range(STORED)]


def updated(body: bytes) -> str:
    """The update's new document: the body spliced into a 2 KB one, as write_floor's update does."""
    return (b'{"attr":' + orjson.dumps(orjson.loads(body)) + b',"rest":"' + b"x" * 2000 + b'"}').decode()


def pg_app(url: str, *, transaction: bool) -> Starlette:
    """The PostgreSQL floor: one statement per request, or (transaction) CityOS's write shape."""
    import asyncpg

    pool: asyncpg.Pool | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal pool
        pool = await asyncpg.create_pool(url, min_size=10, max_size=10)
        yield
        await pool.close()

    async def write(sql: str, entity: str, doc: str) -> None:
        assert pool is not None
        if not transaction:
            await pool.execute(sql, entity, doc)
            return
        async with pool.acquire() as connection, connection.transaction():
            await connection.fetchval("SELECT doc FROM floor WHERE id = $1 FOR UPDATE", entity)
            await connection.execute(sql, entity, doc)

    async def retrieve(request: Request) -> Response:
        assert pool is not None
        doc = await pool.fetchval("SELECT doc FROM floor WHERE id = $1", request.path_params["entity_id"])
        return Response(doc.encode(), media_type="application/json")

    async def update(request: Request) -> Response:
        doc = updated(await request.body())
        await write("UPDATE floor SET doc = $2 WHERE id = $1", request.path_params["entity_id"], doc)
        return Response(status_code=204)

    async def create(request: Request) -> Response:
        raw = await request.body()
        entity = orjson.loads(raw)["id"]
        await write("INSERT INTO floor (id, doc) VALUES ($1, $2)", entity, raw.decode())
        return Response(status_code=201, headers={"Location": f"{API}/entities/{entity}"})

    async def aggregate(request: Request) -> Response:
        assert pool is not None
        rows = await pool.fetch(AVG_PER_DAY.format(o="$1::bigint", e="$2"), ORIGIN_US, 1)
        return Response(orjson.dumps([tuple(row) for row in rows]), media_type="application/json")

    return floor_app(retrieve, update, create, aggregate, lifespan=lifespan)


async def _seed_pg(url: str, rows: list[tuple[str, bytes]]) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute("CREATE TABLE floor (pk bigserial PRIMARY KEY, id text UNIQUE, doc json NOT NULL)")
        await connection.copy_records_to_table(
            "floor", records=[(i, d.decode()) for i, d in rows], columns=["id", "doc"]
        )
        await connection.execute("CREATE TABLE history (e integer, t bigint, num double precision)")
        await connection.copy_records_to_table("history", records=instances(), columns=["e", "t", "num"])
        await connection.execute("CREATE INDEX ON history (e, t) INCLUDE (num)")
        await connection.execute("VACUUM ANALYZE floor")
        await connection.execute("VACUUM ANALYZE history")
    finally:
        await connection.close()


def _seed_sqlite(path: str, rows: list[tuple[str, bytes]]) -> None:
    from benchmarks.write_floor import _writer_connection

    seed = _writer_connection(path)
    seed.executemany("INSERT INTO entities (id, doc) VALUES (?, ?)", rows)
    seed.executemany("INSERT INTO history (e, t, num) VALUES (?, ?, ?)", instances())
    seed.execute("ANALYZE")
    seed.close()


def instances() -> list[tuple[int, int, float]]:
    return [(1, ORIGIN_US + i * 60_000_000, float(i % 600)) for i in range(INSTANCES)]


def unix_url(url: str, directory: str) -> str:
    """The same database through the Unix socket in `directory` (asyncpg: an empty host, ?host=DIR)."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    query = f"host={directory}" + (f"&{parts.query}" if parts.query else "")
    return urlunsplit(parts._replace(netloc=f"{user}@" if user else "", query=query))


def served(rounds: int, url: str, unix: str | None = None, duration: float = 2.0) -> None:
    from benchmarks.loadgen import LoadSpec, run_load
    from benchmarks.servers import ServerProcess, free_port
    from benchmarks.workloads import Workload

    folder = Path(tempfile.mkdtemp(prefix="cityos-pg-floor-"))
    path = str(folder / "floor.db")
    rows = documents()
    _seed_sqlite(path, rows)
    if why := unreachable(url):  # also puts PostGIS in public, not in the new schema
        raise SystemExit(why)
    with BenchSchema(url) as schema:
        asyncio.run(_seed_pg(schema.url, rows))
        apps = {
            "sqlite": ([sys.executable, "-m", "benchmarks.write_floor", "serve", "{port}", path], None),
            "postgres": ([sys.executable, "-m", "benchmarks.pg_floor", "serve", "{port}", schema.url], schema.url),
            "postgres-tx": (
                [sys.executable, "-m", "benchmarks.pg_floor", "serve-tx", "{port}", schema.url],
                schema.url,
            ),
        }
        if unix is not None:
            local = unix_url(schema.url, unix)
            apps["postgres-unix"] = ([sys.executable, "-m", "benchmarks.pg_floor", "serve", "{port}", local], None)
        rates: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        with contextlib.ExitStack() as stack:
            servers = {}
            for name, (args, database) in apps.items():
                port = free_port()
                command = [str(port) if a == "{port}" else a for a in args]
                env = {"CITYOS_DATABASE": database} if database else None  # its backends' CPU is counted too
                servers[name] = stack.enter_context(
                    ServerProcess(f"{name} floor", command, port, "/constant", folder / f"{name}.log", env=env)
                )
            for name, server in servers.items():  # warm: statement caches, pages, the loop
                for kind in PATHS.values():
                    workload = Workload(kind, stored=STORED, start=STORED, tag=f"{name}warm")
                    run_load(LoadSpec(server.host, server.port, workload, connections=8, duration=duration / 4))
            for index in range(rounds):
                for path, kind in PATHS.items():
                    for name, server in servers.items():
                        if path not in WRITES and name == "postgres-tx":
                            continue  # a read is one statement in either shape
                        workload = Workload(kind, stored=STORED, start=STORED, tag=f"{name}{index}")
                        before = server.cpu_seconds()
                        result = run_load(
                            LoadSpec(server.host, server.port, workload, connections=8, duration=duration, seed=index)
                        )
                        assert not result.errors, result.error_sample
                        rates.setdefault((path, name), []).append(result.rate)
                        cpu.setdefault((path, name), []).append((server.cpu_seconds() - before) * 1000 / result.ops)
    print("| path | floor | rate (spread) | CPU ms/op (server + backends) | PostgreSQL / SQLite |")
    print("|---|---|---|---|---|")
    for kind in PATHS:
        base = statistics.median(rates[(kind, "sqlite")])
        for name in apps:
            if (kind, name) not in rates:
                continue
            rate, spent = statistics.median(rates[(kind, name)]), statistics.median(cpu[(kind, name)])
            spread = f"{min(rates[(kind, name)]):,.0f}-{max(rates[(kind, name)]):,.0f}"
            ratio = "" if name == "sqlite" else f"{rate / base:.2f}"
            print(f"| {kind} | {name} | {rate:,.0f} req/s ({spread}) | {spent:.3f} | {ratio} |")


def main() -> None:
    if sys.argv[1:2] in (["serve"], ["serve-tx"]):
        import uvicorn

        from benchmarks.constant_app import uvicorn_options

        app = pg_app(sys.argv[3], transaction=sys.argv[1] == "serve-tx")
        uvicorn.run(app, **uvicorn_options("127.0.0.1", int(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rounds", type=int, nargs="?", default=3)
    parser.add_argument("--postgres", default=default_url(), help="the PostgreSQL server (a schema is made in it)")
    parser.add_argument("--unix", metavar="DIR", help="also over the server's Unix socket in DIR")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of load per path, app and round")
    args = parser.parse_args()
    served(args.rounds, args.postgres, args.unix, args.duration)


if __name__ == "__main__":
    main()
