"""The data channel joined to federation (issue 16 part 3; docs/federation.md): three real CityOS
processes with their own ports and databases. Chongqing (PostgreSQL, --auth required, two workers)
and Kunming (SQLite, --auth required) each offer traffic flow; Singapore (SQLite) holds an agreement
with each, registers each as a context source for the agreed dataset (`cityos agreements source`),
and its own users' queries and retrieves are then forwarded, signed under the agreements, and merged
with its own data, while each provider's door enforces its agreement. Singapore's subscription at
Chongqing writes what it receives into Singapore's own store (history, audit, its own
subscriptions), also across a restart of Singapore. A replayed signed request is refused by the
other worker too, and an agreement's rate holds across the workers. Both sides' audit trails hold
matching records of every forwarded exchange."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from backends import PostgresSchemas, make_key
from cityos.dataspace.signatures import SigningKey
from dataspace_helpers import FEDERATION_PORTS, audit, cli, free_ports, signed, signing_key, wait_for
from notify_helpers import Receiver
from server_process import LoggedServer

API = "/cityos/v1/admin/dataspace"
PURPOSE = "traffic-planning"
ENTITIES_URL = "/ngsi-ld/v1/entities"
YUZHONG = [[106.50, 29.50], [106.60, 29.50], [106.60, 29.60], [106.50, 29.60], [106.50, 29.50]]
KUNMING_AREA = [[102.60, 24.90], [102.80, 24.90], [102.80, 25.10], [102.60, 25.10], [102.60, 24.90]]
JIEFANGBEI = "urn:ngsi-ld:TrafficFlowObserved:jiefangbei"  # Chongqing, inside the offered area
AIRPORT = "urn:ngsi-ld:TrafficFlowObserved:airport"  # Chongqing, outside it
DIANCHI = "urn:ngsi-ld:TrafficFlowObserved:dianchi"  # Kunming
ORCHARD = "urn:ngsi-ld:TrafficFlowObserved:orchard"  # Singapore's own
CHAOTIANMEN = "urn:ngsi-ld:TrafficFlowObserved:chaotianmen"  # Chongqing, in its tenant "yuzhong"


def _entity(entity_id: str, lon: float, lat: float, **attrs: Any) -> dict[str, Any]:
    entity: dict[str, Any] = {"id": entity_id, "type": "TrafficFlowObserved"}
    entity.update({name: {"type": "Property", "value": value} for name, value in attrs.items()})
    entity["location"] = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}
    return entity


def _offer(offer_id: str, area: list[list[float]], rate: int) -> dict[str, Any]:
    later = (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "id": offer_id,
        "types": ["TrafficFlowObserved"],
        "attrs": ["intensity", "location"],
        "area": {"type": "Polygon", "coordinates": [area]},
        "terms": {"assignees": ["Singapore"], "purposes": [PURPOSE], "expires": later, "rate": rate},
    }


@dataclass
class City:
    name: str
    database: str
    server: LoggedServer
    headers: dict[str, str]

    @property
    def base(self) -> str:
        return self.server.base

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return httpx.request(method, self.base + path, json=body, headers=headers, timeout=30, **kw)

    def token(self) -> str | None:
        given = self.headers.get("Authorization")
        return given.split()[1] if given else None


@dataclass
class Three:
    chongqing: City
    kunming: City
    singapore: City
    key: SigningKey  # Singapore's
    agreements: dict[str, str]  # "Chongqing", "Kunming", "quota", "district", "brief" -> agreement id
    brief_expires: datetime  # the "brief" agreement's end, seconds after the module started
    brief_used: int  # the status of a read under it right after it was made


@pytest.fixture(scope="module")
def three(postgres_schemas: PostgresSchemas, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Three]:
    folder = tmp_path_factory.mktemp("three")
    cq_db = postgres_schemas.acquire()
    km_db, sg_db = str(folder / "kunming.db"), str(folder / "singapore.db")
    ports = free_ports(3, FEDERATION_PORTS)
    plan = (("Chongqing", cq_db, ports[0]), ("Kunming", km_db, ports[1]), ("Singapore", sg_db, ports[2]))
    for name, database, port in plan:
        signing_key(database, name, f"http://127.0.0.1:{port}")
    tokens = {name: make_key(db, "--name", "ops", "--role", "admin") for name, db, _ in plan[:2]}
    common = ("--allow-private-networks", "--notification-retry-max-delay", "1", "--notification-max-attempts", "1000")
    servers = {
        "Chongqing": LoggedServer(
            folder / "cq.log", "--database", cq_db, "--auth", "required", "--workers", "2", *common, port=ports[0]
        ),
        "Kunming": LoggedServer(folder / "km.log", "--database", km_db, "--auth", "required", *common, port=ports[1]),
        "Singapore": LoggedServer(folder / "sg.log", "--database", sg_db, *common, port=ports[2]),
    }
    try:
        for server in servers.values():
            server.start()
        cities = {
            name: City(name, db, servers[name], {"Authorization": f"Bearer {tokens[name]}"} if name in tokens else {})
            for name, db, _ in plan
        }
        singapore = cities["Singapore"]
        for provider in ("Chongqing", "Kunming"):
            for city, other in ((cities[provider], singapore), (singapore, cities[provider])):
                key = other.call("GET", f"{API}/identity").json()["publicKey"]
                made = city.call("POST", f"{API}/partners", {"name": other.name, "url": other.base, "publicKey": key})
                assert made.status_code == 201, made.text
        brief_expires = (datetime.now(UTC) + timedelta(seconds=30)).replace(microsecond=0)  # made and used first
        brief = brief_expires.strftime("%Y-%m-%dT%H:%M:%SZ")
        offers = {
            "Chongqing": [
                _offer("traffic-flow", YUZHONG, 600),
                _offer("quota", YUZHONG, 5),
                {**_offer("district", YUZHONG, 600), "tenant": "yuzhong"},
                {
                    **_offer("brief", YUZHONG, 600),
                    "terms": {**_offer("brief", YUZHONG, 600)["terms"], "expires": brief},
                },
            ],
            "Kunming": [_offer("traffic-flow", KUNMING_AREA, 600)],
        }
        data = {
            "Chongqing": [
                _entity(JIEFANGBEI, 106.57, 29.55, intensity=120, laneId=2),
                _entity(AIRPORT, 106.64, 29.72, intensity=80),
            ],
            "Kunming": [_entity(DIANCHI, 102.70, 25.00, intensity=60, laneId=1)],
            "Singapore": [_entity(ORCHARD, 103.83, 1.30, intensity=30)],
        }
        for name, entities in data.items():
            for offer in offers.get(name, []):
                assert cities[name].call("POST", f"{API}/offers", offer).status_code == 201
            made = cities[name].call("POST", "/ngsi-ld/v1/entityOperations/upsert", entities)
            assert made.status_code in (201, 204), made.text
        in_tenant = [_entity(CHAOTIANMEN, 106.58, 29.56, intensity=90)]
        made = cities["Chongqing"].call(
            "POST", "/ngsi-ld/v1/entityOperations/upsert", in_tenant, headers={"NGSILD-Tenant": "yuzhong"}
        )
        assert made.status_code in (201, 204), made.text
        agreements = {}
        for label, partner, offer in (
            ("brief", "Chongqing", "brief"),  # first: it lasts seconds
            ("Chongqing", "Chongqing", "traffic-flow"),
            ("Kunming", "Kunming", "traffic-flow"),
            ("quota", "Chongqing", "quota"),
            ("district", "Chongqing", "district"),
        ):
            made = singapore.call("POST", f"{API}/agreements", {"partner": partner, "offer": offer, "purpose": PURPOSE})
            assert made.status_code == 201, made.text
            agreements[label] = made.json()["id"]
        for label in ("Chongqing", "Kunming"):  # Singapore registers each provider for its dataset
            printed = cli(sg_db, "agreements", "source", agreements[label])
            assert printed.returncode == 0, printed.stderr
            registration = orjson.loads(printed.stdout)
            made = singapore.call("POST", "/ngsi-ld/v1/csourceRegistrations", registration)
            assert made.status_code == 201, made.text
        key = signing_key(sg_db)
        url = f"{cities['Chongqing'].base}{ENTITIES_URL}?type=TrafficFlowObserved"

        def use() -> int:  # each worker reads a new agreement within a second
            got = httpx.get(url, headers=signed(key, "GET", url, agreement=agreements["brief"], purpose=PURPOSE))
            return got.status_code if got.status_code == 200 else 0

        used = wait_for("the brief agreement to be served", use, timeout=10)
        yield Three(cities["Chongqing"], cities["Kunming"], singapore, key, agreements, brief_expires, used)
    finally:
        for server in servers.values():
            server.stop()
        postgres_schemas.release(cq_db, reuse=False)


def _ids(answer: httpx.Response) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {e["id"] for e in answer.json()}


def test_queries_are_forwarded_signed_under_the_agreements_and_merged(three: Three) -> None:
    answer = three.singapore.call("GET", ENTITIES_URL, params={"type": "TrafficFlowObserved"})
    assert _ids(answer) == {ORCHARD, JIEFANGBEI, DIANCHI}  # the airport is outside Chongqing's offer
    assert "ngsild-warning" not in answer.headers
    remote = {e["id"]: e for e in answer.json()}[JIEFANGBEI]
    assert remote["intensity"]["value"] == 120 and "laneId" not in remote  # the agreed attributes only
    one = three.singapore.call("GET", f"{ENTITIES_URL}/{DIANCHI}")  # a retrieve, forwarded too
    assert one.status_code == 200 and one.json()["intensity"]["value"] == 60 and "laneId" not in one.json()
    assert three.singapore.call("GET", f"{ENTITIES_URL}/{AIRPORT}").status_code == 404


def test_both_audit_trails_hold_each_forwarded_exchange(three: Three) -> None:
    three.singapore.call("GET", ENTITIES_URL, params={"type": "TrafficFlowObserved"})
    for provider in (three.chongqing, three.kunming):
        agreement = three.agreements[provider.name]
        sent = [r for r in audit(three.singapore.base, "dataspace.request.sent") if r["targets"] == [agreement]]
        assert sent, f"Singapore recorded no request to {provider.name}"
        served = {
            r["detail"]["nonce"]: r["detail"]
            for r in audit(provider.base, "dataspace.request.served", provider.token())
            if r["targets"] == [agreement]
        }
        for record in sent:
            mine = record["detail"]
            theirs = served[mine["nonce"]]  # the same signed nonce on both sides
            assert mine["requestDigest"] == theirs["requestDigest"]
            assert mine["answerDigest"] == theirs["answerDigest"] and mine["status"] == theirs["status"]
            assert theirs["partner"] == "Singapore" and theirs["target"] == mine["target"]
        assert 200 in {r["detail"]["status"] for r in sent}


def test_a_replay_to_the_other_worker_is_refused(three: Three) -> None:
    url = three.chongqing.base + "/dsp/catalog"
    headers = signed(three.key, "GET", url)
    first = httpx.get(url, headers=headers)
    assert first.status_code == 200, first.text
    workers = {first.headers["x-request-id"].split("-")[0]}
    for _ in range(60):  # each on a new connection, until the other worker has refused one too
        again = httpx.get(url, headers=headers)
        assert again.status_code == 401 and "replay" in again.json()["detail"], again.text
        workers.add(again.headers["x-request-id"].split("-")[0])
        if len(workers) == 2:
            break
    assert len(workers) == 2, "the kernel gave every connection to one worker"


def test_an_agreements_rate_holds_across_the_workers(three: Three) -> None:
    agreement = three.agreements["quota"]
    url = f"{three.chongqing.base}{ENTITIES_URL}?type=TrafficFlowObserved"
    statuses = []
    for _ in range(8):  # 5 a minute, whichever worker each new connection reaches
        headers = signed(three.key, "GET", url, agreement=agreement, purpose=PURPOSE)
        statuses.append(httpx.get(url, headers=headers).status_code)
    assert statuses == [200] * 5 + [429] * 3


def test_notifications_are_written_into_the_consumers_store_across_a_restart(three: Three) -> None:
    agreement = three.agreements["Chongqing"]
    receiver = Receiver()  # one of Singapore's own subscriptions: it sees the received writes too
    try:
        own = {"type": "Subscription", "entities": [{"type": "TrafficFlowObserved"}]}
        own["notification"] = {"endpoint": {"uri": receiver.url}, "attributes": ["intensity"]}
        assert three.singapore.call("POST", "/ngsi-ld/v1/subscriptions", own).status_code == 201
        made = cli(three.singapore.database, "agreements", "subscribe", agreement, "--type", "TrafficFlowObserved",
                   "--allow-private-networks")  # fmt: skip
        assert made.returncode == 0, made.stderr

        def local(value: int) -> dict[str, Any] | None:
            got = three.singapore.call("GET", f"{ENTITIES_URL}/{JIEFANGBEI}", params={"local": "true"})
            body: dict[str, Any] = got.json()
            return body if got.status_code == 200 and body["intensity"]["value"] == value else None

        patch = {"intensity": {"type": "Property", "value": 130}, "laneId": {"type": "Property", "value": 3}}
        assert three.chongqing.call("PATCH", f"{ENTITIES_URL}/{JIEFANGBEI}/attrs", patch).status_code == 204
        stored = wait_for("the entity in Singapore's own store", lambda: local(130))
        assert "laneId" not in stored  # only what the agreement covers

        three.singapore.server.stop()  # Singapore goes down; Chongqing's notification waits in its outbox
        try:
            patch = {"intensity": {"type": "Property", "value": 140}}
            assert three.chongqing.call("PATCH", f"{ENTITIES_URL}/{JIEFANGBEI}/attrs", patch).status_code == 204
            wait_for(
                "Chongqing to try",
                lambda: [
                    r
                    for r in audit(three.chongqing.base, "dataspace.notification.sent", three.chongqing.token())
                    if r["targets"] == [agreement] and r["detail"]["requestDigest"]
                ][1:],
            )
        finally:
            three.singapore.server.start()
        wait_for("the notification after Singapore's restart", lambda: local(140), timeout=40)

        history = three.singapore.call(
            "GET",
            f"/ngsi-ld/v1/temporal/entities/{JIEFANGBEI}",
            params={"local": "true", "attrs": "intensity", "timeproperty": "modifiedAt"},
        )
        assert history.status_code == 200, history.text
        assert "intensity" in history.json(), history.text
        values = [i["value"] for i in history.json()["intensity"]]
        assert 130 in values and 140 in values  # the temporal history, as for any write
        writes = [
            r
            for r in audit(three.singapore.base, "entity.create") + audit(three.singapore.base, "entity.update")
            if r["targets"] == [JIEFANGBEI]
        ]
        assert writes and {r["principal"] for r in writes} == {f"agreement:{agreement}"}  # attributed
        received = [
            r for r in audit(three.singapore.base, "dataspace.notification.received") if r["targets"] == [agreement]
        ]
        assert any(r["detail"]["written"] == [JIEFANGBEI] for r in received)

        def seen() -> list[Any]:
            return [e["intensity"]["value"] for b in receiver.bodies() for e in b["data"] if e["id"] == JIEFANGBEI]

        wait_for("Singapore's own subscription to see the received write", lambda: 130 in seen())
    finally:
        receiver.close()


def test_a_tampered_signature_and_an_expired_agreement_are_refused(three: Three) -> None:
    url = f"{three.chongqing.base}{ENTITIES_URL}?type=TrafficFlowObserved"
    tampered = signed(three.key, "GET", url, agreement=three.agreements["Chongqing"], purpose=PURPOSE)
    tampered["CityOS-Agreement"] = three.agreements["quota"]  # moved to another agreement once signed
    refused = httpx.get(url, headers=tampered)
    assert refused.status_code == 401 and "does not verify" in refused.json()["detail"]
    assert three.brief_used == 200  # the brief agreement was used while it ran
    time.sleep(max(0.0, (three.brief_expires - datetime.now(UTC)).total_seconds() + 0.5))
    ended = httpx.get(url, headers=signed(three.key, "GET", url, agreement=three.agreements["brief"], purpose=PURPOSE))
    assert ended.status_code == 403 and "no active agreement" in ended.json()["detail"]


def test_an_agreement_is_served_in_its_tenant(three: Three) -> None:
    agreement = three.agreements["district"]
    url = f"{three.chongqing.base}{ENTITIES_URL}?type=TrafficFlowObserved"
    got = httpx.get(url, headers=signed(three.key, "GET", url, agreement=agreement, purpose=PURPOSE))
    assert _ids(got) == {CHAOTIANMEN}  # the offer's tenant, not the default tenant's entities
    assert got.headers.get("ngsild-tenant") in (None, "yuzhong")
    elsewhere = {**signed(three.key, "GET", url, agreement=agreement, purpose=PURPOSE), "NGSILD-Tenant": "other"}
    refused = httpx.get(url, headers=elsewhere)
    assert refused.status_code == 403 and "another tenant" in refused.json()["detail"]
    plain = signed(three.key, "GET", url, agreement=three.agreements["Chongqing"], purpose=PURPOSE)
    assert CHAOTIANMEN not in _ids(httpx.get(url, headers=plain))  # the other agreement: the default tenant


def test_the_signed_target_is_the_public_url(three: Three) -> None:
    """Behind a proxy that rewrites the host (and strips a path prefix), partners sign the URL
    they were given, the one `cityos dataspace init --url` sets: the door rebuilds that one."""
    public = "https://kunming.example/broker"
    direct = three.kunming.base + "/dsp/catalog"

    def status(target: str) -> int:
        return httpx.get(direct, headers=signed(three.key, "GET", target)).status_code

    changed = cli(three.kunming.database, "dataspace", "init", "--name", "Kunming", "--url", public)
    assert changed.returncode == 0, changed.stderr
    try:
        wait_for("Kunming to use its public URL", lambda: status(public + "/dsp/catalog") == 200)
        assert status(direct) == 401  # the address the proxy forwards to is not the signed one
    finally:
        restored = cli(three.kunming.database, "dataspace", "init", "--name", "Kunming", "--url", three.kunming.base)
        assert restored.returncode == 0, restored.stderr
    wait_for("Kunming to use its own URL again", lambda: status(direct) == 200)


def test_a_revoked_agreement_stops_the_forwarding(three: Three) -> None:
    agreement = three.agreements["Kunming"]
    revoked = three.kunming.call("POST", f"{API}/agreements/{agreement}/revoke")
    assert revoked.status_code == 200 and revoked.json()["state"] == "TERMINATED"
    answer = three.singapore.call("GET", ENTITIES_URL, params={"type": "TrafficFlowObserved"})
    assert DIANCHI not in _ids(answer) and ORCHARD in _ids(answer)  # the rest still answers
    assert answer.headers.get("ngsild-warning", "").startswith("299 ")  # HTTP 403 from the registration
    denied = [
        r
        for r in audit(three.kunming.base, "request.denied", three.kunming.token())
        if r["detail"].get("partner") == "Singapore" and agreement in r["detail"].get("reason", "")
    ]
    assert denied  # Kunming's door refused, and said so in its audit trail
