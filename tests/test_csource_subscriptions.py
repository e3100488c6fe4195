"""Context source registration subscriptions (spec 5.11) and their notifications (5.3.2, 5.11.7),
on a real database of each back-end, delivered to a real HTTP receiver and a real MQTT broker:
CRUD and validation, newlyMatching / updated / noLongerMatching, only the relevant information,
the delivery bookkeeping, paused and periodic subscriptions, and the entity subscriptions kept apart."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings
from notify_helpers import Receiver, mosquitto, receiving, wait_for
from test_subscriptions_mqtt import Listener

SUBS = "/ngsi-ld/v1/csourceSubscriptions"
REGS = "/ngsi-ld/v1/csourceRegistrations"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
NUMBERS = itertools.count()


@pytest.fixture(scope="module")
def client(module_db_url: str) -> Iterator[TestClient]:
    settings = Settings(database=module_db_url, allow_private_networks=True)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as test_client:
        yield test_client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def kind() -> str:
    """A type of this test's own, so the module's tests do not see each other's registrations."""
    return f"Kind{next(NUMBERS)}"


def subscription(uri: str, entity_type: str, **members: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"urn:ngsi-ld:Subscription:cs{next(NUMBERS)}",
        "type": "Subscription",
        "entities": [{"type": entity_type}],
        "notification": {"endpoint": {"uri": uri, "accept": "application/json"}},
    }
    body.update(members)
    return {k: v for k, v in body.items() if v is not None}


def subscribe(client: TestClient, body: dict[str, Any]) -> str:
    response = client.post(SUBS, json=body)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"{SUBS}/{body['id']}"
    return str(body["id"])


def register(client: TestClient, entity_type: str, **members: Any) -> str:
    body = {
        "id": f"urn:ngsi-ld:ContextSourceRegistration:cs{next(NUMBERS)}",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": entity_type}]}],
        "endpoint": "http://source.example.org:1026",
        **members,
    }
    response = client.post(REGS, json=body)
    assert response.status_code == 201, response.text
    return str(body["id"])


