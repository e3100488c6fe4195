"""What each scenario sends: a request builder per workload kind, shared by every load-generating client.

Builders are plain functions of (sequence number, rng), so a workload crosses the process boundary as a
small frozen dataclass and the load generator rebuilds the requests on its side.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import orjson

from benchmarks.entities import ENTITY_TYPE, entity_id, make_entity, random_point, timestamp

API = "/ngsi-ld/v1"
BATCH_SIZE = 1000
REFRESHES = 16  # distinct bodies of the stored-ids batch upsert, sent in turn


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    authorization: str = ""  # the Authorization header value, if any


@dataclass(frozen=True)
class Workload:
    """kind names a builder below; stored is how many bench-{i} entities exist; start and tag keep the
    ids of created entities unique across scenarios and repeats."""

    kind: str
    stored: int = 0
    start: int = 0
    tag: str = ""
    batch_size: int = BATCH_SIZE
    authorization: str = ""  # sent with every request (the auth-on scenarios: "Bearer <key>")


Builder = Callable[[int, random.Random], Request]


def _query(params: dict[str, str]) -> str:
    return f"{API}/entities?" + urlencode(params, quote_via=quote, safe="")


def builder(workload: Workload) -> Builder:
    """The request builder of a workload; sequence numbers start at 0 in each load run."""
    kind, stored = workload.kind, workload.stored

    def constant(seq: int, rng: random.Random) -> Request:
        return Request("GET", "/constant")

    def create(seq: int, rng: random.Random) -> Request:
        id_ = f"urn:ngsi-ld:{ENTITY_TYPE}:{workload.tag}-{seq}"
        return Request("POST", f"{API}/entities", orjson.dumps(make_entity(workload.start + seq, id_=id_)))

    def update(seq: int, rng: random.Random) -> Request:
        # the sensor-update path as the README shows it: value and observedAt, no type
        body = {"value": rng.randrange(0, 600), "observedAt": timestamp(rng)}
        path = f"{API}/entities/{entity_id(rng.randrange(stored))}/attrs/availableSpotNumber"
        return Request("PATCH", path, orjson.dumps(body))

    def batch(seq: int, rng: random.Random) -> Request:
        first = workload.start + seq * workload.batch_size
        entities = [make_entity(i) for i in range(first, first + workload.batch_size)]
        return Request("POST", f"{API}/entityOperations/upsert", orjson.dumps(entities))

    refreshes: list[bytes] = []
    if kind == "batch_existing":  # built here, before the load's clock starts (a body is ~25 ms of Python)
        rng = random.Random(workload.start)
        for seed in range(workload.start * REFRESHES, (workload.start + 1) * REFRESHES):
            first = rng.randrange(max(1, stored - workload.batch_size + 1))
            count = min(workload.batch_size, stored)
            refreshes.append(orjson.dumps([make_entity(i, seed=seed) for i in range(first, first + count)]))

    def batch_existing(seq: int, rng: random.Random) -> Request:
        # a city's periodic bulk refresh: a run of stored ids, with new values
        return Request("POST", f"{API}/entityOperations/upsert", refreshes[seq % len(refreshes)])

    def retrieve(seq: int, rng: random.Random) -> Request:
        return Request("GET", f"{API}/entities/{entity_id(rng.randrange(stored))}")

    def query_type(seq: int, rng: random.Random) -> Request:
        return Request("GET", _query({"type": ENTITY_TYPE, "limit": "20"}))

    def query_type_local(seq: int, rng: random.Random) -> Request:
        # the same query answered from this broker only (scenario 10's local row)
        return Request("GET", _query({"type": ENTITY_TYPE, "limit": "20", "local": "true"}))

    def query_type_offset(seq: int, rng: random.Random) -> Request:
        # a page anywhere in the collection: offset paging must cost an index seek, not a walk
        offset = rng.randrange(max(1, stored - 19))
        return Request("GET", _query({"type": ENTITY_TYPE, "limit": "20", "offset": str(offset)}))

    def query_q(seq: int, rng: random.Random) -> Request:
        return Request("GET", _query({"type": ENTITY_TYPE, "q": "availableSpotNumber>400", "limit": "20"}))

    def query_geo(seq: int, rng: random.Random) -> Request:
        lon, lat = random_point(rng)
        params = {
            "type": ENTITY_TYPE,
            "georel": "near;maxDistance==500",
            "geometry": "Point",
            "coordinates": f"[{lon},{lat}]",
            "limit": "20",
        }
        return Request("GET", _query(params))

    def temporal_aggr(seq: int, rng: random.Random) -> Request:
        params = {
            "attrs": "availableSpotNumber",
            "options": "aggregatedValues",
            "aggrMethods": "avg",
            "aggrPeriodDuration": "P1D",
            "timerel": "after",
            "timeAt": "2026-01-01T00:00:00Z",
        }
        return Request("GET", f"{API}/temporal/entities/{workload.tag}?" + urlencode(params, quote_via=quote, safe=""))

    def temporal_lastn(seq: int, rng: random.Random) -> Request:
        params = {"attrs": "availableSpotNumber", "lastN": "10", "timerel": "after", "timeAt": "2026-01-01T00:00:00Z"}
        return Request("GET", f"{API}/temporal/entities/{workload.tag}?" + urlencode(params, quote_via=quote, safe=""))

    builders: dict[str, Builder] = {
        "constant": constant,
        "create": create,
        "update": update,
        "batch": batch,
        "retrieve": retrieve,
        "query_type": query_type,
        "query_type_local": query_type_local,
        "query_type_offset": query_type_offset,
        "batch_existing": batch_existing,
        "query_q": query_q,
        "query_geo": query_geo,
        "temporal_aggr": temporal_aggr,
        "temporal_lastn": temporal_lastn,
    }
    chosen = builders[kind]
    if not workload.authorization:
        return chosen
    authorization = workload.authorization

    def authorized(seq: int, rng: random.Random) -> Request:
        built = chosen(seq, rng)
        return Request(built.method, built.path, built.body, authorization)

    return authorized
