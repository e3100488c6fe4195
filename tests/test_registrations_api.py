"""The /ngsi-ld/v1/csourceRegistrations API (spec 5.9, 5.10): create, retrieve, query, update and
delete, validation, content negotiation, lazy expiry; and an empty /csourceSubscriptions listing
(tests/test_csource_registrations.py and tests/test_csource_subscriptions.py cover the rest)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from starlette.testclient import TestClient

BASE = "/ngsi-ld/v1/csourceRegistrations"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
EX = "https://example.org/city#"
TERMS = {"Vehicle": EX + "Vehicle", "speed": EX + "speed", "isParked": EX + "isParked"}
CSR_ID = "urn:ngsi-ld:ContextSourceRegistration:test1"


def link(url: str) -> dict[str, str]:
    return {"Link": f'<{url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'}


def registration(**members: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": CSR_ID,
        "type": "ContextSourceRegistration",
        "information": [
            {
                "entities": [{"id": "urn:ngsi-ld:Vehicle:A1", "type": "Vehicle"}],
                "propertyNames": ["speed"],
                "relationshipNames": ["isParked"],
            }
        ],
        "endpoint": "http://my.csource.example.org:1026",
    }
    body.update(members)
    return {k: v for k, v in body.items() if v is not None}


def assert_problem(response: httpx.Response, status: int, type_name: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["type"] == ERRORS + type_name


def hosted_context(client: TestClient) -> str:
    response = client.post("/ngsi-ld/v1/jsonldContexts", json={"@context": TERMS})
    assert response.status_code == 201, response.text
    return "http://127.0.0.1:1026" + response.headers["location"]


def in_seconds(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_create_retrieve_delete(client: TestClient) -> None:
    response = client.post(BASE, json=registration(registrationName="cars", mode="inclusive"))
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"{BASE}/{CSR_ID}"
    body = client.get(f"{BASE}/{CSR_ID}").json()
    assert body["id"] == CSR_ID and body["type"] == "ContextSourceRegistration"
    assert body["registrationName"] == "cars" and body["mode"] == "inclusive"
    assert body["endpoint"] == "http://my.csource.example.org:1026"
    # no @context given: the names were expanded and read back with the core context
    assert body["information"][0]["entities"] == [{"id": "urn:ngsi-ld:Vehicle:A1", "type": "Vehicle"}]
    assert body["information"][0]["propertyNames"] == ["speed"]
    assert_problem(client.post(BASE, json=registration()), 409, "AlreadyExists")
    assert client.delete(f"{BASE}/{CSR_ID}").status_code == 204
    assert_problem(client.get(f"{BASE}/{CSR_ID}"), 404, "ResourceNotFound")
    assert_problem(client.delete(f"{BASE}/{CSR_ID}"), 404, "ResourceNotFound")


def test_generated_id_and_trailing_slash(client: TestClient) -> None:
    response = client.post(BASE + "/", json=registration(id=None))
    assert response.status_code == 201, response.text
    location = response.headers["location"]
    assert location.startswith(f"{BASE}/urn:ngsi-ld:ContextSourceRegistration:")
    assert client.get(location).status_code == 200


def test_names_expanded_with_the_request_context(client: TestClient) -> None:
    url = hosted_context(client)
    body = {**registration(), "@context": url}
    response = client.post(BASE, json=body, headers={"Content-Type": "application/ld+json"})
    assert response.status_code == 201, response.text
    expanded = client.get(f"{BASE}/{CSR_ID}").json()["information"][0]
    assert expanded["entities"][0]["type"] == EX + "Vehicle"
    assert expanded["propertyNames"] == [EX + "speed"]
    compacted = client.get(f"{BASE}/{CSR_ID}", headers=link(url))
    assert compacted.json()["information"][0]["entities"][0]["type"] == "Vehicle"
    assert "rel=" in compacted.headers["link"]
    found = client.get(BASE, params={"type": "Vehicle"}, headers=link(url)).json()
    assert [r["id"] for r in found] == [CSR_ID]
    assert client.get(BASE, params={"type": "Vehicle"}).json() == []  # core context: another IRI


def test_unretrievable_context_is_504(client: TestClient) -> None:
    missing = "http://127.0.0.1:1026/ngsi-ld/v1/jsonldContexts/" + "0" * 32
    response = client.post(BASE, json=registration(), headers=link(missing))
    assert_problem(response, 504, "LdContextNotAvailable")
    assert_problem(client.get(f"{BASE}/{CSR_ID}"), 404, "ResourceNotFound")


def test_query_filters_and_paging(client: TestClient) -> None:
    other = {
        "id": "urn:ngsi-ld:ContextSourceRegistration:test2",
        "information": [{"entities": [{"idPattern": ".*downtown$", "type": "OffStreetParking"}]}],
    }
    for body in (registration(), registration(**other)):
        assert client.post(BASE, json=body).status_code == 201

    def ids(**params: str) -> list[str]:
        response = client.get(BASE, params=params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()]

    assert_problem(client.get(BASE), 400, "BadRequestData")  # a query selects something (5.10.2.4)
    assert ids(type="Vehicle") == [CSR_ID]
    assert ids(type="Vehicle,OffStreetParking") == [CSR_ID, other["id"]]
    assert ids(id="urn:ngsi-ld:Vehicle:A1") == [CSR_ID]
    assert ids(id="urn:ngsi-ld:OffStreetParking:downtown") == [other["id"]]
    assert ids(idPattern="^urn:ngsi-ld:Vehicle:") == [CSR_ID, other["id"]]
    assert ids(attrs="speed") == [CSR_ID, other["id"]]  # test2 names no attributes: it has them all
    assert ids(type="Vehicle", attrs="brandName") == []
    response = client.get(BASE, params={"type": "Vehicle,OffStreetParking", "limit": "1", "count": "true"})
    assert response.headers["ngsild-results-count"] == "2"
    assert [r["id"] for r in response.json()] == [CSR_ID]
    assert 'rel="next"' in response.headers["link"]
    assert ids(type="Vehicle,OffStreetParking", offset="1") == [other["id"]]
    assert ids(q="speed>1") == []  # q is on the registrations' own properties
    assert_problem(client.get(BASE, params={"options": "sysAttrs", "type": "Vehicle"}), 400, "InvalidRequest")
    assert_problem(client.get(BASE, params={"idPattern": "("}), 400, "BadRequestData")


def test_patch_merges_and_revalidates(client: TestClient) -> None:
    assert client.post(BASE, json=registration(description="old")).status_code == 201
    patch = {"description": "new", "endpoint": "http://other.example.org", "registrationName": "n"}
    response = client.patch(f"{BASE}/{CSR_ID}", json=patch)
    assert response.status_code == 204, response.text
    body = client.get(f"{BASE}/{CSR_ID}").json()
    assert (body["description"], body["endpoint"], body["registrationName"]) == ("new", patch["endpoint"], "n")
    assert body["information"][0]["propertyNames"] == ["speed"]
    assert client.patch(f"{BASE}/{CSR_ID}", json={"description": None}).status_code == 204
    assert "description" not in client.get(f"{BASE}/{CSR_ID}").json()
    assert_problem(client.patch(f"{BASE}/{CSR_ID}", json={"endpoint": "not a uri"}), 400, "BadRequestData")
    assert_problem(client.patch(f"{BASE}/{CSR_ID}", json={"endpoint": None}), 400, "BadRequestData")
    assert_problem(client.patch(f"{BASE}/{CSR_ID}", json={"expiresAt": "2020-01-01T00:00:00Z"}), 400, "BadRequestData")
    assert_problem(client.patch(f"{BASE}/{CSR_ID}", json={"information": []}), 400, "BadRequestData")
    assert_problem(
        client.patch(f"{BASE}/urn:ngsi-ld:ContextSourceRegistration:none", json=patch), 404, "ResourceNotFound"
    )
    assert client.get(f"{BASE}/{CSR_ID}").json()["endpoint"] == patch["endpoint"]


def test_validation_errors(client: TestClient) -> None:
    bad = [
        registration(expiresAt="2020-01-01T00:00:00Z"),
        registration(expiresAt="2026-13-45T00:00:00Z"),
        registration(endpoint=None),
        registration(endpoint="not a uri"),
        registration(type="Registration"),
        registration(type=None),
        registration(id="not a uri"),
        registration(information=[]),
        registration(information=[{"entities": [{"id": "urn:ngsi-ld:Vehicle:A1"}]}]),
        registration(information=[{}]),
    ]
    for body in bad:
        assert_problem(client.post(BASE, json=body), 400, "BadRequestData")
    assert_problem(client.post(BASE, json=[registration()]), 400, "BadRequestData")
    assert_problem(client.get(f"{BASE}/not-a-uri"), 400, "BadRequestData")
    assert client.get(BASE, params={"type": "Vehicle"}).json() == []


def test_content_negotiation(client: TestClient) -> None:
    assert client.post(BASE, json=registration()).status_code == 201
    for media in ("application/xml", "application/geo+json"):
        assert client.get(BASE, params={"type": "Vehicle"}, headers={"Accept": media}).status_code == 406
        assert client.get(f"{BASE}/{CSR_ID}", headers={"Accept": media}).status_code == 406
    response = client.get(BASE, params={"id": CSR_ID}, headers={"Accept": "*/*"})
    assert response.headers["content-type"] == "application/json" and "link" in response.headers
    response = client.get(f"{BASE}/{CSR_ID}", headers={"Accept": "application/ld+json"})
    assert response.headers["content-type"] == "application/ld+json" and "@context" in response.json()
    response = client.post(BASE, content=b"<csr/>", headers={"Content-Type": "application/xml"})
    assert response.status_code == 415
    response = client.patch(f"{BASE}/{CSR_ID}", content=b"<csr/>", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415


def test_expired_registration_behaves_as_deleted(client: TestClient) -> None:
    assert client.post(BASE, json=registration(expiresAt=in_seconds(1))).status_code == 201
    assert client.get(f"{BASE}/{CSR_ID}").status_code == 200
    time.sleep(1.2)
    assert_problem(client.get(f"{BASE}/{CSR_ID}"), 404, "ResourceNotFound")
    assert client.get(BASE, params={"type": "Vehicle"}).json() == []
    assert client.post(BASE, json=registration()).status_code == 201  # its id is free again


def test_tenants(client: TestClient) -> None:
    headers = {"NGSILD-Tenant": "fleet"}
    assert_problem(client.get(BASE, headers=headers), 404, "NonexistentTenant")
    assert client.post(BASE, json=registration(), headers=headers).status_code == 201
    assert [r["id"] for r in client.get(BASE, params={"type": "Vehicle"}, headers=headers).json()] == [CSR_ID]
    assert client.get(BASE, params={"type": "Vehicle"}).json() == []


def test_csource_subscriptions_listing_only(client: TestClient) -> None:
    response = client.get("/ngsi-ld/v1/csourceSubscriptions")
    assert response.status_code == 200 and response.json() == []
    assert client.get("/ngsi-ld/v1/csourceSubscriptions", headers={"Accept": "application/xml"}).status_code == 406
    response = client.get("/ngsi-ld/v1/csourceSubscriptions/urn:ngsi-ld:Subscription:x")
    assert_problem(response, 404, "ResourceNotFound")
