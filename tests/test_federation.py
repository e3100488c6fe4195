"""Distributed operations (spec 4.3.6, annex D) between real CityOS servers: a front broker
in-process (over both back-ends) and three `cityos serve` processes as context sources, two on
SQLite and one on PostgreSQL. Each registration mode, merging, batches, 207 with per-source
errors, loop detection across a cycle A -> B -> C -> A, and sources that misbehave: slow (the
timeout flags a partial answer), huge (the byte ceiling), garbage, or at a private address
without --allow-private-networks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from backends import PostgresSchemas
from cityos.app import create_app
from cityos.settings import Settings
from notify_helpers import JsonSource, free_port, serving, stop_process, wait_serving

REG = "/ngsi-ld/v1/csourceRegistrations"
ENTITIES = "/ngsi-ld/v1/entities"


class Node:
    """A `cityos serve` process on 127.0.0.1, stopped by its pid."""

    def __init__(self, database: str, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
        env.update(
            CITYOS_DATABASE=database,
            CITYOS_PORT=str(self.port),
            CITYOS_ALLOW_PRIVATE_NETWORKS="true",
            CITYOS_LOG_LEVEL="warning",
        )
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "cityos", "serve"], env=env, stdout=out, stderr=out)
        self.http = httpx.Client(base_url=self.base, timeout=20)

    def wait(self) -> None:
        wait_serving(self.process, self.base, 60, lambda: self.log.read_text(errors="replace"))

    def stop(self) -> None:
        self.http.close()
        stop_process(self.process)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, postgres_schemas: PostgresSchemas) -> Iterator[list[Node]]:
    """Three sources: two on SQLite, one on PostgreSQL."""
    folder = tmp_path_factory.mktemp("federation")
    schema = postgres_schemas.acquire()
    started: list[Node] = []
    try:
        for index, database in enumerate([str(folder / "b.db"), str(folder / "c.db"), schema]):
            started.append(Node(database, folder / f"node{index}.log"))
        for node in started:  # started side by side, waited for together
            node.wait()
        yield started
    finally:
        for node in started:
            node.stop()
        postgres_schemas.release(schema, reuse=False)


def entity(entity_id: str, kind: str, **attrs: Any) -> dict[str, Any]:
    return {"id": entity_id, "type": kind, **{k: {"type": "Property", "value": v} for k, v in attrs.items()}}


def registration(endpoint: str, reg_id: str, kind: str, **extra: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"entities": [{"type": kind, **({"id": extra.pop("entity")} if "entity" in extra else {})}]}
    if "attrs" in extra:
        info["propertyNames"] = extra.pop("attrs")
    return {
        "id": f"urn:ngsi-ld:ContextSourceRegistration:{reg_id}",
        "type": "ContextSourceRegistration",
        "information": [info],
        "endpoint": endpoint,
        **extra,
    }


@pytest.fixture
def front(db_url: str) -> Iterator[TestClient]:
    settings = Settings(database=db_url, allow_private_networks=True, notification_timeout=5.0)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        yield client


def register(client: TestClient | httpx.Client, body: dict[str, Any], tenant: str | None = None) -> None:
    headers = {"NGSILD-Tenant": tenant} if tenant else {}
    response = client.post(REG, json=body, headers=headers)
    assert response.status_code == 201, response.text


def test_inclusive_query_and_retrieve_merge_local_and_remote(
    front: TestClient, nodes: list[Node], request: Any
) -> None:
    tag = request.node.callspec.id
    car = f"urn:ngsi-ld:Car:inc-{tag}"
    older = {
        **entity(car, "Car", brand="Volvo"),
        "speed": {"type": "Property", "value": 10, "observedAt": "2026-01-01T00:00:00Z"},
    }
    newer = {"id": car, "type": "Car", "speed": {"type": "Property", "value": 55, "observedAt": "2026-06-01T00:00:00Z"}}
    assert front.post(ENTITIES, json=older).status_code == 201
    assert nodes[0].http.post(ENTITIES, json=newer).status_code == 201
    other = f"urn:ngsi-ld:Car:only-remote-{tag}"
    assert nodes[1].http.post(ENTITIES, json=entity(other, "Car", brand="Saab")).status_code == 201
    register(front, registration(nodes[0].base, f"inc0-{tag}", "Car"))
    register(front, registration(nodes[1].base, f"inc1-{tag}", "Car"))

    got = front.get(ENTITIES, params={"type": "Car"})
    assert got.status_code == 200, got.text
    by_id = {e["id"]: e for e in got.json()}
    assert by_id[car]["brand"]["value"] == "Volvo"  # local attribute kept
    assert by_id[car]["speed"]["value"] == 55  # the most recent observedAt wins
    assert by_id[other]["brand"]["value"] == "Saab"  # an entity only a source has
    assert "NGSILD-Warning" not in got.headers

    one = front.get(f"{ENTITIES}/{car}")
    assert one.status_code == 200 and one.json()["speed"]["value"] == 55
    assert front.get(f"{ENTITIES}/{car}", params={"local": "true"}).json()["speed"]["value"] == 10
    assert [e["id"] for e in front.get(ENTITIES, params={"type": "Car", "local": "true"}).json()] == [car]
    # clean the sources for the other back-end's run
    for node in nodes[:2]:
        node.http.request("DELETE", ENTITIES, params={"type": "Car", "local": "true"})


def test_exclusive_registration_keeps_its_attributes_at_the_source(
    front: TestClient, nodes: list[Node], request: Any
) -> None:
    tag = request.node.callspec.id
    van = f"urn:ngsi-ld:Van:exc-{tag}"
    register(
        front,
        registration(
            nodes[0].base,
            f"exc-{tag}",
            "Van",
            entity=van,
            attrs=["speed"],
            mode="exclusive",
            operations=["redirectionOps"],
        ),
    )
    created = front.post(ENTITIES, json=entity(van, "Van", brand="Ford", speed=30))
    assert created.status_code == 201, created.text
    local = front.get(f"{ENTITIES}/{van}", params={"local": "true"}).json()
    assert "brand" in local and "speed" not in local
    remote = nodes[0].http.get(f"{ENTITIES}/{van}").json()
    assert remote["speed"]["value"] == 30 and "brand" not in remote
    merged = front.get(f"{ENTITIES}/{van}").json()
    assert merged["brand"]["value"] == "Ford" and merged["speed"]["value"] == 30
    # an update of the registered attribute goes to the source only
    assert front.patch(f"{ENTITIES}/{van}/attrs", json={"speed": {"type": "Property", "value": 31}}).status_code == 204
    assert nodes[0].http.get(f"{ENTITIES}/{van}").json()["speed"]["value"] == 31
    assert front.delete(f"{ENTITIES}/{van}").status_code == 204
    assert nodes[0].http.get(f"{ENTITIES}/{van}").status_code == 404


def test_redirect_writes_go_to_every_source_and_never_local(front: TestClient, nodes: list[Node], request: Any) -> None:
    tag = request.node.callspec.id
    bus = f"urn:ngsi-ld:Bus:red-{tag}"
    for index in (0, 2):  # a SQLite and the PostgreSQL source
        body = registration(
            nodes[index].base, f"red{index}-{tag}", "Bus", mode="redirect", operations=["redirectionOps"]
        )
        register(front, body)
    created = front.post(ENTITIES, json=entity(bus, "Bus", line="42"))
    assert created.status_code == 201, created.text
    assert front.get(f"{ENTITIES}/{bus}", params={"local": "true"}).status_code == 404
    for index in (0, 2):
        assert nodes[index].http.get(f"{ENTITIES}/{bus}").json()["line"]["value"] == "42"
    assert front.get(f"{ENTITIES}/{bus}").json()["line"]["value"] == "42"
    # a source that fails its part: 207 naming that registration; the other part is done
    nodes[2].http.delete(f"{ENTITIES}/{bus}")
    deleted = front.delete(f"{ENTITIES}/{bus}")
    assert deleted.status_code == 207, deleted.text
    errors = deleted.json()["errors"]
    assert [e["error"]["status"] for e in errors] == [404]
    assert errors[0]["registrationId"].endswith(f"red2-{tag}")
    assert nodes[0].http.get(f"{ENTITIES}/{bus}").status_code == 404


def test_auxiliary_sources_only_fill_reads(front: TestClient, nodes: list[Node], request: Any) -> None:
    tag = request.node.callspec.id
    tram = f"urn:ngsi-ld:Tram:aux-{tag}"
    assert nodes[1].http.post(ENTITIES, json=entity(tram, "Tram", colour="red", line="9")).status_code == 201
    register(front, registration(nodes[1].base, f"aux-{tag}", "Tram", mode="auxiliary"))
    assert front.post(ENTITIES, json=entity(tram, "Tram", line="10")).status_code == 201  # not forwarded
    merged = front.get(f"{ENTITIES}/{tram}").json()
    assert merged["line"]["value"] == "10"  # the local value ranks before an auxiliary one
    assert merged["colour"]["value"] == "red"  # what only the auxiliary source has fills in
    assert nodes[1].http.get(f"{ENTITIES}/{tram}").json()["line"]["value"] == "9"
    nodes[1].http.delete(f"{ENTITIES}/{tram}")


def test_batches_are_split_by_registration(front: TestClient, nodes: list[Node], request: Any) -> None:
    tag = request.node.callspec.id
    ids = [f"urn:ngsi-ld:Bike:b{i}-{tag}" for i in range(3)]
    register(front, registration(nodes[2].base, f"bat-{tag}", "Bike", operations=["redirectionOps"]))
    upserted = front.post("/ngsi-ld/v1/entityOperations/upsert", json=[entity(i, "Bike", dock=1) for i in ids])
    assert upserted.status_code == 201, upserted.text
    for entity_id in ids:
        assert nodes[2].http.get(f"{ENTITIES}/{entity_id}").json()["dock"]["value"] == 1
        assert front.get(f"{ENTITIES}/{entity_id}", params={"local": "true"}).status_code == 200
    deleted = front.post("/ngsi-ld/v1/entityOperations/delete", json=ids)
    assert deleted.status_code == 204, deleted.text
    assert nodes[2].http.get(f"{ENTITIES}/{ids[0]}").status_code == 404


def test_loop_across_a_cycle_is_detected(nodes: list[Node]) -> None:
    """A -> B -> C -> A: the query comes back to A, which refuses it (508); every broker still
    answers with what it has, and says which part failed."""
    a, b, c = nodes
    tenant = "loop"
    for here, there in ((a, b), (b, c), (c, a)):
        body = registration(there.base, f"cycle-{here.port}", "Ring", tenant=tenant)
        register(here.http, body, tenant)
    headers = {"NGSILD-Tenant": tenant}
    for node, name in ((a, "a"), (b, "b"), (c, "c")):
        body = entity(f"urn:ngsi-ld:Ring:{name}", "Ring", n=1)
        assert node.http.post(ENTITIES, json=body, headers=headers).status_code == 201
    got = a.http.get(ENTITIES, params={"type": "Ring"}, headers=headers)
    assert got.status_code == 200, got.text
    assert sorted(e["id"] for e in got.json()) == [f"urn:ngsi-ld:Ring:{n}" for n in "abc"]
    assert "HTTP 508" in got.headers["NGSILD-Warning"]  # C's part, that came round to A again, relayed
    looped = a.http.get(ENTITIES, params={"type": "Ring"}, headers={**headers, "Via": f"1.1 127.0.0.1:{a.port}"})
    assert looped.status_code == 508, looped.text
    assert looped.json()["type"].endswith("LoopDetected")


class Misbehaving(JsonSource):
    """A context source that answers slowly, hugely or with garbage, by path prefix."""

    seen: list[str] = []
    release = threading.Event()

    def do_GET(self) -> None:
        Misbehaving.seen.append(self.path)
        kind = self.path.split("/")[1]
        if kind == "slow":
            Misbehaving.release.wait(10)
            body = b"[]"
        elif kind == "huge":
            body = json.dumps([entity("urn:ngsi-ld:Car:huge", "Car", blob="x" * 300_000)]).encode()
        elif kind == "garbage":
            body = b"<html>not json</html>"
        else:
            body = json.dumps({"not": "an array"}).encode()
        self.answer_json(body)


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[str]:
    with serving(Misbehaving) as url:
        try:
            yield url
        finally:
            Misbehaving.release.set()  # a slow answer still held ends before the server stops


def test_bad_sources_cost_only_their_part(db_url: str, misbehaving: str, nodes: list[Node]) -> None:
    settings = Settings(database=db_url, allow_private_networks=True, notification_max_bytes=100_000)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        assert client.post(ENTITIES, json=entity("urn:ngsi-ld:Car:here", "Car", brand="Kia")).status_code == 201
        register(client, registration(f"{misbehaving}/slow", "slow", "Car", management={"timeout": 300}))  # in ms
        register(client, registration(f"{misbehaving}/huge", "huge", "Car"))
        register(client, registration(f"{misbehaving}/garbage", "garbage", "Car"))
        register(client, registration(f"{misbehaving}/object", "object", "Car"))
        register(client, registration(nodes[0].base, "good", "Car"))
        started = time.monotonic()
        got = client.get(ENTITIES, params={"type": "Car"})
        elapsed = time.monotonic() - started
        assert got.status_code == 200, got.text
        assert [e["id"] for e in got.json()] == ["urn:ngsi-ld:Car:here"]  # the good source has no Car now
        warnings = got.headers["NGSILD-Warning"]
        assert warnings.count("111 ") == 4, warnings  # slow, huge, garbage, not an array
        assert "within 0.3 s" in warnings and "larger than 100000 bytes" in warnings
        assert elapsed < 3, elapsed  # the slow source did not hold the answer past its timeout


def test_private_address_refused_without_the_setting(db_url: str, misbehaving: str) -> None:
    Misbehaving.seen = []
    with TestClient(create_app(Settings(database=db_url)), base_url="http://127.0.0.1:1026") as client:
        register(client, registration(f"{misbehaving}/object", "private", "Car"))
        got = client.get(ENTITIES, params={"type": "Car"})
        assert got.status_code == 200 and got.json() == []
        assert "111 " in got.headers["NGSILD-Warning"] and "allow-private-networks" in got.headers["NGSILD-Warning"]
        assert Misbehaving.seen == []  # never contacted


def test_discovery_unites_the_sources_types_and_attributes(front: TestClient, nodes: list[Node], request: Any) -> None:
    tag = request.node.callspec.id
    gadget = f"urn:ngsi-ld:Gadget:disc-{tag}"
    assert nodes[1].http.post(ENTITIES, json=entity(gadget, "Gadget", gauge=3)).status_code == 201
    assert front.post(ENTITIES, json=entity(f"urn:ngsi-ld:Widget:disc-{tag}", "Widget", knob=1)).status_code == 201
    register(front, registration(nodes[1].base, f"disc-{tag}", "Gadget"))
    types = front.get("/ngsi-ld/v1/types").json()["typeList"]
    assert {"Gadget", "Widget"} <= set(types)
    assert "Gadget" not in front.get("/ngsi-ld/v1/types", params={"local": "true"}).json()["typeList"]
    attributes = front.get("/ngsi-ld/v1/attributes").json()["attributeList"]
    assert {"gauge", "knob"} <= set(attributes)
    detailed = {t["typeName"]: t for t in front.get("/ngsi-ld/v1/types", params={"details": "true"}).json()}
    assert detailed["Gadget"]["attributeNames"] == ["gauge"]
    assert front.get("/ngsi-ld/v1/types/Gadget").json()["entityCount"] == 1  # only the source has one
    nodes[1].http.delete(f"{ENTITIES}/{gadget}")
