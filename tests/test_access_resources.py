"""Registrations, hosted @contexts, IoT provisioning, temporal deletes and purges under access
control, in-process with the test Authorizer of tests/access_helpers.py, on both back-ends: what the
caller may not see answers 404 exactly as if it did not exist, what it may see but not change 403,
every refusal is audited, and nothing is changed by a refused request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from access_helpers import DEFAULT, Secured, secured_app
from cityos.settings import Settings

BASE = "/ngsi-ld/v1"
REGS = BASE + "/csourceRegistrations"
CONTEXTS = BASE + "/jsonldContexts"
TEMPORAL = BASE + "/temporal/entities"
ENTITIES = BASE + "/entities"
CSR = "urn:ngsi-ld:ContextSourceRegistration:1"
BUILDING = DEFAULT + "Building"


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(database=db_url)


@pytest.fixture
def secured(settings: Settings) -> Iterator[Secured]:
    with secured_app(settings) as app:
        app.principal("admin", admin=True, tenants=None)
        app.principal("reader", types={BUILDING}, hidden={DEFAULT + "height"})
        app.principal("catalog", read_resources={"registration"})
        app.principal("operator", administer={"registration", "context", "iot"}, read_resources={"registration"})
        app.principal("writer", types={BUILDING}, hidden={DEFAULT + "height"}, write={BUILDING})
        yield app


def registration() -> dict[str, Any]:
    return {
        "id": CSR,
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Vehicle"}], "propertyNames": ["speed"]}],
        "endpoint": "http://csource.example.org:1026",
    }


def refused_as(response: Any, status: int) -> None:
    assert response.status_code == status, response.text
    kind = "urn:cityos:errors:Forbidden" if status == 403 else "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    assert response.json()["type"] == kind


class TestRegistrations:
    def test_a_reader_cannot_see_or_change_the_registry(self, secured: Secured) -> None:
        client, reader = secured.client, secured.as_("key:reader")
        refused_as(client.post(REGS, json=registration(), headers=reader), 403)
        assert client.get(REGS, headers=secured.as_("key:admin")).json() == []  # nothing stored
        assert client.post(REGS, json=registration(), headers=secured.as_("key:operator")).status_code == 201

        refused_as(client.get(REGS, headers=reader), 403)
        one = f"{REGS}/{CSR}"
        nowhere = client.get(f"{REGS}/urn:ngsi-ld:ContextSourceRegistration:none", headers=secured.as_("key:admin"))
        answer = client.get(one, headers=reader)
        assert answer.status_code == nowhere.status_code == 404 and answer.json()["type"] == nowhere.json()["type"]
        refused_as(client.patch(one, json={"endpoint": "http://evil.example.org"}, headers=reader), 404)
        refused_as(client.delete(one, headers=reader), 404)
        assert client.get(one, headers=secured.as_("key:admin")).json()["endpoint"] == registration()["endpoint"]
        assert [e.detail["status"] for e in secured.audit.denied()] == [403, 403, 404, 404, 404]

    def test_reading_the_registry_is_not_changing_it(self, secured: Secured) -> None:
        client, catalog = secured.client, secured.as_("key:catalog")
        assert client.post(REGS, json=registration(), headers=secured.as_("key:admin")).status_code == 201
        assert [r["id"] for r in client.get(REGS, headers=catalog).json()] == [CSR]
        one = f"{REGS}/{CSR}"
        assert client.get(one, headers=catalog).status_code == 200
        refused_as(client.patch(one, json={"endpoint": "http://evil.example.org"}, headers=catalog), 403)
        refused_as(client.delete(one, headers=catalog), 403)
        refused_as(client.delete(f"{REGS}/urn:ngsi-ld:ContextSourceRegistration:none", headers=catalog), 404)
        assert client.get(one, headers=catalog).json()["endpoint"] == registration()["endpoint"]
        assert client.delete(one, headers=secured.as_("key:operator")).status_code == 204


class TestContexts:
    def test_anyone_reads_only_administrators_change(self, secured: Secured) -> None:
        client, reader = secured.client, secured.as_("key:reader")
        hosted = {"@context": {"speed": "https://example.org/speed"}}
        refused_as(client.post(CONTEXTS, json=hosted, headers=reader), 403)
        assert client.get(CONTEXTS, params={"kind": "Hosted"}, headers=secured.as_("key:admin")).json() == []
        made = client.post(CONTEXTS, json=hosted, headers=secured.as_("key:operator"))
        assert made.status_code == 201
        local = made.headers["location"].rsplit("/", 1)[1]
        listed = client.get(CONTEXTS, params={"kind": "Hosted"}, headers=reader)
        assert listed.status_code == 200 and len(listed.json()) == 1
        assert client.get(f"{CONTEXTS}/{local}", headers=reader).json() == hosted
        refused_as(client.delete(f"{CONTEXTS}/{local}", headers=reader), 403)
        assert client.get(f"{CONTEXTS}/{local}", headers=reader).status_code == 200
        assert client.delete(f"{CONTEXTS}/{local}", headers=secured.as_("key:operator")).status_code == 204
        assert {e.detail["resource"] for e in secured.audit.denied()} == {"context"}


class TestIotProvisioning:
    GROUP = {"apikey": "k1", "entity_type": "WeatherObserved", "resource": "/iot/d"}
    DEVICE = {"device_id": "ws-1", "entity_name": "urn:ngsi-ld:WeatherObserved:ws-1", "transport": "HTTP"}

    def test_provisioning_is_administering(self, secured: Secured) -> None:
        client, city = secured.client, {"fiware-service": "city"}
        secured.principal("iotreader", tenants=("city",), types={BUILDING})
        secured.principal("outsider", tenants=("elsewhere",), administer={"iot"})
        reader = {**city, **secured.as_("key:iotreader")}
        refused_as(client.post("/iot/services", json={"services": [self.GROUP]}, headers=reader), 403)
        refused_as(client.get("/iot/services", headers=reader), 403)  # apikeys are secrets of the tenant
        operator = {**city, **secured.as_("key:admin")}
        assert client.post("/iot/services", json={"services": [self.GROUP]}, headers=operator).status_code == 201
        assert client.post("/iot/devices", json={"devices": [self.DEVICE]}, headers=operator).status_code == 201

        refused_as(client.get("/iot/devices", headers=reader), 403)
        refused_as(client.get("/iot/devices/ws-1", headers=reader), 403)
        refused_as(client.delete("/iot/devices/ws-1", headers=reader), 403)
        refused_as(client.delete("/iot/services", params={"apikey": "k1"}, headers=reader), 403)
        outsider = client.get("/iot/devices/ws-1", headers={**city, **secured.as_("key:outsider")})
        assert outsider.status_code == 404 and outsider.json()["type"].endswith("NonexistentTenant")
        assert client.get("/iot/devices", headers=operator).json()["count"] == 1
        assert client.get("/iot/services", headers=operator).json()["count"] == 1
        assert len(secured.audit.denied()) == 7


class TestTemporalDeletes:
    def _history(self, secured: Secured) -> None:
        for entity_id, kind in (("urn:ngsi-ld:Building:1", "Building"), ("urn:ngsi-ld:Vault:1", "Vault")):
            body = {
                "id": entity_id,
                "type": kind,
                "name": [{"type": "Property", "value": "a", "observedAt": "2026-01-01T00:00:00Z"}],
                "height": [{"type": "Property", "value": 1, "observedAt": "2026-01-01T00:00:00Z"}],
            }
            assert secured.client.post(TEMPORAL, json=body, headers=secured.as_("key:admin")).status_code == 201

    def test_what_the_caller_cannot_see_has_no_history(self, secured: Secured) -> None:
        self._history(secured)
        client, reader = secured.client, secured.as_("key:reader")
        building, vault = f"{TEMPORAL}/urn:ngsi-ld:Building:1", f"{TEMPORAL}/urn:ngsi-ld:Vault:1"
        nowhere = client.delete(f"{TEMPORAL}/urn:ngsi-ld:Vault:none", headers=reader)
        refused_as(nowhere, 404)
        refused_as(client.delete(vault, headers=reader), 404)  # invisible: as if it had no history
        refused_as(client.delete(f"{building}/attrs/height", headers=reader), 404)  # an attribute it may not read
        refused_as(client.delete(f"{building}/attrs/name", headers=reader), 403)  # visible, not its to delete
        refused_as(client.delete(building, headers=reader), 403)
        admin = secured.as_("key:admin")
        assert set(client.get(building, headers=admin).json()) >= {"name", "height"}
        assert client.get(vault, headers=admin).status_code == 200
        assert len(secured.audit.denied()) == 4  # the one that does not exist is no refusal

        writer = secured.as_("key:writer")
        refused_as(client.delete(f"{building}/attrs/height", headers=writer), 404)
        assert client.delete(f"{building}/attrs/name", headers=writer).status_code == 204
        assert client.delete(building, headers=writer).status_code == 204


class TestPurge:
    def _city(self, secured: Secured) -> None:
        entities = [
            {"id": f"urn:ngsi-ld:{kind}:{n}", "type": kind, "name": {"type": "Property", "value": "x"}}
            | {"height": {"type": "Property", "value": 200}}
            for kind in ("Building", "Vault")
            for n in (1, 2)
        ]
        response = secured.client.post(
            f"{BASE}/entityOperations/create", json=entities, headers=secured.as_("key:admin")
        )
        assert response.status_code == 201, response.text

    def _left(self, secured: Secured, kind: str) -> list[dict[str, Any]]:
        response = secured.client.get(ENTITIES, params={"type": kind}, headers=secured.as_("key:admin"))
        return list(response.json())

    def test_a_purge_touches_only_what_the_caller_may(self, secured: Secured) -> None:
        self._city(secured)
        client, writer = secured.client, secured.as_("key:writer")
        refused_as(client.delete(ENTITIES, params={"type": "Building"}, headers=secured.as_("key:reader")), 403)
        assert len(self._left(secured, "Building")) == 2  # nothing deleted

        assert client.delete(ENTITIES, params={"type": "Vault"}, headers=writer).status_code == 204
        assert len(self._left(secured, "Vault")) == 2  # invisible to the writer: untouched
        assert (
            client.delete(ENTITIES, params={"type": "Building", "q": "height>100"}, headers=writer).status_code == 204
        )
        assert len(self._left(secured, "Building")) == 2  # a q on a hidden attribute selects nothing
        assert client.delete(ENTITIES, params={"type": "Building", "keep": "id"}, headers=writer).status_code == 204
        left = self._left(secured, "Building")
        assert [set(e) - {"id", "type"} for e in left] == [{"height"}, {"height"}]  # hidden ones are kept
        assert client.delete(ENTITIES, params={"type": "Building"}, headers=writer).status_code == 204
        assert self._left(secured, "Building") == []
