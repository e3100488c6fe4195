"""The floor of an entity query page in Python: the least work that answers the benchmark's three
query requests (scenario 5) from the same SQLite file, served by the same stack as `cityos serve`
(uvicorn + uvloop + httptools), with no framework.

    python -m benchmarks.query_floor prepare FILE          # once: the floor's table, from the file
    python -m benchmarks.query_floor serve FILE --port P   # the floor server
    python -m benchmarks.query_floor served FILE --port P [--rounds 3 --duration 2 --connections 8]

FILE is a file of `python -m benchmarks.scale_reads build FILE N` (N OffStreetParking entities).
`prepare` asks CityOS (in-process) for every entity's JSON as a query page renders it and keeps it,
with the two values the filters read, in a table of its own (`query_floor`, rows in the listing's
order, so position = pk - 1) and an R*Tree (`query_floor_geo`). Each request is then one SQL
statement run on the event loop's thread and the stored JSON joined into the body:

- `type=T&limit=L&offset=O`: the rows `pk > O` in pk order, LIMIT L (a keyset seek: the table is
  dense, so the offset is exact);
- `q=availableSpotNumber>V`: the rows `spots > V` in pk order, LIMIT L OFFSET O;
- `georel=near;maxDistance==D` around a point: the R*Tree's box candidates in pk order, the exact
  great-circle distance tested in SQL on each (store/sqlite_query.py `HAVERSINE`, query/geo.py's
  `haversine` to the bit), LIMIT L OFFSET O: only the page's JSON is read.

What it leaves out, and CityOS does: parameter validation, @context and tenant resolution, the
q language and geo-query parsing, the access policy, expiry, the count, the Link headers
(`rel="next"`), the request id and the thread hand-off to a reader. `served` alternates the two
servers under wrk (`wrk -t1 -cC -dDs` with a Lua script drawing the same random offsets and points
as the benchmark's workloads) and prints each path's rates and their ratio; the instructions per
request are benchmarks/served_instructions.py's (`--floor`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson

from benchmarks.entities import ENTITY_TYPE, LAT, LON
from cityos.query.geo import EARTH_RADIUS

API = "/ngsi-ld/v1/entities"
PAGE = 1000  # entities per page read from CityOS by `prepare`
SCHEMA = """
CREATE TABLE IF NOT EXISTS query_floor (pk INTEGER PRIMARY KEY, spots REAL, min_x REAL, min_y REAL, json BLOB NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS query_floor_geo USING rtree (pk, min_x, max_x, min_y, max_y);
"""
Q_TERM = re.compile(r"availableSpotNumber>(-?[0-9.]+)")
DISTANCE = re.compile(r"near;maxDistance==([0-9.]+)")
# the benchmark's requests (benchmarks/workloads.py), drawn by wrk: path -> Lua expression of the URL
PATHS = {
    "type": f'"{API}?type={ENTITY_TYPE}&limit=20"',
    "type_offset": f'"{API}?type={ENTITY_TYPE}&limit=20&offset=" .. math.random(0, STORED - 20)',
    "q": f'"{API}?type={ENTITY_TYPE}&q=availableSpotNumber%3E400&limit=20"',
    "geo": (
        f'"{API}?type={ENTITY_TYPE}&georel=near%3BmaxDistance%3D%3D500&geometry=Point&coordinates=%5B"'
        f" .. string.format('%.6f', {LON[0]} + math.random() * {LON[1] - LON[0]}) .. '%2C'"
        f" .. string.format('%.6f', {LAT[0]} + math.random() * {LAT[1] - LAT[0]}) .. '%5D&limit=20'"
    ),
}


def prepare(database: str) -> int:
    """The floor's table in `database`, from CityOS's own answers (once; a file that has it is kept)."""
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'query_floor'").fetchone():
            found: int = connection.execute("SELECT COUNT(*) FROM query_floor").fetchone()[0]
            return found
        rows = asyncio.run(_rendered(database))
        connection.executescript(SCHEMA)
        with connection:
            connection.executemany("INSERT INTO query_floor VALUES (?, ?, ?, ?, ?)", rows)
            connection.executemany(
                "INSERT INTO query_floor_geo VALUES (?, ?, ?, ?, ?)", ((pk, x, x, y, y) for pk, _, x, y, _ in rows)
            )
        return len(rows)
    finally:
        connection.close()


async def _rendered(database: str) -> list[tuple[int, float, float, float, bytes]]:
    """(position + 1, availableSpotNumber, lon, lat, JSON) of every entity, in the listing's order."""
    from cityos.app import create_app
    from cityos.settings import Settings

    app = create_app(Settings(database=database, log_level="warning"))
    rows: list[tuple[int, float, float, float, bytes]] = []
    async with app.router.lifespan_context(app):
        while True:
            page = orjson.loads(await _get(app, f"type={ENTITY_TYPE}&limit={PAGE}&offset={len(rows)}"))
            for entity in page:
                lon, lat = entity["location"]["value"]["coordinates"]
                spots = float(entity["availableSpotNumber"]["value"])
                rows.append((len(rows) + 1, spots, lon, lat, orjson.dumps(entity)))
            if len(page) < PAGE:
                return rows


async def _get(app: Any, query: str) -> bytes:
    """The body of GET /entities?`query` through the ASGI app (in-process, no sockets)."""
    from benchmarks.instructions import call

    sent: list[dict[str, Any]] = []
    assert await call(app, "GET", f"{API}?{query}", b"", None, sent) == 200, sent
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


class Floor:
    """The ASGI app: one statement per request on the loop's own connection, the JSON joined."""

    def __init__(self, database: str) -> None:
        self.connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, isolation_level=None)

    def page(self, query: bytes) -> bytes:
        params = dict(parse_qsl(query.decode()))
        limit, offset = int(params.get("limit", "20")), int(params.get("offset", "0"))
        execute = self.connection.execute
        if "q" in params:
            found = Q_TERM.fullmatch(params["q"])
            assert found is not None, params["q"]
            sql = "SELECT json FROM query_floor WHERE spots > ? ORDER BY pk LIMIT ? OFFSET ?"
            docs = [doc for (doc,) in execute(sql, (float(found.group(1)), limit, offset))]
        elif "georel" in params:
            distance = DISTANCE.fullmatch(params["georel"])
            assert distance is not None, params["georel"]
            docs = self._near(params["coordinates"], float(distance.group(1)), limit, offset)
        else:
            docs = [doc for (doc,) in execute("SELECT json FROM query_floor WHERE pk > ? LIMIT ?", (offset, limit))]
        return b"[" + b",".join(docs) + b"]"

    def _near(self, coordinates: str, distance: float, limit: int, offset: int) -> list[bytes]:
        from cityos.store.sqlite_query import HAVERSINE  # here: benchmarks.served_instructions runs older commits

        lon, lat = (float(v) for v in orjson.loads(coordinates))
        spread = math.degrees(distance * (1 + 1e-9) / EARTH_RADIUS) + 1e-9  # the box around the circle
        wide = spread / max(math.cos(math.radians(min(89.0, abs(lat) + spread))), 1e-6)
        phi = math.radians(lat)
        rows = self.connection.execute(
            "SELECT f.json FROM query_floor f WHERE f.pk IN (SELECT g.pk FROM query_floor_geo g"
            " WHERE g.max_x >= ? AND g.min_x <= ? AND g.max_y >= ? AND g.min_y <= ?)"
            f" AND {HAVERSINE.format(a='f')} <= ? ORDER BY f.pk LIMIT ? OFFSET ?",
            (
                lon - wide,
                lon + wide,
                lat - spread,
                lat + spread,
                2 * EARTH_RADIUS,
                phi,
                math.cos(phi),
                lon,
                distance,
                limit,
                offset,
            ),
        )
        return [doc for (doc,) in rows]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] != API:  # the readiness check
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        body = self.page(scope["query_string"])
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def serve(database: str, port: int) -> int:
    import uvicorn

    from benchmarks.constant_app import uvicorn_options

    uvicorn.run(Floor(database), http="httptools", **uvicorn_options("127.0.0.1", port))  # type: ignore[arg-type]
    return 0


