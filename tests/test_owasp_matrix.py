"""The OWASP API Security Top 10 as one matrix over every route (issue 14): a real `cityos serve
--auth required` process per back-end, real API keys, a policy file, and each route of the
application's route table called as each kind of caller (tests/owasp_routes.py holds the table):

- broken authentication at the door: no credentials is 401 everywhere but the public routes;
- broken object-level authorization: another tenant's key neither reads, changes nor learns the
  existence of the first tenant's objects (404, never 403, for what it cannot see; empty lists);
  subscriptions and entity maps of one principal are invisible and untouchable by another;
- broken function-level authorization: a reader's key gets 403 (404 for what it cannot see) on
  every write and admin route, and nothing changes in the store;
- broken object-property-level authorization: an attribute the reader's policy hides is absent from
  every representation (normalized, concise, keyValues, GeoJSON, temporal, batch query, entity
  maps, discovery) and from its notifications.

Rate limits and bad credentials (expired, wrong audience, `alg: none`, ...) are in
tests/test_auth_keys.py and tests/test_auth_oidc.py; secrets in logs in test_auth_keys.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from backends import make_key
from cityos.app import create_app
from cityos.settings import Settings
from notify_helpers import Receiver, free_port, receiving, wait_for
from owasp_routes import (
    ADMIN,
    API,
    BUILDING,
    HIDDEN,
    MALFORMED,
    PUBLIC_ROUTES,
    SECRET_VALUE,
    TEMPORAL,
    Ids,
    Probe,
    probes,
    route_table,
)
from server_process import LoggedServer

pytestmark = pytest.mark.slow(seconds=120)

FORBIDDEN = "urn:cityos:errors:AccessDenied"
LISTINGS = ("subscriptions", "subscriptions/", "snapshots")  # the listings of owned resources
NOT_FOUND = {
    "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound",
    "https://uri.etsi.org/ngsi-ld/errors/NonexistentTenant",
}
POLICIES = [
    {
        "id": "writers",
        "effect": "allow",
        "principals": {"roles": ["writer"]},
        "actions": ["read", "create", "update", "delete", "subscribe"],
    },
    {
        "id": "readers-without-secrets",
        "effect": "allow",
        "principals": {"roles": ["reader"]},
        "actions": ["read", "subscribe"],
        "resources": {"exceptAttrs": [HIDDEN]},
    },
    {
        "id": "strangers-parking-only",
        "effect": "allow",
        "principals": {"roles": ["stranger"]},
        "actions": ["read", "create", "update", "delete", "subscribe"],
        "resources": {"types": ["Parking"]},
    },
]
OTHER = {"NGSILD-Tenant": "other"}


@dataclass
class City:
    base: str
    server: LoggedServer
    tokens: dict[str, str]
    ids: Ids
    receiver: Receiver

    def call(self, who: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if who != "anonymous":
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return httpx.request(method, self.base + url, headers=headers, timeout=30, **kwargs)

    def probe(self, who: str, probe: Probe, **headers: str) -> httpx.Response:
        return self.call(
            who,
            probe.method,
            probe.url,
            params=probe.params,
            json=probe.json,
            content=probe.content,
            headers={**probe.headers, **headers},
        )

    def snapshot(self) -> dict[str, Any]:
        """What the admin sees of everything a request could change (the volatile parts left out)."""

        def get(url: str, **params: str) -> Any:
            response = self.call("admin", "GET", url, params=params)
            return response.status_code, response.json() if response.content else None

        keys = [{k: v for k, v in key.items() if k != "lastUsedAt"} for key in get(f"{ADMIN}/keys")[1]]
        subs = [
            {k: v for k, v in s.items() if k not in ("notification", "status")} for s in get(f"{API}/subscriptions")[1]
        ]
        return {
            "entities": get(f"{API}/entities", type="Building", limit="100"),
            "other": self.call("admin", "GET", f"{API}/entities", params={"type": "Building"}, headers=OTHER).json(),
            "temporal": get(f"{TEMPORAL}/{BUILDING}"),
            "subscriptions": subs,
            "entity map": get(f"{API}/entityMaps/{self.ids.entity_map}"),
            "registrations": get(f"{API}/csourceRegistrations", type="Building"),
            "snapshots": get(f"{API}/snapshots"),
            "contexts": get(f"{API}/jsonldContexts", kind="Hosted"),
            "iot services": get("/iot/services"),
            "iot devices": get("/iot/devices"),
            "keys": keys,
            "users": get(f"{ADMIN}/users"),
            "policies": get(f"{ADMIN}/policies"),
        }


def building(number: int, name: str, secret: str = SECRET_VALUE) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Building:{number}",
        "type": "Building",
        "name": {"type": "Property", "value": name},
        HIDDEN: {"type": "Property", "value": secret},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [2.35, 48.85]}},
    }


def created(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    return str(response.headers["location"].rsplit("/", 1)[1])


@pytest.fixture(scope="module")
def city(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    workdir = tmp_path_factory.mktemp("owasp")
    policy_file = workdir / "policies.yaml"
    policy_file.write_text(yaml.safe_dump({"policies": POLICIES}))
    tokens = {"admin": make_key(module_db_url, "--name", "admin", "--role", "admin")}
    env = {"CITYOS_DATABASE": module_db_url, "CITYOS_ALLOW_PRIVATE_NETWORKS": "true"}
    args = ("--auth", "required", "--policy-file", str(policy_file), "--log-level", "info")
    server = LoggedServer(workdir / "server.log", *args, env=env, port=free_port())
    server.start()
    with receiving() as receiver:
        try:
            yield setup(City(server.base, server, tokens, Ids(), receiver))
        finally:
            server.stop()
    log = server.log()
    assert [t for t in tokens.values() if t.split(".")[1] in log] == []  # no secret logged


def setup(city: City) -> City:
    """Keys made through the admin API, and one object of each kind (the reader subscribes too)."""
    call = city.call
    for name, roles, tenants in (
        ("reader", ["reader"], [""]),
        ("writer", ["writer"], [""]),
        ("peer", ["writer"], [""]),
        ("stranger", ["stranger"], [""]),
        ("outsider", ["writer"], ["other"]),
        ("other-admin", ["admin"], ["other"]),
        ("device", ["device"], [""]),
    ):
        made = call("admin", "POST", f"{ADMIN}/keys", json={"name": name, "roles": roles, "tenants": tenants})
        assert made.status_code == 201, made.text
        city.tokens[name] = made.json()["token"]
    upsert = call("admin", "POST", f"{API}/entityOperations/upsert", json=[building(1, "Tower"), building(2, "Hall")])
    assert upsert.status_code == 201, upsert.text
    assert (
        call("admin", "POST", f"{API}/entities", json=building(9, "Elsewhere", "theirs"), headers=OTHER).status_code
        == 201
    )
    observed = {"id": BUILDING, "type": "Building"}
    for attr, value in (("name", "Tower"), (HIDDEN, SECRET_VALUE)):
        observed[attr] = [{"type": "Property", "value": value, "observedAt": "2026-01-01T00:00:00Z"}]
    assert call("admin", "POST", TEMPORAL, json=observed).status_code in (201, 204)
    history = call("admin", "GET", f"{TEMPORAL}/{BUILDING}").json()
    subscription = {
        "type": "Subscription",
        "entities": [{"type": "Building"}],
        "notification": {"endpoint": {"uri": city.receiver.url}},
    }
    registration = {
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Building"}]}],
        "endpoint": "http://csource.example.org:1026",
    }
    entity_map = call("writer", "GET", f"{API}/entityMaps", params={"type": "Building"})
    assert entity_map.status_code == 201, entity_map.text
    iot = call(
        "admin",
        "POST",
        "/iot/services",
        json={"services": [{"apikey": "k1", "entity_type": "T", "resource": "/iot/d"}]},
    )
    assert iot.status_code == 201, iot.text
    device = call("admin", "POST", "/iot/devices", json={"devices": [{"device_id": "d1", "entity_type": "T"}]})
    assert device.status_code == 201, device.text
    user = call("admin", "POST", f"{ADMIN}/users", json={"name": "erin", "password": "erins long password"})
    assert user.status_code == 201, user.text
    city.ids = Ids(
        subscription=created(call("writer", "POST", f"{API}/subscriptions", json=subscription)),
        csource_subscription=created(call("writer", "POST", f"{API}/csourceSubscriptions", json=subscription)),
        entity_map=entity_map.headers["NGSILD-EntityMap"],
        registration=created(call("admin", "POST", f"{API}/csourceRegistrations", json=registration)),
        context=created(call("admin", "POST", f"{API}/jsonldContexts", json={"@context": {"a": "urn:a"}})),
        key=city.tokens["writer"].split(".")[0],
        user="erin",
        policy="writers",
        instance=history["name"][0]["instanceId"]
        if isinstance(history["name"], list)
        else history["name"]["instanceId"],
        device="d1",
        snapshot=prepared(
            city, {"type": "Snapshot", "snapshotQueries": [{"type": "Query", "entities": [{"type": "Building"}]}]}
        ),
    )
    return city


def prepared(city: City, snapshot: dict[str, Any]) -> str:
    """An admin's snapshot, once its fill has ended (polled: the fill runs in the server)."""
    snapshot_id = created(city.call("admin", "POST", f"{API}/snapshots", json=snapshot))
    status = lambda: city.call("admin", "GET", f"{API}/snapshots/{snapshot_id}").json()["snapshotStatus"]  # noqa: E731
    wait_for(lambda: status() != "preparing")
    return snapshot_id


