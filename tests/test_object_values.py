"""A Property whose value is a JSON object or array, written through each update path (issue 12).

Clause 5.6.4 (Partial Attribute Update) replaces each member the fragment gives, `value` included,
so `PATCH /entities/{id}/attrs/{attr}` with `{"value": {}}` leaves `{}`; so do the replace-attribute
operation, update/append attributes and the batch update, which replace whole attribute instances.
Only the merge-patch of an entity (5.6.17, `PATCH /entities/{id}`) merges inside the old object, by
RFC 7396 (a null member removes a key). See docs/conformance.md.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

ENTITIES = "/ngsi-ld/v1/entities"
ENTITY_ID = "urn:ngsi-ld:Thing:obj"
OLD = {"a": 1, "n": {"x": 1, "y": 2}}

# new value -> (value after a replacing path, value after the merge-patch of the entity)
CASES: list[tuple[Any, Any]] = [
    ({}, OLD),
    ([], []),
    ({"b": 2}, {"a": 1, "n": {"x": 1, "y": 2}, "b": 2}),
    ({"n": {"x": 9}}, {"a": 1, "n": {"x": 9, "y": 2}}),
    ({"n": {"deeper": {"z": [1, 2]}}}, {"a": 1, "n": {"x": 1, "y": 2, "deeper": {"z": [1, 2]}}}),
    ({"a": None, "b": 2}, {"n": {"x": 1, "y": 2}, "b": 2}),
    ([1, {"k": None}], [1, {"k": None}]),
]


def _send(client: TestClient, path: str, value: Any) -> int:
    attr = {"type": "Property", "value": value}
    if path == "PATCH attr":
        return client.patch(f"{ENTITIES}/{ENTITY_ID}/attrs/v", json={"value": value}).status_code
    if path == "PUT attr":
        return client.put(f"{ENTITIES}/{ENTITY_ID}/attrs/v", json=attr).status_code
    if path == "PATCH attrs":
        return client.patch(f"{ENTITIES}/{ENTITY_ID}/attrs", json={"v": attr}).status_code
    if path == "POST attrs":
        return client.post(f"{ENTITIES}/{ENTITY_ID}/attrs", json={"v": attr}).status_code
    if path == "batch update":
        body = [{"id": ENTITY_ID, "type": "Thing", "v": attr}]
        return client.post("/ngsi-ld/v1/entityOperations/update", json=body).status_code
    if path == "batch merge":
        body = [{"id": ENTITY_ID, "type": "Thing", "v": attr}]
        return client.post("/ngsi-ld/v1/entityOperations/merge", json=body).status_code
    assert path == "merge-patch entity"
    return client.patch(f"{ENTITIES}/{ENTITY_ID}", json={"v": attr}).status_code


PATHS = ["PATCH attr", "PUT attr", "PATCH attrs", "POST attrs", "batch update", "merge-patch entity", "batch merge"]
MERGING = ("merge-patch entity", "batch merge")


def _create(client: TestClient) -> None:
    client.delete(f"{ENTITIES}/{ENTITY_ID}")
    created = client.post(ENTITIES, json={"id": ENTITY_ID, "type": "Thing", "v": {"type": "Property", "value": OLD}})
    assert created.status_code == 201, created.text


@pytest.mark.parametrize("path", PATHS)
def test_object_value_through_each_update_path(client: TestClient, path: str) -> None:
    for new, merged in CASES:
        _create(client)
        assert _send(client, path, new) == 204
        stored = client.get(f"{ENTITIES}/{ENTITY_ID}").json()["v"]["value"]
        expected = merged if path in MERGING else new
        assert stored == expected, f"{path} with {new!r}"


@pytest.mark.parametrize("path", PATHS)
def test_ngsi_ld_null_inside_an_object_value(client: TestClient, path: str) -> None:
    """Only a merge-patch gives "urn:ngsi-ld:null" a meaning inside a value (remove the key); the
    replacing paths refuse it (the batch update per entity, 207) and change nothing."""
    _create(client)
    status = _send(client, path, {"a": "urn:ngsi-ld:null"})
    stored = client.get(f"{ENTITIES}/{ENTITY_ID}").json()["v"]["value"]
    if path in MERGING:
        assert (status, stored) == (204, {"n": {"x": 1, "y": 2}})
    else:
        assert (status, stored) == (207 if path == "batch update" else 400, OLD)


def test_partial_update_of_an_object_value_keeps_the_sub_attributes(client: TestClient) -> None:
    """Replacing `value` is member-level: the attribute's other members stay."""
    body = {
        "id": ENTITY_ID,
        "type": "Thing",
        "v": {"type": "Property", "value": OLD, "unitCode": "C62", "quality": {"type": "Property", "value": 0.9}},
    }
    assert client.post(ENTITIES, json=body).status_code == 201
    assert client.patch(f"{ENTITIES}/{ENTITY_ID}/attrs/v", json={"value": {"b": 2}}).status_code == 204
    attr = client.get(f"{ENTITIES}/{ENTITY_ID}").json()["v"]
    assert attr["value"] == {"b": 2}
    assert attr["unitCode"] == "C62"
    assert attr["quality"]["value"] == 0.9
