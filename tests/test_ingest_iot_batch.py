"""The IoT Agent's batches: many device messages in one transaction (IotAgent.handle_many, as the
MQTT transport drains what has arrived), on both back-ends, in-process; and the MQTT transport's
bounded inbox against a real Mosquitto."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

import paho.mqtt.publish as mqtt_publish
import pytest
from starlette.testclient import TestClient

from cityos.entities.update import Mutator
from cityos.errors import BadRequestData, DatabaseBusy
from cityos.ingest import iot_mqtt
from cityos.ingest.iot_agent import DeviceMessage, IotAgent, MeasureOutcome
from cityos.ingest.iot_mqtt import MqttTransport
from notify_helpers import mosquitto

API = "/ngsi-ld/v1"


def _agent(client: TestClient) -> IotAgent:
    agent: IotAgent = client.app.state.ingest.agent  # type: ignore[attr-defined]
    return agent


def _group(client: TestClient) -> str:
    apikey = "k" + uuid.uuid4().hex[:10]
    group = {
        "apikey": apikey,
        "entity_type": "WasteContainer",
        "attributes": [{"object_id": "f", "name": "fillingLevel", "type": "Integer"}],
    }
    assert client.post("/iot/services", json={"services": [group]}).status_code == 201
    return apikey


def _handle(client: TestClient, messages: Sequence[DeviceMessage]) -> list[MeasureOutcome]:
    assert client.portal is not None
    outcomes: list[MeasureOutcome] = client.portal.call(_agent(client).handle_many, messages)
    return outcomes


def _history(client: TestClient, entity_id: str) -> list[tuple[Any, str]]:
    """(value, observedAt) of each fillingLevel instance, oldest first."""
    response = client.get(f"{API}/temporal/entities/{entity_id}", params={"attrs": "fillingLevel"})
    assert response.status_code == 200, response.text
    instances = response.json()["fillingLevel"]
    instances = instances if isinstance(instances, list) else [instances]
    return [(i["value"], i["observedAt"]) for i in instances]


def _at(second: int) -> str:
    return f"2026-03-01T10:00:{second:02d}.000Z"


def test_two_measures_of_one_device_in_one_batch_as_if_one_after_the_other(client: TestClient) -> None:
    apikey = _group(client)
    batch = [
        DeviceMessage(apikey, "a", b"f|1", received_at=_at(1)),
        DeviceMessage(apikey, "b", b"f|7", received_at=_at(2)),
        DeviceMessage(apikey, "a", b"f|2", received_at=_at(3)),
        DeviceMessage(apikey, "a", b"f|3#f|4", received_at=_at(4)),  # two groups: two updates
    ]
    assert [o.status for o in _handle(client, batch)] == ["stored"] * 4
    # the same messages of device "c", one transaction each, as before batching
    for message in batch:
        if message.device_id == "a":
            _handle(client, [DeviceMessage(apikey, "c", message.payload, received_at=message.received_at)])
    a = client.get(f"{API}/entities/urn:ngsi-ld:WasteContainer:a").json()
    c = client.get(f"{API}/entities/urn:ngsi-ld:WasteContainer:c").json()
    assert a["fillingLevel"] == c["fillingLevel"] == {"type": "Property", "value": 4, "observedAt": _at(4)}
    expected = [(1, _at(1)), (2, _at(3)), (3, _at(4)), (4, _at(4))]
    assert _history(client, "urn:ngsi-ld:WasteContainer:a") == expected
    assert _history(client, "urn:ngsi-ld:WasteContainer:c") == expected
    assert _history(client, "urn:ngsi-ld:WasteContainer:b") == [(7, _at(2))]


def test_bad_messages_among_good_ones_and_the_counters(client: TestClient) -> None:
    apikey = _group(client)
    assert _handle(client, [DeviceMessage(apikey, "a", b"f|1")])[0].status == "stored"
    before = dict(_agent(client).about()["stats"])
    batch = [
        DeviceMessage(apikey, "a", b"f|2"),
        DeviceMessage(apikey, "a", b"f|full"),  # not an Integer
        DeviceMessage("no-such-key", "a", b"f|3"),
        DeviceMessage(apikey, "b", b"f|5#f"),  # its second group is malformed: nothing of it is stored
        DeviceMessage(apikey, "a", b"f|4"),
        DeviceMessage(apikey, "b", b"6", object_id="f"),
        DeviceMessage(apikey, "c", b"{nope", fmt="json"),  # a new device whose first message is malformed
    ]
    statuses = [o.status for o in _handle(client, batch)]
    assert statuses == ["stored", "malformed", "unknown_device", "malformed", "stored", "stored", "malformed"]
    stats = _agent(client).about()["stats"]
    assert {k: stats[k] - before[k] for k in stats} == {
        "received": 7,
        "stored": 3,
        "malformed": 3,
        "unknown_device": 1,
        "failed": 0,
    }
    assert [v for v, _ in _history(client, "urn:ngsi-ld:WasteContainer:a")] == [1, 2, 4]
    assert [v for v, _ in _history(client, "urn:ngsi-ld:WasteContainer:b")] == [6]
    assert client.get(f"{API}/entities/urn:ngsi-ld:WasteContainer:c").status_code == 404


def test_a_refusal_inside_the_store_loses_only_its_own_message(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's transaction is rolled back whole; each message is then written on its own."""
    apikey = _group(client)
    store = _agent(client).sink.store
    real = store.mutate
    calls: list[int] = []

    async def refusing(tenant: str, operations: Sequence[tuple[str, Mutator]], *, atomic: bool) -> Any:
        calls.append(len(operations))

        def refuse(current: Any) -> Any:
            raise BadRequestData("refused by the test")

        ops = [(i, refuse if i.endswith(":bad") else m) for i, m in operations]
        return await real(tenant, ops, atomic=atomic)

    monkeypatch.setattr(store, "mutate", refusing)
    batch = [DeviceMessage(apikey, d, b"f|1") for d in ("a", "bad", "b")]
    outcomes = _handle(client, batch)
    assert [o.status for o in outcomes] == ["stored", "malformed", "stored"]
    assert "refused by the test" in outcomes[1].detail
    assert calls == [3, 1, 1, 1]  # the batch, then each message alone
    calls.clear()
    assert _handle(client, [DeviceMessage(apikey, "bad", b"f|2")])[0].status == "malformed"
    assert calls == [1]  # a message alone is not tried twice
    for device in ("a", "b"):
        assert [v for v, _ in _history(client, f"urn:ngsi-ld:WasteContainer:{device}")] == [1]
    assert client.get(f"{API}/entities/urn:ngsi-ld:WasteContainer:bad").status_code == 404


