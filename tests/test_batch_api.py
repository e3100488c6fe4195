"""Batch entity operations (/ngsi-ld/v1/entityOperations/*): each entity stands alone, a malformed
request as a whole is refused before anything is written; checked against the database itself
(SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest
from starlette.testclient import TestClient

from backends import db_rows, stored_json
from cityos.app import create_app
from cityos.settings import Settings

CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
NULL = "urn:ngsi-ld:null"
ENTITIES = "/ngsi-ld/v1/entities"
BATCH = "/ngsi-ld/v1/entityOperations"
OPERATIONS = ["create", "upsert", "update", "merge", "delete"]
DATA = Path(__file__).parent / "data"


class Reply(Protocol):
    """What the tests read of a response (Starlette's TestClient and httpx return different classes)."""

    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def json(self) -> Any: ...


# -- helpers -------------------------------------------------------------------------------------
def assert_problem(response: Reply, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["type"] == ERRORS + kind, body
    assert body["status"] == status
    return body


def snapshot(settings: Settings) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    entities = db_rows(settings.database, "SELECT tenant, id, doc, modified_at FROM entities ORDER BY tenant, id")
    tenants = db_rows(settings.database, "SELECT name FROM tenants ORDER BY name")
    return entities, tenants


def stored(settings: Settings, tenant: str = "") -> dict[str, dict[str, Any]]:
    rows = db_rows(settings.database, "SELECT id, doc FROM entities WHERE tenant = ? ORDER BY pk", tenant)
    return {entity_id: stored_json(doc) for entity_id, doc in rows}


def key_values(client: TestClient, entity_id: str) -> dict[str, Any]:
    response = client.get(f"{ENTITIES}/{entity_id}", params={"options": "keyValues"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def batch(client: TestClient, operation: str, body: Any, **kwargs: Any) -> Reply:
    return client.post(f"{BATCH}/{operation}", json=body, **kwargs)


def error_types(response: Reply) -> dict[str, str]:
    """entityId -> error type of a 207 BatchOperationResult."""
    assert response.status_code == 207, response.text
    result = response.json()
    assert set(result) == {"success", "errors"}
    out = {}
    for item in result["errors"]:
        assert set(item) >= {"entityId", "error"}
        assert item["error"]["type"].startswith(ERRORS)
        assert isinstance(item["error"]["status"], int)
        out[item["entityId"]] = item["error"]["type"].removeprefix(ERRORS)
    return out


def car(number: int, **attrs: Any) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:Car:{number}", "type": "Car", **attrs}


@pytest.fixture
def three_cars(client: TestClient) -> list[str]:
    response = batch(client, "create", [car(1, speed=10, colour="red"), car(2, speed=20), car(3, speed=30)])
    assert response.status_code == 201, response.text
    return ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:2", "urn:ngsi-ld:Car:3"]


# -- create -------------------------------------------------------------------------------------
def test_batch_create_all_good(client: TestClient, settings: Settings) -> None:
    response = batch(client, "create", [car(1, speed=10), car(2, speed={"type": "Property", "value": 20}), car(3)])
    assert response.status_code == 201, response.text
    assert response.json() == ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:2", "urn:ngsi-ld:Car:3"]
    assert list(stored(settings)) == ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:2", "urn:ngsi-ld:Car:3"]
    assert key_values(client, "urn:ngsi-ld:Car:2") == {"id": "urn:ngsi-ld:Car:2", "type": "Car", "speed": 20}


def test_batch_create_mix_of_good_and_bad(client: TestClient, settings: Settings) -> None:
    response = batch(
        client,
        "create",
        [
            car(1, speed=10),
            {"id": "not a uri", "type": "Car"},
            car(2, speed=None),
            car(3, location={"type": "GeoProperty", "value": {"type": "Point", "coordinates": [500, 0]}}),
            car(4, **{"bad name": 1}),
            {"id": "urn:ngsi-ld:Car:5"},
            car(6, speed=60),
        ],
    )
    errors = error_types(response)
    assert response.json()["success"] == ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:6"]
    assert errors == {
        "not a uri": "BadRequestData",
        "urn:ngsi-ld:Car:2": "BadRequestData",
        "urn:ngsi-ld:Car:3": "BadRequestData",
        "urn:ngsi-ld:Car:4": "BadRequestData",
        "urn:ngsi-ld:Car:5": "BadRequestData",
    }
    # the bad ones are not stored, the good ones are
    assert list(stored(settings)) == ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:6"]
    assert key_values(client, "urn:ngsi-ld:Car:6")["speed"] == 60


def test_batch_create_items_that_are_not_objects(client: TestClient, settings: Settings) -> None:
    response = batch(client, "create", [car(1), "urn:ngsi-ld:Car:2", 42, [car(3)]])
    assert response.status_code == 207, response.text
    result = response.json()
    assert result["success"] == ["urn:ngsi-ld:Car:1"]
    assert len(result["errors"]) == 3
    assert {e["error"]["type"] for e in result["errors"]} == {ERRORS + "BadRequestData"}
    assert list(stored(settings)) == ["urn:ngsi-ld:Car:1"]


def test_batch_create_existing_entity(client: TestClient, settings: Settings, three_cars: list[str]) -> None:
    before = stored(settings)["urn:ngsi-ld:Car:1"]
    response = batch(client, "create", [car(1, speed=99), car(4, speed=40)])
    assert error_types(response) == {"urn:ngsi-ld:Car:1": "AlreadyExists"}
    assert response.json()["success"] == ["urn:ngsi-ld:Car:4"]
    assert stored(settings)["urn:ngsi-ld:Car:1"] == before
    assert key_values(client, "urn:ngsi-ld:Car:4")["speed"] == 40


def test_batch_create_duplicates_within_the_batch(client: TestClient, settings: Settings) -> None:
    response = batch(client, "create", [car(1, speed=1), car(1, speed=2), car(2)])
    assert error_types(response) == {"urn:ngsi-ld:Car:1": "AlreadyExists"}
    assert response.json()["success"] == ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:2"]
    assert list(stored(settings)) == ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:2"]
    assert key_values(client, "urn:ngsi-ld:Car:1")["speed"] == 1  # the first one won, nothing was merged


def test_batch_create_smart_data_models_examples(client: TestClient, settings: Settings) -> None:
    examples = []
    for name in ("OffStreetParking", "ParkingSpot"):
        example = json.loads((DATA / "smart-data-models" / f"{name}-example-normalized.jsonld").read_text())
        example.pop("@context")
        examples.append(example)
    response = batch(client, "create", examples)
    assert response.status_code == 201, response.text
    assert response.json() == [e["id"] for e in examples]
    for example in examples:
        got = client.get(f"{ENTITIES}/{example['id']}")
        assert got.json() == example


def test_batch_create_in_a_tenant(client: TestClient, settings: Settings) -> None:
    headers = {"NGSILD-Tenant": "porto"}
    response = batch(client, "create", [car(1), car(2)], headers=headers)
    assert response.status_code == 201, response.text
    assert response.headers["ngsild-tenant"] == "porto"
    assert list(stored(settings, "porto")) == ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:2"]
    assert stored(settings) == {}


def test_batch_create_ld_json_needs_a_context_per_entity(client: TestClient, settings: Settings) -> None:
    context = [{"Car": "https://example.org/Car"}, CORE]
    body = [{**car(1), "@context": context}, car(2), {**car(3), "@context": CORE}]
    response = client.post(
        f"{BATCH}/create", content=json.dumps(body).encode(), headers={"Content-Type": "application/ld+json"}
    )
    assert error_types(response) == {"urn:ngsi-ld:Car:2": "BadRequestData"}
    assert response.json()["success"] == ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:3"]
    docs = stored(settings)
    assert list(docs) == ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:3"]
    assert docs["urn:ngsi-ld:Car:1"]["type"] == ["https://example.org/Car"]
    assert docs["urn:ngsi-ld:Car:3"]["type"] == [DEFAULT + "Car"]


def test_batch_create_json_items_must_not_carry_a_context(client: TestClient, settings: Settings) -> None:
    response = batch(client, "create", [car(1), {**car(2), "@context": CORE}])
    assert error_types(response) == {"urn:ngsi-ld:Car:2": "BadRequestData"}
    assert list(stored(settings)) == ["urn:ngsi-ld:Car:1"]


# -- malformed requests as a whole ---------------------------------------------------------------
@pytest.mark.parametrize("operation", OPERATIONS)
def test_empty_batch_is_refused(client: TestClient, settings: Settings, three_cars: list[str], operation: str) -> None:
    before = snapshot(settings)
    assert_problem(batch(client, operation, []), 400, "BadRequestData")
    assert snapshot(settings) == before


@pytest.mark.parametrize("operation", OPERATIONS)
def test_batch_with_a_null_item_is_refused_whole(
    client: TestClient, settings: Settings, three_cars: list[str], operation: str
) -> None:
    before = snapshot(settings)
    items: list[Any] = (
        ["urn:ngsi-ld:Car:1", None] if operation == "delete" else [car(4, speed=4), car(1, speed=0), None]
    )
    assert_problem(batch(client, operation, items), 400, "BadRequestData")
    assert snapshot(settings) == before


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("body", [{"id": "urn:ngsi-ld:Car:9", "type": "Car"}, "urn:ngsi-ld:Car:9", 1, None])
def test_batch_that_is_not_an_array_is_refused(
    client: TestClient, settings: Settings, three_cars: list[str], operation: str, body: Any
) -> None:
    before = snapshot(settings)
    response = client.post(
        f"{BATCH}/{operation}", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400, "BadRequestData")
    assert snapshot(settings) == before


@pytest.mark.parametrize("operation", OPERATIONS)
def test_malformed_json_batch(client: TestClient, settings: Settings, three_cars: list[str], operation: str) -> None:
    before = snapshot(settings)
    response = client.post(
        f"{BATCH}/{operation}", content=b'[{"id": "urn:ngsi-ld:Car:9", ', headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400, "InvalidRequest")
    assert snapshot(settings) == before


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/merge-patch+json", None])
def test_batch_with_wrong_content_type(
    client: TestClient, settings: Settings, three_cars: list[str], operation: str, content_type: str | None
) -> None:
    before = snapshot(settings)
    items: list[Any] = ["urn:ngsi-ld:Car:1"] if operation == "delete" else [car(1, speed=0), car(9)]
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(f"{BATCH}/{operation}", content=json.dumps(items).encode(), headers=headers)
    assert_problem(response, 415, "UnsupportedMediaType")
    assert snapshot(settings) == before


@pytest.mark.parametrize("operation", OPERATIONS)
def test_batch_with_unknown_query_parameter(
    client: TestClient, settings: Settings, three_cars: list[str], operation: str
) -> None:
    before = snapshot(settings)
    items: list[Any] = ["urn:ngsi-ld:Car:1"] if operation == "delete" else [car(1, speed=0), car(9)]
    assert_problem(batch(client, operation, items, params={"bogus": "1"}), 400, "InvalidRequest")
    assert snapshot(settings) == before


@pytest.mark.parametrize("operation", ["create", "upsert", "update", "merge"])
def test_ld_json_batch_with_a_link_header_is_refused(
    client: TestClient, settings: Settings, three_cars: list[str], operation: str
) -> None:
    before = snapshot(settings)
    items = [{**car(1, speed=0), "@context": CORE}, {**car(9), "@context": CORE}]
    response = client.post(
        f"{BATCH}/{operation}",
        content=json.dumps(items).encode(),
        headers={"Content-Type": "application/ld+json", "Link": f'<{CORE}>; rel="{CONTEXT_REL}"'},
    )
    assert_problem(response, 400, "BadRequestData")
    assert snapshot(settings) == before


@pytest.mark.parametrize("operation", OPERATIONS)
def test_chunked_batch_without_length_is_refused(
    client: TestClient, settings: Settings, three_cars: list[str], operation: str
) -> None:
    before = snapshot(settings)
    items: list[Any] = ["urn:ngsi-ld:Car:1"] if operation == "delete" else [car(1, speed=0), car(9)]

    def chunks() -> Iterator[bytes]:
        encoded = json.dumps(items).encode()
        yield encoded[:10]
        yield encoded[10:]

    response = client.post(f"{BATCH}/{operation}", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 411
    assert snapshot(settings) == before


@pytest.fixture
def limited(db_url: str) -> Iterator[tuple[TestClient, Settings]]:
    settings = Settings(database=db_url, max_batch_size=3, max_body_bytes=2000)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as test_client:
        yield test_client, settings


@pytest.mark.parametrize("operation", OPERATIONS)
def test_batch_larger_than_max_batch_size(limited: tuple[TestClient, Settings], operation: str) -> None:
    client, settings = limited
    assert batch(client, "create", [car(1), car(2)]).status_code == 201
    before = snapshot(settings)
    items: list[Any] = (
        [f"urn:ngsi-ld:Car:{n}" for n in (1, 2, 3, 4)] if operation == "delete" else [car(n, speed=n) for n in range(4)]
    )
    assert_problem(batch(client, operation, items), 400, "BadRequestData")
    assert snapshot(settings) == before


def test_batch_at_max_batch_size_is_accepted(limited: tuple[TestClient, Settings]) -> None:
    client, settings = limited
    response = batch(client, "create", [car(1), car(2), car(3)])
    assert response.status_code == 201, response.text
    assert len(stored(settings)) == 3


def test_oversize_batch_is_refused(limited: tuple[TestClient, Settings]) -> None:
    client, settings = limited
    response = batch(client, "upsert", [car(1, notes="x" * 2500), car(2)])
    assert_problem(response, 413, "PayloadTooLarge")
    assert stored(settings) == {}


# -- upsert -------------------------------------------------------------------------------------
def test_batch_upsert_replace_mode(client: TestClient, settings: Settings, three_cars: list[str]) -> None:
    response = batch(client, "upsert", [car(1, speed=11), car(4, speed=40)])
    assert response.status_code == 201, response.text
    assert response.json() == ["urn:ngsi-ld:Car:4"]  # only the created ones
    # replace: the attributes not given are gone
    assert key_values(client, "urn:ngsi-ld:Car:1") == {"id": "urn:ngsi-ld:Car:1", "type": "Car", "speed": 11}
    assert key_values(client, "urn:ngsi-ld:Car:4")["speed"] == 40
    # when nothing is created the answer is 204
    again = batch(client, "upsert", [car(1, speed=12), car(2, speed=22)], params={"options": "replace"})
    assert again.status_code == 204, again.text
    assert key_values(client, "urn:ngsi-ld:Car:2") == {"id": "urn:ngsi-ld:Car:2", "type": "Car", "speed": 22}


def test_batch_upsert_keeps_created_at(client: TestClient, three_cars: list[str]) -> None:
    before = client.get(f"{ENTITIES}/urn:ngsi-ld:Car:1", params={"options": "sysAttrs"}).json()
    assert batch(client, "upsert", [car(1, speed=11)]).status_code == 204
    after = client.get(f"{ENTITIES}/urn:ngsi-ld:Car:1", params={"options": "sysAttrs"}).json()
    assert after["createdAt"] == before["createdAt"]


def test_batch_upsert_update_mode(client: TestClient, three_cars: list[str]) -> None:
    response = batch(client, "upsert", [car(1, speed=11, gear=3), car(5, speed=50)], params={"options": "update"})
    assert response.status_code == 201, response.text
    assert response.json() == ["urn:ngsi-ld:Car:5"]
    # update: the attributes not given stay, the given ones are replaced or added
    assert key_values(client, "urn:ngsi-ld:Car:1") == {
        "id": "urn:ngsi-ld:Car:1",
        "type": "Car",
        "speed": 11,
        "colour": "red",
        "gear": 3,
    }
    again = batch(
        client, "upsert", [{"id": "urn:ngsi-ld:Car:2", "type": "Taxi", "seats": 4}], params={"options": "update"}
    )
    assert again.status_code == 204, again.text
    assert key_values(client, "urn:ngsi-ld:Car:2") == {
        "id": "urn:ngsi-ld:Car:2",
        "type": ["Car", "Taxi"],
        "speed": 20,
        "seats": 4,
    }


def test_batch_upsert_mix_of_good_and_bad(client: TestClient, settings: Settings, three_cars: list[str]) -> None:
    before = stored(settings)["urn:ngsi-ld:Car:2"]
    response = batch(client, "upsert", [car(1, speed=11), car(2, speed={"type": "Property"}), car(7), {"type": "Car"}])
    assert response.status_code == 207, response.text
    result = response.json()
    assert sorted(result["success"]) == ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:7"]
    assert len(result["errors"]) == 2
    assert {e["error"]["type"] for e in result["errors"]} == {ERRORS + "BadRequestData"}
    assert "urn:ngsi-ld:Car:2" in {e["entityId"] for e in result["errors"]}
    docs = stored(settings)
    assert docs["urn:ngsi-ld:Car:2"] == before  # the rejected replacement changed nothing
    assert list(docs) == [*three_cars, "urn:ngsi-ld:Car:7"]
    assert key_values(client, "urn:ngsi-ld:Car:1")["speed"] == 11


def test_batch_upsert_duplicates_apply_in_order(client: TestClient) -> None:
    response = batch(client, "upsert", [car(1, speed=1, gear=1), car(1, speed=2)])
    assert response.status_code == 201, response.text
    assert response.json() == ["urn:ngsi-ld:Car:1"]
    assert key_values(client, "urn:ngsi-ld:Car:1") == {"id": "urn:ngsi-ld:Car:1", "type": "Car", "speed": 2}


@pytest.mark.parametrize("value", ["replace,update", "noOverwrite", "bogus"])
def test_batch_upsert_with_invalid_options(
    client: TestClient, settings: Settings, three_cars: list[str], value: str
) -> None:
    before = snapshot(settings)
    response = batch(client, "upsert", [car(1, speed=0), car(9)], params={"options": value})
    assert response.status_code == 400, response.text
    assert response.json()["type"] in (ERRORS + "BadRequestData", ERRORS + "InvalidRequest")
    assert snapshot(settings) == before


# -- update -------------------------------------------------------------------------------------
def test_batch_update(client: TestClient, three_cars: list[str]) -> None:
    response = batch(
        client,
        "update",
        [
            {"id": "urn:ngsi-ld:Car:1", "speed": 15, "gear": 2},
            {"id": "urn:ngsi-ld:Car:2", "speed": {"type": "Property", "value": 25}},
        ],
    )
    assert response.status_code == 204, response.text
    assert key_values(client, "urn:ngsi-ld:Car:1") == {
        "id": "urn:ngsi-ld:Car:1",
        "type": "Car",
        "speed": 15,
        "colour": "red",
        "gear": 2,
    }
    assert key_values(client, "urn:ngsi-ld:Car:2")["speed"] == 25


def test_batch_update_no_overwrite(client: TestClient, three_cars: list[str]) -> None:
    response = batch(
        client, "update", [{"id": "urn:ngsi-ld:Car:1", "speed": 15, "gear": 2}], params={"options": "noOverwrite"}
    )
    # attributes skipped because of noOverwrite make a partial result: 207 (ETSI 005_02_01)
    assert response.status_code == 207, response.text
    assert response.json()["errors"] == []
    assert key_values(client, "urn:ngsi-ld:Car:1") == {
        "id": "urn:ngsi-ld:Car:1",
        "type": "Car",
        "speed": 10,
        "colour": "red",
        "gear": 2,
    }


def test_batch_update_mix_of_good_and_bad(client: TestClient, settings: Settings, three_cars: list[str]) -> None:
    before = snapshot(settings)
    response = batch(
        client,
        "update",
        [
            {"id": "urn:ngsi-ld:Car:1", "speed": 16},
            {"id": "urn:ngsi-ld:Car:404", "speed": 1},
            {"id": "urn:ngsi-ld:Car:2", "speed": 26, "location": {"type": "GeoProperty", "value": "nowhere"}},
            {"id": "bad id", "speed": 1},
        ],
    )
    assert error_types(response) == {
        "urn:ngsi-ld:Car:404": "ResourceNotFound",
        "urn:ngsi-ld:Car:2": "BadRequestData",
        "bad id": "BadRequestData",
    }
    assert response.json()["success"] == ["urn:ngsi-ld:Car:1"]
    docs = stored(settings)
    assert list(docs) == three_cars  # nothing created
    before_docs = {row[1]: row[2] for row in before[0]}
    assert stored_json(before_docs["urn:ngsi-ld:Car:2"]) == docs["urn:ngsi-ld:Car:2"]
    assert key_values(client, "urn:ngsi-ld:Car:1")["speed"] == 16


# -- merge --------------------------------------------------------------------------------------
def test_batch_merge(client: TestClient, three_cars: list[str]) -> None:
    assert (
        batch(client, "update", [{"id": "urn:ngsi-ld:Car:1", "speed": {"value": 10, "unitCode": "KMH"}}]).status_code
        == 204
    )
    response = batch(
        client,
        "merge",
        [{"id": "urn:ngsi-ld:Car:1", "speed": {"value": 17}, "colour": NULL}, {"id": "urn:ngsi-ld:Car:2", "gear": 1}],
    )
    assert response.status_code == 204, response.text
    speed = client.get(f"{ENTITIES}/urn:ngsi-ld:Car:1").json()["speed"]
    assert speed == {"type": "Property", "value": 17, "unitCode": "KMH"}
    assert "colour" not in key_values(client, "urn:ngsi-ld:Car:1")
    assert key_values(client, "urn:ngsi-ld:Car:2") == {"id": "urn:ngsi-ld:Car:2", "type": "Car", "speed": 20, "gear": 1}


def test_batch_merge_mix_of_good_and_bad(client: TestClient, settings: Settings, three_cars: list[str]) -> None:
    before = stored(settings)
    response = batch(
        client,
        "merge",
        [
            {"id": "urn:ngsi-ld:Car:1", "speed": 18},
            {"id": "urn:ngsi-ld:Car:404", "speed": 1},
            {"id": "urn:ngsi-ld:Car:3", "speed": {"type": "Relationship", "object": "not a uri"}},
        ],
    )
    assert error_types(response) == {"urn:ngsi-ld:Car:404": "ResourceNotFound", "urn:ngsi-ld:Car:3": "BadRequestData"}
    assert response.json()["success"] == ["urn:ngsi-ld:Car:1"]
    after = stored(settings)
    assert list(after) == three_cars
    assert after["urn:ngsi-ld:Car:3"] == before["urn:ngsi-ld:Car:3"]
    assert after["urn:ngsi-ld:Car:2"] == before["urn:ngsi-ld:Car:2"]


# -- delete -------------------------------------------------------------------------------------
def test_batch_delete(client: TestClient, settings: Settings, three_cars: list[str]) -> None:
    response = batch(client, "delete", ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:3"])
    assert response.status_code == 204, response.text
    assert list(stored(settings)) == ["urn:ngsi-ld:Car:2"]
    assert_problem(client.get(f"{ENTITIES}/urn:ngsi-ld:Car:1"), 404, "ResourceNotFound")


def test_batch_delete_mix_of_good_and_bad(client: TestClient, settings: Settings, three_cars: list[str]) -> None:
    response = batch(client, "delete", ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:404", "not a uri", "urn:ngsi-ld:Car:3"])
    assert error_types(response) == {"urn:ngsi-ld:Car:404": "ResourceNotFound", "not a uri": "BadRequestData"}
    assert sorted(response.json()["success"]) == ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:3"]
    assert list(stored(settings)) == ["urn:ngsi-ld:Car:2"]


def test_batch_delete_items_must_be_ids(client: TestClient, settings: Settings, three_cars: list[str]) -> None:
    response = batch(client, "delete", [{"id": "urn:ngsi-ld:Car:1"}, 42, "urn:ngsi-ld:Car:2"])
    assert response.status_code == 207, response.text
    result = response.json()
    assert result["success"] == ["urn:ngsi-ld:Car:2"]
    assert len(result["errors"]) == 2
    assert {e["error"]["type"] for e in result["errors"]} == {ERRORS + "BadRequestData"}
    assert list(stored(settings)) == ["urn:ngsi-ld:Car:1", "urn:ngsi-ld:Car:3"]


def test_batch_delete_in_an_unknown_tenant(client: TestClient, settings: Settings, three_cars: list[str]) -> None:
    before = snapshot(settings)
    response = batch(client, "delete", ["urn:ngsi-ld:Car:1"], headers={"NGSILD-Tenant": "ghost"})
    assert_problem(response, 404, "NonexistentTenant")
    assert response.headers["ngsild-tenant"] == "ghost"
    assert snapshot(settings) == before


def test_batch_operations_are_isolated_by_tenant(client: TestClient, settings: Settings, three_cars: list[str]) -> None:
    headers = {"NGSILD-Tenant": "porto"}
    assert batch(client, "create", [car(1, speed=1)], headers=headers).status_code == 201
    response = batch(client, "update", [{"id": "urn:ngsi-ld:Car:2", "speed": 0}], headers=headers)
    assert error_types(response) == {"urn:ngsi-ld:Car:2": "ResourceNotFound"}
    assert batch(client, "delete", ["urn:ngsi-ld:Car:1"], headers=headers).status_code == 204
    assert stored(settings, "porto") == {}
    assert list(stored(settings)) == three_cars
