"""Snapshot lifetimes, eviction, interrupted fills and the limits (snapshots/lifecycle.py), on both
back-ends: expiry by snapshotLifetime / expiresAt / --snapshot-max-lifetime with the data removed,
eviction by snapshotPriority at the count limit, a fill whose real server process is killed
(SIGKILL) found and failed after the restart, and what a request naming a snapshot may not do."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.entities import update
from cityos.settings import Settings
from cityos.snapshots import lifecycle, model
from cityos.store import open_store
from cityos.store.snapshot_base import SnapshotRow
from notify_helpers import BrokerProcess, JsonSource, serving, wait_for
from test_snapshots import (
    BASE,
    ENTITIES,
    FAST,
    HEADER,
    SLOW,
    SNAPSHOTS,
    VEHICLES,
    hidden_tenant,
    ids,
    make,
    problem,
    settle,
    stored_ids,
    vehicle,
)


def app(db_url: str, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(database=db_url, **settings)), base_url="http://127.0.0.1:1026")


def row_of(client: TestClient, snapshot_id: str) -> SnapshotRow | None:
    store = client.app.state.services.store  # type: ignore[attr-defined]
    found: SnapshotRow | None = client.portal.call(store.get_snapshot, "", snapshot_id)  # type: ignore[union-attr]
    return found


def test_lifetime_and_expiry(db_url: str) -> None:
    with app(db_url, snapshot_fill_beat=0.2) as client:
        vehicle(client, FAST, 80)
        for bad in ({"snapshotLifetime": 0}, {"snapshotLifetime": "PT1S"}, {"snapshotLifetime": True}):
            problem(client.post(SNAPSHOTS, json={**VEHICLES, **bad}), 400, "BadRequestData")
        problem(client.post(SNAPSHOTS, json={**VEHICLES, "expiresAt": "2001-01-01T00:00:00Z"}), 400, "BadRequestData")
        problem(client.post(SNAPSHOTS, json={**VEHICLES, "expiresAt": "soon"}), 400, "BadRequestData")
        assert client.get(SNAPSHOTS).json() == []

        # a lifetime counts from lastUsedAt; expiresAt shows when it ends
        short = client.get(make(client, {**VEHICLES, "snapshotLifetime": 1})).json()
        assert short["snapshotLifetime"] == 1
        used = lifecycle._epoch(short["lastUsedAt"])
        assert used is not None and lifecycle._epoch(short["expiresAt"]) == pytest.approx(used + 1, abs=0.002)
        hidden = hidden_tenant(client, "", short["id"])
        assert stored_ids(client, hidden) == [FAST]
        # a fixed end, longer than the lifetime: the earlier one wins; PATCH can lift the lifetime
        far = "2099-01-01T00:00:00.000Z"
        kept = client.get(make(client, {**VEHICLES, "snapshotLifetime": 1, "expiresAt": far})).json()
        assert kept["expiresAt"] != far
        patched = client.patch(f"{SNAPSHOTS}/{kept['id']}", json={"snapshotLifetime": None})
        assert patched.status_code == 200, patched.text
        assert patched.json()["expiresAt"] == far and "snapshotLifetime" not in patched.json()

        time.sleep(1.2)
        # expired: as if never made, whatever names it, and its frozen entities are removed
        problem(client.get(f"{SNAPSHOTS}/{short['id']}"), 404, "ResourceNotFound")
        problem(
            client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: short["id"]}), 404, "ResourceNotFound"
        )
        settle(client)
        assert row_of(client, short["id"]) is None
        assert stored_ids(client, hidden) == []
        assert [s["id"] for s in client.get(SNAPSHOTS).json()] == [kept["id"]]

        # the sweep removes an expired snapshot nobody asks about
        lonely = client.get(make(client, {**VEHICLES, "snapshotLifetime": 0.5})).json()
        lonely_hidden = hidden_tenant(client, "", lonely["id"])
        wait_for(lambda: row_of(client, lonely["id"]) is None, timeout=5)
        wait_for(lambda: stored_ids(client, lonely_hidden) == [], timeout=5)
        assert client.delete(f"{SNAPSHOTS}/{kept['id']}").status_code == 204


def test_server_max_lifetime(db_url: str) -> None:
    with app(db_url, snapshot_max_lifetime=100.0) as client:
        vehicle(client, FAST, 80)
        long = client.get(make(client, {**VEHICLES, "snapshotLifetime": 1000})).json()
        assert long["snapshotLifetime"] == 100  # cut to the server's
        plain = client.get(make(client, VEHICLES)).json()
        assert "snapshotLifetime" not in plain
        used = lifecycle._epoch(plain["lastUsedAt"])
        assert used is not None and lifecycle._epoch(plain["expiresAt"]) == pytest.approx(used + 100, abs=0.002)
        # a clone keeps its original's lifetime unless it gives one
        cloned = client.post(f"{SNAPSHOTS}/{long['id']}/clone", json={"type": "Snapshot"})
        assert cloned.status_code == 201, cloned.text
        settle(client)
        assert client.get(cloned.headers["Location"]).json()["snapshotLifetime"] == 100


def test_priority_eviction_at_the_count_limit(db_url: str) -> None:
    with app(db_url, snapshot_max_count=2) as client:
        vehicle(client, FAST, 80)
        low = client.get(make(client, {**VEHICLES, "snapshotPriority": 3})).json()
        mid = client.get(make(client, {**VEHICLES, "snapshotPriority": 5})).json()
        low_hidden = hidden_tenant(client, "", low["id"])
        # a new one of priority 4 evicts the lowest (3), with its data
        newer = client.get(make(client, {**VEHICLES, "snapshotPriority": 4})).json()
        assert {s["id"] for s in client.get(SNAPSHOTS).json()} == {mid["id"], newer["id"]}
        assert stored_ids(client, low_hidden) == []
        # nothing lower than 2: refused, nothing evicted
        problem(client.post(SNAPSHOTS, json={**VEHICLES, "snapshotPriority": 2}), 409, "Conflict")
        problem(client.post(SNAPSHOTS, json={**VEHICLES, "snapshotPriority": 4}), 409, "Conflict")  # not lower
        assert len(client.get(SNAPSHOTS).json()) == 2
        # an id that exists is 409 AlreadyExists before anything is evicted for it
        problem(client.post(SNAPSHOTS, json={**VEHICLES, "id": mid["id"], "snapshotPriority": 9}), 409, "AlreadyExists")
        assert len(client.get(SNAPSHOTS).json()) == 2


def test_the_sweep_fails_an_interrupted_fill(db_url: str) -> None:
    """Store level: a snapshot left preparing, with part of its copy written, whose heartbeat stopped."""

    async def scenario() -> None:
        store = open_store(db_url)
        await store.open()
        try:
            settings = Settings(database=db_url, snapshot_fill_beat=1.0)
            stamp = "2030-01-01T00:00:00.000Z"
            queries = [{"type": "Query", "entities": [{"type": "Vehicle"}]}]
            old = model.new_document("urn:ngsi-ld:Snapshot:old", queries, 5, stamp, "~snapshot~old", None)
            old[model.BEAT] = time.time() - 10  # three beats missed
            fresh = model.new_document("urn:ngsi-ld:Snapshot:fresh", queries, 5, stamp, "~snapshot~fresh", None)
            for document in (old, fresh):
                await store.save_snapshot(SnapshotRow("", document["id"], document), create=True)
            kind = ["https://uri.etsi.org/ngsi-ld/default-context/Vehicle"]
            entity = {"id": FAST, "type": kind, "createdAt": stamp, "modifiedAt": stamp, "attrs": {}}
            await store.mutate("~snapshot~old", [(FAST, update.create(entity))], atomic=False)
            assert await lifecycle.sweep(store, settings) == (1, 0)
            failed = await store.get_snapshot("", old["id"])
            assert failed is not None and failed.document["snapshotStatus"] == "failure"
            assert failed.document["snapshotQueriesDetails"] == [
                {"resultStatus": "failure", "detail": lifecycle.INTERRUPTED}
            ]
            assert await store.get_entity("~snapshot~old", FAST) is None  # the partial copy is gone
            still = await store.get_snapshot("", fresh["id"])
            assert still is not None and still.document["snapshotStatus"] == "preparing"  # its fill is alive
            assert await lifecycle.sweep(store, settings) == (0, 0)  # nothing twice
        finally:
            await store.close()

    asyncio.run(scenario())


def test_the_header_does_not_reach_subscriptions_or_writes(db_url: str) -> None:
    """Subscriptions on a snapshot are not defined (a snapshot never changes): 422, nothing made."""
    with app(db_url) as client:
        vehicle(client, FAST, 80)
        sid = client.get(make(client, VEHICLES)).json()["id"]
        subscription = {
            "type": "Subscription",
            "entities": [{"type": "Vehicle"}],
            "notification": {"endpoint": {"uri": "http://127.0.0.1:9/n"}},
        }
        problem(
            client.post(f"{BASE}/subscriptions", json=subscription, headers={HEADER: sid}), 422, "OperationNotSupported"
        )
        assert client.get(f"{BASE}/subscriptions").json() == []
        problem(client.delete(f"{ENTITIES}/{FAST}", headers={HEADER: sid}), 422, "OperationNotSupported")
        problem(
            client.post(
                f"{BASE}/entityOperations/upsert", json=[{"id": SLOW, "type": "Vehicle"}], headers={HEADER: sid}
            ),
            422,
            "OperationNotSupported",
        )
        assert ids(client.get(ENTITIES, params={"type": "Vehicle"})) == [FAST]


# -- a real server process killed in the middle of a fill --------------------------------------------
class Hanging(JsonSource):
    """A context source that answers only when released: the fill waits on it."""

    release = threading.Event()

    def do_GET(self) -> None:
        Hanging.release.wait(60)
        self.answer_json(b"[]")


@pytest.fixture
def hanging() -> Iterator[str]:
    Hanging.release.clear()
    with serving(Hanging) as url:
        try:
            yield url
        finally:
            Hanging.release.set()


def test_a_fill_killed_with_its_process_becomes_failure(db_url: str, hanging: str) -> None:
    broker = BrokerProcess(db_url, snapshot_fill_beat="0.5", notification_timeout="60")
    broker.start()
    try:
        with httpx.Client(base_url=broker.base + BASE, timeout=10) as http:
            for entity_id, speed in ((FAST, 80), (SLOW, 30)):
                body = {"id": entity_id, "type": "Vehicle", "speed": {"type": "Property", "value": speed}}
                assert http.post("/entities", json=body).status_code == 201
            registration = {
                "type": "ContextSourceRegistration",
                "information": [{"entities": [{"type": "Vehicle"}]}],
                "operations": ["queryEntity"],
                "endpoint": hanging,
            }
            assert http.post("/csourceRegistrations", json=registration).status_code == 201
            created = http.post("/snapshots", json=VEHICLES)
            assert created.status_code == 201, created.text
            location = created.headers["Location"].removeprefix(BASE)
            time.sleep(1.2)  # the fill waits on the source, beating
            assert http.get(location).json()["snapshotStatus"] == "preparing"
        broker.kill()
        broker.start()
        with httpx.Client(base_url=broker.base + BASE, timeout=10) as http:

            def ended() -> dict[str, Any] | None:
                body: dict[str, Any] = http.get(location).json()
                return body if body["snapshotStatus"] != "preparing" else None

            snapshot = wait_for(ended, timeout=15)
            assert snapshot["snapshotStatus"] == "failure"
            assert snapshot["snapshotQueriesDetails"] == [{"resultStatus": "failure", "detail": lifecycle.INTERRUPTED}]
            frozen = http.get("/entities", params={"type": "Vehicle"}, headers={HEADER: snapshot["id"]})
            assert frozen.status_code == 200 and frozen.json() == []  # nothing half-made is served
            assert http.delete(location).status_code == 204
    finally:
        broker.stop()
