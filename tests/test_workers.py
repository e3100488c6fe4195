"""Several workers on one PostgreSQL database behave as one broker: real `cityos serve` processes on
their own ports (as on several hosts), one database, a real notification receiver on 127.0.0.1.

Writes made through one worker are read at once through another; a subscription made through
one is known by all; each change is notified exactly once, in order, whichever worker made it;
the notifications a killed worker had claimed are delivered by the others.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from backends import PostgresSchemas
from notify_helpers import BrokerProcess, Receiver, free_port, receiving

ENTITIES = "/ngsi-ld/v1/entities"
SUBSCRIPTIONS = "/ngsi-ld/v1/subscriptions"
COUNTER = "urn:ngsi-ld:Counter:w1"
CHANGES = 30


@pytest.fixture
def workers(fresh_postgres: str) -> Iterator[list[BrokerProcess]]:
    """Three `cityos serve` processes on one freshly migrated PostgreSQL schema."""
    started = [BrokerProcess(fresh_postgres, worker_timeout="2") for _ in range(3)]
    try:
        for worker in started:
            worker.start()
        yield started
    finally:
        for worker in started:
            worker.stop()


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(0.02)


def subscribe(client: httpx.Client, receiver: Receiver, **extra: object) -> str:
    subscription = {
        "type": "Subscription",
        "entities": [{"type": "Counter"}],
        "notification": {"format": "keyValues", "endpoint": {"uri": receiver.url}},
        **extra,
    }
    response = client.post(SUBSCRIPTIONS, json=subscription)
    assert response.status_code == 201, response.text
    location: str = response.headers["Location"]
    return location.rsplit("/", 1)[-1]


def counters(receiver: Receiver) -> list[int]:
    return [item["counter"] for body in receiver.bodies() for item in body["data"]]


def test_three_workers_one_broker(workers: list[BrokerProcess]) -> None:
    clients = [httpx.Client(base_url=worker.base, timeout=10) for worker in workers]
    a, b, c = clients
    try:
        with receiving() as receiver:
            subscription_id = subscribe(a, receiver)
            for other in (b, c):  # the others learn of it through LISTEN/NOTIFY
                eventually(
                    lambda other=other: other.get(f"{SUBSCRIPTIONS}/{subscription_id}").status_code == 200,
                    what="the subscription reaching every worker",
                )

            entity = {"id": COUNTER, "type": "Counter", "counter": {"type": "Property", "value": 0}}
            assert b.post(ENTITIES, json=entity).status_code == 201
            read = c.get(f"{ENTITIES}/{COUNTER}", params={"options": "keyValues"})
            assert read.status_code == 200 and read.json()["counter"] == 0  # written via B, read via C at once

            for value in range(1, CHANGES + 1):
                writer, reader = clients[value % 3], clients[(value + 1) % 3]
                patch = {"counter": {"type": "Property", "value": value}}
                assert writer.patch(f"{ENTITIES}/{COUNTER}/attrs", json=patch).status_code == 204
                seen = reader.get(f"{ENTITIES}/{COUNTER}", params={"options": "keyValues"}).json()
                assert seen["counter"] == value

            receiver.wait(CHANGES + 1, timeout=20)
            time.sleep(2.5)  # longer than a claim poll: a duplicate would have arrived by now
            assert counters(receiver) == list(range(CHANGES + 1))  # each change once, in order

            # the delivery bookkeeping reaches every worker
            for client in clients:
                eventually(
                    lambda client=client: (
                        client.get(f"{SUBSCRIPTIONS}/{subscription_id}").json()["notification"].get("timesSent")
                        == CHANGES + 1
                    ),
                    what="timesSent reaching every worker",
                )

            # deleted through C: the other workers stop notifying
            assert c.delete(f"{SUBSCRIPTIONS}/{subscription_id}").status_code == 204
            for other in (a, b):
                eventually(
                    lambda other=other: other.get(f"{SUBSCRIPTIONS}/{subscription_id}").status_code == 404,
                    what="the deletion reaching every worker",
                )
            patch = {"counter": {"type": "Property", "value": 999}}
            assert a.patch(f"{ENTITIES}/{COUNTER}/attrs", json=patch).status_code == 204
            time.sleep(2.5)
            assert 999 not in counters(receiver)
    finally:
        for client in clients:
            client.close()


def test_a_new_subscription_is_matched_by_every_worker_at_once(workers: list[BrokerProcess]) -> None:
    """No waiting for LISTEN/NOTIFY: a write committed after the subscription was created is
    matched against it, whichever worker takes the write (the catalogue version check)."""
    clients = [httpx.Client(base_url=worker.base, timeout=10) for worker in workers]
    try:
        with receiving() as receiver:
            for round_number, maker in enumerate(clients):
                entity_id = f"urn:ngsi-ld:Counter:r{round_number}"
                entity = {"id": entity_id, "type": "Counter", "counter": {"type": "Property", "value": 0}}
                assert maker.post(ENTITIES, json=entity).status_code == 201
                subscription = {
                    "type": "Subscription",
                    "entities": [{"id": entity_id, "type": "Counter"}],
                    "notification": {"format": "keyValues", "endpoint": {"uri": receiver.url}},
                }
                assert maker.post(SUBSCRIPTIONS, json=subscription).status_code == 201
                for step, writer in enumerate(clients, start=1):  # at once, through every worker
                    patch = {"counter": {"type": "Property", "value": round_number * 10 + step}}
                    assert writer.patch(f"{ENTITIES}/{entity_id}/attrs", json=patch).status_code == 204
            receiver.wait(9, timeout=20)
            time.sleep(2.5)
            expected = sorted(round_number * 10 + step for round_number in range(3) for step in (1, 2, 3))
            assert sorted(counters(receiver)) == expected
    finally:
        for client in clients:
            client.close()


def test_a_write_reloads_subscriptions_another_worker_changed_first(fresh_postgres: str) -> None:
    """Store level, without LISTEN/NOTIFY's help (no event listener): worker B's write reloads the
    subscriptions worker A committed before it, before B's change listeners run, and only then."""
    import asyncio

    from cityos.entities import update
    from cityos.store import open_store
    from cityos.store.base import EntityChange, EntityLookup, HistoryRow, OutboxRow, SubscriptionRow

    async def scenario() -> list[str]:
        a, b = open_store(fresh_postgres), open_store(fresh_postgres)
        await a.open()
        await b.open()
        journal: list[str] = []
        try:

            async def refresher(rows: list[SubscriptionRow]) -> None:
                journal.append("reload:" + ",".join(row.id for row in rows))

            def listener(change: EntityChange, lookup: EntityLookup) -> list[OutboxRow | HistoryRow]:
                journal.append("match:" + change.entity_id)
                return []

            b.set_catalog_refresher(refresher)
            b.set_change_listener(listener, None)
            entity = {"id": "urn:x:1", "type": ["https://example.org/T"], "attrs": {}}
            entity.update(createdAt="2026-01-01T00:00:00Z", modifiedAt="2026-01-01T00:00:00Z")
            await b.mutate("", [("urn:x:1", update.create(entity))], atomic=True)  # first write: loads
            await b.mutate("", [("urn:x:1", update.replace(entity))], atomic=True)  # nothing changed
            await a.save_subscription(SubscriptionRow("", "urn:s:1", {"doc": {"id": "urn:s:1"}}), create=True)
            await b.mutate("", [("urn:x:1", update.replace(entity))], atomic=True)  # A's subscription first
            await b.save_subscription(SubscriptionRow("", "urn:s:2", {"doc": {"id": "urn:s:2"}}), create=True)
            await b.mutate("", [("urn:x:1", update.replace(entity))], atomic=True)  # its own: no reload
            return journal
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(scenario()) == [
        "reload:",
        "match:urn:x:1",
        "match:urn:x:1",
        "reload:urn:s:1",
        "match:urn:x:1",
        "match:urn:x:1",
    ]


