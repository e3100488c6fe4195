"""Subscriptions, notifications, registrations, @contexts and IoT provisioning with auth required,
end to end: a real `cityos serve` process (both back-ends), real API keys made by `cityos keys
create`, real access policies from a --policy-file, real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from backends import cli_env
from notify_helpers import Receiver, receiving, wait_for
from server_process import LoggedServer

SUBS = "/ngsi-ld/v1/subscriptions"
ENTITIES = "/ngsi-ld/v1/entities"
REGS = "/ngsi-ld/v1/csourceRegistrations"
CONTEXTS = "/ngsi-ld/v1/jsonldContexts"
BUILDING = "urn:ngsi-ld:Building:1"

POLICY_ENGINE = importlib.util.find_spec("cityos.policy.service") is not None
needs_policies = pytest.mark.skipif(not POLICY_ENGINE, reason="the policy engine (policy branch) is not merged yet")

POLICIES = [
    {
        "id": "planners-read-buildings-not-heights",
        "effect": "allow",
        "principals": {"roles": ["planner"]},
        "actions": ["read", "subscribe"],
        "resources": {"types": ["Building"], "exceptAttrs": ["height"]},
    },
    {
        "id": "surveyors-read-buildings",
        "effect": "allow",
        "principals": {"roles": ["surveyor"]},
        "actions": ["read", "subscribe"],
        "resources": {"types": ["Building"]},
    },
]


def cli(database: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "cityos", *args, "--database", database],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@dataclass
class Key:
    token: str

    @property
    def id(self) -> str:
        return self.token.split(".", 1)[0]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class City:
    base: str
    server: LoggedServer
    database: str
    admin: Key
    planner: Key
    surveyor: Key

    def key(self, name: str, *roles: str) -> Key:
        args = [arg for role in roles for arg in ("--role", role)]
        return Key(cli(self.database, "keys", "create", "--name", name, *args).splitlines()[-1])

    def call(self, method: str, path: str, key: Key, **kwargs: Any) -> httpx.Response:
        headers = {**key.headers, **kwargs.pop("headers", {})}
        return httpx.request(method, self.base + path, headers=headers, timeout=10, **kwargs)


@pytest.fixture
def city(db_url: str, tmp_path: Path) -> Iterator[City]:
    with started(db_url, tmp_path) as running:
        yield running


@contextmanager
def started(db_url: str, tmp_path: Path, *args: str) -> Iterator[City]:
    """Keys made with the CLI, then `cityos serve --auth required` with the policies (and `args`)."""
    policy_file = tmp_path / "policies.yaml"
    policy_file.write_text(yaml.safe_dump(POLICIES), encoding="utf-8")
    admin = Key(cli(db_url, "keys", "create", "--name", "admin", "--role", "admin").splitlines()[-1])
    planner = Key(cli(db_url, "keys", "create", "--name", "planner", "--role", "planner").splitlines()[-1])
    surveyor = Key(cli(db_url, "keys", "create", "--name", "surveyor", "--role", "surveyor").splitlines()[-1])
    env = {
        "CITYOS_DATABASE": db_url,
        "CITYOS_AUTH": "required",
        **({"CITYOS_POLICY_FILE": str(policy_file)} if POLICY_ENGINE else {}),
        "CITYOS_ALLOW_PRIVATE_NETWORKS": "true",
        "CITYOS_NOTIFICATION_RETRY_DELAY": "0.05",
    }
    server = LoggedServer(tmp_path / "server.log", "--log-level", "info", *args, env=env)
    server.start()
    try:
        yield City(server.base, server, db_url, admin, planner, surveyor)
    finally:
        server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def subscribe(city: City, key: Key, uri: str, **members: Any) -> str:
    notification = members.pop("notification", {})
    body = {
        "type": "Subscription",
        "entities": [{"type": "Building"}],
        **members,
        "notification": {**notification, "endpoint": {"uri": uri}},
    }
    response = city.call("POST", SUBS, key, json=body)
    assert response.status_code == 201, response.text
    return str(response.headers["location"].rsplit("/", 1)[1])


def building(**values: Any) -> dict[str, Any]:
    attrs = {"name": "Tower", "height": 300, **values}
    return {"id": BUILDING, "type": "Building", **{k: {"type": "Property", "value": v} for k, v in attrs.items()}}


def upsert(city: City, entity: dict[str, Any]) -> None:
    response = city.call("POST", "/ngsi-ld/v1/entityOperations/upsert", city.admin, json=[entity])
    assert response.status_code in (201, 204), response.text


def patch(city: City, fragment: dict[str, Any]) -> None:
    response = city.call("PATCH", f"{ENTITIES}/{BUILDING}/attrs", city.admin, json=fragment)
    assert response.status_code == 204, response.text


def quiet(receiver: Receiver, seconds: float = 1.0) -> None:
    before = len(receiver.requests)
    time.sleep(seconds)
    assert len(receiver.requests) == before, receiver.bodies()[before:]


def test_someone_elses_subscription_does_not_exist_for_them(city: City, receiver: Receiver) -> None:
    mine = subscribe(city, city.planner, receiver.url)
    theirs = subscribe(city, city.surveyor, receiver.url)
    one = f"{SUBS}/{mine}"
    assert city.call("GET", one, city.planner).status_code == 200
    for method, kwargs in (("GET", {}), ("PATCH", {"json": {"description": "mine"}}), ("DELETE", {})):
        answer = city.call(method, one, city.surveyor, **kwargs)
        assert answer.status_code == 404, (method, answer.text)
        assert answer.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    listed = city.call("GET", SUBS, city.surveyor, params={"count": "true"})
    assert [s["id"] for s in listed.json()] == [theirs] and listed.headers["NGSILD-Results-Count"] == "1"
    kept = city.call("GET", one, city.planner).json()
    assert "description" not in kept and city.planner.id not in str(kept)
    assert {s["id"] for s in city.call("GET", SUBS, city.admin).json()} == {mine, theirs}


@needs_policies
def test_notifications_carry_only_what_the_owner_may_read(city: City, receiver: Receiver) -> None:
    upsert(city, building())
    with receiving() as surveyed:
        subscribe(city, city.planner, receiver.url, notification={"showChanges": True})
        subscribe(city, city.surveyor, surveyed.url, notification={"showChanges": True})
        patch(city, {"name": {"type": "Property", "value": "Spire"}, "height": {"type": "Property", "value": 320}})
        planned = receiver.wait(1)[0].body["data"][0]
        assert planned["name"] == {"type": "Property", "value": "Spire", "previousValue": "Tower"}
        assert "height" not in planned and "320" not in str(planned) and "300" not in str(planned)
        full = surveyed.wait(1)[0].body["data"][0]
        assert full["height"] == {"type": "Property", "value": 320, "previousValue": 300}

        patch(city, {"height": {"type": "Property", "value": 330}})  # only what the planner may not read
        assert surveyed.wait(2)[1].body["data"][0]["height"]["value"] == 330
        quiet(receiver)


def test_a_revoked_key_stops_its_subscriptions(city: City, receiver: Receiver) -> None:
    mine = subscribe(city, city.planner, receiver.url)
    upsert(city, building())
    receiver.wait(1)
    cli(city.database, "keys", "revoke", city.planner.id)
    time.sleep(1.5)  # a running server sees a revoke within a second
    patch(city, {"name": {"type": "Property", "value": "Spire"}})
    patch(city, {"name": {"type": "Property", "value": "Dome"}})
    quiet(receiver)
    state = city.call("GET", f"{SUBS}/{mine}", city.admin).json()
    assert state["status"] == "paused" and state["notification"]["status"] == "failed"
    wait_for(lambda: "no longer exists" in city.server.log())
    assert city.server.log().count(f"subscription {mine} paused") == 1


@needs_policies
def test_a_readers_key_changes_no_registration_context_or_device(city: City) -> None:
    registration = {
        "id": "urn:ngsi-ld:ContextSourceRegistration:1",
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Building"}]}],
        "endpoint": "http://csource.example.org:1026",
    }
    reader = city.planner
    assert city.call("POST", REGS, reader, json=registration).status_code == 403
    assert city.call("GET", REGS + "?type=Building", city.admin).json() == []
    assert city.call("POST", REGS, city.admin, json=registration).status_code == 201
    one = f"{REGS}/{registration['id']}"
    assert city.call("GET", one, reader).status_code == 404
    assert city.call("DELETE", one, reader).status_code == 404
    assert city.call("GET", one, city.admin).status_code == 200

    hosted = {"@context": {"speed": "https://example.org/speed"}}
    assert city.call("POST", CONTEXTS, reader, json=hosted).status_code == 403
    assert city.call("GET", CONTEXTS, reader, params={"kind": "Hosted"}).json() == []

    group = {"services": [{"apikey": "k1", "entity_type": "WeatherObserved", "resource": "/iot/d"}]}
    assert city.call("POST", "/iot/services", reader, json=group).status_code == 403
    assert city.call("GET", "/iot/services", reader).status_code == 403
    assert city.call("GET", "/iot/services", city.admin).json()["count"] == 0


@needs_policies
def test_several_workers_screen_every_notification(fresh_postgres: str, tmp_path: Path, receiver: Receiver) -> None:
    """PostgreSQL, two workers: whichever worker claims an outbox row screens it with the owner's
    rights, and a revoke reaches both."""
    with started(fresh_postgres, tmp_path, "--workers", "2") as city:
        mine = subscribe(city, city.planner, receiver.url)
        for value in range(20):
            upsert(city, building(name=f"Tower {value}", height=300 + value))
        bodies = [r.body for r in receiver.wait(20, timeout=30)]
        assert [b["data"][0]["name"]["value"] for b in bodies] == [f"Tower {v}" for v in range(20)]
        assert all("height" not in b["data"][0] for b in bodies)
        cli(city.database, "keys", "revoke", city.planner.id)
        time.sleep(1.5)
        for value in range(5):
            upsert(city, building(name=f"Dome {value}"))
        quiet(receiver)
        assert city.call("GET", f"{SUBS}/{mine}", city.admin).json()["status"] == "paused"
