"""Snapshots (spec 5.16, resources 6.36-6.38, the NGSILD-Snapshot header 6.3.22) on both back-ends:
the store contract, create/fill/freeze, validation, update, clone, delete and purge, the limits,
tenants, a real context source on 127.0.0.1, and the access policies (tests/access_helpers.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from starlette.testclient import TestClient

from access_helpers import DEFAULT, Secured, secured_app
from cityos.app import create_app
from cityos.errors import AlreadyExists
from cityos.settings import Settings
from cityos.snapshots import model
from cityos.store import open_store
from cityos.store.base import EntityQuery
from cityos.store.snapshot_base import SnapshotRow
from notify_helpers import JsonSource, serving

BASE = "/ngsi-ld/v1"
SNAPSHOTS = BASE + "/snapshots"
ENTITIES = BASE + "/entities"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
HEADER = "NGSILD-Snapshot"
FAST, SLOW = "urn:ngsi-ld:Vehicle:snap-fast", "urn:ngsi-ld:Vehicle:snap-slow"
REMOTE, REMOTE_SLOW = "urn:ngsi-ld:Vehicle:snap-remote", "urn:ngsi-ld:Vehicle:snap-remote-slow"
VEHICLES = {"type": "Snapshot", "snapshotQueries": [{"type": "Query", "entities": [{"type": "Vehicle"}]}]}
FAST_ONLY = {
    "type": "Snapshot",
    "snapshotQueries": [{"type": "Query", "entities": [{"type": "Vehicle"}], "q": "speed>50"}],
}


def problem(response: Any, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["type"] == ERRORS + kind


def vehicle(client: TestClient, entity_id: str, speed: int, **headers: str) -> None:
    body = {"id": entity_id, "type": "Vehicle", "speed": {"type": "Property", "value": speed}}
    response = client.post(ENTITIES, json=body, headers=headers)
    assert response.status_code == 201, response.text


def settle(client: TestClient) -> None:
    """Until the fills and clones started so far have ended (they run in the app's event loop)."""
    client.portal.call(client.app.state.snapshot_fills.wait)  # type: ignore[union-attr, attr-defined]


def make(client: TestClient, body: dict[str, Any], **headers: str) -> str:
    """Create a snapshot and wait for its fill; its URL path."""
    response = client.post(SNAPSHOTS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    settle(client)
    return str(response.headers["Location"])


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(e["id"] for e in response.json())


def hidden_tenant(client: TestClient, tenant: str, snapshot_id: str) -> str:
    row = client.portal.call(client.app.state.services.store.get_snapshot, tenant, snapshot_id)  # type: ignore[union-attr, attr-defined]
    assert row is not None
    return str(row.document[model.HIDDEN])


def stored_ids(client: TestClient, tenant: str) -> list[str]:
    store = client.app.state.services.store  # type: ignore[attr-defined]
    result = client.portal.call(store.query_entities, tenant, EntityQuery())  # type: ignore[union-attr]
    return sorted(e["id"] for e in result.entities)


# -- the model ---------------------------------------------------------------------------------------
class TestModel:
    @pytest.mark.parametrize(
        ("results", "status"),
        [
            (["success", "success"], "success"),
            (["success", "empty"], "partial"),
            (["success", "failure"], "partial"),
            (["empty", "empty"], "empty"),
            (["empty", "failure"], "failure"),
        ],
    )
    def test_status(self, results: list[str], status: str) -> None:
        assert model.overall_status(results) == status

    def test_purge_filter_reads_only_snapshot_members(self) -> None:
        document = model.new_document("urn:x:1", [], 3, "2030-01-01T00:00:00.000Z", "h", None)
        assert model.purge_filter("snapshotPriority<5", None)(document)
        assert not model.purge_filter("snapshotPriority>5", None)(document)
        assert model.purge_filter('snapshotStatus=="preparing"', None)(document)
        for bad in ("speed>50", "snapshotPriority>1;speed==2", "", None):
            with pytest.raises(Exception, match="purge"):
                model.purge_filter(bad, None)


# -- the store contract, on both back-ends -----------------------------------------------------------
def test_store_contract(db_url: str) -> None:
    async def scenario() -> None:
        store = open_store(db_url)
        await store.open()
        try:
            first = SnapshotRow("city", "urn:ngsi-ld:Snapshot:1", {"id": "urn:ngsi-ld:Snapshot:1", "n": 1})
            second = SnapshotRow("city", "urn:ngsi-ld:Snapshot:2", {"id": "urn:ngsi-ld:Snapshot:2", "n": 2})
            await store.save_snapshot(first, create=True)
            await store.save_snapshot(second, create=True)
            with pytest.raises(AlreadyExists):
                await store.save_snapshot(first, create=True)
            await store.save_snapshot(SnapshotRow("other", first.id, {"n": 9}), create=True)  # ids are per tenant
            assert [r.id for r in await store.list_snapshots("city")] == [first.id, second.id]  # creation order
            everywhere = [(r.tenant, r.id) for r in await store.all_snapshots()]  # every tenant's, for the sweep
            assert everywhere == [("city", first.id), ("city", second.id), ("other", first.id)]
            await store.save_snapshot(SnapshotRow("city", first.id, {"id": first.id, "n": 3}), create=False)
            got = await store.get_snapshot("city", first.id)
            assert got is not None and got.document["n"] == 3
            assert (await store.get_snapshot("other", first.id)).document == {"n": 9}  # type: ignore[union-attr]
            assert await store.delete_snapshot("city", first.id)
            assert not await store.delete_snapshot("city", first.id)
            assert await store.get_snapshot("city", first.id) is None
            await store.save_snapshot(first, create=False)  # a replace of a deleted one writes nothing
            assert [r.id for r in await store.list_snapshots("city")] == [second.id]
        finally:
            await store.close()

    asyncio.run(scenario())


# -- the API, one app per module and back-end ----------------------------------------------------------
class Source(JsonSource):
    """A context source on 127.0.0.1 that answers every query with two vehicles; q is left to the broker."""

    seen: list[dict[str, list[str]]] = []

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        Source.seen.append(parse_qs(parts.query))
        if parts.path != "/ngsi-ld/v1/entities":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps(
            [
                {"id": REMOTE, "type": "Vehicle", "speed": {"type": "Property", "value": 88}},
                {"id": REMOTE_SLOW, "type": "Vehicle", "speed": {"type": "Property", "value": 5}},
            ]
        ).encode()
        self.answer_json(body)


@pytest.fixture(scope="module")
def source() -> Iterator[str]:
    with serving(Source) as url:
        yield url


@pytest.fixture(scope="module")
def api(module_db_url: str) -> Iterator[TestClient]:
    settings = Settings(database=module_db_url, allow_private_networks=True, snapshot_max_count=4)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        yield client


@pytest.fixture
def client(api: TestClient) -> Iterator[TestClient]:
    """The module's app with the two fixture vehicles; every snapshot and entity removed after."""
    vehicle(api, FAST, 80)
    vehicle(api, SLOW, 30)
    try:
        yield api
    finally:
        settle(api)
        for entity_id in (FAST, SLOW):
            api.delete(f"{ENTITIES}/{entity_id}")
        assert api.delete(SNAPSHOTS, params={"q": "snapshotPriority>0"}).status_code == 204
        assert api.get(SNAPSHOTS).json() == []


def test_create_freezes_the_selection(client: TestClient) -> None:
    location = make(client, FAST_ONLY)
    snapshot = client.get(location).json()
    assert snapshot["snapshotStatus"] == "success"
    assert snapshot["snapshotPriority"] == 5
    assert snapshot["snapshotQueriesDetails"] == [{"resultStatus": "success"}]
    assert snapshot["lastUsedAt"] and snapshot["createdAt"]
    # the hidden tenant and the owner are never rendered; no lifetime was given, so none shows
    optional = {"snapshotLifetime", "expiresAt", "snapshotTemporalQueries", "snapshotTemporalQueriesDetails"}
    assert set(snapshot) == set(model.PUBLIC) - optional
    sid = snapshot["id"]
    scoped = client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: sid})
    assert ids(scoped) == [FAST]
    assert scoped.headers[HEADER] == sid
    # the live entity changes, the copy does not; the live one is not in the snapshot's listing of types
    assert (
        client.patch(f"{ENTITIES}/{FAST}/attrs", json={"speed": {"type": "Property", "value": 10}}).status_code == 204
    )
    frozen = client.get(f"{ENTITIES}/{FAST}", headers={HEADER: sid})
    assert frozen.status_code == 200 and frozen.json()["speed"]["value"] == 80
    assert client.get(f"{ENTITIES}/{SLOW}", headers={HEADER: sid}).status_code == 404
    assert ids(
        client.post(f"{BASE}/entityOperations/query", json={"type": "Query", "q": "speed>70"}, headers={HEADER: sid})
    ) == [FAST]
    assert client.get(f"{BASE}/types", headers={HEADER: sid}).status_code == 200
    assert ids(client.get(ENTITIES, params={"type": "Vehicle", "q": "speed>50"})) == []  # live: FAST is at 10 now
    assert [s["id"] for s in client.get(SNAPSHOTS).json()] == [sid]


