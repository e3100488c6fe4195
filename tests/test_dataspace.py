"""The data channel between two cities (issue 16 parts 3 and 4; docs/federation.md): two real CityOS
processes, Chongqing (--auth required, on each back-end: the one that serves data under agreements)
and Singapore (SQLite), with their own databases and keys. An offer is listed in the catalogue, an
agreement is made and signed by both, used within its terms and refused beyond them, expired and
revoked (the flow stops); tampered, forged, unknown-key and replayed signatures are refused; both
audit trails hold matching records of every exchange."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backends import make_key
from cityos.dataspace.model import agreement_signed_by, public_key
from cityos.dataspace.signatures import (
    NonceCache,
    SignatureRefused,
    SigningKey,
    signature_base,
    verify_request,
)
from dataspace_helpers import audit, cli, free_ports, signed, signing_key, wait_for
from server_process import LoggedServer

pytestmark = pytest.mark.slow(seconds=70)

API = "/cityos/v1/admin/dataspace"
PURPOSE = "traffic-planning"
AREA = {
    "type": "Polygon",
    "coordinates": [[[106.50, 29.50], [106.60, 29.50], [106.60, 29.60], [106.50, 29.60], [106.50, 29.50]]],
}


def _entity(entity_id: str, lon: float, lat: float, **attrs: Any) -> dict[str, Any]:
    entity: dict[str, Any] = {"id": entity_id, "type": entity_id.split(":")[2]}
    entity.update({name: {"type": "Property", "value": value} for name, value in attrs.items()})
    entity["location"] = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}
    return entity


INSIDE = "urn:ngsi-ld:TrafficFlowObserved:jiefangbei"
OUTSIDE = "urn:ngsi-ld:TrafficFlowObserved:airport"
VEHICLE = "urn:ngsi-ld:Vehicle:bus-1"
ENTITIES = [
    _entity(INSIDE, 106.57, 29.55, intensity=120, laneId=2),
    _entity(OUTSIDE, 106.64, 29.72, intensity=80, laneId=1),
    _entity(VEHICLE, 106.57, 29.55, speed=40),
]


def _offer(offer_id: str, expires: str, **terms: Any) -> dict[str, Any]:
    return {
        "id": offer_id,
        "title": f"{offer_id} in Yuzhong",
        "types": ["TrafficFlowObserved"],
        "attrs": ["intensity", "location"],
        "area": AREA,
        "terms": {"assignees": ["Singapore"], "purposes": [PURPOSE], "expires": expires, **terms},
    }


@dataclass
class City:
    name: str
    database: str
    base: str
    server: LoggedServer
    key: SigningKey
    headers: dict[str, str]  # the admin's

    def admin(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return httpx.request(method, self.base + path, json=body, headers=self.headers, timeout=30)


@dataclass
class Cities:
    chongqing: City
    singapore: City
    agreement: str  # per-entity, for Singapore's reads
    counts: str  # aggregate-only, 3 requests a minute
    brief: str  # expires a few seconds after the module starts
    brief_expires: datetime

    def read(self, path: str, *, agreement: str | None = None, purpose: str = PURPOSE, **kw: Any) -> httpx.Response:
        """A signed request of Singapore's to Chongqing's NGSI-LD API under an agreement."""
        url = self.chongqing.base + path
        method = kw.pop("method", "GET")
        body = kw.pop("body", b"")
        chosen = self.agreement if agreement is None else agreement
        headers = signed(self.singapore.key, method, url, body=body, agreement=chosen, purpose=purpose)
        return httpx.request(method, url, content=body, headers=headers, timeout=30)

    def subscribe(self, agreement: str) -> str:
        """Singapore's subscription at Chongqing under `agreement` (made by the CLI), notifying its inbox."""
        made = cli(
            self.singapore.database,
            "agreements",
            "subscribe",
            agreement,
            "--type",
            "TrafficFlowObserved",
            "--allow-private-networks",
        )
        assert made.returncode == 0, made.stderr
        subscription = made.stdout.strip()
        assert subscription.startswith("urn:ngsi-ld:Subscription:")
        return subscription

    def negotiate(self, offer: str) -> str:
        answer = self.singapore.admin(
            "POST", f"{API}/agreements", {"partner": "Chongqing", "offer": offer, "purpose": PURPOSE}
        )
        assert answer.status_code == 201, answer.text
        agreement_id: str = answer.json()["id"]
        return agreement_id