def assert_problem(response: httpx.Response, status: int, type_name: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["type"] == ERRORS + type_name


def test_crud_and_validation(client: TestClient, receiver: Receiver) -> None:
    body = subscription(receiver.url, kind(), temporalQ={"timerel": "after", "timeAt": "2020-01-01T00:00:00Z"})
    sub_id = subscribe(client, body)
    got = client.get(f"{SUBS}/{sub_id}").json()
    assert got["entities"] == body["entities"] and got["status"] == "active"
    assert got["temporalQ"]["timerel"] == "after" and "notificationTrigger" not in got
    assert sub_id in [s["id"] for s in client.get(SUBS).json()]
    assert sub_id not in [s["id"] for s in client.get("/ngsi-ld/v1/subscriptions").json()]  # kept apart
    assert_problem(client.get(f"/ngsi-ld/v1/subscriptions/{sub_id}"), 404, "ResourceNotFound")
    assert_problem(client.post(SUBS, json=body), 409, "AlreadyExists")
    assert client.patch(f"{SUBS}/{sub_id}", json={"isActive": False}).status_code == 204
    assert client.get(f"{SUBS}/{sub_id}").json()["status"] == "paused"
    for bad in (
        {**body, "id": "urn:ngsi-ld:Subscription:other", "notification": None},
        {**body, "id": "urn:ngsi-ld:Subscription:other", "type": "Registration"},
        {**body, "id": "urn:ngsi-ld:Subscription:other", "q": "(broken"},
        {**body, "id": "urn:ngsi-ld:Subscription:other", "watchedAttributes": []},
        {**body, "id": "urn:ngsi-ld:Subscription:other", "expiresAt": "2020-01-01T00:00:00Z"},
        {**body, "id": "urn:ngsi-ld:Subscription:other", "temporalQ": {"timerel": "soon"}},
        {**body, "id": "not a uri"},
    ):
        assert_problem(client.post(SUBS, json=bad), 400, "BadRequestData")
    assert_problem(client.patch(f"{SUBS}/{sub_id}", json={"notification": 5}), 400, "BadRequestData")
    response = client.patch(f"{SUBS}/{sub_id}", content=b'{"a":,}', headers={"Content-Type": "application/json"})
    assert_problem(response, 400, "InvalidRequest")
    assert_problem(
        client.patch(f"{SUBS}/urn:ngsi-ld:Subscription:none", json={"isActive": True}), 404, "ResourceNotFound"
    )
    assert_problem(client.delete(f"{SUBS}/not-a-uri"), 400, "BadRequestData")
    assert client.delete(f"{SUBS}/{sub_id}").status_code == 204
    assert_problem(client.get(f"{SUBS}/{sub_id}"), 404, "ResourceNotFound")


def test_listing_pages(client: TestClient, receiver: Receiver) -> None:
    made = [subscribe(client, subscription(receiver.url, kind())) for _ in range(3)]
    response = client.get(SUBS, params={"limit": "100", "count": "true"})
    listed = [s["id"] for s in response.json()]
    assert [i for i in listed if i in made] == made
    assert response.headers["ngsild-results-count"] == str(len(listed))
    for sub_id in made:
        client.delete(f"{SUBS}/{sub_id}")


def test_notifications_follow_the_registrations(client: TestClient, receiver: Receiver) -> None:
    entity_type = kind()
    before = register(client, entity_type)
    sub_id = subscribe(client, subscription(receiver.url, entity_type))
    first = receiver.wait(1)[0].body  # on subscription: what matches already
    assert first["type"] == "ContextSourceNotification" and first["subscriptionId"] == sub_id
    assert first["triggerReason"] == "newlyMatching" and [r["id"] for r in first["data"]] == [before]
    both = register(
        client, entity_type, information=[{"entities": [{"type": entity_type}]}, {"entities": [{"type": "Bus"}]}]
    )
    second = receiver.wait(2)[1].body
    assert second["triggerReason"] == "newlyMatching" and second["data"][0]["id"] == both
    assert second["data"][0]["information"] == [{"entities": [{"type": entity_type}]}]  # only what is relevant
    assert client.patch(f"{REGS}/{both}", json={"description": "now described"}).status_code == 204
    third = receiver.wait(3)[2].body
    assert third["triggerReason"] == "updated" and third["data"][0]["description"] == "now described"
    moved = {"information": [{"entities": [{"type": "Bus"}]}]}
    assert client.patch(f"{REGS}/{both}", json=moved).status_code == 204
    assert receiver.wait(4)[3].body["triggerReason"] == "noLongerMatching"
    assert client.delete(f"{REGS}/{before}").status_code == 204
    fifth = receiver.wait(5)[4].body
    assert fifth["triggerReason"] == "noLongerMatching" and fifth["data"][0]["id"] == before
    register(client, "Bus")  # not selected: nothing is sent
    got = client.get(f"{SUBS}/{sub_id}").json()["notification"]
    assert got["timesSent"] == 5 and got["status"] == "ok" and "lastSuccess" in got
    assert len(receiver.requests) == 5
    client.delete(f"{SUBS}/{sub_id}")


def test_update_notifies_the_newly_matching(client: TestClient, receiver: Receiver) -> None:
    one, two = kind(), kind()
    first, second = register(client, one), register(client, two)
    sub_id = subscribe(client, subscription(receiver.url, kind()))
    assert client.patch(f"{SUBS}/{sub_id}", json={"entities": [{"type": one}, {"type": two}]}).status_code == 204
    sent = receiver.wait(1)[0].body
    assert sent["triggerReason"] == "newlyMatching" and sorted(r["id"] for r in sent["data"]) == sorted([first, second])
    client.delete(f"{SUBS}/{sub_id}")


def test_filters_of_the_subscription(client: TestClient, receiver: Receiver) -> None:
    entity_type = kind()
    near = {"georel": "near;maxDistance==2000", "geometry": "Point", "coordinates": [-8.52, 41.2]}
    sub_id = subscribe(
        client, subscription(receiver.url, entity_type, watchedAttributes=["speed"], geoQ=near, csf='team=="a"')
    )
    here = {"type": "Point", "coordinates": [-8.52, 41.2]}
    register(client, entity_type, location=here, team="b")  # csf does not match
    register(client, entity_type, team="a")  # no location
    info = [{"entities": [{"type": entity_type}], "propertyNames": ["fuel"]}]
    register(client, entity_type, location=here, team="a", information=info)  # not the watched attribute
    wanted = register(client, entity_type, location=here, team="a")
    sent = receiver.wait(1)[0].body
    assert [r["id"] for r in sent["data"]] == [wanted]
    assert len(receiver.requests) == 1
    client.delete(f"{SUBS}/{sub_id}")


def test_failed_paused_and_periodic(client: TestClient, receiver: Receiver) -> None:
    entity_type = kind()
    refused = subscription("http://127.0.0.1:9/notify", entity_type)  # nothing listens there
    failing = subscribe(client, refused)
    register(client, entity_type)

    def failed() -> dict[str, Any] | None:
        notification: dict[str, Any] = client.get(f"{SUBS}/{failing}").json()["notification"]
        return notification if notification.get("status") == "failed" else None

    got = wait_for(failed)
    assert got["timesFailed"] == 1 and "lastFailure" in got and "lastSuccess" not in got
    paused = subscribe(client, subscription(receiver.url, entity_type, isActive=False))
    periodic = subscribe(client, subscription(receiver.url, entity_type, timeInterval=1))
    sent = receiver.wait(2, timeout=5)
    assert {r.body["subscriptionId"] for r in sent} == {periodic}  # the paused one sends nothing
    for sub_id in (failing, paused, periodic):
        client.delete(f"{SUBS}/{sub_id}")


def test_mqtt_endpoint(client: TestClient) -> None:
    topic = f"cityos-test/{uuid.uuid4().hex}/csource"
    with mosquitto() as port:
        listener = Listener(port, topic)
        try:
            entity_type = kind()
            endpoint = {"uri": f"mqtt://127.0.0.1:{port}/{topic}", "accept": "application/json"}
            body = subscription("", entity_type, notification={"endpoint": endpoint})
            sub_id = subscribe(client, body)
            registration_id = register(client, entity_type)
            message = json.loads(listener.wait(1)[0].payload)
            assert message["body"]["type"] == "ContextSourceNotification"
            assert [r["id"] for r in message["body"]["data"]] == [registration_id]
            client.delete(f"{SUBS}/{sub_id}")
        finally:
            listener.close()
