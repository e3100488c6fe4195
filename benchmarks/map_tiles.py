"""Map tiles and the change stream at city scale (issue 18), against a real `cityos serve`.

    python -m benchmarks.map_tiles build DATABASE 100000     # OffStreetParking bench-{i}, Porto
    python -m benchmarks.map_tiles tiles DATABASE 60 [cold|warm] [type=X] [zooms=10,12] [changes=200]
    python -m benchmarks.map_tiles stream DATABASE 200 10    # 200 changes/s for 10 s, one SSE client
    python -m benchmarks.map_tiles page DATABASE 5           # GET /console/map: 5 loads, after writes
    python -m benchmarks.map_tiles follow 20000              # creates' CPU with the map's layers kept

DATABASE is a SQLite file or a PostgreSQL URL (a migrated schema's, `...?search_path=SCHEMA,public`).
`build` is benchmarks.scale_reads' (batch upserts in-process, history off). `tiles` starts a server
on the database and sends, one at a time over one keep-alive connection, GET /tiles/z/x/y.mvt for
tiles of the city (each tile once where the zoom has enough, else its few tiles in turn; `cold`:
the server's tile cache off, so every tile is drawn; `warm`: each chosen tile asked once, untimed,
before the timed requests, which the tile cache then answers), and prints
per zoom the latency percentiles, the layer answered, the features per tile and the CPU time per
tile of the server's processes and, on PostgreSQL, of the backends serving its connections
(ServerProcess.cpu_seconds; read before and after each tile); `type=X` (or any query)
filters every tile, `zooms=` picks the zooms (default 10-16), `changes=RATE` sends RATE changes a
second to the same server while the tiles are timed (a new random availableSpotNumber 0-300 of
random entities: the server's CPU per tile then includes the writes'). `stream` connects
one client to GET /cityos/v1/changes?type=OffStreetParking, then updates `availableSpotNumber` of
random stored entities at RATE changes per second (batch upserts of RATE/10 entities every 100 ms)
and prints how many changes arrived, and the delay from each batch's answer to its events' arrival.
`follow` creates N located entities in batches of 1,000 in-process (a new SQLite file, a
TestClient), without and with the console map's layers kept (each create then followed,
console/layers.py), twice each, alternated, and prints the process's CPU seconds for the creates.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.entities import LAT, LON, entity_id
from benchmarks.scale_reads import build
from benchmarks.servers import cityos_server
from cityos.store import is_postgres

ZOOMS = (10, 11, 12, 13, 14, 15, 16)
API = "/ngsi-ld/v1"


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 1 << z
    x = int((lon + 180.0) / 360.0 * n)
    y = int((1.0 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2.0 * n)
    return x, y


def _server(database: str, workdir: Path, cold: bool = False) -> Any:
    extra = ["--temporal-disabled-tenants", "*", *(["--tile-cache-mb", "0"] if cold else [])]
    if is_postgres(database):
        return cityos_server(workdir, database, extra=extra)
    return cityos_server(workdir, database=Path(database), extra=extra)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def tiles(
    database: str,
    per_zoom: int,
    cold: bool = False,
    query: str = "",
    zooms: tuple[int, ...] = ZOOMS,
    warm: bool = False,
    changes: int = 0,
) -> list[dict[str, Any]]:
    from tests.mvt_decode import decode  # the tests' independent decoder: counts what a client sees

    rng = random.Random(18)
    rows = []
    stop = threading.Event()
    with (
        tempfile.TemporaryDirectory() as work,
        _server(database, Path(work), cold) as server,
        httpx.Client(base_url=server.base, timeout=30) as client,
    ):
        suffix = f"?{query}" if query else ""
        for _ in range(10):  # warm-up: connections, first statements
            client.get(f"/tiles/14/7795/6130.mvt{suffix}")
        writer = threading.Thread(target=_change, args=(server.base, changes, stop), daemon=True)
        if changes:
            writer.start()
        try:
            _timed(client, server, rng, rows, per_zoom, suffix, zooms, warm, decode)
        finally:
            stop.set()
            if changes:
                writer.join(10)
    return rows


def _change(base: str, rate: int, stop: threading.Event) -> None:
    """While the tiles are timed: `rate` changes a second to the same server, each a new random
    `availableSpotNumber` (0-300) of a random stored entity (batch upserts of rate/10 every 100 ms),
    so entities enter and leave a q's matches."""
    rng = random.Random(201)
    batch = max(1, rate // 10)
    with httpx.Client(base_url=base, timeout=30) as client:
        started = time.perf_counter()
        rounds = 0
        while not stop.is_set():
            _set_spots(client, {i: rng.randrange(300) for i in rng.sample(range(100_000), batch)})
            rounds += 1
            pause = started + rounds * 0.1 - time.perf_counter()
            if pause > 0:
                stop.wait(pause)
        print(
            {"changes_sent": rounds * batch, "rate_per_s": round(rounds * batch / (time.perf_counter() - started), 1)}
        )


def _set_spots(client: httpx.Client, values: dict[int, int]) -> None:
    """One batch upsert (update) of stored entities' availableSpotNumber: {entity number: value}."""
    body = [
        {"id": entity_id(i), "type": "OffStreetParking", "availableSpotNumber": {"type": "Property", "value": v}}
        for i, v in values.items()
    ]
    response = client.post(
        f"{API}/entityOperations/upsert",
        params={"options": "update"},
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code in (201, 204), response.text


def _timed(
    client: httpx.Client,
    server: Any,
    rng: random.Random,
    rows: list[dict[str, Any]],
    per_zoom: int,
    suffix: str,
    zooms: tuple[int, ...],
    warm: bool,
    decode: Any,
) -> None:
    """The timed requests of `tiles`, a row per zoom."""
    for z in zooms:
        (x0, y0), (x1, y1) = tile_of(LON[0], LAT[1], z), tile_of(LON[1], LAT[0], z)
        city = [(x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)]
        # each tile of the city once when it has enough; else (low zooms) its few tiles in turn
        chosen = rng.sample(city, per_zoom) if len(city) >= per_zoom else (city * per_zoom)[:per_zoom]
        seen = set(chosen)
        for x, y in seen if warm else ():  # each tile drawn once, untimed: the timed requests hit the cache
            assert client.get(f"/tiles/{z}/{x}/{y}.mvt{suffix}").status_code == 200
        times, features, layers = [], [], set()
        cpu = 0.0
        for x, y in chosen:
            before = server.cpu_seconds()
            started = time.perf_counter()
            response = client.get(f"/tiles/{z}/{x}/{y}.mvt{suffix}")
            times.append((time.perf_counter() - started) * 1000)
            cpu += server.cpu_seconds() - before
            assert response.status_code == 200, response.text
            layer = response.headers["x-tile-layer"]
            layers.add(layer)
            decoded = decode(response.content)
            features.append(len(decoded[layer]["features"]) if layer in decoded else 0)
        rows.append(
            {
                "zoom": z,
                "tiles": len(seen),
                "requests": len(times),
                "layer": "/".join(sorted(layers)),
                "features_median": statistics.median(features),
                "p50_ms": round(percentile(times, 0.50), 1),
                "p95_ms": round(percentile(times, 0.95), 1),
                "max_ms": round(max(times), 1),
                "cpu_ms_per_tile": round(cpu * 1000 / len(times), 1),
            }
        )
        print(rows[-1], flush=True)


def stream(database: str, rate: int, seconds: float) -> dict[str, Any]:
    stored = 100_000
    batch, interval = max(1, rate // 10), 0.1
    received: list[tuple[float, str, int]] = []
    dropped = threading.Event()
    ready = threading.Event()
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as work, _server(database, Path(work)) as server:

        def listen() -> None:
            with httpx.Client(base_url=server.base, timeout=httpx.Timeout(30, read=60)) as client:
                params = {"type": "OffStreetParking"}
                with client.stream("GET", "/cityos/v1/changes", params=params) as response:
                    ready.set()
                    kind = ""
                    for line in response.iter_lines():
                        if line.startswith("event: "):
                            kind = line[7:]
                            if kind == "dropped":
                                dropped.set()
                        elif line.startswith("data: ") and kind == "change":
                            data = orjson.loads(line[6:])
                            received.append((time.perf_counter(), data["id"], data["attrs"]["availableSpotNumber"]))
                        if stop.is_set():
                            return

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        ready.wait(10)
        time.sleep(0.3)
        rng = random.Random(200)
        answered: dict[tuple[str, int], float] = {}
        with httpx.Client(base_url=server.base, timeout=30) as client:
            started = time.perf_counter()
            rounds = int(seconds / interval)
            for round_ in range(rounds):
                value = 100_000 + round_
                ids = rng.sample(range(stored), batch)
                _set_spots(client, dict.fromkeys(ids, value))
                done = time.perf_counter()
                for i in ids:
                    answered[(entity_id(i), value)] = done
                pause = started + (round_ + 1) * interval - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            elapsed = time.perf_counter() - started
        deadline = time.monotonic() + 5
        while len(received) < len(answered) and time.monotonic() < deadline and not dropped.is_set():
            time.sleep(0.05)
        stop.set()
        delays = [(at - answered[(i, v)]) * 1000 for at, i, v in received if (i, v) in answered]
    result = {
        "changes_sent": len(answered),
        "seconds": round(elapsed, 2),
        "rate_sent_per_s": round(len(answered) / elapsed, 1),
        "events_received": len(delays),
        "dropped": dropped.is_set(),
        "delay_p50_ms": round(percentile(delays, 0.5), 1) if delays else None,
        "delay_p95_ms": round(percentile(delays, 0.95), 1) if delays else None,
        "delay_max_ms": round(max(delays), 1) if delays else None,
    }
    print(result, flush=True)
    return result


def page(database: str, loads: int) -> list[dict[str, Any]]:
    """The map page's HTML time: `loads` loads in turn; after a new value (its layers kept); after a
    create and after a delete (followed since i18console; read again before, console/layers.py)."""
    from cityos.mapdata.changes import RETOUCH

    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as work,
        _server(database, Path(work)) as server,
        httpx.Client(base_url=server.base, timeout=60) as client,
    ):

        def load(label: str) -> None:
            started = time.perf_counter()
            response = client.get("/console/map")
            assert response.status_code == 200, response.text
            rows.append({"load": label, "ms": round((time.perf_counter() - started) * 1000, 1)})
            print(rows[-1], flush=True)

        client.get("/console/entities?type=OffStreetParking")  # warm-up: the templates, the first statements
        time.sleep(RETOUCH + 0.2)
        for i in range(loads):
            load(f"load {i + 1}")
        some = entity_id(0)
        value = {"availableSpotNumber": {"type": "Property", "value": 7}}
        assert client.patch(f"{API}/entities/{some}/attrs", json=value).status_code == 204
        load("after a new value")
        made = {"id": "urn:ngsi-ld:OffStreetParking:page-bench", "type": "OffStreetParking"}
        made["location"] = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [LON[0], LAT[0]]}}
        assert client.post(f"{API}/entities", json=made).status_code == 201
        load("after a create")
        time.sleep(RETOUCH + 0.2)
        load("after a create, 1 s later")
        load("then")
        assert client.delete(f"{API}/entities/{made['id']}").status_code == 204
        load("after a delete")
    return rows