# -- the table covers the application --------------------------------------------------------------


def test_every_route_is_classified(tmp_path: Path) -> None:
    """A route without an authorization decision fails here: add it to owasp_routes.probes."""
    app = create_app(Settings(database=str(tmp_path / "routes.db")))
    covered = {(p.method, p.route) for p in probes(Ids())}
    missing = [(m, path, name) for m, path, name in route_table(list(app.routes)) if (m, path) not in covered]
    assert missing == []
    stale = covered - {(m, path) for m, path, _ in route_table(list(app.routes))}
    assert stale == set()
    public = {(p.method, p.route) for p in probes(Ids()) if p.kind == "public"}
    assert public == PUBLIC_ROUTES
    malformed = {(m, path) for m, path, name in route_table(list(app.routes)) if name == MALFORMED}
    assert malformed <= {(p.method, p.route) for p in probes(Ids()) if p.kind == "malformed"}


# -- broken authentication: the door ---------------------------------------------------------------


def test_no_credentials_is_401_but_on_public_routes(city: City) -> None:
    """No policy grants the public anything here, so a request without credentials is refused at
    the door on every route but the documented public ones (which answer as for anyone)."""
    wrong = []
    heads = [replace(p, method="HEAD") for p in probes(city.ids) if p.method == "GET"]  # HEAD: GET's decision
    for probe in probes(city.ids) + heads:
        answer = city.probe("anonymous", probe)
        if answer.request.method == "HEAD":
            if (answer.status_code == 401) == (probe.kind == "public"):
                wrong.append((probe.label, answer.status_code))
            continue
        if probe.kind == "public":
            if answer.status_code == 401 and probe.route != "/cityos/v1/auth/token":  # it asks for Basic itself
                wrong.append((probe.label, answer.status_code))
        elif answer.status_code != 401 or answer.json()["type"] != "urn:cityos:errors:Unauthorized":
            wrong.append((probe.label, answer.status_code))
        elif 'Bearer realm="cityos"' not in answer.headers.get("WWW-Authenticate", ""):
            wrong.append((probe.label, "no challenge"))
    assert wrong == []