@pytest.fixture(scope="module")
def cities(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cities]:
    """Chongqing on the module's back-end, Singapore on SQLite, each with its key, partners of each
    other (through the admin API), Chongqing's offers and entities, and Singapore's agreements."""
    folder = tmp_path_factory.mktemp("cities")
    cq_port, sg_port = free_ports(2)
    cq_db, sg_db = module_db_url, str(folder / "singapore.db")
    for name, database, port in (("Chongqing", cq_db, cq_port), ("Singapore", sg_db, sg_port)):
        signing_key(database, name, f"http://127.0.0.1:{port}")  # the CLI's way is tested below
    token = make_key(cq_db, "--name", "ops", "--role", "admin")
    servers = [
        LoggedServer(
            folder / "chongqing.log",
            "--database",
            cq_db,
            "--auth",
            "required",
            "--allow-private-networks",
            "--notification-retry-max-delay",
            "1",  # a partner that comes back gets its notifications within a second
            "--notification-max-attempts",
            "1000",  # however long its restart takes on a busy machine
            port=cq_port,
        ),
        LoggedServer(folder / "singapore.log", "--database", sg_db, "--allow-private-networks", port=sg_port),
    ]
    try:
        for server in servers:
            server.start()
        chongqing = City(
            "Chongqing", cq_db, servers[0].base, servers[0], signing_key(cq_db), {"Authorization": f"Bearer {token}"}
        )
        singapore = City("Singapore", sg_db, servers[1].base, servers[1], signing_key(sg_db), {})
        for city, other in ((chongqing, singapore), (singapore, chongqing)):
            me = other.admin("GET", f"{API}/identity").json()
            added = city.admin(
                "POST", f"{API}/partners", {"name": other.name, "url": other.base, "publicKey": me["publicKey"]}
            )
            assert added.status_code == 201, added.text
        later = (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
        brief_expires = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
        offers = [
            _offer("traffic-flow", later, rate=600),
            _offer("traffic-counts", later, aggregation="aggregate", rate=3),
            _offer("traffic-brief", brief_expires.strftime("%Y-%m-%dT%H:%M:%SZ")),
        ]
        for offer in offers:
            published = chongqing.admin("POST", f"{API}/offers", offer)
            assert published.status_code == 201, published.text
        upserted = chongqing.admin("POST", "/ngsi-ld/v1/entityOperations/upsert", ENTITIES)
        assert upserted.status_code in (201, 204), upserted.text
        made = Cities(chongqing, singapore, "", "", "", brief_expires)
        made.brief = made.negotiate("traffic-brief")
        made.agreement = made.negotiate("traffic-flow")
        made.counts = made.negotiate("traffic-counts")
        yield made
    finally:
        for server in servers:
            server.stop()


def _problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    assert body["status"] == status and body["type"] and body["detail"]
    return body


# -- the catalogue and the agreement ---------------------------------------------------------------
def test_catalogue_lists_the_offer_for_the_partner(cities: Cities) -> None:
    url = cities.chongqing.base + "/dsp/catalog"
    answer = httpx.get(url, headers=signed(cities.singapore.key, "GET", url))
    assert answer.status_code == 200, answer.text
    catalog = answer.json()
    assert catalog["@type"] == "Catalog" and catalog["participantId"] == "Chongqing"
    datasets = {d["@id"]: d for d in catalog["dataset"]}
    assert set(datasets) == {"traffic-flow", "traffic-counts", "traffic-brief"}
    offer = datasets["traffic-flow"]["hasPolicy"][0]
    assert offer["@type"] == "Offer" and offer["permission"][0]["assignee"] == ["Singapore"]
    assert offer["prohibition"] == [{"action": "distribute"}]  # no re-sharing
    assert datasets["traffic-flow"]["dct:spatial"] == AREA
    _problem(httpx.get(url), 401)  # unsigned: the catalogue is for partners only


def test_agreement_is_signed_by_both_and_stored_on_both(cities: Cities) -> None:
    path = f"{API}/agreements/{cities.agreement}"
    provider, consumer = cities.chongqing.admin("GET", path).json(), cities.singapore.admin("GET", path).json()
    assert (provider["role"], consumer["role"]) == ("provider", "consumer")
    assert provider["state"] == consumer["state"] == "FINALIZED"
    signed_members = ("id", "offer", "provider", "consumer", "dataset", "terms", "timestamp")
    assert {k: provider[k] for k in signed_members} == {k: consumer[k] for k in signed_members}
    assert provider["providerSignature"] == consumer["providerSignature"]
    assert provider["consumerSignature"] == consumer["consumerSignature"]
    cq_key = public_key(cities.singapore.admin("GET", f"{API}/partners").json()[0]["publicKey"])
    sg_key = public_key(cities.chongqing.admin("GET", f"{API}/partners").json()[0]["publicKey"])
    assert agreement_signed_by(provider, provider["providerSignature"], cq_key)
    assert agreement_signed_by(provider, provider["consumerSignature"], sg_key)
    assert not agreement_signed_by(
        {**provider, "terms": {**provider["terms"], "rate": 10**6}}, provider["consumerSignature"], sg_key
    )
    assert provider["terms"] == {
        "purpose": PURPOSE,
        "expires": provider["terms"]["expires"],
        "aggregation": "per-entity",
        "rate": 600,
        "reshare": False,
    }


# -- using it, and going beyond it -----------------------------------------------------------------
def test_partner_reads_within_the_agreement(cities: Cities) -> None:
    answer = cities.read("/ngsi-ld/v1/entities?type=TrafficFlowObserved")
    assert answer.status_code == 200, answer.text
    entities = answer.json()
    assert [e["id"] for e in entities] == [INSIDE]  # the one outside the area is not there
    assert set(entities[0]) == {"id", "type", "intensity", "location"}  # laneId is not in the agreement
    one = cities.read(f"/ngsi-ld/v1/entities/{INSIDE}")
    assert one.status_code == 200 and "laneId" not in one.json()
    counted = cities.read("/ngsi-ld/v1/entities?type=TrafficFlowObserved&count=true&limit=0")
    assert counted.headers["NGSILD-Results-Count"] == "1"


def test_reads_beyond_the_agreement_are_refused(cities: Cities) -> None:
    _problem(cities.read(f"/ngsi-ld/v1/entities/{OUTSIDE}"), 404)  # outside the area: as if missing
    _problem(cities.read(f"/ngsi-ld/v1/entities/{VEHICLE}"), 404)  # a type not agreed
    assert cities.read("/ngsi-ld/v1/entities?type=Vehicle").json() == []
    assert cities.read("/ngsi-ld/v1/entities?type=TrafficFlowObserved&attrs=laneId").json() == []
    assert cities.read("/ngsi-ld/v1/entities?type=TrafficFlowObserved&q=laneId==2").json() == []
    patch = orjson.dumps({"intensity": {"type": "Property", "value": 1}})
    _problem(cities.read(f"/ngsi-ld/v1/entities/{INSIDE}/attrs", method="PATCH", body=patch), 403)
    _problem(cities.read("/ngsi-ld/v1/entities?type=TrafficFlowObserved", purpose="marketing"), 403)
    _problem(cities.read("/ngsi-ld/v1/entities?type=TrafficFlowObserved", agreement="urn:uuid:nope"), 403)
    _problem(cities.read("/cityos/v1/audit"), 403)  # a partner reaches the DSP and NGSI-LD APIs only
    subscription = {
        "type": "Subscription",
        "entities": [{"type": "TrafficFlowObserved"}],
        "notification": {"endpoint": {"uri": "http://127.0.0.1:9/elsewhere"}},
    }
    _problem(cities.read("/ngsi-ld/v1/subscriptions", method="POST", body=orjson.dumps(subscription)), 403)


def test_aggregate_only_agreement_and_its_rate(cities: Cities) -> None:
    path = "/ngsi-ld/v1/entities?type=TrafficFlowObserved"
    _problem(cities.read(path, agreement=cities.counts), 403)  # per-entity answers are not agreed
    for _ in range(3):  # 3 a minute
        counted = cities.read(path + "&count=true&limit=0", agreement=cities.counts)
        assert counted.status_code == 200 and counted.headers["NGSILD-Results-Count"] == "1"
    limited = _problem(cities.read(path + "&count=true&limit=0", agreement=cities.counts), 429)
    assert "3 requests a minute" in limited["detail"]


def test_an_expired_agreement_is_refused(cities: Cities) -> None:
    wait = (cities.brief_expires - datetime.now(UTC)).total_seconds()
    if wait > 1:  # the module's first tests ran in less time than the agreement lasts
        assert cities.read("/ngsi-ld/v1/entities?type=TrafficFlowObserved", agreement=cities.brief).status_code == 200
    time.sleep(max(0.0, wait + 0.2))
    refused = _problem(cities.read("/ngsi-ld/v1/entities?type=TrafficFlowObserved", agreement=cities.brief), 403)
    assert "no active agreement" in refused["detail"]


# -- signatures ------------------------------------------------------------------------------------
def test_tampered_forged_unknown_and_replayed_signatures_are_refused(cities: Cities) -> None:
    base = cities.chongqing.base
    url = base + "/ngsi-ld/v1/entityOperations/query"
    query = orjson.dumps({"type": "Query", "entities": [{"type": "TrafficFlowObserved"}]})
    good = signed(cities.singapore.key, "POST", url, body=query, agreement=cities.agreement, purpose=PURPOSE)
    assert httpx.post(url, content=query, headers=good).status_code == 200
    # the same request again: a replay
    assert "replay" in _problem(httpx.post(url, content=query, headers=good), 401)["detail"]
    # another body under the signature
    fresh = signed(cities.singapore.key, "POST", url, body=query, agreement=cities.agreement, purpose=PURPOSE)
    other = query.replace(b"TrafficFlowObserved", b"Vehicle")
    assert "Content-Digest" in _problem(httpx.post(url, content=other, headers=fresh), 401)["detail"]
    # another target, or another agreement header, under the signature
    target = base + "/ngsi-ld/v1/entities?type=TrafficFlowObserved"
    fresh = signed(cities.singapore.key, "GET", target, agreement=cities.agreement, purpose=PURPOSE)
    _problem(httpx.get(target.replace("TrafficFlowObserved", "Vehicle"), headers=fresh), 401)
    fresh = signed(cities.singapore.key, "GET", target, agreement=cities.agreement, purpose=PURPOSE)
    _problem(httpx.get(target, headers={**fresh, "CityOS-Agreement": cities.counts}), 401)
    # forged: a key that is not Singapore's, claiming to be Singapore; a name no partner has
    forger = SigningKey("Singapore", Ed25519PrivateKey.generate())
    _problem(httpx.get(target, headers=signed(forger, "GET", target, agreement=cities.agreement, purpose=PURPOSE)), 401)
    stranger = SigningKey("Atlantis", Ed25519PrivateKey.generate())
    _problem(
        httpx.get(target, headers=signed(stranger, "GET", target, agreement=cities.agreement, purpose=PURPOSE)), 401
    )
    # signed long ago
    old = signed(
        cities.singapore.key, "GET", target, agreement=cities.agreement, purpose=PURPOSE, now=time.time() - 3600
    )
    _problem(httpx.get(target, headers=old), 401)
    # a signature without the Signature header, or not covering the agreement
    fresh = signed(cities.singapore.key, "GET", target, purpose=PURPOSE)
    _problem(httpx.get(target, headers={**fresh, "CityOS-Agreement": cities.agreement}), 401)
    _problem(httpx.get(target, headers={k: v for k, v in good.items() if k != "Signature"}), 401)
    refusals = audit(base, "request.denied", cities.chongqing.headers["Authorization"].split()[1])
    assert sum(r["detail"].get("status") == 401 for r in refusals) >= 8


def test_rfc_9421_ed25519_example() -> None:
    """RFC 9421 appendix B.2.6 (test-key-ed25519): the signature base and the signature as printed."""
    private = Ed25519PrivateKey.from_private_bytes(
        base64.urlsafe_b64decode("n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU=")
    )
    headers = {"date": "Tue, 20 Apr 2021 02:07:55 GMT", "content-type": "application/json", "content-length": "18"}
    components = ("date", "@method", "@path", "@authority", "content-type", "content-length")
    params = (
        '("date" "@method" "@path" "@authority" "content-type" "content-length")'
        ';created=1618884473;keyid="test-key-ed25519"'
    )
    base = signature_base("POST", "http://example.com/foo?param=Value&Pet=dog", headers, components, params)
    assert base.decode().splitlines()[-1] == f'"@signature-params": {params}'
    expected = "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="
    assert base64.b64encode(private.sign(base)).decode() == expected
    public = Ed25519PublicKey.from_public_bytes(
        base64.urlsafe_b64decode("JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs=")
    )
    public.verify(base64.b64decode(expected), base)


def test_verification_in_process() -> None:
    """The verifier alone: what it proves, and a refusal for each kind of bad signature."""
    key = SigningKey("Singapore", Ed25519PrivateKey.generate())
    known = {"Singapore": key.private.public_key()}
    url, body = "http://127.0.0.1:7701/ngsi-ld/v1/entityOperations/query", b'{"type": "Query"}'
    headers = {
        k.lower(): v for k, v in signed(key, "POST", url, body=body, agreement="urn:uuid:1", purpose=PURPOSE).items()
    }
    nonces = NonceCache()
    proof = verify_request("POST", url, headers, body, known.get, nonces)
    assert proof.keyid == "Singapore" and proof.digest.startswith("sha-256=:")
    with pytest.raises(SignatureRefused, match="replay"):
        verify_request("POST", url, headers, body, known.get, nonces)
    for method, target, content, why in (
        ("PUT", url, body, "does not verify"),
        ("POST", url + "?x=1", body, "does not verify"),
        ("POST", url, body + b" ", "Content-Digest"),
    ):
        with pytest.raises(SignatureRefused, match=why):
            verify_request(method, target, headers, content, known.get, NonceCache())
    with pytest.raises(SignatureRefused, match="trusted partner"):
        verify_request("POST", url, headers, body, {}.get, NonceCache())


# -- audit on both sides, notifications, revocation ------------------------------------------------
def test_the_exchange_is_recorded_on_both_sides(cities: Cities) -> None:
    done = cli(
        cities.singapore.database,
        "agreements",
        "get",
        cities.agreement,
        "/ngsi-ld/v1/entities?type=TrafficFlowObserved",
        "--allow-private-networks",
    )
    assert done.returncode == 0, done.stderr
    assert [e["id"] for e in orjson.loads(done.stdout)] == [INSIDE]
    sent = [
        r
        for r in audit(cities.singapore.base, "dataspace.request.sent")
        if "/ngsi-ld/v1/entities" in r["detail"]["target"]
    ]
    token = cities.chongqing.headers["Authorization"].split()[1]
    served = {r["detail"]["nonce"]: r for r in audit(cities.chongqing.base, "dataspace.request.served", token)}
    last = sent[-1]["detail"]
    mine = served[last["nonce"]]["detail"]  # the same exchange, found by its signed nonce
    assert mine["partner"] == "Singapore" and last["partner"] == "Chongqing"
    assert (mine["requestDigest"], mine["answerDigest"], mine["status"]) == (
        last["requestDigest"],
        last["answerDigest"],
        200,
    )
    assert mine["target"] == last["target"] and mine["agreement"] == last["agreement"] == cities.agreement


def test_notifications_flow_signed_and_stop_when_revoked(cities: Cities) -> None:
    agreement = cities.negotiate("traffic-flow")  # one of its own: revoked below
    subscription = cities.subscribe(agreement)
    for entity_id, value in ((OUTSIDE, 81), (INSIDE, 121)):
        patch = {"intensity": {"type": "Property", "value": value}, "laneId": {"type": "Property", "value": 3}}
        assert cities.chongqing.admin("PATCH", f"/ngsi-ld/v1/entities/{entity_id}/attrs", patch).status_code == 204

    def received() -> list[dict[str, Any]]:
        return [
            r for r in audit(cities.singapore.base, "dataspace.notification.received") if r["targets"] == [agreement]
        ]

    got = wait_for("a notification at Singapore", received)
    assert got[0]["detail"]["entities"] == {INSIDE: ["intensity", "location"]}  # within the area and attributes
    token = cities.chongqing.headers["Authorization"].split()[1]
    sent = {
        r["detail"]["nonce"]: r["detail"] for r in audit(cities.chongqing.base, "dataspace.notification.sent", token)
    }
    assert sent[got[0]["detail"]["nonce"]]["requestDigest"] == got[0]["detail"]["requestDigest"]

    revoked = cities.chongqing.admin("POST", f"{API}/agreements/{agreement}/revoke")
    assert revoked.status_code == 200 and revoked.json()["state"] == "TERMINATED"
    told = cities.singapore.admin("GET", f"{API}/agreements/{agreement}").json()
    assert told["state"] == "TERMINATED"  # Chongqing told Singapore (a signed termination message)
    _problem(cities.read("/ngsi-ld/v1/entities?type=TrafficFlowObserved", agreement=agreement), 403)
    before = len(received())
    patch = {"intensity": {"type": "Property", "value": 122}}
    assert cities.chongqing.admin("PATCH", f"/ngsi-ld/v1/entities/{INSIDE}/attrs", patch).status_code == 204
    status = wait_for(
        "the subscription to pause",
        lambda: (
            (s := cities.chongqing.admin("GET", f"/ngsi-ld/v1/subscriptions/{subscription}").json()).get("isActive")
            is False
            and s
        ),
    )
    assert status["isActive"] is False
    assert len(received()) == before  # nothing after the revocation


def test_a_partner_that_is_down_does_not_block(cities: Cities) -> None:
    (dead,) = free_ports(1)
    key = cities.chongqing.admin("GET", f"{API}/identity").json()["publicKey"]
    added = cities.singapore.admin(
        "POST", f"{API}/partners", {"name": "Atlantis", "url": f"http://127.0.0.1:{dead}", "publicKey": key}
    )
    assert added.status_code == 201
    started = time.monotonic()
    answer = cities.singapore.admin(
        "POST", f"{API}/agreements", {"partner": "Atlantis", "offer": "x", "purpose": PURPOSE}
    )
    assert _problem(answer, 502)["type"] == "urn:cityos:errors:PartnerUnavailable"
    assert time.monotonic() - started < 10
    assert cities.singapore.admin("GET", "/version").status_code == 200
    assert cities.singapore.admin("DELETE", f"{API}/partners/Atlantis").status_code == 204


def test_admin_api_needs_an_admin(cities: Cities) -> None:
    _problem(httpx.get(cities.chongqing.base + f"{API}/partners"), 401)
    identity = cities.chongqing.admin("GET", f"{API}/identity").json()
    assert set(identity) == {"name", "publicKey", "url"}  # never the private key
    bad = cities.chongqing.admin("POST", f"{API}/offers", {"id": "x", "types": ["T"], "terms": {"purposes": ["p"]}})
    _problem(bad, 400)


def test_cli_manages_partners_and_offers(tmp_path: Path) -> None:
    database = str(tmp_path / "lisbon.db")
    made = cli(database, "dataspace", "init", "--name", "Lisbon")
    assert made.returncode == 0, made.stderr
    assert orjson.loads(made.stdout)["name"] == "Lisbon" and "private" not in made.stdout
    key = cli(database, "dataspace", "show", "--public-key").stdout.strip()
    assert key == orjson.loads(made.stdout)["publicKey"] and key.startswith("ed25519:")
    assert (
        cli(database, "partners", "add", "Porto", "--url", "https://porto.example", "--public-key", key).returncode == 0
    )
    offer = orjson.dumps(_offer("buses", "2030-01-01T00:00:00Z")).decode()
    assert cli(database, "offers", "publish", "-", stdin=offer).returncode == 0
    listed = cli(database, "offers", "list")
    assert [o["id"] for o in orjson.loads(listed.stdout)] == ["buses"]
    missing = cli(database, "partners", "remove", "Braga")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    for url in ("http://127.0.0.1:7", "http://localhost", "http://10.1.2.3", "http://[::1]:8"):  # the outgoing rule
        refused = cli(database, "partners", "add", "Braga", "--url", url, "--public-key", key)
        assert refused.returncode == 1 and f"the partner URL {url} is refused" in refused.stderr, refused.stderr
        assert "--allow-private-networks" in refused.stderr
    allowed = cli(database, "partners", "add", "Braga", "--url", "http://127.0.0.1:7", "--public-key", key,
                  "--allow-private-networks")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr


def test_notifications_wait_for_a_partner_that_is_down(cities: Cities) -> None:
    """Singapore stops; what Chongqing notifies meanwhile waits in its outbox and arrives, signed,
    when Singapore is back (the last test of the module: it restarts Singapore)."""
    agreement = cities.negotiate("traffic-flow")
    cities.subscribe(agreement)
    cities.singapore.server.stop()
    try:
        patch = {"intensity": {"type": "Property", "value": 150}}
        assert cities.chongqing.admin("PATCH", f"/ngsi-ld/v1/entities/{INSIDE}/attrs", patch).status_code == 204
        token = cities.chongqing.headers["Authorization"].split()[1]
        wait_for(
            "Chongqing to try",
            lambda: [
                r
                for r in audit(cities.chongqing.base, "dataspace.notification.sent", token)
                if r["targets"] == [agreement]
            ],
        )
        assert cities.chongqing.admin("GET", "/version").status_code == 200  # not blocked meanwhile
    finally:
        cities.singapore.server.start()
    got = wait_for(
        "the notification after the restart",
        lambda: [
            r for r in audit(cities.singapore.base, "dataspace.notification.received") if r["targets"] == [agreement]
        ],
    )
    assert got[0]["detail"]["entities"] == {INSIDE: ["intensity", "location"]}
