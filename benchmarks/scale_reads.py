"""CPU time per read request at city scale (issue 15), in-process, on a prebuilt SQLite file.

    python -m benchmarks.scale_reads build /tmp/reads-100k.db 100000   # OffStreetParking bench-{i}
    python -m benchmarks.scale_reads measure /tmp/reads-100k.db query_offset 200

DATABASE may also be a PostgreSQL URL (e.g. a migrated schema's, `...?search_path=SCHEMA,public`).
`build` loads N benchmark entities (benchmarks/entities.py) by batch upsert through the ASGI
application, history off (it plays no part in these reads), and keeps the file; building a file once
lets each measurement run on 10k, 100k or 1M entities without reloading. `measure` sends COUNT
requests of one kind through the whole application (as benchmarks/instructions.py does: routing,
handler, store, rendering, no sockets) after a warm-up, and prints the CPU time per request. Under
callgrind (CITYOS_INSTRUCTIONS_CALLGRIND=1, see instructions.py) it counts instructions instead.

Kinds: retrieve, query (type, limit=20, offset 0), query_offset (type, limit=20, a random offset over
the whole set), q (`availableSpotNumber>50`, limit=20), q_offset (the same at a random offset below
the match count), q_count (the same with count=true), geo (near 500 m of a random point, limit=20).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import sys
import time
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from benchmarks.entities import ENTITY_TYPE, entity_id, make_entity, random_point
from benchmarks.instructions import API, WARM_UP, call, callgrind, put_off_periodic
from cityos.app import create_app
from cityos.settings import Settings
from cityos.store import is_postgres

BATCH = 1000


def _settings(database: str) -> Settings:
    return Settings(database=database, log_level="warning", temporal_disabled_tenants="*")


def _stored(database: str) -> int:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        found: int = connection.execute("SELECT COUNT(*) FROM entities").fetchone()[0]
    finally:
        connection.close()
    return found


async def _stored_in_postgres(database: str) -> int:
    import asyncpg

    connection = await asyncpg.connect(database)
    try:
        found: int = await connection.fetchval("SELECT count(*) FROM entities")
    finally:
        await connection.close()
    return found


def _get(params: dict[str, str]) -> tuple[str, str, bytes]:
    return "GET", f"{API}/entities?" + urlencode(params, quote_via=quote, safe=""), b""


def request_of(kind: str, stored: int, rng: random.Random) -> tuple[str, str, bytes]:
    """(method, path with query, body) of one request of a kind over `stored` entities."""
    page = {"type": ENTITY_TYPE, "limit": "20"}
    if kind == "retrieve":
        return "GET", f"{API}/entities/{entity_id(rng.randrange(stored))}", b""
    if kind == "query":
        return _get(page)
    if kind == "query_offset":
        return _get({**page, "offset": str(rng.randrange(max(stored - 20, 1)))})
    if kind in ("q", "q_offset", "q_count"):
        params = {**page, "q": "availableSpotNumber>50"}
        if kind == "q_offset":  # about four in five entities match
            params["offset"] = str(rng.randrange(max(stored * 3 // 4, 1)))
        if kind == "q_count":
            params["count"] = "true"
        return _get(params)
    if kind == "geo":
        lon, lat = random_point(rng)
        near = {"georel": "near;maxDistance==500", "geometry": "Point", "coordinates": f"[{lon},{lat}]"}
        return _get({**page, **near})
    raise SystemExit(f"unknown kind {kind!r}")


async def build(database: str, count: int) -> None:
    app = create_app(_settings(database))
    async with app.router.lifespan_context(app):
        started = time.monotonic()
        for first in range(0, count, BATCH):
            batch = [make_entity(i) for i in range(first, min(first + BATCH, count))]
            status = await call(app, "POST", f"{API}/entityOperations/upsert", orjson.dumps(batch), None)
            assert status in (201, 204), status
            if first % 50_000 == 0:
                print(f"{first + len(batch)} loaded, {time.monotonic() - started:.0f} s", flush=True)
        # what `cityos import` does after a bulk load (and autovacuum would, which this machine's
        # PostgreSQL has off): statistics and visibility maps, else PostgreSQL's tiles and q
        # queries are measured on plans without them (docs/performance.md, "Statistics matter")
        await app.state.services.store.refresh_statistics()


async def measure(database: str, kind: str, count: int) -> float:
    stored = await _stored_in_postgres(database) if is_postgres(database) else _stored(database)
    put_off_periodic()
    app = create_app(_settings(database))
    rng = random.Random(15)
    async with app.router.lifespan_context(app):
        for _ in range(WARM_UP):
            await call(app, *request_of(kind, stored, rng), None)
        callgrind("on")
        started = time.process_time()
        for _ in range(count):
            status = await call(app, *request_of(kind, stored, rng), None)
            assert status < 300, f"{kind} answered {status}"
        spent = time.process_time() - started
        callgrind("off")
    return spent / count


def main(argv: list[str]) -> Any:
    if len(argv) == 3 and argv[0] == "build":
        return asyncio.run(build(argv[1], int(argv[2])))
    if len(argv) == 4 and argv[0] == "measure":
        spent = asyncio.run(measure(argv[1], argv[2], int(argv[3])))
        print(f"{argv[2]}: {spent * 1e6:.0f} µs CPU per request")
        return None
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