def test_partner_routes_need_a_partner_signature(city: City) -> None:
    """The data channel's partner API answers a partner city's signed request only: every other
    caller, whatever its key (an admin's too), gets 401 with the Signature challenge."""
    wrong = []
    for probe in probes(city.ids):
        if probe.kind != "partner":
            continue
        for who in ("reader", "admin", "other-admin"):
            answer = city.probe(who, probe)
            challenge = answer.headers.get("WWW-Authenticate", "")
            if answer.status_code != 401 or answer.json()["type"] != "urn:cityos:errors:Unauthorized":
                wrong.append((probe.label, who, answer.status_code))
            elif not challenge.startswith("Signature"):
                wrong.append((probe.label, who, challenge))
    assert wrong == []


# -- broken function-level authorization: a reader's key --------------------------------------------


def refused(answer: httpx.Response, *, hidden_ok: bool = True) -> bool:
    """403 with the one AccessDenied type, or (for what the caller cannot see) the not-found 404;
    a batch answers 207 with every entity refused and none done."""
    if answer.status_code == 207:
        body = answer.json()
        return body["success"] == [] and all(e["error"]["status"] in (403, 404) for e in body["errors"])
    if answer.status_code == 403:
        return bool(answer.json()["type"] == FORBIDDEN)
    return hidden_ok and answer.status_code == 404 and answer.json()["type"] in NOT_FOUND


