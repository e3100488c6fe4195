"""Scenario 6, for features that arrived after the benchmark: notifications delivered per second to a
local receiver (subscriptions) and a temporal aggregation over stored instances (the temporal API).

Each probes its endpoint first and, while it answers 404, prints its row as skipped, so the benchmark
runs on any commit. The requests are written from NGSI-LD (ETSI GS CIM 009 V1.9.1: subscriptions,
temporal representation with aggregatedValues), not from CityOS's code.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from benchmarks.entities import ENTITY_TYPE
from benchmarks.report import Row
from benchmarks.servers import ServerProcess, constant_server
from benchmarks.workloads import API, Workload

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


NOT_YET = "skipped: not implemented yet"
SUBSCRIPTION = "urn:ngsi-ld:Subscription:bench"
TEMPORAL_ENTITY = f"urn:ngsi-ld:{ENTITY_TYPE}:temporal-bench"
CHUNK = 1000


def scenarios(bench: Bench, server: ServerProcess, stored: int) -> list[Row]:
    return [notifications(bench, server, stored), *temporal(bench, server)]


def _answers(base: str, path: str) -> bool:
    return httpx.get(base + path, timeout=30).status_code != 404


def notifications(bench: Bench, server: ServerProcess, stored: int) -> Row:
    """Partial updates under load, each matching a subscription whose endpoint is a receiver process
    on the same stack; the rate is notifications received per second at the receiver."""
    row = Row("6a. notifications delivered", unit="notif/s")
    base = server.base
    if not _answers(base, f"{API}/subscriptions"):
        row.skipped = NOT_YET
        return row
    with constant_server(bench.workdir, "--receiver") as receiver, httpx.Client(base_url=base, timeout=30) as http:
        subscription = {
            "id": SUBSCRIPTION,
            "type": "Subscription",
            "entities": [{"type": ENTITY_TYPE}],
            "watchedAttributes": ["availableSpotNumber"],
            "notification": {
                "attributes": ["availableSpotNumber"],
                "format": "keyValues",
                "endpoint": {"uri": f"http://127.0.0.1:{receiver.port}/notify", "accept": "application/json"},
            },
        }
        created = http.post(f"{API}/subscriptions", json=subscription)
        if created.status_code != 201:
            row.errors, row.error_sample = 1, f"{created.status_code} creating the subscription: {created.text[:300]}"
            return row
        try:
            for index in range(bench.config.repeat):
                httpx.post(f"http://127.0.0.1:{receiver.port}/reset", timeout=10)
                sent = bench.load(server, Workload("update", stored=stored), seed=index)
                stats = _settled(receiver, expected=sent.ops)
                span = stats["last"] - stats["first"]
                row.rates.append(stats["entities"] / span if span > 0 else 0.0)
                row.errors += sent.errors + max(0, sent.ops - stats["entities"])
                row.error_sample = row.error_sample or sent.error_sample
        finally:
            http.delete(f"{API}/subscriptions/{SUBSCRIPTION}")
    row.rss_mb = server.peak_rss_mb()
    return row


def _settled(receiver: ServerProcess, *, expected: int, patience: float = 15.0) -> dict[str, Any]:
    """The receiver's counters once every expected notification arrived or none came for 2 s."""
    deadline, last_change, last = time.monotonic() + patience, time.monotonic(), -1
    while True:
        stats: dict[str, Any] = httpx.get(f"http://127.0.0.1:{receiver.port}/stats", timeout=10).json()
        now = time.monotonic()
        if stats["entities"] != last:
            last, last_change = stats["entities"], now
        if last >= expected or now - last_change > 2 or now > deadline:
            return stats
        time.sleep(0.2)


def temporal(bench: Bench, server: ServerProcess, instances: int | None = None) -> list[Row]:
    """The average per day of one attribute over `instances` stored instances (default: as many as
    entities; aggregated in SQL), and the last 10 instances of it (lastN)."""
    instances = instances or bench.config.entities
    row = Row(f"6b. temporal avg per day, {instances:,} instances", unit="req/s")
    last = Row(f"6c. temporal lastN=10, {instances:,} instances", unit="req/s")
    base = server.base
    if not _answers(base, f"{API}/temporal/entities?type={ENTITY_TYPE}"):
        row.skipped = last.skipped = NOT_YET
        return [row, last]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with httpx.Client(base_url=base, timeout=120) as http:
        log(f"  {row.name}: loading {instances:,} instances …")
        for first in range(0, instances, CHUNK):
            values = [
                {
                    "type": "Property",
                    "value": i % 600,
                    "observedAt": (start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                for i in range(first, min(first + CHUNK, instances))
            ]
            body = {"id": TEMPORAL_ENTITY, "type": ENTITY_TYPE, "availableSpotNumber": values}
            response = http.post(f"{API}/temporal/entities", json=body)
            if response.status_code not in (201, 204):
                row.errors, row.error_sample = 1, f"{response.status_code} loading instances: {response.text[:300]}"
                return [row]
    bench.settle()
    return [
        bench.measure(row, server, lambda i: Workload("temporal_aggr", tag=TEMPORAL_ENTITY)),
        bench.measure(last, server, lambda i: Workload("temporal_lastn", tag=TEMPORAL_ENTITY)),
    ]
