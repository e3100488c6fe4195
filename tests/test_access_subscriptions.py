"""Subscriptions under access control, in-process with a test Authorizer and PrincipalDirectory
(tests/access_helpers.py; the real ones are exercised by tests/test_access_server.py): ownership
(someone else's subscription is 404), the subscribe right, and notifications cut down at delivery
time to what the owner may read then, with real HTTP receivers on 127.0.0.1, on both back-ends."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from access_helpers import DEFAULT, Grant, Secured, secured_app
from backends import cli_env, db_rows
from cityos.auth.principal import OPEN, Principal
from cityos.settings import Settings
from cityos.subscriptions.model import Subscription
from cityos.subscriptions.owner import Owner
from notify_helpers import Receiver, receiving
from test_ingest_write_path import few_rows, subscribe_in

SUBS = "/ngsi-ld/v1/subscriptions"
ENTITIES = "/ngsi-ld/v1/entities"
BUILDING = "urn:ngsi-ld:Building:1"
HEIGHT = DEFAULT + "height"
NAME = DEFAULT + "name"
VAULT = "urn:ngsi-ld:Vault:1"


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database=db_url, allow_private_networks=True, notification_retry_delay=0.05)


@pytest.fixture
def secured(settings: Settings) -> Iterator[Secured]:
    with secured_app(settings) as app:
        app.principal("admin", admin=True, tenants=None)
        app.principal("alice", types={DEFAULT + "Building"}, hidden={HEIGHT}, subscribe={DEFAULT + "Building"})
        app.principal("bob", types={DEFAULT + "Building"}, subscribe={DEFAULT + "Building"})
        app.principal("eve", types={DEFAULT + "Building"})
        yield app


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def subscribe(app: Secured, who: str, uri: str, **members: Any) -> str:
    notification = members.pop("notification", {})
    body: dict[str, Any] = {
        "type": "Subscription",
        "entities": [{"type": "Building"}],
        **members,
        "notification": {**notification, "endpoint": {"uri": uri}},
    }
    response = app.client.post(SUBS, json=body, headers=app.as_(who))
    assert response.status_code == 201, response.text
    return str(response.headers["location"].rsplit("/", 1)[1])


def write(app: Secured, entity: dict[str, Any]) -> None:
    response = app.client.post("/ngsi-ld/v1/entityOperations/upsert", json=[entity], headers=app.as_("key:admin"))
    assert response.status_code in (201, 204), response.text


def building(entity_id: str = BUILDING, **values: Any) -> dict[str, Any]:
    attrs = {"name": "Tower", "height": 300, **values}
    return {"id": entity_id, "type": "Building", **{k: {"type": "Property", "value": v} for k, v in attrs.items()}}


def quiet(receiver: Receiver, seconds: float = 0.6) -> None:
    before = len(receiver.requests)
    time.sleep(seconds)
    assert len(receiver.requests) == before, receiver.bodies()[before:]


class TestOwnership:
    def test_someone_elses_subscription_does_not_exist_for_them(self, secured: Secured, receiver: Receiver) -> None:
        client = secured.client
        mine = subscribe(secured, "key:alice", receiver.url)
        theirs = subscribe(secured, "key:bob", receiver.url)
        one = f"{SUBS}/{mine}"
        as_bob = secured.as_("key:bob")

        assert client.get(one, headers=secured.as_("key:alice")).status_code == 200
        missing = client.get(f"{SUBS}/urn:ngsi-ld:Subscription:none", headers=as_bob)
        answer = client.get(one, headers=as_bob)
        assert answer.status_code == missing.status_code == 404
        assert answer.json()["type"] == missing.json()["type"]  # nothing tells the two apart
        assert client.patch(one, json={"description": "mine now"}, headers=as_bob).status_code == 404
        assert client.delete(one, headers=as_bob).status_code == 404

        listed = client.get(SUBS, params={"count": "true"}, headers=as_bob)
        assert [s["id"] for s in listed.json()] == [theirs]
        assert listed.headers["NGSILD-Results-Count"] == "1"
        kept = client.get(one, headers=secured.as_("key:alice")).json()
        assert "description" not in kept
        assert "owner" not in kept and "key:alice" not in str(kept)  # kept with it, never rendered

        admin = client.get(SUBS, headers=secured.as_("key:admin")).json()
        assert {s["id"] for s in admin} == {mine, theirs}
        refused = secured.audit.denied()
        assert len(refused) == 3 and {e.principal for e in refused} == {"key:bob"}
        assert all(e.outcome == "denied" for e in refused)

    def test_the_owner_and_an_admin_manage_it(self, secured: Secured, receiver: Receiver) -> None:
        client = secured.client
        mine = subscribe(secured, "key:alice", receiver.url)
        one = f"{SUBS}/{mine}"
        assert client.patch(one, json={"description": "x"}, headers=secured.as_("key:alice")).status_code == 204
        assert client.get(one, headers=secured.as_("key:admin")).json()["description"] == "x"
        assert client.delete(one, headers=secured.as_("key:admin")).status_code == 204
        assert client.get(one, headers=secured.as_("key:alice")).status_code == 404

    def test_subscribing_needs_the_subscribe_right(self, secured: Secured, receiver: Receiver) -> None:
        client = secured.client
        body = {
            "type": "Subscription",
            "entities": [{"type": "Building"}],
            "notification": {"endpoint": {"uri": receiver.url}},
        }
        refused = client.post(SUBS, json=body, headers=secured.as_("key:eve"))
        assert refused.status_code == 403, refused.text
        other = {**body, "entities": [{"type": "Vehicle"}]}
        assert client.post(SUBS, json=other, headers=secured.as_("key:alice")).status_code == 403
        watched = {k: v for k, v in body.items() if k != "entities"} | {"watchedAttributes": ["name"]}
        assert client.post(SUBS, json=watched, headers=secured.as_("key:alice")).status_code == 403  # any type
        assert client.get(SUBS, headers=secured.as_("key:admin")).json() == []  # nothing stored
        assert [e.detail["action"] for e in secured.audit.denied()] == ["subscribe"] * 3

        mine = subscribe(secured, "key:alice", receiver.url)
        widen = client.patch(
            f"{SUBS}/{mine}", json={"entities": [{"type": "Vehicle"}]}, headers=secured.as_("key:alice")
        )
        assert widen.status_code == 403
        kept = client.get(f"{SUBS}/{mine}", headers=secured.as_("key:alice")).json()
        assert kept["entities"] == [{"type": "Building"}]

    def test_a_tenant_the_caller_may_not_use_does_not_exist(self, secured: Secured, receiver: Receiver) -> None:
        client = secured.client
        write(secured, building())  # the default tenant exists
        secured.principal("carol", tenants=("other",), types={DEFAULT + "Building"})
        answer = client.get(SUBS, headers=secured.as_("key:carol"))
        unknown = client.get(SUBS, headers={"NGSILD-Tenant": "nowhere", **secured.as_("key:admin")})
        assert answer.status_code == unknown.status_code == 404
        assert answer.json()["type"] == unknown.json()["type"]
        assert client.get(f"{ENTITIES}/{BUILDING}", headers=secured.as_("key:carol")).status_code == 404
        assert secured.audit.denied()[-1].detail["reason"] == "tenant"

    def test_auth_off_stores_no_owner(self) -> None:
        assert Owner.of(OPEN) is None
        row = Subscription("", {"id": "urn:x", "notification": {}}, None, owner=None).to_row()
        assert set(row.document) == {"doc", "context"}  # the stored row is exactly as before
        token = Principal(id="oidc:https://idp#42", kind="oidc", tenants=frozenset({"a"}), roles=frozenset({"r"}))
        owner = Owner.of(token)
        assert owner is not None and Owner.from_dict(owner.to_dict()) == owner
        assert owner.snapshot is not None and owner.snapshot.tenants == frozenset({"a"})


class TestNotifications:
    def test_an_attribute_the_owner_may_not_read_is_never_notified(self, secured: Secured, receiver: Receiver) -> None:
        write(secured, building())
        subscribe(secured, "key:alice", receiver.url, notification={"showChanges": True})
        subscribe(secured, "key:bob", receiver.url, notification={"showChanges": True})
        write(secured, building(name="Spire", height=320))
        got = receiver.wait(2)
        by_reader = {r.body["data"][0].get("height") is not None: r.body["data"][0] for r in got}
        alice, bob = by_reader[False], by_reader[True]
        assert alice["name"]["value"] == "Spire" and alice["name"]["previousValue"] == "Tower"
        assert "height" not in alice and "320" not in str(alice) and "300" not in str(alice)
        assert bob["height"] == {"type": "Property", "value": 320, "previousValue": 300}

        patch = {"height": {"type": "Property", "value": 330}}  # only what alice may not read changes
        response = secured.client.patch(f"{ENTITIES}/{BUILDING}/attrs", json=patch, headers=secured.as_("key:admin"))
        assert response.status_code == 204
        assert receiver.wait(3)[2].body["data"][0]["height"]["value"] == 330  # bob
        quiet(receiver)

    def test_deleted_attribute_markers_follow_the_same_rule(self, secured: Secured, receiver: Receiver) -> None:
        write(secured, building())
        subscribe(secured, "key:alice", receiver.url, notificationTrigger=["attributeDeleted"])
        response = secured.client.delete(f"{ENTITIES}/{BUILDING}/attrs/height", headers=secured.as_("key:admin"))
        assert response.status_code == 204
        quiet(receiver)
        assert (
            secured.client.delete(f"{ENTITIES}/{BUILDING}/attrs/name", headers=secured.as_("key:admin")).status_code
            == 204
        )
        body = receiver.wait(1)[0].body
        assert set(body["data"][0]) == {"id", "type", "name"}

    def test_entities_the_owner_may_not_see_are_never_notified(self, secured: Secured, receiver: Receiver) -> None:
        secured.principal("dora", types={DEFAULT + "Building"}, subscribe={DEFAULT + "Building", DEFAULT + "Vault"})
        subscribe(secured, "key:dora", receiver.url, entities=[{"type": "Vault"}, {"type": "Building"}])
        write(secured, {"id": "urn:ngsi-ld:Vault:1", "type": "Vault", "name": {"type": "Property", "value": "gold"}})
        quiet(receiver)
        write(secured, building())
        assert receiver.wait(1)[0].body["data"][0]["id"] == BUILDING
        quiet(receiver)

    def test_a_q_on_an_attribute_the_owner_may_not_read_never_selects(
        self, secured: Secured, receiver: Receiver
    ) -> None:
        subscribe(secured, "key:alice", receiver.url, q="height>100")
        subscribe(secured, "key:bob", receiver.url, q="height>100")
        write(secured, building())
        got = receiver.wait(1)
        quiet(receiver)
        assert got[0].body["data"][0]["height"]["value"] == 300  # bob's only

    def test_a_q_through_a_relationship_is_judged_on_what_the_owner_may_see(
        self, secured: Secured, receiver: Receiver
    ) -> None:
        """q `vault{content}=="gold"` reads the entity the relationship points to: at delivery it is
        read as the owner may see it then. vera may read the vault's content (her Building loses its
        height, which once withheld every such notification): notified. hal sees the Building whole
        but not the vault's content, gus not the vault at all: never notified (once, hal was)."""
        kinds = {DEFAULT + "Building", DEFAULT + "Vault"}
        secured.principal("vera", types=kinds, hidden={HEIGHT}, subscribe={DEFAULT + "Building"})
        secured.principal("hal", types=kinds, hidden={DEFAULT + "content"}, subscribe={DEFAULT + "Building"})
        secured.principal("gus", types={DEFAULT + "Building"}, subscribe={DEFAULT + "Building"})
        write(secured, {"id": VAULT, "type": "Vault", "content": {"type": "Property", "value": "gold"}})
        made = {
            who: subscribe(secured, f"key:{who}", receiver.url, q='vault{content}=="gold"')
            for who in ("vera", "hal", "gus")
        }
        write(secured, {**building(), "vault": {"type": "Relationship", "object": VAULT}})
        got = receiver.wait(1)
        quiet(receiver)
        assert got[0].body["subscriptionId"] == made["vera"]
        assert "height" not in got[0].body["data"][0] and got[0].body["data"][0]["vault"]["object"] == VAULT

    def test_a_periodic_q_through_a_relationship_is_judged_the_same_way(
        self, secured: Secured, receiver: Receiver
    ) -> None:
        kinds = {DEFAULT + "Building", DEFAULT + "Vault"}
        secured.principal("vera", types=kinds, hidden={HEIGHT}, subscribe={DEFAULT + "Building"})
        secured.principal("hal", types=kinds, hidden={DEFAULT + "content"}, subscribe={DEFAULT + "Building"})
        write(secured, {"id": VAULT, "type": "Vault", "content": {"type": "Property", "value": "gold"}})
        write(secured, {**building(), "vault": {"type": "Relationship", "object": VAULT}})
        q = 'vault{content}=="gold"'
        vera = subscribe(secured, "key:vera", receiver.url, q=q, timeInterval=1)
        subscribe(secured, "key:hal", receiver.url, q=q, timeInterval=1)
        got = receiver.wait(2, timeout=6)
        assert {r.body["subscriptionId"] for r in got} == {vera}

    def test_a_revoked_right_stops_the_flow(self, secured: Secured, receiver: Receiver) -> None:
        subscribe(secured, "key:alice", receiver.url)
        write(secured, building())
        receiver.wait(1)
        secured.authorizer.grants["key:alice"].types.clear()  # the policy changes: no more Buildings
        write(secured, building(name="Spire"))
        quiet(receiver)
        secured.authorizer.grants["key:alice"].types.add(DEFAULT + "Building")
        write(secured, building(name="Tower"))
        assert receiver.wait(2)[1].body["data"][0]["name"]["value"] == "Tower"

    def test_a_revoked_owner_stops_the_subscription(
        self, secured: Secured, receiver: Receiver, caplog: pytest.LogCaptureFixture
    ) -> None:
        mine = subscribe(secured, "key:alice", receiver.url)
        write(secured, building())
        receiver.wait(1)
        del secured.directory.known["key:alice"]  # the key is revoked
        with caplog.at_level(logging.WARNING, logger="cityos.subscriptions"):
            write(secured, building(name="Spire"))
            write(secured, building(name="Dome"))
            quiet(receiver)
        paused = [r for r in caplog.records if "no longer exists" in r.getMessage()]
        assert len(paused) == 1 and "key:alice" in paused[0].getMessage()
        state = secured.client.get(f"{SUBS}/{mine}", headers=secured.as_("key:admin")).json()
        assert state["status"] == "paused" and state["notification"]["status"] == "failed"

    def test_periodic_notifications_are_cut_down_too(self, secured: Secured, receiver: Receiver) -> None:
        write(secured, building())
        write(secured, {"id": "urn:ngsi-ld:Vault:1", "type": "Vault", "name": {"type": "Property", "value": "gold"}})
        secured.principal(
            "dora", types={DEFAULT + "Building"}, hidden={HEIGHT}, subscribe={DEFAULT + "Building", DEFAULT + "Vault"}
        )
        subscribe(secured, "key:dora", receiver.url, entities=[{"type": "Vault"}, {"type": "Building"}], timeInterval=1)
        data = receiver.wait(1, timeout=5)[0].body["data"]
        assert [e["id"] for e in data] == [BUILDING]
        assert "height" not in data[0] and data[0]["name"]["value"] == "Tower"

    def test_linked_entities_of_a_join_are_cut_down(self, secured: Secured, receiver: Receiver) -> None:
        secured.principal("dora", types={DEFAULT + "Building"}, subscribe={DEFAULT + "Building"})
        write(secured, {"id": "urn:ngsi-ld:Vault:1", "type": "Vault", "name": {"type": "Property", "value": "gold"}})
        write(
            secured,
            {"id": "urn:ngsi-ld:Building:2", "type": "Building", "name": {"type": "Property", "value": "Annex"}},
        )
        subscribe(secured, "key:dora", receiver.url, notification={"join": "flat"})
        links = {
            "vault": {"type": "Relationship", "object": "urn:ngsi-ld:Vault:1"},
            "annex": {"type": "Relationship", "object": "urn:ngsi-ld:Building:2"},
        }
        write(secured, {**building(), **links})
        ids = [e["id"] for e in receiver.wait(1)[0].body["data"]]
        assert ids == [BUILDING, "urn:ngsi-ld:Building:2"]