def test_validation_and_unknown_references(client: TestClient) -> None:
    problem(client.post(SNAPSHOTS, json={"type": "Snapshot"}), 400, "BadRequestData")
    temporal = {
        "type": "Query",
        "entities": [{"type": "V"}],
        "temporalQ": {"timerel": "after", "timeAt": "2020-01-01T00:00:00Z"},
    }
    problem(client.post(SNAPSHOTS, json={"type": "Snapshot", "snapshotQueries": [temporal]}), 400, "BadRequestData")
    for bad in (
        {**VEHICLES, "snapshotPriority": 11},
        {**VEHICLES, "snapshotPriority": True},
        {**VEHICLES, "type": "Subscription"},
        {**VEHICLES, "snapshotStatus": "success"},
        {"type": "Snapshot", "snapshotQueries": []},
        {"type": "Snapshot", "snapshotQueries": [{"type": "Query"}]},
        {"type": "Snapshot", "snapshotQueries": [{"type": "Query", "q": "speed>>"}]},
        {"type": "Snapshot", "snapshotQueries": [{"type": "Query", "entities": [{"type": "Vehicle"}], "q": 5}]},
        {**VEHICLES, "id": "not a uri"},
    ):
        problem(client.post(SNAPSHOTS, json=bad), 400, "BadRequestData")
    problem(client.post(SNAPSHOTS, json={**VEHICLES, "snapshotTemporalQueries": []}), 400, "BadRequestData")
    problem(client.post(SNAPSHOTS, json={**VEHICLES, "endpoint": "http://127.0.0.1:9/n"}), 422, "OperationNotSupported")
    problem(client.post(SNAPSHOTS, content=b"[1", headers={"Content-Type": "application/json"}), 400, "InvalidRequest")
    assert client.get(SNAPSHOTS).json() == []  # nothing was made
    problem(
        client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: "urn:ngsi-ld:Snapshot:absent"}),
        404,
        "ResourceNotFound",
    )
    problem(client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: "no uri"}), 400, "BadRequestData")
    problem(client.get(f"{SNAPSHOTS}/urn:ngsi-ld:Snapshot:absent"), 404, "ResourceNotFound")
    problem(client.delete(f"{SNAPSHOTS}/urn:ngsi-ld:Snapshot:absent"), 404, "ResourceNotFound")
    # a hidden tenant cannot be named
    problem(
        client.get(ENTITIES, params={"type": "Vehicle"}, headers={"NGSILD-Tenant": "~snapshot~x"}),
        400,
        "BadRequestData",
    )


