"""Distributed subscriptions (spec 5.8.1.4, 5.8.5.4, 5.8.6) between two real `cityos serve`
processes: a front broker (over both back-ends) holding the subscription and a source (SQLite)
registered for the entities it watches. The copy made at the source, its notifications merged at
the front with the local entity and filtered again, the copy updated and deleted with the
subscription, a registration made later, and the inbox refusing ids it did not make."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cityos.federation.subscriptions import INBOX_PATH, merge_notified
from notify_helpers import BrokerProcess, Receiver, receiving, wait_for

REG = "/ngsi-ld/v1/csourceRegistrations"
SUBS = "/ngsi-ld/v1/subscriptions"
CSUBS = "/ngsi-ld/v1/csourceSubscriptions"
ENTITIES = "/ngsi-ld/v1/entities"
CORE = "https://uri.etsi.org/ngsi-ld/default-context/"


@pytest.fixture(scope="module")
def cluster(
    module_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BrokerProcess, BrokerProcess]]:
    """(front, source): the front on the module's back-end, the source on SQLite; each test
    works in a tenant of its own on both."""
    front = BrokerProcess(module_db_url)
    source = BrokerProcess(tmp_path_factory.mktemp("fwdsub") / "source.db")
    front.start()
    source.start()
    try:
        yield front, source
    finally:
        front.stop()
        source.stop()


@pytest.fixture
def brokers(
    cluster: tuple[BrokerProcess, BrokerProcess], request: pytest.FixtureRequest
) -> Iterator[tuple[httpx.Client, httpx.Client, BrokerProcess]]:
    """(front, source, front's process), both clients in this test's tenant."""
    front, source = cluster
    headers = {"NGSILD-Tenant": f"t{abs(hash(request.node.name)) % 10**8}"}
    with (
        httpx.Client(base_url=front.base, timeout=20, headers=headers) as f,
        httpx.Client(base_url=source.base, timeout=20, headers=headers) as s,
    ):
        yield f, s, front


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as found:
        yield found


def register(front: httpx.Client, source: httpx.Client, reg_id: str = "src") -> str:
    body = {
        "id": f"urn:ngsi-ld:ContextSourceRegistration:{reg_id}",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Vehicle"}]}],
        "operations": ["federationOps"],
        "endpoint": str(source.base_url).rstrip("/"),
        "tenant": front.headers["NGSILD-Tenant"],  # the copies are made in the same tenant there
    }
    assert front.post(REG, json=body).status_code == 201
    return str(body["id"])


def subscribe(front: httpx.Client, endpoint: str, **members: Any) -> str:
    body = {
        "id": "urn:ngsi-ld:Subscription:fwd",
        "type": "Subscription",
        "entities": [{"type": "Vehicle"}],
        "notification": {"endpoint": {"uri": endpoint}},
        **members,
    }
    response = front.post(SUBS, json=body)
    assert response.status_code == 201, response.text
    return str(body["id"])


def copies(source: httpx.Client) -> list[dict[str, Any]]:
    found = source.get(SUBS)
    if found.status_code == 404:  # the tenant does not exist there yet
        return []
    assert found.status_code == 200
    return [s for s in found.json() if s["notification"]["endpoint"]["uri"].endswith(INBOX_PATH)]


def vehicle(entity_id: str, **attrs: Any) -> dict[str, Any]:
    return {"id": entity_id, "type": "Vehicle", **{k: {"type": "Property", "value": v} for k, v in attrs.items()}}


def test_forwarded_subscription_merges_filters_updates_and_deletes(
    brokers: tuple[httpx.Client, httpx.Client, BrokerProcess], receiver: Receiver
) -> None:
    front, source, process = brokers
    register(front, source)
    sub_id = subscribe(front, receiver.url, q='speed>50;brandName=="Tesla"', splitEntities=True)

    # the reduced copy at the source: the front's inbox, no q (splitEntities), never the subscriber
    copy = wait_for(lambda: (copies(source) or [None])[0])
    assert copy["notification"]["endpoint"]["uri"] == process.base + INBOX_PATH
    assert "q" not in copy and copy.get("splitEntities") is True and copy["id"] != sub_id
    assert receiver.url not in str(copy)
    internal = front.get(CSUBS).json()
    assert len(internal) == 1 and sub_id in internal[0]["description"]

    # the front holds brandName, the source reports speed: merged, q passes, one notification
    car = "urn:ngsi-ld:Vehicle:fwd1"
    assert front.post(ENTITIES, json=vehicle(car, brandName="Tesla")).status_code == 201
    assert source.post(ENTITIES, json=vehicle(car, speed=99)).status_code == 201
    (got,) = receiver.wait(1, timeout=15)
    body = got.body
    assert body["subscriptionId"] == sub_id
    (item,) = body["data"]
    assert item["id"] == car and item["brandName"]["value"] == "Tesla" and item["speed"]["value"] == 99

    # speed 10 fails q after the merge: nothing; speed 70 passes again (the 10 was dropped, not late)
    assert source.patch(f"{ENTITIES}/{car}/attrs", json={"speed": {"type": "Property", "value": 10}}).status_code == 204
    time.sleep(2)
    assert len(receiver.requests) == 1
    assert source.patch(f"{ENTITIES}/{car}/attrs", json={"speed": {"type": "Property", "value": 70}}).status_code == 204
    second = receiver.wait(2, timeout=15)[1].body
    assert second["data"][0]["speed"]["value"] == 70 and second["data"][0]["brandName"]["value"] == "Tesla"

    # an update of the subscription updates the copy
    assert front.patch(f"{SUBS}/{sub_id}", json={"throttling": 7}).status_code == 204
    wait_for(lambda: copies(source)[0].get("throttling") == 7)

    # deleting it deletes the copy and the internal registration subscription
    assert front.delete(f"{SUBS}/{sub_id}").status_code == 204
    assert front.get(CSUBS).json() == []
    wait_for(lambda: copies(source) == [])
    # the copy's id is no longer taken at the inbox
    notice = {"type": "Notification", "subscriptionId": copy["id"], "data": [vehicle(car, speed=99)]}
    assert front.post(INBOX_PATH, json=notice).status_code == 404


def test_registration_made_later_gets_the_copy_and_its_deletion_removes_it(
    brokers: tuple[httpx.Client, httpx.Client, BrokerProcess], receiver: Receiver
) -> None:
    front, source, _ = brokers
    subscribe(front, receiver.url, q="speed>50")
    time.sleep(1)
    assert copies(source) == []  # no registration yet
    reg_id = register(front, source, "later")
    copy = wait_for(lambda: (copies(source) or [None])[0])
    assert copy["q"] == "speed>50"  # without splitEntities the q is pushed down

    car = "urn:ngsi-ld:Vehicle:fwd2"
    assert source.post(ENTITIES, json=vehicle(car, speed=80)).status_code == 201  # only the source has it
    (got,) = receiver.wait(1, timeout=15)
    assert got.body["data"][0]["speed"]["value"] == 80

    assert front.delete(f"{REG}/{reg_id}").status_code == 204
    wait_for(lambda: copies(source) == [])


def test_local_only_subscription_is_not_forwarded(
    brokers: tuple[httpx.Client, httpx.Client, BrokerProcess], receiver: Receiver
) -> None:
    front, source, _ = brokers
    register(front, source)
    subscribe(front, receiver.url, localOnly=True)
    time.sleep(1.5)
    assert copies(source) == [] and front.get(CSUBS).json() == []


def test_a_cycle_of_registrations_ends_with_508(
    brokers: tuple[httpx.Client, httpx.Client, BrokerProcess], receiver: Receiver
) -> None:
    """Each broker registered at the other: the copy made at the source is forwarded back with
    Via naming the front, which refuses it (508); one copy, no cycle."""
    front, source, process = brokers
    register(front, source)
    back = {
        "id": "urn:ngsi-ld:ContextSourceRegistration:back",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Vehicle"}]}],
        "endpoint": process.base,
        "tenant": source.headers["NGSILD-Tenant"],
    }
    assert source.post(REG, json=back).status_code == 201
    subscribe(front, receiver.url)
    wait_for(lambda: len(copies(source)) == 1)
    time.sleep(2)  # the source's own forwarding has been answered by now
    assert len(copies(source)) == 1
    assert [s["id"] for s in front.get(SUBS).json()] == ["urn:ngsi-ld:Subscription:fwd"]
    # the source's internal subscription made no copy at the front: its one remote is gone again
    (internal,) = source.get(CSUBS).json()
    assert internal["id"].startswith("urn:ngsi-ld:Subscription:forwarding:")


def test_inbox_takes_only_ids_it_made(brokers: tuple[httpx.Client, httpx.Client, BrokerProcess]) -> None:
    front, _, _ = brokers
    guess = {"type": "Notification", "subscriptionId": "urn:ngsi-ld:Subscription:fwd", "data": []}
    assert front.post(INBOX_PATH, json=guess).status_code == 404  # a local subscription's own id is no key
    assert front.post(INBOX_PATH, json={"data": []}).status_code == 400
    assert front.post(INBOX_PATH, json={"subscriptionId": "x", "data": {}}).status_code == 400


def test_merge_notified_keeps_later_local_observations() -> None:
    speed = CORE + "speed"
    local = {
        "id": "urn:a",
        "type": [CORE + "Car"],
        "attrs": {
            speed: [{"type": "Property", "value": 1, "observedAt": "2026-06-01T00:00:00Z"}],
            CORE + "brand": [{"type": "Property", "value": "Volvo"}],
        },
    }
    older = {"id": "urn:a", "type": [CORE + "Vehicle"], "attrs": {speed: [{"type": "Property", "value": 2}]}}
    merged = merge_notified(
        local, {**older, "attrs": {speed: [{**older["attrs"][speed][0], "observedAt": "2026-01-01T00:00:00Z"}]}}
    )
    assert merged["attrs"][speed][0]["value"] == 1  # the stored observation is later
    assert merged["type"] == [CORE + "Car", CORE + "Vehicle"]
    merged = merge_notified(local, older)  # no time on the notified one: it is the news
    assert merged["attrs"][speed][0]["value"] == 2 and merged["attrs"][CORE + "brand"][0]["value"] == "Volvo"
    assert local["attrs"][speed][0]["value"] == 1  # the stored entity is not changed
    assert merge_notified(None, older) is older
