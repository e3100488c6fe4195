"""Access policies at the real door: a `cityos serve --auth required --policy-file city.yaml` process
on both back-ends, API keys made with `cityos keys create`, every request a real one. The city's
worked examples (docs/security.md, "Access policies"), broken object-level authorization across
entities and tenants on every entity endpoint (batch, POST /entityOperations/query, temporal, entity
maps included), broken object-property-level authorization (attributes in every representation),
counts and paging under a policy, and the policy admin API refused to a reader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

pytest.importorskip("cityos.auth.middleware", reason="needs the identity work (API keys)")

from server_process import LoggedServer
from test_policy_api import CITY_POLICIES, make_key
from test_policy_enforcement import IN_DISTRICT, OUTSIDE, observed, parking, vehicle

API = "/ngsi-ld/v1"
TEMPORAL = "/ngsi-ld/v1/temporal/entities"


@dataclass
class Door:
    base: str
    keys: dict[str, str]

    def client(self, who: str, **headers: str) -> httpx.Client:
        if who != "anonymous":
            headers["Authorization"] = f"Bearer {self.keys[who]}"
        return httpx.Client(base_url=self.base + API, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def door(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    workdir = tmp_path_factory.mktemp("door")
    policy_file = workdir / "city.yaml"
    policy_file.write_text(yaml.safe_dump({"policies": CITY_POLICIES}))
    keys = {
        "admin": make_key(module_db_url, "--name", "admin", "--role", "admin"),
        "operator": make_key(module_db_url, "--name", "operator", "--role", "parking-operator"),
        "police": make_key(module_db_url, "--name", "police", "--role", "police"),
        "reader": make_key(module_db_url, "--name", "reader", "--role", "reader"),
        "other-operator": make_key(
            module_db_url, "--name", "elsewhere", "--role", "parking-operator", "--tenant", "other"
        ),
    }
    server = LoggedServer(
        workdir / "server.log",
        "--auth",
        "required",
        "--policy-file",
        str(policy_file),
        env={"CITYOS_DATABASE": module_db_url},
    )
    server.start()
    try:
        door = Door(server.base, keys)
        with door.client("admin") as admin:
            entities = [parking(n) for n in range(1, 26)] + [vehicle("in", IN_DISTRICT), vehicle("out", OUTSIDE)]
            assert admin.post("/entityOperations/upsert", json=entities).status_code == 201
            for entity in (parking(4), vehicle("in", IN_DISTRICT), vehicle("out", OUTSIDE)):
                assert admin.post(TEMPORAL.removeprefix(API), json=observed(entity)).status_code in (201, 204)
        with door.client("admin", **{"NGSILD-Tenant": "other"}) as other:
            assert other.post("/entities", json=parking(99)).status_code == 201
        yield door
    finally:
        server.stop()
        log = server.log()
        assert all(token not in log for token in keys.values())  # no secret in the log


def attrs(body: dict[str, Any]) -> set[str]:
    return set(body) - {"id", "type", "@context"}


def test_the_operator_writes_parking_only(door: Door) -> None:
    with door.client("operator") as operator:
        assert operator.post("/entities", json={**parking(40)}).status_code == 201
        assert (
            operator.patch(
                "/entities/urn:ngsi-ld:OffStreetParking:40/attrs/availableSpotNumber", json={"value": 2}
            ).status_code
            == 204
        )
        assert operator.post("/entities", json=vehicle("operator", IN_DISTRICT)).status_code == 403
        assert operator.get("/entities/urn:ngsi-ld:Vehicle:in").status_code == 404
        assert operator.delete("/entities/urn:ngsi-ld:Vehicle:in").status_code == 404
        report = operator.post("/entityOperations/upsert", json=[parking(41), vehicle("batch", IN_DISTRICT)])
        assert report.status_code == 207
        assert [(e["entityId"], e["error"]["status"]) for e in report.json()["errors"]] == [
            ("urn:ngsi-ld:Vehicle:batch", 403)
        ]
    with door.client("admin") as admin:
        assert admin.get("/entities/urn:ngsi-ld:Vehicle:batch").status_code == 404
        assert admin.get("/entities/urn:ngsi-ld:OffStreetParking:40").json()["availableSpotNumber"]["value"] == 2


def test_the_public_reads_availability_not_contracts(door: Door) -> None:
    with door.client("anonymous") as public:
        url = "/entities/urn:ngsi-ld:OffStreetParking:3"
        assert attrs(public.get(url).json()) == {"availableSpotNumber", "location"}
        for fmt in ("keyValues", "concise"):
            assert attrs(public.get(url, params={"format": fmt}).json()) == {"availableSpotNumber", "location"}
        feature = public.get(url, headers={"Accept": "application/geo+json"}).json()
        assert "contract" not in feature["properties"]
        assert public.get("/entities/urn:ngsi-ld:Vehicle:in").status_code == 404
        assert public.patch(url + "/attrs/availableSpotNumber", json={"value": 0}).status_code == 403
        hidden = public.get("/entities", params={"type": "OffStreetParking", "q": "contract", "count": "true"})
        assert hidden.json() == [] and hidden.headers["NGSILD-Results-Count"] == "0"
        query = {"type": "Query", "entities": [{"type": "OffStreetParking"}, {"type": "Vehicle"}]}
        page = public.post("/entityOperations/query", params={"limit": 10, "count": "true"}, json=query)
        assert len(page.json()) == 10 and all("contract" not in e for e in page.json())
        assert int(page.headers["NGSILD-Results-Count"]) >= 25 and "Vehicle" not in page.text
        history = public.get(TEMPORAL.removeprefix(API) + "/urn:ngsi-ld:OffStreetParking:4")
        assert attrs(history.json()) == {"availableSpotNumber", "location"}
        assert public.get(TEMPORAL.removeprefix(API) + "/urn:ngsi-ld:Vehicle:in").status_code == 404
        assert public.get("/types").json()["typeList"] == ["OffStreetParking"]
        held = public.get("/entityMaps", params={"type": "OffStreetParking,Vehicle"}).json()["entityMap"]
        assert held and not any("Vehicle" in i for i in held)


def test_the_police_read_plates_in_one_district(door: Door) -> None:
    with door.client("police", Purpose="enforcement") as police:
        seen = police.get("/entities/urn:ngsi-ld:Vehicle:in").json()
        assert seen["licensePlate"]["value"] == "IN-1234" and "owner" not in seen
        assert police.get("/entities/urn:ngsi-ld:Vehicle:out").status_code == 404
        listed = police.get("/entities", params={"type": "Vehicle", "count": "true"})
        assert [e["id"] for e in listed.json()] == ["urn:ngsi-ld:Vehicle:in"]
        assert listed.headers["NGSILD-Results-Count"] == "1"
        assert police.patch("/entities/urn:ngsi-ld:Vehicle:in/attrs/speed", json={"value": 1}).status_code == 403
    with door.client("police") as without_purpose:
        assert without_purpose.get("/entities/urn:ngsi-ld:Vehicle:in").status_code == 404


def test_keys_do_not_cross_tenants(door: Door) -> None:
    with door.client("other-operator") as elsewhere:  # a key for tenant "other" in the default tenant
        for response in (
            elsewhere.get("/entities/urn:ngsi-ld:OffStreetParking:1"),
            elsewhere.get("/entities", params={"type": "OffStreetParking"}),
            elsewhere.patch("/entities/urn:ngsi-ld:OffStreetParking:1/attrs/availableSpotNumber", json={"value": 9}),
        ):
            assert response.status_code in (403, 404) or response.json() == [], response.text
    with door.client("operator", **{"NGSILD-Tenant": "other"}) as operator:  # a default-tenant key in "other"
        response = operator.get("/entities/urn:ngsi-ld:OffStreetParking:99")
        assert response.status_code in (403, 404) and "operator pays" not in response.text


def test_a_reader_may_not_manage_policies(door: Door) -> None:
    with httpx.Client(base_url=door.base, headers={"Authorization": f"Bearer {door.keys['reader']}"}) as reader:
        assert reader.get("/cityos/v1/admin/policies").status_code == 403
        assert reader.post("/cityos/v1/admin/policies", json=CITY_POLICIES[0]).status_code == 403
    with httpx.Client(base_url=door.base, headers={"Authorization": f"Bearer {door.keys['admin']}"}) as admin:
        assert len(admin.get("/cityos/v1/admin/policies").json()["policies"]) == len(CITY_POLICIES)