def test_the_header_only_reads(client: TestClient) -> None:
    sid = client.get(make(client, VEHICLES)).json()["id"]
    patch = client.patch(
        f"{ENTITIES}/{FAST}/attrs", json={"speed": {"type": "Property", "value": 1}}, headers={HEADER: sid}
    )
    problem(patch, 422, "OperationNotSupported")
    problem(
        client.post(ENTITIES, json={"id": "urn:x:1", "type": "T"}, headers={HEADER: sid}), 422, "OperationNotSupported"
    )
    assert client.get(f"{ENTITIES}/{FAST}").json()["speed"]["value"] == 80  # nothing was written


def test_update_clone_delete_and_purge(client: TestClient) -> None:
    location = make(client, VEHICLES)
    updated = client.patch(location, json={"snapshotPriority": 2})
    assert updated.status_code == 200, updated.text
    assert updated.json()["snapshotPriority"] == 2
    for bad in ({"snapshotQueries": []}, {"snapshotStatus": "failure"}, {}, {"snapshotPriority": 0}):
        problem(client.patch(location, json=bad), 400, "BadRequestData")
    problem(
        client.post(f"{location}/clone", json={**VEHICLES}), 400, "BadRequestData"
    )  # a clone has no queries of its own
    cloned = client.post(f"{location}/clone", json={"type": "Snapshot", "snapshotPriority": 9})
    assert cloned.status_code == 201, cloned.text
    settle(client)
    clone = client.get(cloned.headers["Location"]).json()
    assert clone["snapshotStatus"] == "success" and clone["snapshotPriority"] == 9
    assert clone["snapshotQueries"] == VEHICLES["snapshotQueries"]
    original = client.get(location).json()
    hidden = hidden_tenant(client, "", original["id"])
    assert stored_ids(client, hidden) == [FAST, SLOW]
    # purge by the snapshot's own members: the original goes (with its entities), the clone stays
    problem(client.delete(SNAPSHOTS, params={"q": "speed>50"}), 400, "BadRequestData")
    problem(client.delete(SNAPSHOTS), 400, "BadRequestData")
    assert client.get(location).status_code == 200  # a refused purge purged nothing
    store = client.app.state.services.store  # type: ignore[attr-defined]
    # the copy records no history of its own (a snapshot's history is what snapshotTemporalQueries froze)
    assert client.portal.call(store.temporal_entity, hidden, FAST) is None  # type: ignore[union-attr]
    assert client.delete(SNAPSHOTS, params={"q": "snapshotPriority<5"}).status_code == 204
    assert client.get(location).status_code == 404
    assert stored_ids(client, hidden) == []
    assert client.portal.call(store.temporal_entity, hidden, FAST) is None  # type: ignore[union-attr]
    assert ids(client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: clone["id"]})) == [FAST, SLOW]
    problem(client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: original["id"]}), 404, "ResourceNotFound")
    assert client.delete(cloned.headers["Location"]).status_code == 204
    assert client.get(cloned.headers["Location"]).status_code == 404


