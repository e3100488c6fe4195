"""Instructions per request, for before/after comparisons on a busy machine.

`python -m benchmarks.instructions KIND N` sends N requests of one kind through the whole ASGI
application in-process (no sockets: ProtocolGuard, routing, handler, store, rendering) on a new
SQLite file, and prints the CPU time per request. Under callgrind it counts instructions instead,
which repeat to a fraction of a percent whatever else the machine runs:

    CITYOS_INSTRUCTIONS_CALLGRIND=1 PYTHONPATH=<checkout>/src valgrind --tool=callgrind \\
        --instr-atstart=no python -m benchmarks.instructions retrieve 200

(instrumentation is switched on for the measured loop only, with `callgrind_control -i on`; the
"Collected" total divided by N is the cost of one request). Run it with PYTHONPATH pointing at
another checkout's src/ to measure that commit. CITYOS_INSTRUCTIONS_AUTH=1 serves with --auth
required and sends the requests with an API key whose policy hides one attribute (issue 14's
auth-on cost); CITYOS_INSTRUCTIONS_AUDIT=off serves with --audit off (what the audit trail costs a
write); CITYOS_INSTRUCTIONS_HISTORY=off with the history off for every tenant (what recording it
costs); CITYOS_INSTRUCTIONS_WARM=N sends N warm-up requests instead of 20 (N = the measured
count: every measured read is a second read of its entity, a render-cache hit). Kinds: retrieve,
query, q, geo, update, create, batch; attr and parking are the served scenarios 2 and 1 (a partial
attribute update without type, the OffStreetParking entity created); refresh is scenario 3 as served
(1,000 of the stored OffStreetParking entities upserted with new values);
spot is scenario 2 as served: availableSpotNumber of the benchmark's OffStreetParking entities (a
4 KB document of ten attributes), which are loaded instead of the small T entities; get (scenario 4)
and spotread (scenario 8a) are GETs of those entities by id (with CITYOS_INSTRUCTIONS_AUTH=1 the
reader may read them but not their `address`, as benchmarks/auth.py's policy says); offset is scenario 5d
over those entities (pages of 20 at spread-out offsets; CITYOS_INSTRUCTIONS_RENDER_CACHE_MB=0 renders
every page from its stored documents, as a random page at 1,000,000 does); avg and lastn are
scenarios 6b and 6c (the average per day, the last 10, over 20,000 instances of one entity, loaded
first). The requests are built before the measured loop (building an OffStreetParking body costs about
a tenth of creating it). CITYOS_INSTRUCTIONS_DATABASE=postgresql://... serves from that database
instead of a new SQLite file (a fresh schema: benchmarks/round_trips.py makes one);
CITYOS_INSTRUCTIONS_SETTLE=SECONDS waits that long before the measured loop, so that PostgreSQL's audit
sealer has sealed the load's writes (under callgrind that takes seconds) and is not counted in a read's
instructions. CITYOS_INSTRUCTIONS_RULES=N serves with N alert rules judging every change of the T
entities (write_rules; issue 17's "at most 10% with 100 rules"). CITYOS_INSTRUCTIONS_OBSERVE=off serves
with --no-metrics, =all with the metrics and --access-log --log-format json, =all-text the same in
the default text format (issue 20's "at most 5%"; the lines go to stderr: send it to /dev/null; the
lines of the load and warm-up are written before the count, those still kept at the end of the loop
inside it); unset: the default (metrics
on, no access log).

Work done once per period of wall-clock time (the expiry sweep every second, the authenticator's
credentials poll every second, the signed audit checkpoint every minute, the WAL checkpoint every
0.2 s while writes go on, a q filter's plan decision kept for a second, the metrics' sampler and its
event-loop lag probe, the access log's 50 ms batches: written 256 at a time) is put off for the run, and
the wall-clock budget of a query page read on the event loop lifted (`put_off_periodic`):
under callgrind a second is a few requests instead of thousands, so such work would be counted
many times per request, more the busier the machine (a loaded machine slows the run down).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

import cityos.app
from benchmarks.entities import entity_id as bench_id
from benchmarks.entities import make_entity
from cityos.app import create_app
from cityos.settings import Settings

DATABASE_ENV = "CITYOS_INSTRUCTIONS_DATABASE"  # another database setting (a postgresql:// URL; round_trips.py)
SPOTS = ("spot", "spotread", "get", "refresh", "offset")  # kinds over the benchmark's OffStreetParking entities
RULES_ENV = "CITYOS_INSTRUCTIONS_RULES"  # that many alert rules on the T entities (write_rules)
PERIODIC_SECONDS = 3600.0  # the periods of the wall-clock work left out (module docstring)

ENTITIES = 2000
WARM_UP = 20
API = "/ngsi-ld/v1"
READER_POLICY = [
    {
        "id": "reader",
        "effect": "allow",
        "principals": {"roles": ["reader"]},
        "actions": ["read", "update", "create"],
        "resources": {"types": ["T"], "exceptAttrs": ["name"]},
    },
    {  # benchmarks/auth.py's policy, for spotread
        "id": "parking-reader",
        "effect": "allow",
        "principals": {"roles": ["reader"]},
        "actions": ["read", "update"],
        "resources": {"types": ["OffStreetParking"], "exceptAttrs": ["address"]},
    },
]


TEMPORAL_ID = "urn:ngsi-ld:OffStreetParking:temporal-bench"
TEMPORAL_INSTANCES = 20_000  # one a minute from 2026-01-01, as scenario 6 loads them
_AFTER = "attrs=availableSpotNumber&timerel=after&timeAt=2026-01-01T00%3A00%3A00Z"
AVG_PER_DAY = f"{_AFTER}&options=aggregatedValues&aggrMethods=avg&aggrPeriodDuration=P1D"
LAST_N = f"{_AFTER}&lastN=10"


def temporal_loads() -> list[bytes]:
    """Scenario 6's instances as POST /temporal/entities bodies of 1,000 instances each."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    bodies = []
    for first in range(0, TEMPORAL_INSTANCES, 1000):
        values = [
            {
                "type": "Property",
                "value": i % 600,
                "observedAt": (start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            for i in range(first, first + 1000)
        ]
        body = {"id": TEMPORAL_ID, "type": "OffStreetParking", "availableSpotNumber": values}
        bodies.append(orjson.dumps(body))
    return bodies


def entity(number: int) -> dict[str, Any]:
    point = [2.0 + number * 1e-5, 48.0]
    return {
        "id": f"urn:ngsi-ld:T:{number}",
        "type": "T",
        "temperature": {"type": "Property", "value": number},
        "name": {"type": "Property", "value": f"n{number}"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": point}},
    }


def request_of(kind: str, seq: int) -> tuple[str, str, bytes]:
    """(method, path with query, body) of the seq-th request of a kind."""
    if kind == "retrieve":
        return "GET", f"{API}/entities/urn:ngsi-ld:T:{seq % ENTITIES}", b""
    if kind == "query":
        return "GET", f"{API}/entities?type=T&limit=20", b""
    if kind == "q":
        low = seq % (ENTITIES - 100)
        return "GET", f"{API}/entities?type=T&q=temperature%3E{low}%3Btemperature%3C{low + 50}&limit=20", b""
    if kind == "geo":
        near = "georel=near%3BmaxDistance%3D%3D500&geometry=Point&coordinates=%5B2.005%2C48.0%5D"
        return "GET", f"{API}/entities?type=T&{near}&limit=20", b""
    if kind == "update":
        body: dict[str, Any] = {"temperature": {"type": "Property", "value": seq}}
        return "PATCH", f"{API}/entities/urn:ngsi-ld:T:{seq % ENTITIES}/attrs", orjson.dumps(body)
    if kind == "attr":  # scenario 2's shape: one attribute, value and observedAt, no type
        body = {"value": seq, "observedAt": f"2026-01-01T00:00:{seq % 60:02d}Z"}
        return "PATCH", f"{API}/entities/urn:ngsi-ld:T:{seq % ENTITIES}/attrs/temperature", orjson.dumps(body)
    if kind in ("get", "spotread"):  # scenarios 4 and 8a as served: the benchmark's entities by id
        return "GET", f"{API}/entities/{bench_id(seq % ENTITIES)}", b""
    if kind == "spot":  # scenario 2 as served: the benchmark's entities, value and observedAt, no type
        body = {"value": seq % 600, "observedAt": f"2026-11-22T00:00:{seq % 60:02d}Z"}
        path = f"{API}/entities/{bench_id(seq % ENTITIES)}/attrs/availableSpotNumber"
        return "PATCH", path, orjson.dumps(body)
    if kind == "offset":  # scenario 5d over the benchmark's entities: a page at a spread-out offset
        return "GET", f"{API}/entities?type=OffStreetParking&limit=20&offset={(seq * 397) % (ENTITIES - 20)}", b""
    if kind == "parking":  # scenario 1's body: the OffStreetParking entity of benchmarks/entities.py
        return "POST", f"{API}/entities", orjson.dumps(make_entity(seq, id_=f"urn:ngsi-ld:OffStreetParking:c{seq}"))
    if kind == "create":
        body = {"id": f"urn:ngsi-ld:T:c{seq}", "type": "T", "temperature": {"type": "Property", "value": seq}}
        return "POST", f"{API}/entities", orjson.dumps(body)
    if kind in ("avg", "lastn"):  # scenarios 6b and 6c over one entity's TEMPORAL_INSTANCES instances
        return "GET", f"{API}/temporal/entities/{TEMPORAL_ID}?{AVG_PER_DAY if kind == 'avg' else LAST_N}", b""
    if kind == "refresh":  # scenario 3 as served: 1,000 stored ids upserted with new values
        first = (seq * 1000) % ENTITIES
        batch = [make_entity(n, seed=seq + 1) for n in range(first, first + 1000)]
        return "POST", f"{API}/entityOperations/upsert", orjson.dumps(batch)
    if kind == "batch":
        batch = [
            {
                "id": f"urn:ngsi-ld:T:b{(seq * 200 + k) % 4000}",
                "type": "T",
                "temperature": {"type": "Property", "value": k},
            }
            for k in range(200)
        ]
        return "POST", f"{API}/entityOperations/upsert", orjson.dumps(batch)
    raise SystemExit(f"unknown kind {kind!r}")


async def call(
    app: Any,
    method: str,
    target: str,
    body: bytes,
    authorization: bytes | None,
    sent: list[dict[str, Any]] | None = None,
) -> int:
    """One request through the ASGI app; its status (and its messages in `sent`, when given)."""
    path, _, query = target.partition("?")
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if authorization is not None:
        headers.append((b"authorization", authorization))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 1026),
        "scheme": "http",
        "root_path": "",
    }
    sent = [] if sent is None else sent
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status: int = sent[0]["status"]
    return status


def make_key(database: str, role: str) -> bytes:
    command = [sys.executable, "-m", "cityos", "keys", "create", "--role", role, "--name", role, "--tenant", ""]
    done = subprocess.run([*command, "--database", database], capture_output=True, text=True, check=True)
    return f"Bearer {done.stdout.strip().split()[-1]}".encode()


def callgrind(switch: str) -> None:
    if os.environ.get("CITYOS_INSTRUCTIONS_CALLGRIND"):
        subprocess.run(["callgrind_control", "-i", switch, str(os.getpid())], capture_output=True, check=False)


async def measure(kind: str, count: int) -> float:
    """CPU seconds per request of `count` requests of `kind`, after loading and a warm-up (the
    temporary folder of the database removed after)."""
    folder = Path(tempfile.mkdtemp(prefix="cityos-instructions-"))
    try:
        return await _measure(kind, count, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _measure(kind: str, count: int, folder: Path) -> float:
    database = str(folder / "bench.db")
    options: dict[str, Any] = {}
    admin = reader = None
    if os.environ.get("CITYOS_INSTRUCTIONS_AUTH"):
        admin, reader = make_key(database, "admin"), make_key(database, "reader")
        policies = folder / "policies.json"
        policies.write_bytes(orjson.dumps(READER_POLICY))
        options = {"auth": "required", "policy_file": str(policies)}
    if os.environ.get("CITYOS_INSTRUCTIONS_AUDIT") == "off":
        options["audit"] = "off"
    if os.environ.get("CITYOS_INSTRUCTIONS_RENDER_CACHE_MB"):  # 0: every page rendered from stored documents
        options["render_cache_mb"] = int(os.environ["CITYOS_INSTRUCTIONS_RENDER_CACHE_MB"])
    if os.environ.get("CITYOS_INSTRUCTIONS_HISTORY") == "off":
        options["temporal_disabled_tenants"] = "*"
    observe = os.environ.get("CITYOS_INSTRUCTIONS_OBSERVE", "")  # issue 20: metrics and the access log
    if observe == "off" and "metrics" in getattr(Settings, "__dataclass_fields__", {}):
        options["metrics"] = False
    elif observe in ("all", "all-batched", "all-text"):  # the access lines to stderr (to /dev/null), at info
        options.update(access_log=True, log_format="text" if observe == "all-text" else "json")
        logging.getLogger("cityos.access").setLevel(logging.INFO)  # (all-batched: as all, now)
    if int(os.environ.get(RULES_ENV, "0")):  # issue 17: alert rules judging every change of T
        watched = ("OffStreetParking", "availableSpotNumber") if kind in SPOTS else ("T", "temperature")
        options["rules_dir"] = write_rules(folder / "rules", int(os.environ[RULES_ENV]), *watched)
    put_off_periodic()
    fields = getattr(Settings, "__dataclass_fields__", {})
    if "audit_checkpoint_seconds" in fields:  # a commit with the audit trail (issue 13)
        options.update(audit_checkpoint_seconds=PERIODIC_SECONDS, audit_checkpoint_records=10**9)
    database = os.environ.get(DATABASE_ENV) or database
    app = create_app(Settings(database=database, log_level="warning", **options))
    async with app.router.lifespan_context(app):
        if kind in ("avg", "lastn"):
            for load in temporal_loads():
                assert await call(app, "POST", f"{API}/temporal/entities", load, admin) in (201, 204)
        everything = [make_entity(n) if kind in SPOTS else entity(n) for n in range(ENTITIES)]
        for start in range(0, ENTITIES, 500):
            load = orjson.dumps(everything[start : start + 500])
            assert await call(app, "POST", f"{API}/entityOperations/upsert", load, admin) in (201, 204)
        offset = 10**6 if kind in ("create", "parking") else 0  # warm-up creates must not collide with measured ones
        for seq in range(int(os.environ.get("CITYOS_INSTRUCTIONS_WARM", WARM_UP))):
            await call(app, *request_of(kind, seq + offset), reader)
        # the load's after-work (PostgreSQL's audit sealer, 50 ms after a write) done before the count
        await asyncio.sleep(float(os.environ.get("CITYOS_INSTRUCTIONS_SETTLE", "0")))
        # the access lines still kept are written inside the count (formatted at the write, in
        # batches), those of the load and the warm-up before it (they are not the measured requests')
        finish = access_flush() if observe in ("all", "all-batched", "all-text") else None
        if finish is not None:
            finish()
        return await timed(app, [request_of(kind, seq) for seq in range(count)], reader, finish)


def access_flush() -> Callable[[], None]:
    """Writes the lines every access log of the process still keeps (observe/access.py)."""
    import gc

    from cityos.observe.access import AccessLog

    logs = [found for found in gc.get_objects() if isinstance(found, AccessLog)]

    def flush() -> None:
        for log in logs:
            log.flush()

    return flush


def write_rules(folder: Path, count: int, type_: str = "T", attribute: str = "temperature") -> str:
    """`count` alert rules over the entities' `attribute`, none firing on the benchmark's values
    (a firing rule writes an Alert: another cost): thresholds, rates, combinations with a polygon,
    and absence timers, in turns."""
    folder.mkdir()
    head = f'name = "bench"\ntype = "{type_}"\nseverity = "low"\ncategory = "environment"\n'
    whens = (
        f'attribute = "{attribute}"\nabove = 1e9\nclear = 1e8\n',
        f'attribute = "{attribute}"\nrate_above = 1e12\nper = "1h"\n',
        f'all = [{{attribute = "{attribute}", above = 1e9}}, {{inside = [[1, 47], [3, 47], [3, 49], [1, 49]]}}]\n',
        f'attribute = "{attribute}"\nabsent = "1d"\n',
    )
    for number in range(count):
        text = f'id = "rule-{number}"\n{head}[when]\n{whens[number % len(whens)]}'
        (folder / f"rule-{number}.toml").write_text(text)
    return str(folder)


def put_off_periodic() -> None:
    """The wall-clock periods and budgets of the server put off for a run (module docstring)."""
    cityos.app.SWEEP_SECONDS = PERIODIC_SECONDS
    try:
        from cityos.store import sqlite_checkpoint
    except ImportError:  # a commit before the checkpoints left the commit path
        pass
    else:  # a wall-clock period: under callgrind it would checkpoint every few requests
        sqlite_checkpoint.PAUSE = PERIODIC_SECONDS
    try:
        from cityos.auth import authenticator
    except ImportError:  # a commit before issue 14
        pass
    else:
        authenticator.POLL_SECONDS = PERIODIC_SECONDS
    from cityos.store import sqlite_query

    # a q filter's plan decision is reused for DECISION_AGE seconds: a second is thousands of
    # pages, but a few under callgrind; a page on the event loop gives up past LOOP_WALL and
    # LOOP_PYTHON seconds (a cold disk), which a page under callgrind would pass (older commits
    # have none of the last two: setting them changes nothing there)
    sqlite_query.DECISION_AGE = PERIODIC_SECONDS
    sqlite_query.LOOP_WALL = sqlite_query.LOOP_PYTHON = PERIODIC_SECONDS
    try:
        from cityos.observe import access, metrics
    except ImportError:  # a commit before issue 20
        return

    # the metrics' sampler wakes 4 times a second (the event-loop lag) and samples every 5 s: a
    # few wake-ups per thousand requests under load, one every few requests under callgrind
    async def sampled_once(self: Any, interval: float) -> None:
        await asyncio.sleep(PERIODIC_SECONDS)

    metrics.Metrics.run = sampled_once  # type: ignore[method-assign]
    # a store operation is timed once per 5 ms (StoreTimer): a few calls under load, every call
    # under callgrind (older commits time one call in 16 and have no SAMPLE_SECONDS)
    metrics.SAMPLE_SECONDS = PERIODIC_SECONDS
    # the access lines of 50 ms are written together: under load a batch of hundreds, under
    # callgrind (fifty times slower) a few lines; written MAX_PENDING (256) at a time instead
    access.FLUSH_SECONDS = PERIODIC_SECONDS


async def timed(
    app: Any,
    requests: list[tuple[str, str, bytes]],
    authorization: bytes | None,
    finish: Callable[[], None] | None = None,
) -> float:
    """CPU seconds per request of `requests` (each must succeed), counted by callgrind too (when on);
    `finish` (work the requests left for later, such as access lines) is run inside the count."""
    callgrind("on")
    started = time.process_time()
    for request in requests:
        status = await call(app, *request, authorization)
        assert status < 300, f"{request[:2]} answered {status}"
    if finish is not None:
        finish()
    spent = time.process_time() - started
    callgrind("off")
    return spent / len(requests)


def cli(measure: Callable[[str, int], Awaitable[float]], usage: str | None) -> None:
    """`KIND N` from the command line: the CPU time per request of N requests of KIND."""
    if len(sys.argv) != 3:
        raise SystemExit(usage)
    kind, count = sys.argv[1], int(sys.argv[2])
    print(f"{kind}: {asyncio.run(measure(kind, count)) * 1000:.4f} ms CPU per request")


def main() -> None:
    cli(measure, __doc__)


if __name__ == "__main__":
    main()
