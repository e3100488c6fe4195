"""The crash guarantee: an update the broker acknowledged is notified at least once, even when
the process is killed (SIGKILL) right after, because its notification was written to the outbox
in the same transaction as the update and is delivered after the restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from notify_helpers import BrokerProcess, Receiver, receiving

ENTITY = "urn:ngsi-ld:Counter:1"
UPDATES = 400


@pytest.fixture
def broker(db_url: str) -> Iterator[BrokerProcess]:
    process = BrokerProcess(db_url)
    process.start()
    yield process
    process.stop()


def stream_updates(base: str, acknowledged: list[int], stop: threading.Event) -> None:
    """PATCH counter=0,1,2,... until the broker stops answering; record every 2xx."""
    with httpx.Client(base_url=base, timeout=5) as client:
        for value in range(UPDATES):
            if stop.is_set():
                return
            try:
                response = client.patch(
                    f"/ngsi-ld/v1/entities/{ENTITY}/attrs", json={"counter": {"type": "Property", "value": value}}
                )
            except httpx.TransportError:
                return
            if response.is_success:
                acknowledged.append(value)


def notified_values(receiver: Receiver) -> set[int]:
    return {item["counter"] for body in receiver.bodies() for item in body["data"]}


def test_every_acknowledged_update_is_notified_across_a_sigkill(broker: BrokerProcess) -> None:
    with receiving(delay=0.02) as receiver:  # a receiver slower than the writes: the outbox fills up
        with httpx.Client(base_url=broker.base) as client:
            entity = {"id": ENTITY, "type": "Counter", "counter": {"type": "Property", "value": -1}}
            assert client.post("/ngsi-ld/v1/entities", json=entity).status_code == 201
            subscription = {
                "type": "Subscription",
                "entities": [{"type": "Counter", "id": ENTITY}],
                "notification": {"format": "keyValues", "endpoint": {"uri": receiver.url}},
            }
            assert client.post("/ngsi-ld/v1/subscriptions", json=subscription).status_code == 201

        acknowledged: list[int] = []
        stop = threading.Event()
        writer = threading.Thread(target=stream_updates, args=(broker.base, acknowledged, stop))
        writer.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 150 and writer.is_alive():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        broker.kill()  # mid-stream: requests are in flight and the outbox has a backlog
        writer.join(timeout=10)
        stop.set()
        delivered_before = len(notified_values(receiver))
        assert delivered_before < len(acknowledged), "no backlog at the kill: the test proves nothing"

        broker.start()
        deadline = time.monotonic() + 30
        while not set(acknowledged) <= notified_values(receiver):
            missing = sorted(set(acknowledged) - notified_values(receiver))
            assert time.monotonic() < deadline, f"{len(missing)} acknowledged updates never notified: {missing[:10]}"
            time.sleep(0.1)
        assert len(notified_values(receiver)) > delivered_before