def test_status_grades_each_query(client: TestClient) -> None:
    nothing = {"type": "Query", "entities": [{"type": "Nothing"}]}
    partial = make(client, {"type": "Snapshot", "snapshotQueries": [*VEHICLES["snapshotQueries"], nothing]})
    body = client.get(partial).json()
    assert body["snapshotStatus"] == "partial"
    assert [d["resultStatus"] for d in body["snapshotQueriesDetails"]] == ["success", "empty"]
    empty = client.get(make(client, {"type": "Snapshot", "snapshotQueries": [nothing]})).json()
    assert empty["snapshotStatus"] == "empty"
    # an empty snapshot is still usable: its hidden tenant answers with nothing, not 404
    assert ids(client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: empty["id"]})) == []
    listed = client.get(SNAPSHOTS, params={"q": 'snapshotStatus=="empty"', "count": "true"})
    assert [s["id"] for s in listed.json()] == [empty["id"]] and listed.headers["NGSILD-Results-Count"] == "1"


def test_count_limit_and_tenants(client: TestClient) -> None:
    city = {"NGSILD-Tenant": "snapcity"}
    vehicle(client, "urn:ngsi-ld:Vehicle:snap-city", 99, **city)
    sid = client.get(make(client, VEHICLES, **city), headers=city).json()["id"]
    assert ids(client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: sid, **city})) == [
        "urn:ngsi-ld:Vehicle:snap-city"
    ]
    # the default tenant does not know it
    problem(client.get(f"{SNAPSHOTS}/{quote(sid)}"), 404, "ResourceNotFound")
    problem(client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: sid}), 404, "ResourceNotFound")
    for _ in range(4):  # snapshot_max_count=4 in the module's settings, per tenant
        assert client.post(SNAPSHOTS, json=VEHICLES).status_code == 201
    problem(client.post(SNAPSHOTS, json=VEHICLES), 409, "Conflict")
    settle(client)
    assert client.delete(SNAPSHOTS, params={"q": "snapshotPriority>0"}, headers=city).status_code == 204
    client.delete(f"{ENTITIES}/urn:ngsi-ld:Vehicle:snap-city", headers=city)


def test_fill_asks_the_registered_context_sources(client: TestClient, source: str) -> None:
    registration = {
        "id": "urn:ngsi-ld:ContextSourceRegistration:snap",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Vehicle"}]}],
        "operations": ["queryEntity"],
        "endpoint": source,
    }
    assert client.post(f"{BASE}/csourceRegistrations", json=registration).status_code == 201
    try:
        Source.seen = []
        sid = client.get(make(client, FAST_ONLY)).json()["id"]
        assert Source.seen and Source.seen[0]["type"] == ["Vehicle"] and Source.seen[0]["q"] == ["speed>50"]
        # the source ignored q: the broker applies it to what came back, as to its own entities
        assert ids(client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: sid})) == [FAST, REMOTE]
    finally:
        client.delete(f"{BASE}/csourceRegistrations/{registration['id']}")