def test_a_reader_changes_nothing_and_administers_nothing(city: City) -> None:
    before = city.snapshot()
    snaps = f"{API}/snapshots/"  # cloning someone else's snapshot: 404, as if it did not exist
    wrong = []
    for probe in probes(city.ids):
        if probe.kind in ("write", "admin-write", "admin-read", "device") or (
            probe.kind == "owned-write" and probe.method != "POST"  # its own subscriptions: the owner test
        ):
            answer = city.probe("reader", probe)
            admin = probe.kind.startswith("admin") and not probe.route.startswith(
                (f"{API}/csourceRegistrations", snaps)
            )
            if not refused(answer, hidden_ok=not admin) or (admin and answer.status_code != 403):
                wrong.append((probe.label, answer.status_code, answer.text[:200]))
        elif probe.kind == "malformed":
            answer = city.probe("reader", probe)
            if answer.status_code not in (400, 405):
                wrong.append((probe.label, answer.status_code))
    assert wrong == []
    assert city.snapshot() == before


# -- broken object-level authorization: entities the caller cannot see --------------------------------


def test_invisible_entities_are_not_found_never_forbidden(city: City) -> None:
    """A key whose policy covers only Parking: every route naming the Building gets the 404 of a
    missing entity (never 403, which would tell it exists), lists and counts hold nothing, and
    nothing changes."""
    before = city.snapshot()
    wrong = []
    for probe in probes(city.ids):
        if probe.kind not in ("read", "write"):
            continue
        answer = city.probe("stranger", probe)
        names_it = BUILDING in probe.url or BUILDING in str(probe.json)
        if answer.status_code == 207:  # a batch: each entity refused, the one it cannot see as missing
            errors = {e["entityId"]: e["error"]["status"] for e in answer.json()["errors"]}
            if answer.json()["success"] or errors.get(BUILDING, 404) != 404:
                wrong.append((probe.label, answer.text[:300]))
        elif answer.status_code < 300:
            shown = [m for m in ("Tower", "Hall", SECRET_VALUE, "Building:1") if m in answer.text]
            if shown or (names_it and probe.method != "POST"):
                wrong.append((probe.label, answer.status_code, shown))
            if answer.headers.get("NGSILD-Results-Count", "0") != "0":
                wrong.append((probe.label, "counted", answer.headers["NGSILD-Results-Count"]))
        elif names_it and answer.status_code == 403 and probe.method != "POST":
            wrong.append((probe.label, "403 for an entity it cannot see"))
        elif not refused(answer):
            wrong.append((probe.label, answer.status_code, answer.text[:200]))
    assert wrong == []
    assert city.snapshot() == before


# -- broken object-level authorization: another tenant ----------------------------------------------