def test_a_busy_database_is_waited_for_and_never_blamed_on_the_measures(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DatabaseBusy (another process's long transaction) writes nothing: the batch is written
    again after Retry-After; when the database stays busy, the measures count as failed, not
    malformed."""
    apikey = _group(client)
    agent = _agent(client)
    store = agent.sink.store
    real = store.mutate
    busy_calls = [1]  # the next calls that find the database busy

    async def busy_at_first(tenant: str, operations: Sequence[tuple[str, Mutator]], *, atomic: bool) -> Any:
        if busy_calls[0] > 0:
            busy_calls[0] -= 1
            raise DatabaseBusy("held by the test", retry_after=0.01)
        return await real(tenant, operations, atomic=atomic)

    monkeypatch.setattr(store, "mutate", busy_at_first)
    before = agent.about()["stats"]
    outcomes = _handle(client, [DeviceMessage(apikey, d, b"f|7") for d in ("x", "y")])
    assert [o.status for o in outcomes] == ["stored", "stored"]
    assert [v for v, _ in _history(client, "urn:ngsi-ld:WasteContainer:x")] == [7]
    busy_calls[0] = 100  # stays busy
    outcomes = _handle(client, [DeviceMessage(apikey, "z", b"f|8")])
    assert [o.status for o in outcomes] == ["failed"]
    after = agent.about()["stats"]
    assert after["stored"] - before["stored"] == 2
    assert after["failed"] - before["failed"] == 1
    assert after["malformed"] == before["malformed"]
    assert after["received"] - before["received"] == 3
    assert client.get(f"{API}/entities/urn:ngsi-ld:WasteContainer:z").status_code == 404


class SlowAgent:
    """Stands for IotAgent: records each batch, and takes its time, as a slow store would."""

    def __init__(self) -> None:
        self.batches: list[list[DeviceMessage]] = []
        self.inbox_sizes: list[int] = []
        self.transport: MqttTransport | None = None

    async def handle_many(self, messages: Sequence[DeviceMessage]) -> list[MeasureOutcome]:
        self.batches.append(list(messages))
        await asyncio.sleep(0.05)
        return [MeasureOutcome("stored") for _ in messages]


def test_the_inbox_is_bounded_and_keeps_the_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store slower than the broker: the socket is not read while the inbox is full, so the
    broker holds the rest; nothing is lost, and every message comes in the order it was sent."""
    monkeypatch.setattr(iot_mqtt, "MAX_INBOX", 40)
    monkeypatch.setattr(iot_mqtt, "MAX_BATCH", 10)
    sizes: list[int] = []
    real_take = iot_mqtt.Inbox.take

    def take(self: iot_mqtt.Inbox, first: Any, limit: int) -> Any:
        assert self.queue is not None
        sizes.append(self.queue.qsize() + 1)
        return real_take(self, first, limit)

    monkeypatch.setattr(iot_mqtt.Inbox, "take", take)
    total = 600
    with mosquitto(private=True) as port:  # it takes every measure on the broker: none of the other tests'
        slow = SlowAgent()
        apikey = "k" + uuid.uuid4().hex[:10]

        async def run() -> None:
            transport = MqttTransport(cast(IotAgent, slow), f"mqtt://127.0.0.1:{port}", share_group="")
            transport.start()
            await asyncio.wait_for(transport.connected.wait(), 10)
            sender = threading.Thread(
                target=mqtt_publish.multiple,
                args=([{"topic": f"/{apikey}/d{n % 3}/attrs", "payload": f"f|{n}", "qos": 1} for n in range(total)],),
                kwargs={"hostname": "127.0.0.1", "port": port},
            )
            sender.start()
            deadline = time.monotonic() + 60
            while sum(len(b) for b in slow.batches) < total and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            sender.join()
            await transport.stop()

        asyncio.run(run())
    received = [m for batch in slow.batches for m in batch]
    assert [m.payload for m in received] == [f"f|{n}".encode() for n in range(total)]
    assert max(len(b) for b in slow.batches) == 10
    assert max(sizes) <= 40 + 20, max(sizes)  # the bound, and what one read may bring past it
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", m.received_at) for m in received)