def test_throttling_holds_across_workers(workers: list[BrokerProcess]) -> None:
    """Changes through three workers within one throttling period give one notification, not one
    per worker: the period is decided on the subscription's row, in the write transaction."""
    clients = [httpx.Client(base_url=worker.base, timeout=10) for worker in workers]
    try:
        with receiving() as receiver:
            entity = {"id": COUNTER, "type": "Counter", "counter": {"type": "Property", "value": 0}}
            assert clients[0].post(ENTITIES, json=entity).status_code == 201
            subscribe(clients[0], receiver, throttling=30, watchedAttributes=["counter"])
            for value, writer in enumerate(clients * 3, start=1):
                patch = {"counter": {"type": "Property", "value": value}}
                assert writer.patch(f"{ENTITIES}/{COUNTER}/attrs", json=patch).status_code == 204
            receiver.wait(1, timeout=10)
            time.sleep(2.5)
            assert counters(receiver) == [1]
    finally:
        for client in clients:
            client.close()


def test_events_stay_within_their_schema(postgres_schemas: PostgresSchemas) -> None:
    """Two deployments in two schemas of one database: each worker hears the other workers of its
    own schema only (the NOTIFY channel is per schema)."""
    import asyncio

    from cityos.store import open_store
    from cityos.store.base import SubscriptionRow

    first, second = postgres_schemas.acquire(), postgres_schemas.acquire()

    async def scenario() -> tuple[list[str], list[str]]:
        stores = [open_store(first), open_store(first), open_store(second)]
        heard: list[list[str]] = [[], [], []]
        for store, journal in zip(stores, heard, strict=True):
            await store.open()
            store.set_event_listener(lambda event, journal=journal: journal.append(event.key))
        try:
            await asyncio.sleep(0.5)  # the LISTEN connections are up
            await stores[0].save_subscription(SubscriptionRow("", "urn:s:first", {"doc": {}}), create=True)
            await stores[2].save_subscription(SubscriptionRow("", "urn:s:second", {"doc": {}}), create=True)
            await asyncio.sleep(0.5)
            return heard[1], heard[2]
        finally:
            for store in stores:
                await store.close()

    try:
        same_schema, other_schema = asyncio.run(scenario())
    finally:
        postgres_schemas.release(first, reuse=False)
        postgres_schemas.release(second, reuse=False)
    assert same_schema == ["urn:s:first"]  # not urn:s:second, made in the other schema
    assert other_schema == []  # its only write was its own; nothing from the first schema


