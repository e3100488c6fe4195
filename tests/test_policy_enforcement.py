"""Access policies enforced on every entity endpoint, on both back-ends: broken object-level
authorization (entities and tenants), broken object-property-level authorization (attributes in
every representation), counts and paging under a policy, and the city's worked examples (the parking
operator writes parking only; the public reads parking availability but not the operator's
contracts; the police read licence plates in one district).

The app runs in-process with --auth required and the city's policy file (so the audit records can be
read); `Caller` sends requests as one principal, with an API key made by `cityos keys create`. Without
the identity work (no API keys) a test-only ASGI wrapper sets the principal instead.
tests/test_policy_http.py drives a real server through the real door.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from backends import make_key
from cityos.app import create_app
from cityos.audit.events import AuditEvent
from cityos.settings import Settings
from test_policy_api import CITY_POLICIES

API = "/ngsi-ld/v1"
D = "https://uri.etsi.org/ngsi-ld/default-context/"
ROLES = {"admin": "admin", "operator": "parking-operator", "police": "police"}
IN_DISTRICT = [-3.70, 40.41]
OUTSIDE = [-3.60, 40.41]


@dataclass
class Recorder:
    events: list[AuditEvent] = field(default_factory=list)

    async def record(self, events: Any) -> None:
        self.events.extend(events)


@dataclass
class Caller:
    client: TestClient
    headers: dict[str, str]

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.client.request(method, path if path.startswith("/") else f"{API}/{path}", headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)


@dataclass
class City:
    client: TestClient
    audit: Recorder
    keys: dict[str, str]

    def as_(self, name: str, **headers: str) -> Caller:
        if name == "anonymous":
            return Caller(self.client, headers)
        return Caller(self.client, {"Authorization": f"Bearer {self.keys[name]}", **headers})


def parking(number: int) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:OffStreetParking:{number}",
        "type": "OffStreetParking",
        "availableSpotNumber": {"type": "Property", "value": number},
        "contract": {"type": "Property", "value": "operator pays 3% of revenue"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": IN_DISTRICT}},
    }


def vehicle(name: str, where: list[float]) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Vehicle:{name}",
        "type": "Vehicle",
        "licensePlate": {"type": "Property", "value": f"{name.upper()}-1234"},
        "speed": {"type": "Property", "value": 42},
        "owner": {"type": "Property", "value": "Jane Doe"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": where}},
    }


def observed(entity: dict[str, Any]) -> dict[str, Any]:
    """The entity as a temporal entity: one instance of each attribute, observed at a fixed time."""
    attrs = {k: [{**v, "observedAt": "2026-01-01T00:00:00Z"}] for k, v in entity.items() if k not in ("id", "type")}
    return {"id": entity["id"], "type": entity["type"], **attrs}


@pytest.fixture(scope="module")
def city(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    policy_file = tmp_path_factory.mktemp("city") / "city.yaml"
    policy_file.write_text(yaml.safe_dump({"policies": CITY_POLICIES}))
    keys = {n: make_key(module_db_url, "--name", n, "--role", r) for n, r in ROLES.items()}
    settings = Settings(database=module_db_url, auth="required", policy_file=str(policy_file))
    app = create_app(settings)
    recorder = Recorder()
    app.state.services.audit = recorder
    with TestClient(app, base_url="http://127.0.0.1:1026") as client:
        city = City(client, recorder, keys)
        admin = city.as_("admin")
        entities = [parking(n) for n in range(1, 26)] + [vehicle("in", IN_DISTRICT), vehicle("out", OUTSIDE)]
        assert admin.post("entityOperations/upsert", json=entities).status_code == 201
        for entity in (parking(4), vehicle("in", IN_DISTRICT), vehicle("out", OUTSIDE)):  # their history
            assert admin.post("/ngsi-ld/v1/temporal/entities", json=observed(entity)).status_code in (201, 204)
        other = city.as_("admin", **{"NGSILD-Tenant": "other"})
        assert other.post("entities", json=parking(99)).status_code == 201
        yield city


def names(body: dict[str, Any]) -> set[str]:
    return set(body) - {"id", "type", "@context"}


# -- the public: parking availability, never the contracts -----------------------------------------
def test_public_reads_parking_without_contracts_in_every_representation(city: City) -> None:
    public = city.as_("anonymous")
    url = "entities/urn:ngsi-ld:OffStreetParking:3"
    assert names(public.get(url).json()) == {"availableSpotNumber", "location"}
    for fmt in ("keyValues", "concise", "normalized"):
        body = public.get(url, params={"format": fmt}).json()
        assert "contract" not in body and body["availableSpotNumber"] in (
            3,
            {"value": 3},
            {"type": "Property", "value": 3},
        )
    feature = public.get(url, headers={"Accept": "application/geo+json"}).json()
    assert feature["type"] == "Feature" and "contract" not in feature["properties"]
    assert public.get(url, params={"attrs": "contract"}).status_code == 404  # nothing of it to show
    listed = public.get("entities", params={"type": "OffStreetParking", "limit": 100}).json()
    assert len(listed) == 25 and all("contract" not in e for e in listed)
    collection = public.get(
        "entities", params={"type": "OffStreetParking"}, headers={"Accept": "application/geo+json"}
    ).json()
    assert all("contract" not in f["properties"] for f in collection["features"])


def test_a_filter_on_a_hidden_attribute_reveals_nothing(city: City) -> None:
    public = city.as_("anonymous")
    for params in (
        {"type": "OffStreetParking", "q": 'contract=="operator pays 3% of revenue"'},
        {"type": "OffStreetParking", "attrs": "contract"},
        {"q": "contract"},
    ):
        response = public.get("entities", params={**params, "count": "true"})
        assert response.status_code == 200 and response.json() == [] and response.headers["NGSILD-Results-Count"] == "0"
    query = {"type": "Query", "entities": [{"type": "OffStreetParking"}], "q": "contract"}
    assert public.post("entityOperations/query", json=query).json() == []


def test_counts_and_paging_count_only_what_the_caller_sees(city: City) -> None:
    public = city.as_("anonymous")
    seen: list[str] = []
    for offset in (0, 10, 20):
        response = public.get(
            "entities", params={"type": "OffStreetParking,Vehicle", "limit": 10, "offset": offset, "count": "true"}
        )
        assert response.headers["NGSILD-Results-Count"] == "25"
        seen += [e["id"] for e in response.json()]
    assert len(seen) == len(set(seen)) == 25 and not any("Vehicle" in i for i in seen)
    body = {"type": "Query", "entities": [{"type": "Vehicle"}, {"type": "OffStreetParking"}]}
    answer = public.post("entityOperations/query", params={"count": "true", "limit": 5}, json=body)
    assert answer.headers["NGSILD-Results-Count"] == "25" and len(answer.json()) == 5


# -- object-level: an entity the caller cannot see does not exist -----------------------------------
def test_invisible_entities_are_not_found_never_forbidden(city: City) -> None:
    public = city.as_("anonymous")
    missing = public.get("entities/urn:ngsi-ld:Vehicle:nowhere")
    hidden = public.get("entities/urn:ngsi-ld:Vehicle:in")
    assert missing.status_code == hidden.status_code == 404
    assert missing.json()["type"] == hidden.json()["type"]
    for method, path, body in (
        ("PATCH", "entities/urn:ngsi-ld:Vehicle:in/attrs", {"speed": {"type": "Property", "value": 1}}),
        ("PATCH", "entities/urn:ngsi-ld:Vehicle:in/attrs/speed", {"value": 1}),
        ("POST", "entities/urn:ngsi-ld:Vehicle:in/attrs", {"speed": {"type": "Property", "value": 1}}),
        ("PATCH", "entities/urn:ngsi-ld:Vehicle:in", {"speed": {"type": "Property", "value": 1}}),
        ("DELETE", "entities/urn:ngsi-ld:Vehicle:in/attrs/speed", None),
        ("DELETE", "entities/urn:ngsi-ld:Vehicle:in", None),
    ):
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        if method == "PATCH" and path.endswith(":in"):
            kwargs["headers"] = {"Content-Type": "application/merge-patch+json"}
        response = public.request(method, path, **kwargs)
        assert response.status_code == 404, (method, path, response.text)
    admin = city.as_("admin")
    assert admin.get("entities/urn:ngsi-ld:Vehicle:in").json()["speed"]["value"] == 42  # nothing changed
    denials = [e for e in city.audit.events if e.operation == "request.denied" and e.principal == "anonymous"]
    assert denials and all(e.outcome == "denied" for e in denials)


def test_tenants_are_isolated(city: City) -> None:
    operator = city.as_("operator", **{"NGSILD-Tenant": "other"})  # its key is for the default tenant
    retrieved = operator.get("entities/urn:ngsi-ld:OffStreetParking:99")
    assert retrieved.status_code in (403, 404) and "operator pays" not in retrieved.text
    listed = operator.get("entities", params={"type": "OffStreetParking"})
    assert listed.status_code in (403, 404) or listed.json() == []
    written = operator.post("entityOperations/upsert", json=[parking(98)])
    assert written.status_code in (207, 403, 404)
    other_admin = city.as_("admin", **{"NGSILD-Tenant": "other"})
    assert other_admin.get("entities/urn:ngsi-ld:OffStreetParking:98").status_code == 404


# -- the parking operator writes parking, and only parking -----------------------------------------
def test_the_operator_writes_parking_only(city: City) -> None:
    operator = city.as_("operator")
    new_parking = {**parking(30), "id": "urn:ngsi-ld:OffStreetParking:30"}
    assert operator.post("entities", json=new_parking).status_code == 201
    assert (
        operator.patch(
            "entities/urn:ngsi-ld:OffStreetParking:30/attrs/availableSpotNumber", json={"value": 7}
        ).status_code
        == 204
    )
    assert operator.get("entities/urn:ngsi-ld:OffStreetParking:30").json()["contract"][
        "value"
    ]  # it reads its contracts
    assert operator.post("entities", json=vehicle("new", IN_DISTRICT)).status_code == 403
    assert operator.get("entities/urn:ngsi-ld:Vehicle:in").status_code == 404
    # a batch: each entity allowed or refused on its own; the refused one is not written
    batch = [
        parking(31),
        vehicle("batch", IN_DISTRICT),
        {**vehicle("in", IN_DISTRICT), "speed": {"type": "Property", "value": 0}},
    ]
    report = operator.post("entityOperations/upsert", json=batch)
    assert report.status_code == 207
    errors = {e["entityId"]: e["error"]["status"] for e in report.json()["errors"]}
    assert errors == {"urn:ngsi-ld:Vehicle:batch": 403, "urn:ngsi-ld:Vehicle:in": 404}
    assert report.json()["success"] == ["urn:ngsi-ld:OffStreetParking:31"]
    admin = city.as_("admin")
    assert admin.get("entities/urn:ngsi-ld:Vehicle:batch").status_code == 404
    assert admin.get("entities/urn:ngsi-ld:Vehicle:in").json()["speed"]["value"] == 42
    deleted = operator.post(
        "entityOperations/delete", json=["urn:ngsi-ld:OffStreetParking:31", "urn:ngsi-ld:Vehicle:out"]
    )
    assert {e["entityId"]: e["error"]["status"] for e in deleted.json()["errors"]} == {"urn:ngsi-ld:Vehicle:out": 404}
    # the public sees parking but may not change it: 403, nothing written
    public = city.as_("anonymous")
    assert (
        public.patch(
            "entities/urn:ngsi-ld:OffStreetParking:30/attrs/availableSpotNumber", json={"value": 1}
        ).status_code
        == 403
    )
    assert public.delete("entities/urn:ngsi-ld:OffStreetParking:30").status_code == 403
    assert admin.get("entities/urn:ngsi-ld:OffStreetParking:30").json()["availableSpotNumber"]["value"] == 7


# -- the police read licence plates in one district, for enforcement -------------------------------
def test_police_read_plates_in_their_district(city: City) -> None:
    police = city.as_("police", Purpose="enforcement")
    seen = police.get("entities/urn:ngsi-ld:Vehicle:in").json()
    assert seen["licensePlate"]["value"] == "IN-1234" and "owner" not in seen
    assert police.get("entities/urn:ngsi-ld:Vehicle:out").status_code == 404
    assert city.as_("police").get("entities/urn:ngsi-ld:Vehicle:in").status_code == 404  # no purpose given
    listed = police.get("entities", params={"type": "Vehicle", "count": "true"})
    assert [e["id"] for e in listed.json()] == ["urn:ngsi-ld:Vehicle:in"] and listed.headers[
        "NGSILD-Results-Count"
    ] == "1"
    reads = [e for e in city.audit.events if e.operation == "entity.read-personal" and e.principal.startswith("key:")]
    assert (
        reads
        and reads[-1].targets == ["urn:ngsi-ld:Vehicle:in"]
        and reads[-1].detail == {"attrs": [D + "licensePlate"], "purpose": "enforcement"}
    )
    # the police may read, not write
    assert police.patch("entities/urn:ngsi-ld:Vehicle:in/attrs/speed", json={"value": 1}).status_code == 403


# -- discovery, temporal, entity maps, joins ------------------------------------------------------
def test_discovery_counts_only_what_the_caller_sees(city: City) -> None:
    public = city.as_("anonymous")
    assert public.get("types").json()["typeList"] == ["OffStreetParking"]
    assert "contract" not in public.get("attributes").json()["attributeList"]
    assert "licensePlate" not in public.get("attributes").json()["attributeList"]
    assert public.get("types/Vehicle").status_code == 404
    assert public.get("attributes/contract").status_code == 404
    details = public.get("types", params={"details": "true"}).json()
    assert details[0]["attributeNames"] == ["availableSpotNumber", "location"]
    admin_types = city.as_("admin").get("types").json()["typeList"]
    assert sorted(admin_types) == ["OffStreetParking", "Vehicle"]


def test_temporal_reads_are_filtered(city: City) -> None:
    public = city.as_("anonymous")
    history = public.get("/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:OffStreetParking:4")
    assert history.status_code == 200 and names(history.json()) == {"availableSpotNumber", "location"}
    assert public.get("/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Vehicle:in").status_code == 404
    params = {"type": "Vehicle,OffStreetParking", "timerel": "after", "timeAt": "2025-01-01T00:00:00Z", "count": "true"}
    query = public.get("/ngsi-ld/v1/temporal/entities", params=params)
    assert [e["id"] for e in query.json()] == ["urn:ngsi-ld:OffStreetParking:4"]
    assert "contract" not in query.json()[0] and query.headers["NGSILD-Results-Count"] == "1"
    police = city.as_("police", Purpose="enforcement")
    vehicles = police.get("/ngsi-ld/v1/temporal/entities", params={**params, "type": "Vehicle"}).json()
    assert [v["id"] for v in vehicles] == ["urn:ngsi-ld:Vehicle:in"]
    assert names(vehicles[0]) == {"licensePlate", "speed", "location"}
    for fmt in ("temporalValues", "aggregatedValues"):
        extra = {"aggrMethods": "max", "aggrPeriodDuration": "P1D"} if fmt == "aggregatedValues" else {}
        shown = police.get(
            "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Vehicle:in",
            params={"options": fmt, **extra, "timerel": "after", "timeAt": "2025-01-01T00:00:00Z"},
        )
        assert shown.status_code == 200 and "owner" not in shown.json(), shown.text
    instance = {"speed": [{"type": "Property", "value": 1, "observedAt": "2026-01-02T00:00:00Z"}]}
    assert public.post("/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Vehicle:in/attrs", json=instance).status_code == 404
    assert police.post("/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Vehicle:in/attrs", json=instance).status_code == 403
    assert public.delete("/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:OffStreetParking:4").status_code == 403


def test_entity_maps_and_joins_hold_only_what_the_caller_sees(city: City) -> None:
    public = city.as_("anonymous")
    created = public.get("entityMaps", params={"type": "Vehicle,OffStreetParking"})
    assert created.status_code == 201
    held = list(created.json()["entityMap"])
    assert len(held) >= 25 and not any("Vehicle" in i for i in held)
    over_map = public.get("entities", params={"type": "Vehicle,OffStreetParking", "entityMap": "true", "limit": 100})
    assert over_map.status_code == 201 and not any("Vehicle" in e["id"] for e in over_map.json())
    # a relationship to a vehicle: the public sees the relationship, never the vehicle it points to
    admin = city.as_("admin")
    link = {"lastVehicle": {"type": "Relationship", "object": "urn:ngsi-ld:Vehicle:in"}}
    assert admin.post("entities/urn:ngsi-ld:OffStreetParking:25/attrs", json=link).status_code == 204
    for join in ("inline", "flat"):
        joined = public.get("entities/urn:ngsi-ld:OffStreetParking:25", params={"join": join, "joinLevel": "1"})
        assert joined.status_code == 200 and "IN-1234" not in joined.text and "Jane Doe" not in joined.text
    assert "IN-1234" in admin.get("entities/urn:ngsi-ld:OffStreetParking:25", params={"join": "inline"}).text

    # a q that follows the relationship reads the linked entity as the caller may see it: it cannot
    # tell the public a plate (an entity it may not see) or a contract (an attribute it may not read)
    link = {"next": {"type": "Relationship", "object": "urn:ngsi-ld:OffStreetParking:23"}}
    assert admin.post("entities/urn:ngsi-ld:OffStreetParking:24/attrs", json=link).status_code == 204
    probes = {
        'lastVehicle{licensePlate}=="IN-1234"': ["urn:ngsi-ld:OffStreetParking:25"],
        'next{contract}=="operator pays 3% of revenue"': ["urn:ngsi-ld:OffStreetParking:24"],
        "next{availableSpotNumber}==23": ["urn:ngsi-ld:OffStreetParking:24"],
    }
    for q, found in probes.items():
        params = {"type": "OffStreetParking", "q": q, "join": "flat", "joinLevel": "1", "count": "true"}
        assert [e["id"] for e in admin.get("entities", params=params).json() if "Parking" in e["id"]][:1] == found
        seen = public.get("entities", params=params)
        readable = q.startswith("next{availableSpotNumber}")
        assert [e["id"] for e in seen.json()][:1] == (found if readable else []), q
        assert seen.headers["NGSILD-Results-Count"] == ("1" if readable else "0")
