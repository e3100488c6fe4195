"""Notifications over HTTP to a real receiver on 127.0.0.1: triggers, payloads, bookkeeping,
retries, ordering, isolation of slow receivers, and the outgoing-request policy."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from cityos.net import OutboundPolicy
from cityos.settings import Settings
from cityos.subscriptions.delivery import DeliveryFailed, Outgoing, Sender
from notify_helpers import Receiver, free_port, receiving

SUBS = "/ngsi-ld/v1/subscriptions"
ENTITIES = "/ngsi-ld/v1/entities"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"
NULL = "urn:ngsi-ld:null"
BUILDING = "urn:ngsi-ld:Building:1"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(
        database=db_url,
        allow_private_networks=True,
        notification_retry_delay=0.05,
        notification_retry_max_delay=0.2,
        notification_max_attempts=4,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def subscribe(client: TestClient, uri: str, *, notification: dict[str, Any] | None = None, **members: Any) -> str:
    """A subscription to Buildings (entities=None: none) notifying `uri`; `endpoint` adds to it."""
    body: dict[str, Any] = {"type": "Subscription", "entities": [{"type": "Building"}], **members}
    endpoint = {"uri": uri, **body.pop("endpoint", {})}
    body["notification"] = {**(notification or {}), "endpoint": endpoint}
    body = {k: v for k, v in body.items() if v is not None}
    response = client.post(SUBS, json=body)
    assert response.status_code == 201, response.text
    return str(response.headers["location"].rsplit("/", 1)[1])


def create_building(client: TestClient, entity_id: str = BUILDING, **attrs: Any) -> None:
    body = {
        "id": entity_id,
        "type": "Building",
        "name": {"type": "Property", "value": "Eiffel Tower"},
        "height": {"type": "Property", "value": 300},
        **attrs,
    }
    response = client.post(ENTITIES, json=body)
    assert response.status_code == 201, response.text


def patch_attrs(client: TestClient, fragment: dict[str, Any], entity_id: str = BUILDING) -> None:
    response = client.patch(f"{ENTITIES}/{entity_id}/attrs", json=fragment)
    assert response.status_code == 204, response.text


def quiet(receiver: Receiver, seconds: float = 0.4) -> None:
    """Nothing (more) arrives within `seconds`."""
    before = len(receiver.requests)
    time.sleep(seconds)
    assert len(receiver.requests) == before, receiver.bodies()[before:]


class TestDelivery:
    def test_an_update_is_notified_with_the_full_entity(self, client: TestClient, receiver: Receiver) -> None:
        create_building(client)
        sub_id = subscribe(client, receiver.url)
        quiet(receiver, 0.2)  # creating a subscription notifies nothing
        patch_attrs(client, {"height": {"type": "Property", "value": 324, "unitCode": "MTR"}})
        [request] = receiver.wait(1)
        body = request.body
        assert body["type"] == "Notification" and body["subscriptionId"] == sub_id
        assert body["id"].startswith("urn:ngsi-ld:Notification:")
        assert TIMESTAMP.match(body["notifiedAt"])
        assert body["data"] == [
            {
                "id": BUILDING,
                "type": "Building",
                "name": {"type": "Property", "value": "Eiffel Tower"},
                "height": {"type": "Property", "value": 324, "unitCode": "MTR"},
            }
        ]
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Link"] == f'<{CORE}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
        assert int(request.headers["Content-Length"]) == len(request.raw)
        quiet(receiver)

    def test_the_body_is_raw_utf8_and_receiver_info_becomes_headers(
        self, client: TestClient, receiver: Receiver
    ) -> None:
        subscribe(client, receiver.url, endpoint={"receiverInfo": [{"key": "X-Additional-Key", "value": "Value"}]})
        create_building(client, street={"type": "Property", "value": "Ciudad de París"})
        [request] = receiver.wait(1)
        assert "París".encode() in request.raw and b"\\u" not in request.raw
        assert request.headers["X-Additional-Key"] == "Value"

    def test_ld_json_puts_the_context_in_each_entity(self, client: TestClient, receiver: Receiver) -> None:
        subscribe(client, receiver.url, endpoint={"accept": "application/ld+json"})
        create_building(client)
        [request] = receiver.wait(1)
        assert "Link" not in request.headers
        assert request.headers["Content-Type"] == "application/ld+json"
        assert request.body["data"][0]["@context"] == CORE

    def test_jsonld_context_decides_the_compaction(self, client: TestClient, receiver: Receiver) -> None:
        hosted = client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": {"Bldg": DEFAULT + "Building"}})
        url = "http://127.0.0.1:1026" + hosted.headers["location"]
        subscribe(client, receiver.url, jsonldContext=url)
        create_building(client)
        [request] = receiver.wait(1)
        assert request.body["data"][0]["type"] == "Bldg"
        assert request.headers["Link"].startswith(f"<{url}>")

    def test_keyvalues_sysattrs_attributes_pick_and_omit(self, client: TestClient) -> None:
        with receiving() as kv, receiving() as picked, receiving() as omitted:
            subscribe(client, kv.url, notification={"format": "keyValues", "sysAttrs": True, "attributes": ["name"]})
            subscribe(client, picked.url, notification={"pick": ["id", "height"]})
            subscribe(client, omitted.url, notification={"format": "simplified", "omit": ["type", "name"]})
            create_building(client)
            [data] = kv.wait(1)[0].body["data"]
            assert data.keys() == {"id", "type", "name", "createdAt", "modifiedAt"} and data["name"] == "Eiffel Tower"
            assert picked.wait(1)[0].body["data"] == [{"id": BUILDING, "height": {"type": "Property", "value": 300}}]
            assert omitted.wait(1)[0].body["data"] == [{"id": BUILDING, "height": 300}]

    def test_linked_entities_are_joined(self, client: TestClient, receiver: Receiver) -> None:
        client.post(ENTITIES, json={"id": "urn:ngsi-ld:City:Paris", "type": "City"})
        subscribe(client, receiver.url, notification={"join": "flat", "joinLevel": 1, "format": "keyValues"})
        create_building(client, locatedAt={"type": "Relationship", "object": "urn:ngsi-ld:City:Paris"})
        data = receiver.wait(1)[0].body["data"]
        assert [d["id"] for d in data] == [BUILDING, "urn:ngsi-ld:City:Paris"]


class TestTriggers:
    def test_default_triggers_count_creation_but_not_deletion(self, client: TestClient, receiver: Receiver) -> None:
        subscribe(client, receiver.url)
        create_building(client)
        assert receiver.wait(1)[0].body["triggerReason"] == "attributeCreated"
        assert client.delete(f"{ENTITIES}/{BUILDING}").status_code == 204
        quiet(receiver)

    def test_entity_created_and_type_selection(self, client: TestClient, receiver: Receiver) -> None:
        subscribe(client, receiver.url, entities=[{"type": "(Building|Tower)"}], notificationTrigger=["entityCreated"])
        client.post(ENTITIES, json={"id": "urn:ngsi-ld:Vehicle:1", "type": "Vehicle"})
        create_building(client)
        patch_attrs(client, {"height": {"type": "Property", "value": 1}})
        [request] = receiver.wait(1)
        assert request.body["data"][0]["id"] == BUILDING
        quiet(receiver)

    @pytest.mark.parametrize(("sys_attrs", "keys"), [(False, 3), (True, 5)])
    def test_entity_deleted_reports_id_type_and_deleted_at(
        self, client: TestClient, receiver: Receiver, sys_attrs: bool, keys: int
    ) -> None:
        create_building(client)
        notification = {"format": "keyValues", "sysAttrs": sys_attrs}
        subscribe(client, receiver.url, notificationTrigger=["entityDeleted"], notification=notification)
        client.delete(f"{ENTITIES}/{BUILDING}")
        [data] = receiver.wait(1)[0].body["data"]
        assert len(data) == keys and data["id"] == BUILDING and TIMESTAMP.match(data["deletedAt"])

    def test_attribute_deleted_marks_the_attribute_null(self, client: TestClient, receiver: Receiver) -> None:
        create_building(client)
        subscribe(client, receiver.url, notificationTrigger=["attributeDeleted"], watchedAttributes=["name"])
        assert client.delete(f"{ENTITIES}/{BUILDING}/attrs/height").status_code == 204
        quiet(receiver, 0.3)  # an unwatched attribute
        assert client.delete(f"{ENTITIES}/{BUILDING}/attrs/name").status_code == 204
        [data] = receiver.wait(1)[0].body["data"]
        assert data == {"id": BUILDING, "type": "Building", "name": {"type": "Property", "value": NULL}}

    def test_deleting_one_dataset_instance_keeps_the_others(self, client: TestClient, receiver: Receiver) -> None:
        french = "urn:ngsi-ld:Dataset:french"
        name = [
            {"type": "Property", "value": "Eiffel Tower"},
            {"type": "Property", "value": "Tour", "datasetId": french},
        ]
        create_building(client, name=name)
        with receiving() as key_values:
            subscribe(client, receiver.url, notificationTrigger=["attributeDeleted"])
            notification = {"format": "keyValues"}
            subscribe(client, key_values.url, notificationTrigger=["attributeDeleted"], notification=notification)
            client.delete(f"{ENTITIES}/{BUILDING}/attrs/name?datasetId={french}")
            assert receiver.wait(1)[0].body["data"][0]["name"] == [
                {"type": "Property", "value": "Eiffel Tower"},
                {"type": "Property", "value": NULL, "datasetId": french},
            ]
            assert key_values.wait(1)[0].body["data"][0]["name"] == {"dataset": {"@none": "Eiffel Tower", french: NULL}}
            client.delete(f"{ENTITIES}/{BUILDING}/attrs/name?deleteAll=true")
            assert receiver.wait(2)[1].body["data"][0]["name"] == {"type": "Property", "value": NULL}

    def test_show_changes_reports_previous_values(self, client: TestClient, receiver: Receiver) -> None:
        create_building(client, locatedAt={"type": "Relationship", "object": "urn:ngsi-ld:City:Paris"})
        subscribe(
            client,
            receiver.url,
            notificationTrigger=["attributeCreated", "attributeUpdated", "attributeDeleted"],
            notification={"showChanges": True},
        )
        patch_attrs(client, {"name": {"type": "Property", "value": "Tour Eiffel"}})
        patch_attrs(client, {"locatedAt": {"type": "Relationship", "object": "urn:ngsi-ld:City:Nantes"}})
        patch_attrs(client, {"color": {"type": "Property", "value": "brown"}})
        client.delete(f"{ENTITIES}/{BUILDING}/attrs/height")
        first, second, third, fourth = (r.body["data"][0] for r in receiver.wait(4))
        assert first["name"] == {"type": "Property", "value": "Tour Eiffel", "previousValue": "Eiffel Tower"}
        assert "previousValue" not in first["height"]
        assert second["locatedAt"]["previousObject"] == "urn:ngsi-ld:City:Paris"
        assert "previousValue" not in third["color"]
        assert fourth["height"] == {"type": "Property", "value": NULL, "previousValue": 300}

    def test_watched_attributes_gate_but_the_payload_is_whole(self, client: TestClient, receiver: Receiver) -> None:
        create_building(client)
        subscribe(client, receiver.url, entities=None, watchedAttributes=["height"])
        patch_attrs(client, {"name": {"type": "Property", "value": "Tour"}})
        quiet(receiver, 0.3)
        patch_attrs(client, {"height": {"type": "Property", "value": 1}})
        assert set(receiver.wait(1)[0].body["data"][0]) == {"id", "type", "name", "height"}

    def test_q_is_percent_decoded_and_filters(self, client: TestClient, receiver: Receiver) -> None:
        subscribe(client, receiver.url, q='name=="Eiffel%20Tower";height>100')
        create_building(client, "urn:ngsi-ld:Building:low", height={"type": "Property", "value": 5})
        create_building(client)
        assert [r.body["data"][0]["id"] for r in receiver.wait(1)] == [BUILDING]
        quiet(receiver)

    def test_geoq_scopeq_lang_and_concise(self, client: TestClient, receiver: Receiver) -> None:
        geo_q = {"georel": "near;maxDistance==2000", "geometry": "Point", "coordinates": [2.2945, 48.8584]}
        notification = {"format": "concise"}
        subscribe(client, receiver.url, geoQ=geo_q, scopeQ="/Paris/#", lang="fr", notification=notification)
        street = {"type": "LanguageProperty", "languageMap": {"fr": "Champ de Mars", "en": "Mars Field"}}
        for suffix, (lon, lat), scope in (("far", (4.83, 45.76), "/Paris"), ("out", (2.29, 48.86), "/Lyon")):
            location = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}
            create_building(client, f"urn:ngsi-ld:Building:{suffix}", location=location, scope=scope)
        location = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [2.2950, 48.8580]}}
        create_building(client, location=location, scope="/Paris/7", street=street)
        [request] = receiver.wait(1)
        data = request.body["data"][0]
        assert data["id"] == BUILDING and data["height"] == 300
        assert data["street"] == {"value": "Champ de Mars", "lang": "fr"}
        quiet(receiver, 0.3)

    def test_q_follows_relationships(self, client: TestClient, receiver: Receiver) -> None:
        for name, level in (("low", 0.3), ("full", 0.95)):
            device = {"id": f"urn:ngsi-ld:Device:{name}", "type": "Device"}
            client.post(ENTITIES, json={**device, "batteryLevel": {"type": "Property", "value": level}})
        subscribe(client, receiver.url, entities=[{"type": "Vehicle"}], q="isConnectedTo{batteryLevel}<0.5")
        for name in ("full", "low"):
            link = {"type": "Relationship", "object": f"urn:ngsi-ld:Device:{name}"}
            client.post(ENTITIES, json={"id": f"urn:ngsi-ld:Vehicle:{name}", "type": "Vehicle", "isConnectedTo": link})
        assert [r.body["data"][0]["id"] for r in receiver.wait(1)] == ["urn:ngsi-ld:Vehicle:low"]
        quiet(receiver)


class TestLifecycle:
    def test_paused_and_expired_subscriptions_stay_quiet(self, client: TestClient, receiver: Receiver) -> None:
        create_building(client)
        sub_id = subscribe(client, receiver.url, isActive=False)
        patch_attrs(client, {"height": {"type": "Property", "value": 1}})
        quiet(receiver, 0.3)
        assert client.patch(f"{SUBS}/{sub_id}", json={"isActive": True}).status_code == 204
        patch_attrs(client, {"height": {"type": "Property", "value": 2}})
        assert receiver.wait(1)[0].body["data"][0]["height"]["value"] == 2
        # in 1 to 2 s (whole seconds): a time that could pass before the PATCH arrives would be refused
        soon = int(time.time()) + 2
        expires_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soon))
        assert client.patch(f"{SUBS}/{sub_id}", json={"expiresAt": expires_at}).status_code == 204
        time.sleep(max(0.0, soon - time.time()) + 0.2)
        assert client.get(f"{SUBS}/{sub_id}").json()["status"] == "expired"
        patch_attrs(client, {"height": {"type": "Property", "value": 3}})
        quiet(receiver, 0.3)

    def test_a_deleted_subscription_stops_notifying(self, client: TestClient, receiver: Receiver) -> None:
        sub_id = subscribe(client, receiver.url)
        client.delete(f"{SUBS}/{sub_id}")
        create_building(client)
        quiet(receiver)

    def test_throttling_drops_notifications_within_the_period(self, client: TestClient, receiver: Receiver) -> None:
        create_building(client)
        subscribe(client, receiver.url, throttling=2)
        patch_attrs(client, {"height": {"type": "Property", "value": 1}})
        receiver.wait(1)
        patch_attrs(client, {"height": {"type": "Property", "value": 2}})
        quiet(receiver, 0.5)

    def test_time_interval_reports_matching_entities_periodically(self, client: TestClient, receiver: Receiver) -> None:
        create_building(client)
        started = time.monotonic()
        subscribe(client, receiver.url, timeInterval=1)
        patch_attrs(client, {"height": {"type": "Property", "value": 1}})  # no change notifications
        first, second = receiver.wait(2, timeout=4)
        assert 0.9 < first.at - started < 1.6 and 0.8 < second.at - first.at < 1.3
        assert first.body["data"][0]["height"]["value"] == 1 and "triggerReason" not in first.body


class TestBookkeepingAndRetries:
    def test_success_is_recorded(self, client: TestClient, receiver: Receiver) -> None:
        sub_id = subscribe(client, receiver.url)
        assert set(client.get(f"{SUBS}/{sub_id}").json()["notification"]) == {"endpoint"}
        create_building(client)
        receiver.wait(1)
        notification = client.get(f"{SUBS}/{sub_id}").json()["notification"]
        assert notification["timesSent"] == 1 and notification["status"] == "ok"
        assert TIMESTAMP.match(notification["lastNotification"]) and TIMESTAMP.match(notification["lastSuccess"])
        assert "lastFailure" not in notification and "timesFailed" not in notification

    def test_failures_are_retried_with_backoff_then_given_up(self, client: TestClient) -> None:
        with receiving(answer=lambda n: 500) as failing:
            sub_id = subscribe(client, failing.url)
            create_building(client)
            requests = failing.wait(4)
            quiet(failing, 0.5)  # notification_max_attempts = 4
        gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
        assert gaps[0] >= 0.04 and gaps[2] >= 0.19  # 0.05, 0.1, then capped at 0.2
        notification = client.get(f"{SUBS}/{sub_id}").json()["notification"]
        assert notification["status"] == "failed" and notification["timesFailed"] == 4
        assert TIMESTAMP.match(notification["lastFailure"])

    def test_a_retried_notification_keeps_the_order(self, client: TestClient) -> None:
        with receiving(answer=lambda n: 503 if n % 3 == 1 else 200) as flaky:
            create_building(client)
            subscribe(client, flaky.url, notification={"format": "keyValues"})
            for value in range(10):
                patch_attrs(client, {"height": {"type": "Property", "value": value}})
            values = [r.body["data"][0]["height"] for r in flaky.wait(15)]
        assert [v for n, v in enumerate(values) if n % 3 != 1] == list(range(10))
        assert all(values[n] == values[n + 1] for n in range(1, 15, 3))  # each failure retried before the next

    def test_a_slow_receiver_does_not_delay_a_fast_one(self, client: TestClient) -> None:
        with receiving(delay=5.0) as slow, receiving() as fast:
            subscribe(client, slow.url)
            subscribe(client, fast.url)
            create_building(client)
            slow.wait(1)
            started = time.monotonic()
            for value in range(3):
                patch_attrs(client, {"height": {"type": "Property", "value": value}})
            arrived = fast.wait(4, timeout=2)
            assert arrived[-1].at - started < 1.0
            assert len(slow.requests) == 1

    def test_a_dead_endpoint_fails_fast(self, client: TestClient) -> None:
        sub_id = subscribe(client, f"http://127.0.0.1:{free_port()}/notify")
        create_building(client)
        deadline = time.monotonic() + 3
        while client.get(f"{SUBS}/{sub_id}").json()["notification"].get("status") != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)


class TestSender:
    def test_private_targets_are_refused_unless_allowed(self, receiver: Receiver) -> None:
        async def run() -> None:
            strict = Sender(OutboundPolicy(), timeout=2, max_bytes=1000)
            try:
                with pytest.raises(DeliveryFailed, match=r"non-public.*--allow-private-networks"):
                    await strict.send(Outgoing(uri=receiver.url, notification={"type": "Notification"}))
            finally:
                await strict.close()

        asyncio.run(run())
        assert receiver.requests == []

    def test_oversize_notifications_are_not_sent(self, receiver: Receiver) -> None:
        async def run() -> None:
            sender = Sender(OutboundPolicy(allow_private_networks=True), timeout=2, max_bytes=100)
            try:
                with pytest.raises(DeliveryFailed) as failure:
                    await sender.send(Outgoing(uri=receiver.url, notification={"data": "x" * 200}))
                assert failure.value.permanent
                await sender.send(Outgoing(uri=receiver.url, notification={"data": "x"}))
            finally:
                await sender.close()

        asyncio.run(run())
        assert [r.body for r in receiver.requests] == [{"data": "x"}]