def follow(count: int, batch: int = 1000) -> list[dict[str, Any]]:
    """CPU of `count` located creates, with no layers kept and with them kept (each followed)."""
    from starlette.testclient import TestClient

    from cityos.app import create_app
    from cityos.mapdata.changes import RETOUCH
    from cityos.settings import Settings

    def located(n: int) -> dict[str, Any]:
        point = {"type": "Point", "coordinates": [LON[0] + n * 1e-6, LAT[0]]}
        return {"id": entity_id(n), "type": "OffStreetParking", "location": {"type": "GeoProperty", "value": point}}

    rows: list[dict[str, Any]] = []
    for kept in (False, True, False, True):
        with (
            tempfile.TemporaryDirectory() as work,
            TestClient(create_app(Settings(database=str(Path(work) / "city.db")))) as client,
        ):
            assert client.post(f"{API}/entities", json=located(count)).status_code == 201
            time.sleep(RETOUCH + 0.2)
            if kept:
                assert client.get("/console/map").status_code == 200
            started = time.process_time()
            for first in range(0, count, batch):
                made = [located(n) for n in range(first, min(first + batch, count))]
                assert client.post(f"{API}/entityOperations/create", json=made).status_code == 201
            cpu = time.process_time() - started
            shown = f'"count": {count + 1}' in client.get("/console/map").text
            layers = client.app.state.console_layers  # type: ignore[attr-defined]
            rows.append({"kept": kept, "cpu_s": round(cpu, 2), "shown": shown, "reads": layers.misses})
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str]) -> Any:
    if len(argv) == 3 and argv[0] == "build":
        return asyncio.run(build(argv[1], int(argv[2])))
    if len(argv) >= 3 and argv[0] == "tiles":
        options = argv[3:]
        zooms = next((o.split("=", 1)[1] for o in options if o.startswith("zooms=")), None)
        rate = next((int(o.split("=", 1)[1]) for o in options if o.startswith("changes=")), 0)
        plain = [o for o in options if o not in ("cold", "warm") and not o.startswith(("zooms=", "changes="))]
        query = "&".join(plain)
        chosen = tuple(int(z) for z in zooms.split(",")) if zooms else ZOOMS
        cold, warm = "cold" in options, "warm" in options
        return tiles(argv[1], int(argv[2]), cold, query, chosen, warm and not cold, rate)
    if len(argv) == 3 and argv[0] == "page":
        return page(argv[1], int(argv[2]))
    if len(argv) == 2 and argv[0] == "follow":
        return follow(int(argv[1]))
    if len(argv) == 4 and argv[0] == "stream":
        return stream(argv[1], int(argv[2]), float(argv[3]))
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