def test_hosted_context_and_iot_group_reach_every_worker(workers: list[BrokerProcess]) -> None:
    a, b = (httpx.Client(base_url=worker.base, timeout=10) for worker in workers[:2])
    try:
        added = a.post("/ngsi-ld/v1/jsonldContexts", json={"@context": {"speed": "https://example.org/speed"}})
        assert added.status_code == 201, added.text
        context_id = added.headers["Location"].rsplit("/", 1)[-1]
        eventually(lambda: b.get(f"/ngsi-ld/v1/jsonldContexts/{context_id}").status_code == 200, what="the context")
        assert b.delete(f"/ngsi-ld/v1/jsonldContexts/{context_id}").status_code == 204
        eventually(lambda: a.get(f"/ngsi-ld/v1/jsonldContexts/{context_id}").status_code == 404, what="its deletion")

        group = {"services": [{"apikey": "k-workers", "entity_type": "Thing"}]}
        assert a.post("/iot/services", json=group).status_code == 201
        eventually(
            lambda: any(g["apikey"] == "k-workers" for g in b.get("/iot/services").json()["services"]),
            what="the service group",
        )
    finally:
        a.close()
        b.close()


def test_a_killed_workers_notifications_are_delivered_by_the_others(workers: list[BrokerProcess]) -> None:
    a = workers[0]
    with receiving(delay=0.05) as receiver:  # slower than the writes: A's outbox fills up
        with httpx.Client(base_url=a.base, timeout=10) as client:
            entity = {"id": COUNTER, "type": "Counter", "counter": {"type": "Property", "value": -1}}
            assert client.post(ENTITIES, json=entity).status_code == 201
            subscribe(client, receiver)
            for value in range(CHANGES):
                patch = {"counter": {"type": "Property", "value": value}}
                assert client.patch(f"{ENTITIES}/{COUNTER}/attrs", json=patch).status_code == 204
        a.kill()  # SIGKILL while it still owes notifications
        eventually(lambda: set(range(CHANGES)) <= set(counters(receiver)), timeout=30, what="every change notified")
        assert set(counters(receiver)) <= set(range(CHANGES))  # nothing but the changes made


def test_serve_workers_option_runs_several_processes(fresh_postgres: str) -> None:
    port = free_port()
    env = {**os.environ, "CITYOS_DATABASE": fresh_postgres, "CITYOS_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cityos", "serve", "--workers", "2", "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: _answers(base), timeout=30, what="the server answering")
        with httpx.Client(base_url=base, timeout=10) as client:
            for number in range(20):  # connections spread over both worker processes
                entity = {"id": f"urn:ngsi-ld:Thing:{number}", "type": "Thing"}
                assert client.post(ENTITIES, json=entity, headers={"Connection": "close"}).status_code == 201
                got = client.get(f"{ENTITIES}/urn:ngsi-ld:Thing:{number}", headers={"Connection": "close"})
                assert got.status_code == 200
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0


def _answers(base: str) -> bool:
    try:
        return httpx.get(base + "/version", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_several_workers_need_postgresql(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "cityos", "serve", "--workers", "2", "--database", str(tmp_path / "one.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "need a PostgreSQL database" in run.stderr


def test_serve_refuses_an_unmigrated_database(postgres_skip_reason: str | None) -> None:
    if postgres_skip_reason is not None:
        pytest.skip(postgres_skip_reason)
    import asyncio
    import uuid

    from backends import admin, postgres_schema_url

    schema = f"cityos_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin(f'CREATE SCHEMA "{schema}"'))
    try:
        command = [sys.executable, "-m", "cityos", "serve", "--database", postgres_schema_url(schema)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert run.returncode == 1
        assert "has schema version 0" in run.stderr and "cityos db upgrade" in run.stderr
        assert "Traceback" not in run.stderr
    finally:
        asyncio.run(admin(f'DROP SCHEMA "{schema}" CASCADE'))
