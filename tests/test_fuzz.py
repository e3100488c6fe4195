"""Fuzzing every route (issue 13 section 2): seeded requests from tests/fuzzing.py over the app's
route table, asserting no 5xx, no request slower than SLOW_SECONDS, and that a refused write
changed nothing (the entities, subscriptions and registrations of both tenants compared before and
after). Past failures are kept in tests/data/fuzz-corpus/*.json and replayed first.

SQLite only by default (the in-process run takes about a minute on 2 cores); CITYOS_FUZZ_POSTGRES=1
adds PostgreSQL. CITYOS_FUZZ_REQUESTS and CITYOS_FUZZ_SEED change the amount and the seed: a failure
prints the request as a corpus case to add.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings
from fuzzing import BASE, Generator, Request, entity, registration, subscription

pytestmark = pytest.mark.slow(seconds=90)

CORPUS = Path(__file__).parent / "data" / "fuzz-corpus"
FUZZ_BACKENDS = ["sqlite", *(["postgres"] if os.environ.get("CITYOS_FUZZ_POSTGRES") == "1" else [])]
SEED = int(os.environ.get("CITYOS_FUZZ_SEED", "20261206"))
REQUESTS = int(os.environ.get("CITYOS_FUZZ_REQUESTS", "3000"))
SERVER_REQUESTS = REQUESTS // 8
BUDGET_SECONDS = 75.0  # the in-process run stops here even if REQUESTS are not all sent
SLOW_SECONDS = 5.0
WRITES = ("POST", "PUT", "PATCH", "DELETE")
# what a refused write must leave as it was (POST /entityOperations/query and the other reads
# sent as POST change nothing anyway)
SNAPSHOT_READS = (
    "/entities?type=*&options=sysAttrs&limit=1000",
    "/subscriptions?limit=1000",
    "/csourceRegistrations?idPattern=.*&limit=1000",
    "/csourceSubscriptions?limit=1000",
)
DELIVERY_MEMBERS = ("status", "timesSent", "timesFailed", "lastNotification", "lastSuccess", "lastFailure")

fuzz_backends = pytest.mark.parametrize("db_url", FUZZ_BACKENDS, indirect=True)


def fuzz_settings(db_url: str) -> Settings:
    # the outgoing requests the fuzz makes (notifications, forwarded retrieves to *.invalid) end fast
    return Settings(database=db_url, notification_timeout=1.0, notification_max_attempts=1)


def send(client: httpx.Client | TestClient, request: Request) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.request(
        request.method, request.path, params=request.params, headers=request.headers, content=request.body
    )
    return response, time.monotonic() - started


def seed(client: httpx.Client | TestClient) -> None:
    """The data the generated requests refer to, in both tenants."""
    for tenant in ({}, {"NGSILD-Tenant": "fuzzb"}):
        batch = [entity(), entity("urn:ngsi-ld:Fuzz:2"), entity("urn:ngsi-ld:FuzzB:1", "FuzzB")]
        assert client.post(f"{BASE}/entityOperations/upsert", json=batch, headers=tenant).status_code in (201, 204)
        assert client.post(f"{BASE}/subscriptions", json=subscription(), headers=tenant).status_code == 201
        assert client.post(f"{BASE}/csourceRegistrations", json=registration(), headers=tenant).status_code == 201


def snapshot(client: httpx.Client | TestClient) -> list[Any]:
    state: list[Any] = []
    for tenant in ({}, {"NGSILD-Tenant": "fuzzb"}):
        for path in SNAPSHOT_READS:
            response = client.get(BASE + path, headers=tenant)
            items = response.json() if response.status_code == 200 else response.status_code
            if isinstance(items, list) and "subscriptions" in path.lower():  # delivery counters move by themselves
                for item in items:
                    for member in DELIVERY_MEMBERS:
                        item.get("notification", {}).pop(member, None)
                        item.pop(member, None)
            state.append(sorted(items, key=lambda i: str(i.get("id"))) if isinstance(items, list) else items)
    return state


def check(request: Request, response: httpx.Response, seconds: float) -> None:
    case = json.dumps(request.describe())[:2000]
    assert response.status_code < 500, f"{response.status_code} {response.text[:300]}\nadd to the corpus: {case}"
    assert seconds < SLOW_SECONDS, f"{seconds:.1f} s\nadd to the corpus: {case}"


def run(client: httpx.Client | TestClient, generator: Generator, count: int, budget: float) -> int:
    """Send up to `count` generated requests within `budget` seconds; return how many were sent."""
    before = snapshot(client)
    deadline = time.monotonic() + budget
    sent = 0
    while sent < count and time.monotonic() < deadline:
        request = generator.request()
        response, seconds = send(client, request)
        sent += 1
        check(request, response, seconds)
        generator.learn(request, response.status_code, response.text)
        if request.method in WRITES:
            after = snapshot(client)
            if response.status_code >= 400:
                assert after == before, f"a refused write changed data: {json.dumps(request.describe())[:2000]}"
            before = after
    return sent


def corpus_cases() -> list[Any]:
    return [pytest.param(json.loads(path.read_text()), id=path.stem) for path in sorted(CORPUS.glob("*.json"))]


@pytest.fixture
def fuzz_client(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(fuzz_settings(db_url)), base_url="http://127.0.0.1:1026") as client:
        seed(client)
        yield client


@fuzz_backends
@pytest.mark.parametrize("case", corpus_cases())
def test_corpus_case_is_refused_cleanly(fuzz_client: TestClient, case: dict[str, Any]) -> None:
    """Each past failure: never a 5xx, the status it is expected to get, nothing changed."""
    request = Request(
        case["method"],
        case["path"],
        [tuple(p) for p in case.get("params", [])],  # type: ignore[misc]
        case.get("headers", {}),
        None if case.get("body") is None else case["body"].encode(),
    )
    before = snapshot(fuzz_client)
    response, seconds = send(fuzz_client, request)
    check(request, response, seconds)
    if "status" in case:
        assert response.status_code == case["status"], response.text
    if response.status_code >= 400:
        assert snapshot(fuzz_client) == before


@fuzz_backends
def test_fuzz_in_process(fuzz_client: TestClient) -> None:
    generator = Generator(SEED, list(fuzz_client.app.routes))  # type: ignore[attr-defined]
    sent = run(fuzz_client, generator, REQUESTS, BUDGET_SECONDS)
    assert sent >= min(REQUESTS, 1000), f"only {sent} requests in {BUDGET_SECONDS} s"


@fuzz_backends
def test_fuzz_real_server(db_url: str, server: str) -> None:
    """A smaller slice over a real server process and one keep-alive connection."""
    routes = list(create_app(fuzz_settings(db_url)).routes)
    with httpx.Client(base_url=server, timeout=SLOW_SECONDS * 2) as client:
        seed(client)
        sent = run(client, Generator(SEED + 1, routes), SERVER_REQUESTS, BUDGET_SECONDS / 3)
    assert sent >= min(SERVER_REQUESTS, 100)
