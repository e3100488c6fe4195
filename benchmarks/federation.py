"""Scenario 10 (issue 16): a query forwarded to two registered context sources, next to the same
query answered locally, paired repeat by repeat on the same server.

Two more `cityos serve` processes (SQLite) each hold SOURCE_ENTITIES entities of the benchmark's
type; the server under test registers both (inclusive, the query's type) for the run and removes
the registrations afterwards, so no other scenario sees them. The local row is the same request
with `local=true` (spec 4.3.6.4: answered from this broker only, no registration looked up); the
row without registration pays the look-up of the tenant's registrations that every request not
`local=true` makes; the federated row pays the two forwarded calls, made concurrently, and the
merge. Each is paired with the local row, repeat by repeat.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

import httpx

from benchmarks.entities import ENTITY_TYPE, make_entity
from benchmarks.report import Row
from benchmarks.servers import ServerProcess, cityos_server
from benchmarks.workloads import API, Workload

if TYPE_CHECKING:
    from benchmarks.runner import Bench

LOCAL = "10a. query type, limit=20, local=true"
UNREGISTERED = "10b. query type, limit=20, no registration"
FEDERATED = "10c. federated query over two sources, limit=20"
SOURCE_ENTITIES = 20
REGISTRATION = "urn:ngsi-ld:ContextSourceRegistration:bench-{}"


def _load_source(server: ServerProcess, first: int) -> None:
    entities = [make_entity(first + index) for index in range(SOURCE_ENTITIES)]
    answer = httpx.post(f"{server.base}{API}/entityOperations/upsert", json=entities, timeout=60)
    answer.raise_for_status()


def federation_rows(bench: Bench, server: ServerProcess, backend: str, stored: int) -> list[Row]:
    local = Row(LOCAL, backend=backend)
    unregistered = Row(UNREGISTERED, baseline=LOCAL, backend=backend)
    federated = Row(FEDERATED, baseline=LOCAL, backend=backend)

    def local_sample(index: int, into: Row) -> float:
        cpu_before = server.cpu_seconds()
        result = bench.load(server, Workload("query_type_local", stored=stored), seed=index)
        if result.ops:
            into.cpu_ms.append((server.cpu_seconds() - cpu_before) * 1000 / result.ops)
        bench.record(into, result)
        return result.rate

    def query(index: int) -> Workload:
        return Workload("query_type", stored=stored)

    bench.measure(unregistered, server, query, baseline=lambda index: local_sample(index, Row(LOCAL)))
    with httpx.Client(base_url=server.base, timeout=30) as http, ExitStack() as stack:
        sources = [stack.enter_context(cityos_server(bench.workdir, name=f"source{i}")) for i in (1, 2)]
        for index, source in enumerate(sources):
            _load_source(source, stored + 1_000_000 * (index + 1))  # ids the server under test does not hold
            registration = {
                "id": REGISTRATION.format(index),
                "type": "ContextSourceRegistration",
                "information": [{"entities": [{"type": ENTITY_TYPE}]}],
                "endpoint": source.base,
            }
            created = http.post(f"{API}/csourceRegistrations", json=registration)
            if created.status_code != 201:
                federated.errors, federated.error_sample = 1, f"{created.status_code}: {created.text[:300]}"
                return [local, unregistered, federated]
            stack.callback(http.delete, f"{API}/csourceRegistrations/{REGISTRATION.format(index)}")
        bench.measure(federated, server, query, baseline=lambda index: local_sample(index, local))
        local.rss_mb = server.peak_rss_mb()
    return [local, unregistered, federated]
