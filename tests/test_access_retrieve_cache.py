"""GET /entities/{id} of a caller under access policies through the render cache (issue 15, fifth
pass), on a real `cityos serve --auth required` process on both back-ends, with real API keys and
policies made through the admin API: every answer is the one of the path that decodes, checks and
projects the entity (`?type=` takes that path), a hidden attribute never leaks whichever caller
read the entity first, a write or a policy change is never answered from an old entry, different
views keep their own entries, and a hidden entity is a 404 recorded as a denial on a hit as on a
miss."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from backends import make_key
from notify_helpers import wait_for
from server_process import LoggedServer

pytestmark = pytest.mark.slow(seconds=60)

ENTITIES = "/ngsi-ld/v1/entities"
POLICIES = "/cityos/v1/admin/policies"
AUDIT = "/cityos/v1/audit"
SECRET = "classified-value"  # the value of the attribute the reader may not read

READER = {
    "id": "reader",
    "effect": "allow",
    "principals": {"roles": ["reader"]},
    "actions": ["read", "update"],
    "resources": {"types": ["Car"], "exceptAttrs": ["secret"]},
}
START_POLICIES: list[dict[str, Any]] = [
    READER,
    {  # an allow-list: only these two attributes show
        "id": "auditor",
        "effect": "allow",
        "principals": {"roles": ["auditor"]},
        "actions": ["read"],
        "resources": {"types": ["Car"], "attrs": ["name", "secret"]},
    },
    {  # a per-entity rule: only entities in the scope /public are visible
        "id": "scoper",
        "effect": "allow",
        "principals": {"roles": ["scoper"]},
        "actions": ["read"],
        "resources": {"types": ["Car"], "scopes": ["/public"], "exceptAttrs": ["secret"]},
    },
    {
        "id": "analyst",
        "effect": "allow",
        "principals": {"roles": ["analyst"]},
        "actions": ["read"],
        "resources": {"types": ["Car"], "exceptAttrs": ["secret"]},
    },
    {  # a condition: with the purpose "research" the analyst reads everything
        "id": "analyst-research",
        "effect": "allow",
        "principals": {"roles": ["analyst"]},
        "actions": ["read"],
        "resources": {"types": ["Car"]},
        "conditions": {"purpose": ["research"]},
    },
]
# (query, Accept) of every representation the cached path serves
FORMS = [
    ("", "application/json"),
    ("", "application/ld+json"),
    ("?options=keyValues", "application/json"),
    ("?options=keyValues", "application/ld+json"),
    ("?options=sysAttrs", "application/json"),
    ("?options=concise,sysAttrs", "application/json"),
    ("?format=keyValues", "application/json"),
    ("?pick=id,secret,speed", "application/json"),
    ("?omit=speed", "application/json"),
    ("?lang=en", "application/json"),
]


@dataclass
class Broker:
    base: str
    database: str
    keys: dict[str, str]

    def get(self, who: str, path: str, **headers: str) -> httpx.Response:
        sent = {"Authorization": f"Bearer {self.keys[who]}", **headers}
        return httpx.get(self.base + path, headers=sent, timeout=10)

    def send(self, method: str, path: str, body: Any, who: str = "admin") -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[who]}"}
        return httpx.request(method, self.base + path, json=body, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def broker(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    workdir = tmp_path_factory.mktemp("retrieve-cache")
    roles = ("admin", "reader", "auditor", "scoper", "analyst")
    keys = {role: make_key(module_db_url, "--name", role, "--role", role) for role in roles}
    server = LoggedServer(
        workdir / "server.log", "--auth", "required", "--log-level", "warning", env={"CITYOS_DATABASE": module_db_url}
    )
    server.start()
    try:
        running = Broker(server.base, module_db_url, keys)
        for policy in START_POLICIES:
            created = running.send("POST", POLICIES, policy)
            assert created.status_code == 201, created.text
        yield running
    finally:
        server.stop()


def car(number: int, scope: str = "/public") -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Car:rc{number}",
        "type": "Car",
        "scope": scope,
        "speed": {"type": "Property", "value": 50 + number, "observedAt": "2026-01-01T00:00:00Z"},
        "name": {"type": "LanguageProperty", "languageMap": {"en": f"car {number}", "pt": f"carro {number}"}},
        "secret": {"type": "Property", "value": SECRET},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [2.0, 48.0]}},
    }


def create(broker: Broker, entity: dict[str, Any]) -> str:
    answer = broker.send("POST", "/ngsi-ld/v1/entityOperations/upsert", [entity])
    assert answer.status_code in (201, 204), answer.text
    return str(entity["id"])


def read(
    broker: Broker, who: str, entity_id: str, query: str = "", accept: str = "application/json", **headers: str
) -> tuple[int, bytes]:
    """The answer of the cached path, checked against the path that decodes and projects the
    entity (the same request with `type=Car`, which a cached read never has): (status, body)."""
    path = f"{ENTITIES}/{entity_id}{query}"
    cached = broker.get(who, path, Accept=accept, **headers)
    slow = broker.get(who, path + ("&" if "?" in path else "?") + "type=Car", Accept=accept, **headers)
    assert (cached.status_code, cached.content) == (slow.status_code, slow.content), (who, query, accept)
    assert cached.headers.get("content-type") == slow.headers.get("content-type")
    return cached.status_code, cached.content


def shows_secret(body: bytes) -> bool:
    return SECRET.encode() in body or b'"secret"' in body


def test_each_caller_sees_exactly_its_view_whoever_read_first(broker: Broker) -> None:
    first, second = create(broker, car(1)), create(broker, car(2))
    # the unrestricted reading cached first, then the restricted ones; and the other way round
    for entity_id, order in ((first, ["admin", "reader", "auditor"]), (second, ["auditor", "reader", "admin"])):
        for _ in range(2):  # misses, then hits
            for who in order:
                for query, accept in FORMS:
                    status, body = read(broker, who, entity_id, query, accept)
                    assert status == 200, (who, query, body)
                    if who == "reader":
                        assert not shows_secret(body), (query, accept, body)
                    if who == "auditor":  # its allow-list: name and secret, never speed
                        assert b'"speed"' not in body and b"observedAt" not in body, (query, body)
                    if who == "admin" and "pick" not in query and "omit" not in query:
                        assert shows_secret(body) and b'"speed"' in body


def test_a_write_or_a_policy_change_is_never_answered_from_an_old_entry(broker: Broker) -> None:
    entity_id = create(broker, car(3))
    assert read(broker, "reader", entity_id)[0] == 200
    changed = broker.send(
        "PATCH", f"{ENTITIES}/{entity_id}/attrs", {"speed": {"type": "Property", "value": 777}}, "reader"
    )
    assert changed.status_code == 204, changed.text
    status, body = read(broker, "reader", entity_id, "?options=keyValues")
    assert status == 200 and b'"speed":777' in body and not shows_secret(body)
    try:
        swapped = {**READER, "resources": {"types": ["Car"], "exceptAttrs": ["speed"]}}
        assert broker.send("PUT", f"{POLICIES}/reader", swapped).status_code == 200
        for query, accept in FORMS:
            status, body = read(broker, "reader", entity_id, query, accept)
            assert status == 200 and b'"speed"' not in body and b"777" not in body, (query, body)
        other_type = {**READER, "resources": {"types": ["Bus"]}}
        assert broker.send("PUT", f"{POLICIES}/reader", other_type).status_code == 200
        assert read(broker, "reader", entity_id)[0] == 404
    finally:
        assert broker.send("PUT", f"{POLICIES}/reader", READER).status_code == 200
    status, body = read(broker, "reader", entity_id)
    assert status == 200 and not shows_secret(body) and b"777" in body


def test_a_rule_on_the_entity_and_a_condition_keep_their_own_entries(broker: Broker) -> None:
    entity_id = create(broker, car(4))
    for _ in range(2):
        status, body = read(broker, "scoper", entity_id)
        assert status == 200 and not shows_secret(body)
        # the same principal under two views, one chosen by the Purpose header
        assert shows_secret(read(broker, "analyst", entity_id, Purpose="research")[1])
        assert not shows_secret(read(broker, "analyst", entity_id)[1])
    create(broker, car(4, scope="/private"))  # the same entity moved out of the scoper's scope
    for _ in range(2):  # a miss, then a hit: both a 404, both audited as a denial
        assert read(broker, "scoper", entity_id)[0] == 404
    assert read(broker, "admin", entity_id)[0] == 200

    def denials() -> list[Any]:
        found: list[Any] = broker.get("admin", f"{AUDIT}?operation=request.denied&entity={entity_id}").json()
        return found  # only the scoper's reads of this entity are refused

    # each of the two reads (the cached path, then the decoding path) is recorded: four denials
    wait_for(lambda: len(denials()) >= 4)
    assert len(denials()) == 4


def test_an_entity_the_caller_may_not_see_is_missing_on_a_hit_as_on_a_miss(broker: Broker) -> None:
    bus = {"id": "urn:ngsi-ld:Bus:rc1", "type": "Bus", "secret": {"type": "Property", "value": SECRET}}
    create(broker, bus)
    assert broker.get("admin", f"{ENTITIES}/{bus['id']}").status_code == 200
    for who in ("reader", "auditor", "reader"):
        for query, accept in FORMS[:3]:
            status, body = read(broker, who, bus["id"], query, accept)  # the decoding path checks visibility first
            assert status == 404 and not shows_secret(body), (who, query)
            assert orjson.loads(body)["detail"] == f"entity {bus['id']} does not exist"


def test_nothing_left_to_render_is_a_404_as_on_the_decoding_path(broker: Broker) -> None:
    entity_id = create(broker, car(5))
    assert read(broker, "auditor", entity_id, "?pick=speed")[0] == 404  # the auditor may not read speed
    assert read(broker, "admin", entity_id, "?pick=speed")[0] == 200