def test_another_tenants_key_sees_and_changes_nothing_of_this_tenant(city: City) -> None:
    """The outsider's key is for tenant "other": in the default tenant every route answers as for a
    tenant that does not exist (404) or refuses (403 on admin routes); in its own tenant nothing of
    the default tenant appears."""
    before = city.snapshot()
    markers = ["Tower", "Hall", SECRET_VALUE, city.ids.subscription, city.ids.entity_map, city.ids.registration]
    markers.append(city.ids.context)
    wrong = []
    for probe in probes(city.ids):
        if probe.kind in ("malformed", "partner"):  # partner: its own test
            continue
        if probe.kind != "public":
            answer = city.probe("outsider", probe)
            if answer.status_code < 300 or not refused(answer):
                wrong.append(("default tenant", probe.label, answer.status_code, answer.text[:200]))
        if probe.kind in ("read", "owned-read") or (probe.kind == "public" and probe.method == "GET"):
            seen = city.probe("outsider", probe, **OTHER)
            leaked = [m for m in markers if seen.status_code < 300 and m in seen.text]
            if leaked or seen.status_code >= 500:
                wrong.append(("own tenant", probe.label, seen.status_code, leaked))
    assert wrong == []
    assert city.snapshot() == before


def test_another_tenants_admin_administers_nothing_here(city: City) -> None:
    """An admin of tenant "other" only: every route of the default tenant refuses it (404 as for a
    tenant that does not exist, or 403), the deployment-wide admin APIs (policies, audit) refuse it,
    and the key and user listings show only its own tenant's credentials."""
    before = city.snapshot()
    ids = [city.tokens[n].split(".")[0] for n in ("reader", "writer", "peer", "device", "admin")]
    markers = ["Tower", "Hall", SECRET_VALUE, "erin", *ids, city.ids.subscription, city.ids.entity_map]
    wrong = []
    for probe in probes(city.ids):
        if probe.kind in ("public", "malformed", "partner"):  # partner: its own test
            continue
        answer = city.probe("other-admin", probe)
        listing = probe.method == "GET" and probe.url in (f"{ADMIN}/keys", f"{ADMIN}/users")
        if listing and answer.status_code == 200:
            leaked = [m for m in markers if m in answer.text]
            if leaked:
                wrong.append((probe.label, leaked))
        elif answer.status_code < 300 or not refused(answer):
            wrong.append((probe.label, answer.status_code, answer.text[:200]))
    assert wrong == []
    assert city.snapshot() == before


# -- subscriptions and entity maps belong to their maker --------------------------------------------


def test_subscriptions_and_entity_maps_of_one_principal_are_invisible_to_another(city: City) -> None:
    before = city.snapshot()
    wrong = []
    for who in ("peer", "reader"):
        for probe in probes(city.ids):
            if probe.kind not in ("owned-read", "owned-write") or probe.method == "POST":
                continue
            answer = city.probe(who, probe)
            if "NGSILD-EntityMap" in probe.headers:  # a map of someone else's: a new map, never theirs
                if answer.headers.get("NGSILD-EntityMap") in (None, city.ids.entity_map):
                    wrong.append((who, probe.label, answer.status_code, answer.headers.get("NGSILD-EntityMap")))
            elif answer.status_code == 200 and probe.url.lower().endswith(LISTINGS):
                listed = (city.ids.subscription, city.ids.csource_subscription, city.ids.snapshot)
                if any(one in answer.text for one in listed):
                    wrong.append((who, probe.label, "lists the writer's subscription or the admin's snapshot"))
            elif answer.status_code != 404 or answer.json()["type"] not in NOT_FOUND:
                wrong.append((who, probe.label, answer.status_code, answer.text[:200]))
    assert wrong == []
    after = city.snapshot()
    after["subscriptions"] = [s for s in after["subscriptions"] if s in before["subscriptions"]]
    assert after == before
    # the writer (the owner) and an admin still use them
    for who in ("writer", "admin"):
        assert city.call(who, "GET", f"{API}/entityMaps/{city.ids.entity_map}").status_code == 200
        assert city.call(who, "GET", f"{API}/subscriptions/{city.ids.subscription}").status_code == 200