class TestTokenOwners:
    """A subscription made with an OpenID Connect token: no worker can find its owner again by id, and
    a worker that saw a newer token knows other roles than the rest. Every worker judges the owner on
    the attributes stored with the subscription, under the policies in force at delivery."""

    OWNER = Principal(
        id="oidc:https://idp.example#ann", kind="oidc", tenants=frozenset({""}), roles=frozenset({"inspector"})
    )

    def test_every_worker_judges_the_owner_on_the_stored_attributes(self, secured: Secured, receiver: Receiver) -> None:
        kinds = {DEFAULT + "Building"}
        secured.authorizer.grants["role:inspector"] = Grant(types=set(kinds), hidden={HEIGHT}, subscribe=kinds)
        secured.authorizer.grants["role:surveyor"] = Grant(types=set(kinds), subscribe=kinds)
        secured.directory.add(self.OWNER)  # the door verified the token of this request
        mine = subscribe(secured, self.OWNER.id, receiver.url)
        del secured.directory.known[self.OWNER.id]  # a worker that never saw the token

        write(secured, building())
        seen = receiver.wait(1)[0].body["data"][0]
        assert seen["name"]["value"] == "Tower" and "height" not in seen

        # a worker that saw a newer token, with the admin role: the stored roles still decide
        secured.directory.add(replace(self.OWNER, roles=frozenset({"inspector", "admin"})))
        write(secured, building(name="Spire"))
        seen = receiver.wait(2)[1].body["data"][0]
        assert seen["name"]["value"] == "Spire" and "height" not in seen

        # the policy of the stored role changes: the flow stops, in every worker
        secured.authorizer.grants["role:inspector"].types.clear()
        write(secured, building(name="Dome"))
        quiet(receiver)

        # the owner updates the subscription with a token of another role: that role is stored
        surveyor = secured.directory.add(replace(self.OWNER, roles=frozenset({"surveyor"})))
        response = secured.client.patch(
            f"{SUBS}/{mine}", json={"description": "renewed"}, headers=secured.as_(surveyor.id)
        )
        assert response.status_code == 204, response.text
        del secured.directory.known[self.OWNER.id]
        write(secured, building(name="Arch", height=310))
        seen = receiver.wait(3)[2].body["data"][0]
        assert seen["name"]["value"] == "Arch" and seen["height"]["value"] == 310
        stored = secured.client.get(f"{SUBS}/{mine}", headers=secured.as_("key:admin")).json()
        assert stored["description"] == "renewed" and stored.get("status", "active") == "active"

    def test_an_admin_update_keeps_the_owners_attributes(self, secured: Secured, receiver: Receiver) -> None:
        kinds = {DEFAULT + "Building"}
        secured.authorizer.grants["role:inspector"] = Grant(types=set(kinds), hidden={HEIGHT}, subscribe=kinds)
        secured.directory.add(self.OWNER)
        mine = subscribe(secured, self.OWNER.id, receiver.url)
        response = secured.client.patch(f"{SUBS}/{mine}", json={"description": "x"}, headers=secured.as_("key:admin"))
        assert response.status_code == 204
        write(secured, building())
        assert "height" not in receiver.wait(1)[0].body["data"][0]  # still the inspector's view, not the admin's


def test_a_command_with_auth_required_leaves_notifications_to_the_server(db_url: str, tmp_path: Path) -> None:
    """`cityos import --database` has no policies to screen notifications with: with auth required
    it delivers nothing itself and leaves the outbox to a server (which screens them)."""
    source, mapping = few_rows(tmp_path)
    with receiving() as receiver:
        subscribe_in(db_url, receiver.url)
        args = ("import", "csv", str(source), "--mapping", str(mapping), "--database", db_url, "--notify-wait", "2")
        result = subprocess.run(
            [sys.executable, "-m", "cityos", *args],
            capture_output=True,
            text=True,
            env=cli_env(CITYOS_ALLOW_PRIVATE_NETWORKS="true", CITYOS_AUTH="required"),
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)
        assert receiver.requests == []
        assert db_rows(db_url, "SELECT count(*) FROM outbox") == [(3,)]
