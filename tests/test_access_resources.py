"""Registrations and hosted @contexts under access control, in-process with the
test Authorizer of tests/access_helpers.py, on both back-ends: what the caller may not see answers
404 exactly as if it did not exist, what it may see but not change 403, every refusal is audited,
and nothing is changed by a refused request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from access_helpers import DEFAULT, Secured, secured_app
from cityos.settings import Settings

BASE = "/ngsi-ld/v1"
REGS = BASE + "/csourceRegistrations"
CONTEXTS = BASE + "/jsonldContexts"
FORBIDDEN = "urn:cityos:errors:AccessDenied"  # the one 403 (auth/errors.py)
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
        app.principal("operator", administer={"registration", "context"}, read_resources={"registration"})
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
    kind = FORBIDDEN if status == 403 else "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    assert response.json()["type"] == kind


class TestRegistrations:
    def test_a_reader_cannot_see_or_change_the_registry(self, secured: Secured) -> None:
        client, reader = secured.client, secured.as_("key:reader")
        refused_as(client.post(REGS, json=registration(), headers=reader), 403)
        stored = client.get(REGS, params={"type": "Vehicle"}, headers=secured.as_("key:admin"))
        assert stored.json() == []  # nothing stored
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
        assert [r["id"] for r in client.get(REGS, params={"type": "Vehicle"}, headers=catalog).json()] == [CSR]
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