def test_an_entity_map_shows_only_what_its_owner_may_read_now(city: City) -> None:
    made = city.call("reader", "GET", f"{API}/entityMaps", params={"type": "Building"})
    map_id = made.headers["NGSILD-EntityMap"]
    held = {"urn:ngsi-ld:Building:1", "urn:ngsi-ld:Building:2"}
    assert set(made.json()["entityMap"]) == held
    deny = {
        "id": "reader-not-hall",
        "effect": "deny",
        "principals": {"roles": ["reader"]},
        "actions": ["read"],
        "resources": {"idPattern": ".*:2$"},
    }
    assert city.call("admin", "POST", f"{ADMIN}/policies", json=deny).status_code == 201
    try:
        shown = city.call("reader", "GET", f"{API}/entityMaps/{map_id}").json()
        assert set(shown["entityMap"]) == {BUILDING}
        assert set(city.call("admin", "GET", f"{API}/entityMaps/{map_id}").json()["entityMap"]) == held
        paged = city.call(
            "reader", "GET", f"{API}/entities", params={"type": "Building"}, headers={"NGSILD-EntityMap": map_id}
        )
        assert [e["id"] for e in paged.json()] == [BUILDING], paged.text
    finally:
        assert city.call("admin", "DELETE", f"{ADMIN}/policies/{deny['id']}").status_code == 204


# -- broken object-property-level authorization: the hidden attribute -------------------------------


def test_a_hidden_attribute_is_absent_from_every_representation(city: City) -> None:
    wrong = []
    for probe in probes(city.ids):
        if probe.kind != "read":
            continue
        answer = city.probe("reader", probe)
        missing = HIDDEN in str(probe.params) or probe.url.endswith(":none")  # 404 for anyone
        if answer.status_code >= 300 and not (answer.status_code == 404 and missing):
            wrong.append((probe.label, probe.params, answer.status_code, answer.text[:200]))
        if SECRET_VALUE in answer.text or f'"{HIDDEN}"' in answer.text or f"/{HIDDEN}" in answer.text:
            wrong.append((probe.label, probe.params, "shows the hidden attribute"))
    assert wrong == []
    full = city.call("writer", "GET", f"{API}/entities/{BUILDING}").json()
    assert full[HIDDEN]["value"] == SECRET_VALUE  # the writer reads it: the policy hides it, not the data


NOTIFICATION_FORMATS: list[dict[str, Any]] = [
    {"showChanges": True},
    {"format": "keyValues"},
    {"format": "concise", "attributes": ["name", HIDDEN]},
    {"endpoint": {"accept": "application/geo+json"}},
]


def test_notifications_carry_only_what_the_subscriber_may_read(city: City) -> None:
    """One subscription of the reader per notification format: none carries the hidden attribute
    (name, value, previousValue), each carries the change it may read."""
    made = []
    for notification in NOTIFICATION_FORMATS:
        endpoint = {"uri": city.receiver.url, **notification.get("endpoint", {})}
        body = {
            "type": "Subscription",
            "entities": [{"type": "Building"}],
            "notification": {**notification, "endpoint": endpoint},
        }
        made.append(created(city.call("reader", "POST", f"{API}/subscriptions", json=body)))
    try:
        patch = {
            "name": {"type": "Property", "value": "Spire"},
            HIDDEN: {"type": "Property", "value": "NEW-" + SECRET_VALUE},
        }
        assert city.call("admin", "PATCH", f"{API}/entities/{BUILDING}/attrs", json=patch).status_code == 204

        def notified(subscription: str) -> list[str]:
            return [r.raw.decode() for r in list(city.receiver.requests) if subscription in r.raw.decode()]

        wait_for(lambda: all(any("Spire" in raw for raw in notified(s)) for s in made))
        for subscription in made:
            leaked = [raw for raw in notified(subscription) if SECRET_VALUE in raw or f'"{HIDDEN}"' in raw]
            assert leaked == [], subscription
    finally:
        for subscription in made:
            city.call("reader", "DELETE", f"{API}/subscriptions/{subscription}")
        restore = {"name": {"type": "Property", "value": "Tower"}, HIDDEN: {"type": "Property", "value": SECRET_VALUE}}
        city.call("admin", "PATCH", f"{API}/entities/{BUILDING}/attrs", json=restore)
