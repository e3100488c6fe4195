"""History recorded from the core API (spec 4.5.6, 4.5.7): every change appends instances in the
transaction of the change, deletions leave deletedAt instances, a tenant can be left out, old
instances go after the retention period, and expired instances vanish from every read."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.entities.values import now
from cityos.settings import Settings
from cityos.store import open_store
from cityos.store.base import EntityChange
from cityos.store.temporal_base import SCOPE_ATTR, TemporalQuery
from cityos.temporal.history import HistoryRecorder, changed_instances, parse_disabled
from cityos.temporal.service import HistoryService

BASE = "/ngsi-ld/v1"
ENTITIES = BASE + "/entities"
TEMPORAL = BASE + "/temporal/entities"
CAR = "urn:ngsi-ld:Vehicle:H1"
SPEED = "https://uri.etsi.org/ngsi-ld/default-context/speed"


def history(client: TestClient, entity_id: str = CAR, **params: str) -> Any:
    response = client.get(f"{TEMPORAL}/{entity_id}", params={"options": "sysAttrs", **params})
    assert response.status_code == 200, response.text
    return response.json()


def create_car(client: TestClient, **extra: Any) -> None:
    body = {"id": CAR, "type": "Vehicle", "speed": {"value": 1, "observedAt": "2026-08-10T00:00:00Z"}, **extra}
    assert client.post(ENTITIES, json=body).status_code == 201


def test_create_update_merge_and_delete_are_recorded(client: TestClient) -> None:
    create_car(client, name={"value": "car"})
    url = f"{ENTITIES}/{CAR}"
    assert (
        client.patch(url + "/attrs/speed", json={"value": 2, "observedAt": "2026-08-10T00:01:00Z"}).status_code == 204
    )
    assert client.patch(url, json={"speed": {"value": 3, "observedAt": "2026-08-10T00:02:00Z"}}).status_code == 204
    assert (
        client.post(url + "/attrs", json={"speed": {"value": 4, "observedAt": "2026-08-10T00:03:00Z"}}).status_code
        == 204
    )
    body = history(client)
    assert [i["value"] for i in body["speed"]] == [1, 2, 3, 4]
    assert "name" not in body  # it has no observedAt: outside the default timeproperty
    created = history(client, timeproperty="createdAt")
    assert [i["value"] for i in created["name"]] == ["car"]  # untouched attributes add nothing


def test_an_observation_stated_again_adds_nothing(client: TestClient) -> None:
    """The same value at the same observedAt (a feed polled twice, a message delivered twice) is
    one observation; a new value at that time (a correction) or a new time is recorded."""
    create_car(client)
    url = f"{ENTITIES}/{CAR}/attrs/speed"
    again = {"value": 1, "observedAt": "2026-08-10T00:00:00Z", "unitCode": "KMH"}
    assert client.patch(url, json=again).status_code == 204  # a new member: recorded
    assert client.patch(url, json=again).status_code == 204  # stated again: not recorded
    assert client.patch(url, json={**again, "value": 5}).status_code == 204  # a correction
    assert client.patch(url, json={**again, "observedAt": "2026-08-10T00:01:00Z"}).status_code == 204
    assert [(i["value"], i["observedAt"]) for i in history(client)["speed"]] == [
        (1, "2026-08-10T00:00:00Z"),
        (1, "2026-08-10T00:00:00Z"),
        (5, "2026-08-10T00:00:00Z"),
        (1, "2026-08-10T00:01:00Z"),
    ]


def test_true_after_1_is_a_new_value_not_the_same_stated_again(client: TestClient) -> None:
    """Python's 1 == True == 1.0 is not JSON's: each of these is a new observation at the same
    observedAt, and within one transaction (one modifiedAt) a new instance too."""
    create_car(client)
    url = f"{ENTITIES}/{CAR}/attrs/speed"
    again = {"value": 1, "observedAt": "2026-08-10T00:00:00Z"}
    for value in (1, True, 1.0, [1], [True], {"a": 1}, {"a": True}):
        assert client.patch(url, json={**again, "value": value}).status_code == 204
    recorded = [orjson.dumps(i["value"]) for i in history(client)["speed"]][-7:]
    assert recorded == [b"1", b"true", b"1.0", b"[1]", b"[true]", b'{"a":1}', b'{"a":true}']
    stamp = "2026-01-01T00:00:00Z"
    before = {"id": CAR, "type": ["V"], "modifiedAt": stamp, "attrs": {SPEED: [{"type": "Property", "value": 1}]}}
    after = {**before, "attrs": {SPEED: [{"type": "Property", "value": True}]}}
    assert [i["value"] for _, i in changed_instances(before, after)] == [True]
    assert changed_instances(before, {**before, "attrs": {SPEED: [{"type": "Property", "value": 1}]}}) == []


def test_an_expires_at_merge_adds_nothing(client: TestClient) -> None:
    create_car(client, expiresAt="2100-01-01T00:00:00Z")
    assert client.patch(f"{ENTITIES}/{CAR}", json={"expiresAt": "2101-01-01T00:00:00Z"}).status_code == 204
    assert len(history(client)["speed"]) == 1


def test_an_expires_at_null_merge_removes_it(client: TestClient) -> None:
    create_car(client, expiresAt="2100-01-01T00:00:00Z")
    assert client.patch(f"{ENTITIES}/{CAR}", json={"expiresAt": "urn:ngsi-ld:null"}).status_code == 204
    assert "expiresAt" not in client.get(f"{ENTITIES}/{CAR}", params={"options": "sysAttrs"}).json()


def test_scope_history_copies_modified_at_into_observed_at(client: TestClient) -> None:
    create_car(client, scope="/Old")
    assert client.patch(f"{ENTITIES}/{CAR}", json={"scope": "/New"}).status_code == 204
    scopes = history(client)["scope"]
    assert [s["value"] for s in scopes] == [["/Old"], ["/New"]]
    assert all(s["observedAt"] == s["modifiedAt"] for s in scopes)


def test_deletions_leave_deleted_at_instances(client: TestClient) -> None:
    create_car(client, owner={"type": "Relationship", "object": "urn:ngsi-ld:Person:1"})
    assert client.delete(f"{ENTITIES}/{CAR}/attrs/speed").status_code == 204
    assert client.delete(f"{ENTITIES}/{CAR}").status_code == 204
    deleted = history(client, timeproperty="deletedAt")
    assert deleted["speed"][0]["value"] == "urn:ngsi-ld:null" and "observedAt" not in deleted["speed"][0]
    assert deleted["owner"][0]["object"] == "urn:ngsi-ld:null"
    assert [i["value"] for i in history(client)["speed"]] == [1]  # the history survives the entity


def test_attribute_delete_on_a_temporal_only_entity_is_recorded(client: TestClient) -> None:
    body = {
        "id": CAR,
        "type": "Vehicle",
        "name": [{"type": "LanguageProperty", "languageMap": {"en": "car"}, "observedAt": "2024-12-01T12:00:00Z"}],
        "scope": ["/A"],
    }
    assert client.post(TEMPORAL, json=body).status_code == 201
    assert client.delete(f"{ENTITIES}/{CAR}/attrs/name?deleteAll=false").status_code == 204
    assert client.delete(f"{ENTITIES}/{CAR}/attrs/scope").status_code == 204
    deleted = client.get(f"{TEMPORAL}/{CAR}", params={"timeproperty": "deletedAt"}).json()
    assert deleted["name"][0]["languageMap"] == {"@none": "urn:ngsi-ld:null"}
    assert deleted["scope"][0]["value"] == [] and "deletedAt" in deleted["scope"][0]
    assert client.delete(f"{ENTITIES}/{CAR}/attrs/missing").status_code == 404


def test_transient_attribute_instances_vanish_after_expiry(client: TestClient) -> None:
    create_car(client, flash={"value": 10, "observedAt": "2026-08-10T00:00:00Z", "expiresAt": "2000-01-01T00:00:00Z"})
    assert "flash" not in history(client)


def test_a_disabled_tenant_records_nothing(db_url: str) -> None:
    settings = Settings(database=db_url, temporal_disabled_tenants="quiet")
    with TestClient(create_app(settings)) as client:
        create_car(client)
        body = {"id": CAR, "type": "Vehicle", "speed": {"value": 1}}
        assert client.post(ENTITIES, json=body, headers={"NGSILD-Tenant": "quiet"}).status_code == 201
        assert client.get(f"{TEMPORAL}/{CAR}").status_code == 200
        assert client.get(f"{TEMPORAL}/{CAR}", headers={"NGSILD-Tenant": "quiet"}).status_code == 404


def test_disabled_setting() -> None:
    assert parse_disabled(" a, @default ,*") == frozenset({"a", "", "*"})
    change = EntityChange(
        "x",
        CAR,
        None,
        {"id": CAR, "type": ["V"], "modifiedAt": now(), "attrs": {SPEED: [{"type": "Property", "value": 1}]}},
    )
    assert HistoryRecorder(frozenset({"*"}))(change, lambda _: None) == []
    assert len(HistoryRecorder(frozenset({"y"}))(change, lambda _: None)) == 1


def test_changed_instances_only_for_changed_attribute_instances() -> None:
    stamp = "2026-01-01T00:00:00Z"
    old = {"type": "Property", "value": 1, "modifiedAt": stamp}
    kept = {"type": "Property", "value": "same"}
    before = {"id": CAR, "type": ["V"], "modifiedAt": stamp, "attrs": {SPEED: [old], "k": [kept], "gone": [old]}}
    after = {
        "id": CAR,
        "type": ["V"],
        "modifiedAt": "2026-01-02T00:00:00Z",
        "attrs": {SPEED: [{**old, "value": 2}], "k": [kept]},
    }
    found = changed_instances(before, after)
    assert [(attr, i.get("value")) for attr, i in found] == [(SPEED, 2), ("gone", "urn:ngsi-ld:null")]
    assert found[1][1]["deletedAt"] == "2026-01-02T00:00:00Z"
    assert changed_instances(before, {**before, "scope": ["/S"]})[0][0] == SCOPE_ATTR


def test_retention_drops_old_instances(db_url: str) -> None:
    async def scenario() -> tuple[int, list[Any]]:
        store = open_store(db_url)
        await store.open()
        try:
            old = {"type": "Property", "value": 1, "observedAt": "2001-01-01T00:00:00Z"}
            recent = {"type": "Property", "value": 2, "observedAt": now()}
            await store.temporal_write("", CAR, ["V"], [(SPEED, old), (SPEED, recent)])
            service = HistoryService(store, Settings(database="unused", temporal_retention_days=30))
            removed = await service.purge_old()
            page = await store.temporal_query("", TemporalQuery(ids=[CAR]))
            return removed, [i["value"] for i in page.entities[0]["attrs"][SPEED]]
        finally:
            await store.close()

    assert asyncio.run(scenario()) == (1, [2])


def test_history_goes_on_after_the_temporal_entity_is_deleted(client: TestClient) -> None:
    """The writer keeps the temporal entity's row of an entity it wrote history for; deleting the
    temporal entity (or a retention purge) forgets it, so the next change's history is stored
    under a new row, not the deleted one (and a rolled-back write leaves nothing kept)."""
    create_car(client)
    url = f"{ENTITIES}/{CAR}/attrs/speed"
    assert client.patch(url, json={"value": 2, "observedAt": "2026-08-10T00:01:00Z"}).status_code == 204
    assert [i["value"] for i in history(client)["speed"]] == [1, 2]
    assert client.delete(f"{TEMPORAL}/{CAR}").status_code == 204
    assert client.get(f"{TEMPORAL}/{CAR}").status_code == 404
    for value, minute in ((3, 2), (4, 3)):
        body = {"value": value, "observedAt": f"2026-08-10T00:0{minute}:00Z"}
        assert client.patch(url, json=body).status_code == 204
    assert [i["value"] for i in history(client)["speed"]] == [3, 4]