def wait_for(url: str, process: subprocess.Popen[bytes], seconds: float = 120.0) -> None:
    """Until `url` answers (SystemExit when `process` exits first or `seconds` pass)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer")


def wrk(port: int, path: str, stored: int, connections: int, duration: float, folder: Path) -> float:
    """Requests per second of one wrk run on one path (non-2xx answers fail the run)."""
    script = folder / f"{path}.lua"
    script.write_text(
        f"STORED = {stored}\nmath.randomseed(15)\n"
        f'request = function() return wrk.format("GET", {PATHS[path]}) end\n'
        'done = function(summary, latency, requests) io.write(string.format("non2xx %d\\n", '
        "summary.errors.status)) end\n"
    )
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/",
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "non2xx 0" not in out:
        raise SystemExit(f"{path} on port {port}: errors\n{out}")
    found = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    assert found is not None, out
    return float(found.group(1))


def served(database: str, port: int, rounds: int, duration: float, connections: int) -> int:
    """CityOS (`cityos serve`, PYTHONPATH's checkout) and the floor on copies of the same prepared
    file, wrk on each path alternately, `rounds` times; the medians and their ratio."""
    folder = Path(tempfile.mkdtemp(prefix="query-floor-"))
    stored = prepare(database)
    ours, floor_copy = folder / "ours.db", folder / "floor.db"
    shutil.copy(database, ours)
    shutil.copy(database, floor_copy)
    cityos = [sys.executable, "-m", "cityos", "serve", "--port", str(port), "--database", str(ours)]
    servers = {
        "cityos": subprocess.Popen(
            [*cityos, "--log-level", "warning"], stderr=subprocess.DEVNULL, env=dict(os.environ)
        ),
        "floor": subprocess.Popen(
            [sys.executable, "-m", "benchmarks.query_floor", "serve", str(floor_copy), "--port", str(port + 1)],
            env=dict(os.environ),
        ),
    }
    ports = {"cityos": port, "floor": port + 1}
    rates: dict[tuple[str, str], list[float]] = {}
    try:
        wait_for(f"http://127.0.0.1:{port}/version", servers["cityos"])
        wait_for(f"http://127.0.0.1:{port + 1}/ready", servers["floor"])
        for server_port in ports.values():  # one pass of warm-up: the render cache, the page cache
            for path in PATHS:
                wrk(server_port, path, stored, connections, duration, folder)
        for _ in range(rounds):
            for path in PATHS:
                for name, server_port in ports.items():
                    rates.setdefault((name, path), []).append(
                        wrk(server_port, path, stored, connections, duration, folder)
                    )
    finally:
        for server in servers.values():
            server.terminate()
            server.wait(timeout=60)
    seconds, load = max(1, round(duration)), os.getloadavg()[0]
    print(f"{stored} entities, wrk -t1 -c{connections} -d{seconds}s, {rounds} rounds, load average {load:.1f}")
    print("| path | CityOS req/s (median; min-max) | floor req/s | CityOS / floor |")
    print("|---|---|---|---|")
    for path in PATHS:
        ours_rates, floor_rates = rates[("cityos", path)], rates[("floor", path)]
        mine, base = statistics.median(ours_rates), statistics.median(floor_rates)
        print(
            f"| {path} | {mine:,.0f} ({min(ours_rates):,.0f}-{max(ours_rates):,.0f}) | {base:,.0f} "
            f"({min(floor_rates):,.0f}-{max(floor_rates):,.0f}) | {mine / base:.1%} |"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.query_floor", description=__doc__)
    parser.add_argument("command", choices=("prepare", "serve", "served"))
    parser.add_argument("database")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(f"{prepare(args.database)} entities in query_floor")
        return 0
    if not args.port:
        raise SystemExit("--port is needed")
    if args.command == "serve":
        return serve(args.database, args.port)
    return served(args.database, args.port, args.rounds, args.duration, args.connections)


if __name__ == "__main__":
    raise SystemExit(main())