def test_entity_limit_fails_the_snapshot(db_url: str) -> None:
    settings = Settings(database=db_url, snapshot_max_entities=1)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as small:
        vehicle(small, FAST, 80)
        vehicle(small, SLOW, 30)
        # one query alone selects too many: refused before anything is made
        problem(small.post(SNAPSHOTS, json=VEHICLES), 403, "TooManyResults")
        assert small.get(SNAPSHOTS).json() == []
        # each query fits, their union does not: the fill fails and keeps nothing
        slow_only = {"type": "Query", "entities": [{"type": "Vehicle"}], "q": "speed<50"}
        both = {"type": "Snapshot", "snapshotQueries": [*FAST_ONLY["snapshotQueries"], slow_only]}
        body = small.get(make(small, both)).json()
        assert body["snapshotStatus"] == "failure"
        assert "snapshot_max_entities" in body["snapshotQueriesDetails"][0]["detail"]
        assert stored_ids(small, hidden_tenant(small, "", body["id"])) == []
        assert small.get(make(small, FAST_ONLY)).json()["snapshotStatus"] == "success"


# -- access policies ------------------------------------------------------------------------------------
@pytest.fixture
def secured(db_url: str) -> Iterator[Secured]:
    with secured_app(Settings(database=db_url)) as app:
        app.principal("admin", admin=True, tenants=None)
        app.principal(
            "maker",
            types={DEFAULT + "Vehicle"},
            hidden={DEFAULT + "secret"},
            administer={"snapshot"},
            read_resources={"snapshot"},
        )
        app.principal("other", types={DEFAULT + "Vehicle"}, administer={"snapshot"}, read_resources={"snapshot"})
        app.principal("reader", types={DEFAULT + "Vehicle"})
        yield app


def test_access_policies(secured: Secured) -> None:
    client = secured.client
    admin, maker, other, reader = (secured.as_(f"key:{n}") for n in ("admin", "maker", "other", "reader"))
    for entity_id, kind in ((FAST, "Vehicle"), ("urn:ngsi-ld:Building:b", "Building")):
        body = {"id": entity_id, "type": kind, "secret": {"type": "Property", "value": 1}}
        assert client.post(ENTITIES, json=body, headers=admin).status_code == 201
    both = [{"type": "Vehicle"}, {"type": "Building"}]
    all_of_it = {"type": "Snapshot", "snapshotQueries": [{"type": "Query", "entities": both}]}
    refused = client.post(SNAPSHOTS, json=all_of_it, headers=reader)
    assert refused.status_code == 403, refused.text
    location = make(client, all_of_it, **maker)
    sid = client.get(location, headers=maker).json()["id"]
    # the fill saw what the maker may read: the Vehicle, without its secret
    frozen = client.get(ENTITIES, params={"type": "Vehicle,Building"}, headers={HEADER: sid, **admin})
    assert ids(frozen) == [FAST] and "secret" not in frozen.json()[0]
    # someone else's snapshot does not exist for the caller, whatever the verb
    for response in (
        client.get(location, headers=other),
        client.patch(location, json={"snapshotPriority": 1}, headers=other),
        client.delete(location, headers=other),
        client.post(f"{location}/clone", json={"type": "Snapshot"}, headers=other),
        client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: sid, **other}),
    ):
        problem(response, 404, "ResourceNotFound")
    assert client.get(SNAPSHOTS, headers=other).json() == []
    assert client.delete(SNAPSHOTS, params={"q": "snapshotPriority>0"}, headers=other).status_code == 204
    assert client.get(location, headers=maker).status_code == 200  # other's purge did not reach it
    problem(client.get(location, headers=reader), 404, "ResourceNotFound")  # no read on snapshots
    assert client.get(SNAPSHOTS, headers=reader).status_code == 403
    assert {e.detail.get("resource") for e in secured.audit.denied()} == {"snapshot"}
    # reading it is judged by today's policies: the maker loses Vehicles, the snapshot shows nothing
    secured.authorizer.grants["key:maker"].types = set()
    assert ids(client.get(ENTITIES, params={"type": "Vehicle"}, headers={HEADER: sid, **maker})) == []
    assert client.get(location, headers=admin).status_code == 200  # an admin manages every one
    assert client.delete(location, headers=maker).status_code == 204
