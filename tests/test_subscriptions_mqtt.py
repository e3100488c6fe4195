"""MQTT notifications (spec 7.x MQTT binding) through a real Mosquitto broker: the message is
{"metadata": {...}, "body": Notification}, published to the URI's topic with the QoS and
protocol version given in notifierInfo."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from starlette.testclient import TestClient

from cityos.settings import Settings
from notify_helpers import free_port, mosquitto

SUBS = "/ngsi-ld/v1/subscriptions"
ENTITIES = "/ngsi-ld/v1/entities"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld"


@pytest.fixture(scope="module")
def broker() -> Iterator[int]:
    with mosquitto() as port:
        yield port


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database=db_url, allow_private_networks=True)


class Listener:
    """A paho-mqtt subscriber that collects what arrives on one topic."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=2)
        assert self._subscribed.wait(5), "the test subscriber could not subscribe"

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 5.0) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.messages)} MQTT messages arrived, {count} expected"
                self._changed.wait(left)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def topic() -> str:
    return f"cityos-test/{uuid.uuid4().hex}/notifications"


@pytest.fixture
def listener(broker: int, topic: str) -> Iterator[Listener]:
    subscriber = Listener(broker, topic)
    yield subscriber
    subscriber.close()


def subscribe(client: TestClient, uri: str, **endpoint: Any) -> str:
    body = {
        "type": "Subscription",
        "entities": [{"type": "Building"}],
        "notification": {"format": "keyValues", "endpoint": {"uri": uri, **endpoint}},
    }
    response = client.post(SUBS, json=body)
    assert response.status_code == 201, response.text
    return str(response.headers["location"].rsplit("/", 1)[1])


def create_building(client: TestClient) -> None:
    body = {"id": "urn:ngsi-ld:Building:m1", "type": "Building", "name": {"type": "Property", "value": "Tour"}}
    assert client.post(ENTITIES, json=body).status_code == 201


def test_message_carries_metadata_and_the_notification(
    client: TestClient, broker: int, topic: str, listener: Listener
) -> None:
    receiver_info = [{"key": "test-receiver-key", "value": "test-receiver-info"}]
    sub_id = subscribe(client, f"mqtt://127.0.0.1:{broker}/{topic}", receiverInfo=receiver_info)
    started = time.monotonic()
    create_building(client)
    [message] = listener.wait(1)
    assert time.monotonic() - started < 1.0
    assert message.qos == 0
    payload = json.loads(message.payload)
    assert payload["metadata"] == {
        "Content-Type": "application/json",
        "Link": f'<{CORE}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"',
        "test-receiver-key": "test-receiver-info",
    }
    body = payload["body"]
    assert body["type"] == "Notification" and body["subscriptionId"] == sub_id
    assert body["data"] == [{"id": "urn:ngsi-ld:Building:m1", "type": "Building", "name": "Tour"}]
    notification = client.get(f"{SUBS}/{sub_id}").json()["notification"]
    assert notification["status"] == "ok" and notification["timesSent"] == 1


@pytest.mark.parametrize(("qos", "version"), [("1", "mqtt3.1.1"), ("2", "mqtt5.0"), ("0", "mqtt5.0")])
def test_qos_and_protocol_version_from_notifier_info(
    client: TestClient, broker: int, topic: str, listener: Listener, qos: str, version: str
) -> None:
    notifier_info = [{"key": "MQTT-QoS", "value": qos}, {"key": "MQTT-Version", "value": version}]
    subscribe(client, f"mqtt://127.0.0.1:{broker}/{topic}", notifierInfo=notifier_info)
    create_building(client)
    [message] = listener.wait(1)
    assert message.qos == int(qos)
    assert json.loads(message.payload)["body"]["type"] == "Notification"


def test_credentials_in_the_uri_are_used(client: TestClient, broker: int, topic: str, listener: Listener) -> None:
    subscribe(client, f"mqtt://user_with_password:password@127.0.0.1:{broker}/{topic}")
    create_building(client)
    assert len(listener.wait(1)) == 1


def test_an_unreachable_broker_is_a_failure(client: TestClient) -> None:
    sub_id = subscribe(client, f"mqtt://127.0.0.1:{free_port()}/nobody/listens")
    create_building(client)
    deadline = time.monotonic() + 5
    while client.get(f"{SUBS}/{sub_id}").json()["notification"].get("status") != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
