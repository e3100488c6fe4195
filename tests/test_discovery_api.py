"""The discovery API (NGSI-LD 5.7.5-5.7.10): /types, /types/{type}, /attributes, /attributes/{attr}
through the in-process client: exact member sets, compaction with the request's Link @context,
multi-typed entities, tenants and every error path."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.testclient import TestClient

BASE = "/ngsi-ld/v1"
TYPES = BASE + "/types"
ATTRIBUTES = BASE + "/attributes"
ENTITIES = BASE + "/entities"
CONTEXTS = BASE + "/jsonldContexts"
ORIGIN = "http://127.0.0.1:1026"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"
T = "https://test.example/context#"
TERMS = {
    name: T + name
    for name in ("Building", "Vehicle", "brandName", "name", "subCategory", "airQualityLevel", "almostFull")
}


def building(entity_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": entity_id,
        "type": "Building",
        "name": {"type": "Property", "value": "Eiffel Tower"},
        "subCategory": {"type": "Property", "value": "tourism"},
        "airQualityLevel": {"type": "Property", "value": 4, "unitCode": "C62", "observedAt": "2020-09-09T16:40:00Z"},
        "almostFull": {"type": "Property", "value": False},
        **extra,
    }


VEHICLE = {
    "id": "urn:ngsi-ld:Vehicle:V1",
    "type": "Vehicle",
    "brandName": {"type": "Property", "value": "Mercedes"},
    "isParked": {
        "type": "Relationship",
        "object": "urn:ngsi-ld:OffStreetParking:Downtown1",
        "providedBy": {"type": "Relationship", "object": "urn:ngsi-ld:Person:Bob"},
    },
}


def link(url: str) -> dict[str, str]:
    return {"Link": f'<{url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'}


@pytest.fixture
def ctx(client: TestClient) -> dict[str, str]:
    """A Link header to a hosted context defining the test terms (Building, name, ...)."""
    response = client.post(CONTEXTS, json={"@context": TERMS})
    assert response.status_code == 201, response.text
    return link(ORIGIN + response.headers["location"])


def create(client: TestClient, entity: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    response = client.post(ENTITIES, json=entity, headers=headers or {})
    assert response.status_code == 201, response.text


def delete(client: TestClient, entity_id: str, headers: dict[str, str] | None = None) -> None:
    response = client.delete(f"{ENTITIES}/{quote(entity_id, safe='')}", headers=headers or {})
    assert response.status_code == 204, response.text


@pytest.fixture
def city(client: TestClient, ctx: dict[str, str]) -> dict[str, str]:
    """Two Buildings and a Vehicle, created with the test context; returns the Link header."""
    create(client, building("urn:ngsi-ld:Building:B1"), ctx)
    create(client, building("urn:ngsi-ld:Building:B2"), ctx)
    create(client, VEHICLE, ctx)
    return ctx


def assert_problem(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == ERRORS + kind, body
    assert body["title"]


def without_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "id"}


# -- /types ---------------------------------------------------------------------------------------
def test_empty_broker_lists_nothing(client: TestClient) -> None:
    for path in (TYPES, TYPES + "/"):
        body = client.get(path).json()
        assert body["id"].startswith("urn:ngsi-ld:EntityTypeList:")
        assert without_id(body) == {"type": "EntityTypeList", "typeList": []}
    assert client.get(TYPES, params={"details": "true"}).json() == []
    body = client.get(ATTRIBUTES).json()
    assert body["id"].startswith("urn:ngsi-ld:AttributeList:")
    assert without_id(body) == {"type": "AttributeList", "attributeList": []}
    assert client.get(ATTRIBUTES, params={"details": "true"}).json() == []


def test_type_list_without_link_gives_expanded_iris(client: TestClient, city: dict[str, str]) -> None:
    for path in (TYPES, TYPES + "/"):
        response = client.get(path, params={"details": "false"})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert "@context" not in response.json()
        assert response.json()["typeList"] == [T + "Building", T + "Vehicle"]


def test_type_list_with_link_is_compacted(client: TestClient, city: dict[str, str]) -> None:
    body = client.get(TYPES + "/", params={"details": "false"}, headers=city).json()
    assert without_id(body) == {"type": "EntityTypeList", "typeList": ["Building", "Vehicle"]}


def test_type_details_without_link(client: TestClient, city: dict[str, str]) -> None:
    body = client.get(TYPES + "/", params={"details": "true"}).json()
    assert body == [
        {
            "id": T + "Building",
            "type": "EntityType",
            "typeName": T + "Building",
            "attributeNames": [T + "airQualityLevel", T + "almostFull", T + "name", T + "subCategory"],
        },
        {
            "id": T + "Vehicle",
            "type": "EntityType",
            "typeName": T + "Vehicle",
            "attributeNames": [T + "brandName", "isParked"],  # isParked is in the core @vocab
        },
    ]


def test_type_details_with_link_keep_ids_expanded(client: TestClient, city: dict[str, str]) -> None:
    body = client.get(TYPES, params={"details": "true"}, headers=city).json()
    assert body == [
        {
            "id": T + "Building",
            "type": "EntityType",
            "typeName": "Building",
            "attributeNames": ["airQualityLevel", "almostFull", "name", "subCategory"],
        },
        {"id": T + "Vehicle", "type": "EntityType", "typeName": "Vehicle", "attributeNames": ["brandName", "isParked"]},
    ]


def test_type_without_attributes_is_listed_with_no_attribute_names(client: TestClient) -> None:
    create(client, {"id": "urn:ngsi-ld:Thing:1", "type": "Thing"})
    assert client.get(TYPES, params={"details": "true"}).json() == [
        {"id": DEFAULT + "Thing", "type": "EntityType", "typeName": "Thing", "attributeNames": []}
    ]
    body = client.get(TYPES + "/Thing").json()
    assert body == {
        "id": DEFAULT + "Thing",
        "type": "EntityTypeInfo",
        "typeName": "Thing",
        "entityCount": 1,
        "attributeDetails": [],
    }


# -- /types/{type} --------------------------------------------------------------------------------
EXPECTED_TYPE_INFO = {
    "id": T + "Building",
    "type": "EntityTypeInfo",
    "typeName": "Building",
    "entityCount": 2,
    "attributeDetails": [
        {"id": T + attr, "type": "Attribute", "attributeName": attr, "attributeTypes": ["Property"]}
        for attr in ("airQualityLevel", "almostFull", "name", "subCategory")
    ],
}


@pytest.mark.parametrize(
    "name", ["Building", quote(T + "Building", safe=""), "https:%2F%2Ftest.example%2Fcontext%23Building"]
)
def test_type_info_by_term_or_encoded_iri(client: TestClient, city: dict[str, str], name: str) -> None:
    response = client.get(f"{TYPES}/{name}", headers=city)
    assert response.status_code == 200, response.text
    assert response.json() == EXPECTED_TYPE_INFO


def test_type_info_without_link_compacts_to_iris(client: TestClient, city: dict[str, str]) -> None:
    body = client.get(f"{TYPES}/{quote(T + 'Vehicle', safe='')}").json()
    assert body == {
        "id": T + "Vehicle",
        "type": "EntityTypeInfo",
        "typeName": T + "Vehicle",
        "entityCount": 1,
        "attributeDetails": [
            {
                "id": T + "brandName",
                "type": "Attribute",
                "attributeName": T + "brandName",
                "attributeTypes": ["Property"],
            },
            {
                "id": DEFAULT + "isParked",
                "type": "Attribute",
                "attributeName": "isParked",
                "attributeTypes": ["Relationship"],
            },
        ],
    }


def test_type_info_of_a_term_the_context_does_not_define_is_not_found(client: TestClient, city: dict[str, str]) -> None:
    # without the Link, Building means default-context:Building, which no entity has
    assert_problem(client.get(TYPES + "/Building"), 404, "ResourceNotFound")
    assert_problem(client.get(TYPES + "/NoSuchType12345", headers=city), 404, "ResourceNotFound")


def test_type_info_lists_every_attribute_type_used_under_one_name(client: TestClient) -> None:
    create(client, {"id": "urn:ngsi-ld:Sensor:1", "type": "Sensor", "reading": {"type": "Property", "value": 1}})
    create(
        client,
        {"id": "urn:ngsi-ld:Sensor:2", "type": "Sensor", "reading": {"type": "Relationship", "object": "urn:x:1"}},
    )
    body = client.get(TYPES + "/Sensor").json()
    assert body["entityCount"] == 2
    assert body["attributeDetails"] == [
        {
            "id": DEFAULT + "reading",
            "type": "Attribute",
            "attributeName": "reading",
            "attributeTypes": ["Property", "Relationship"],
        }
    ]


# -- multi-typed entities ---------------------------------------------------------------------------
def test_multi_typed_entity_counts_under_each_type(client: TestClient) -> None:
    create(
        client,
        {"id": "urn:ngsi-ld:Thing:M", "type": ["Building", "Shop"], "floors": {"type": "Property", "value": 3}},
    )
    create(client, {"id": "urn:ngsi-ld:Thing:S", "type": "Shop", "owner": {"type": "Property", "value": "Ann"}})
    assert client.get(TYPES).json()["typeList"] == ["Building", "Shop"]
    assert client.get(TYPES, params={"details": "true"}).json() == [
        {"id": DEFAULT + "Building", "type": "EntityType", "typeName": "Building", "attributeNames": ["floors"]},
        {"id": DEFAULT + "Shop", "type": "EntityType", "typeName": "Shop", "attributeNames": ["floors", "owner"]},
    ]
    assert client.get(TYPES + "/Shop").json()["entityCount"] == 2
    assert client.get(TYPES + "/Building").json()["entityCount"] == 1
    floors = client.get(ATTRIBUTES + "/floors").json()
    assert floors["typeNames"] == ["Building", "Shop"]
    assert floors["attributeCount"] == 1


# -- /attributes ------------------------------------------------------------------------------------
def test_attribute_list_without_and_with_link(client: TestClient, city: dict[str, str]) -> None:
    body = client.get(ATTRIBUTES, params={"details": "false"}).json()
    # sorted by expanded IRI: https://test.example/... before https://uri.etsi.org/...
    assert body["attributeList"] == [
        T + "airQualityLevel",
        T + "almostFull",
        T + "brandName",
        T + "name",
        T + "subCategory",
        "isParked",
    ]
    body = client.get(ATTRIBUTES + "/", params={"details": "false"}, headers=city).json()
    assert without_id(body) == {
        "type": "AttributeList",
        "attributeList": ["airQualityLevel", "almostFull", "brandName", "name", "subCategory", "isParked"],
    }


def test_attribute_list_has_only_top_level_attributes(client: TestClient, city: dict[str, str]) -> None:
    names = client.get(ATTRIBUTES, headers=city).json()["attributeList"]
    for member in (
        "providedBy",
        "unitCode",
        "observedAt",
        "id",
        "type",
        "scope",
        "createdAt",
        "modifiedAt",
        "deletedAt",
    ):
        assert member not in names


def test_attribute_details(client: TestClient, city: dict[str, str]) -> None:
    body = client.get(ATTRIBUTES, params={"details": "true"}, headers=city).json()
    assert body[5] == {
        "id": DEFAULT + "isParked",
        "type": "Attribute",
        "attributeName": "isParked",
        "typeNames": ["Vehicle"],
    }
    assert body[0] == {
        "id": T + "airQualityLevel",
        "type": "Attribute",
        "attributeName": "airQualityLevel",
        "typeNames": ["Building"],
    }
    assert len(body) == 6
    assert all(set(item) == {"id", "type", "attributeName", "typeNames"} for item in body)
    expanded = client.get(ATTRIBUTES, params={"details": "true"}).json()
    assert expanded[0]["attributeName"] == T + "airQualityLevel"
    assert expanded[0]["typeNames"] == [T + "Building"]


# -- /attributes/{attr} -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["airQualityLevel", quote(T + "airQualityLevel", safe="")])
def test_attribute_info_by_term_or_encoded_iri(client: TestClient, city: dict[str, str], name: str) -> None:
    response = client.get(f"{ATTRIBUTES}/{name}", headers=city)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": T + "airQualityLevel",
        "type": "Attribute",
        "attributeName": "airQualityLevel",
        "attributeCount": 2,
        "attributeTypes": ["Property"],
        "typeNames": ["Building"],
    }


def test_attribute_count_counts_instances_per_dataset_id(client: TestClient) -> None:
    speed = [
        {"type": "Property", "value": 1},
        {"type": "Property", "value": 2, "datasetId": "urn:ngsi-ld:Dataset:gps"},
    ]
    create(client, {"id": "urn:ngsi-ld:Vehicle:D", "type": "Vehicle", "speed": speed})
    body = client.get(ATTRIBUTES + "/speed").json()
    assert body["attributeCount"] == 2
    assert body["typeNames"] == ["Vehicle"]


def test_unknown_attributes_and_entity_members_are_not_found(client: TestClient, city: dict[str, str]) -> None:
    assert_problem(client.get(ATTRIBUTES + "/airQualityLevel"), 404, "ResourceNotFound")
    assert_problem(client.get(ATTRIBUTES + "/noSuchAttribute1", headers=city), 404, "ResourceNotFound")
    for member in ("id", "type", "scope", "createdAt", "modifiedAt", "deletedAt", "providedBy"):
        assert_problem(client.get(f"{ATTRIBUTES}/{member}", headers=city), 404, "ResourceNotFound")


# -- deletion, tenants, negotiation, errors ---------------------------------------------------------
def test_deleted_entities_vanish_from_discovery(client: TestClient, city: dict[str, str]) -> None:
    delete(client, "urn:ngsi-ld:Vehicle:V1")
    assert client.get(TYPES, headers=city).json()["typeList"] == ["Building"]
    assert_problem(client.get(TYPES + "/Vehicle", headers=city), 404, "ResourceNotFound")
    assert "brandName" not in client.get(ATTRIBUTES, headers=city).json()["attributeList"]
    delete(client, "urn:ngsi-ld:Building:B1")
    assert client.get(TYPES + "/Building", headers=city).json()["entityCount"] == 1
    assert client.get(ATTRIBUTES + "/name", headers=city).json()["attributeCount"] == 1


def test_discovery_is_scoped_to_the_tenant(client: TestClient) -> None:
    a, b = {"NGSILD-Tenant": "tenanta"}, {"NGSILD-Tenant": "tenantb"}
    create(client, {"id": "urn:ngsi-ld:X:1", "type": "TenantAType", "p": {"type": "Property", "value": 1}}, a)
    create(client, {"id": "urn:ngsi-ld:X:1", "type": "Building"}, b)
    assert client.get(TYPES, headers=a).json()["typeList"] == ["TenantAType"]
    assert client.get(TYPES, headers=b).json()["typeList"] == ["Building"]
    assert client.get(TYPES).json()["typeList"] == []
    assert_problem(client.get(TYPES + "/TenantAType", headers=b), 404, "ResourceNotFound")
    assert client.get(ATTRIBUTES, headers=b).json()["attributeList"] == []
    assert_problem(client.get(ATTRIBUTES + "/p", headers=b), 404, "ResourceNotFound")
    assert client.get(ATTRIBUTES + "/p", headers=a).json()["attributeCount"] == 1
    response = client.get(TYPES, headers=a)
    assert response.headers["NGSILD-Tenant"] == "tenanta"


@pytest.mark.parametrize(
    "path", [TYPES, TYPES + "/Building", ATTRIBUTES, ATTRIBUTES + "/name", TYPES + "/?details=true"]
)
def test_unknown_tenant_is_not_found(client: TestClient, path: str) -> None:
    assert_problem(client.get(path, headers={"NGSILD-Tenant": "nosuchtenant"}), 404, "NonexistentTenant")


def test_ld_json_puts_the_context_in_the_body(client: TestClient, city: dict[str, str]) -> None:
    headers = {**city, "Accept": "application/ld+json"}
    response = client.get(TYPES, headers=headers)
    assert response.headers["content-type"] == "application/ld+json"
    assert "@context" in response.json()
    assert "link" not in response.headers
    details = client.get(ATTRIBUTES, params={"details": "true"}, headers=headers).json()
    assert all("@context" in item for item in details)
    info = client.get(TYPES + "/Building", headers=headers).json()
    assert info["typeName"] == "Building"
    assert "@context" in info


def test_json_gives_the_context_in_a_link_header(client: TestClient, city: dict[str, str]) -> None:
    response = client.get(ATTRIBUTES + "/name", headers={**city, "Accept": "application/json"})
    assert response.headers["content-type"] == "application/json"
    assert CONTEXT_REL in response.headers["link"]
    assert "@context" not in response.json()


def test_unacceptable_media_type(client: TestClient) -> None:
    assert_problem(client.get(TYPES, headers={"Accept": "text/html"}), 406, "NotAcceptable")


@pytest.mark.parametrize(
    "path",
    [
        TYPES + "?limit=5",
        TYPES + "/?count=true",
        TYPES + "/Building?details=true",
        ATTRIBUTES + "?limit=5",
        ATTRIBUTES + "/temperature?details=true",
    ],
)
def test_undefined_query_parameters_are_invalid_requests(client: TestClient, path: str) -> None:
    # checked before the resource is looked up: these types and attributes do not exist
    assert_problem(client.get(path), 400, "InvalidRequest")


def test_accepted_query_parameters(client: TestClient, city: dict[str, str]) -> None:
    assert client.get(TYPES, params={"local": "true"}).status_code == 200
    assert client.get(ATTRIBUTES, params={"local": "true", "count": "true"}).status_code == 200
    assert client.get(TYPES + "/Building", params={"local": "true"}, headers=city).status_code == 200
    assert client.get(ATTRIBUTES + "/name", params={"local": "true"}, headers=city).status_code == 200
    assert_problem(client.get(TYPES, params={"details": "maybe"}), 400, "BadRequestData")


def test_only_get_is_allowed(client: TestClient) -> None:
    assert_problem(client.post(TYPES, json={}), 405, "MethodNotAllowed")
    assert_problem(client.delete(ATTRIBUTES + "/name"), 405, "MethodNotAllowed")
