"""The single-entity write path's shortcuts (issue 15) keep every answer:

- a mutator's copy of the stored entity shares the instances it leaves alone, and no mutator
  changes the stored entity (the change's `before`) on the way;
- the history of a partial update holds the changed instance only;
- a tenant is inserted by its first committed write, also after a write of it was rolled back;
- a body is walked for its nesting depth only when it has more brackets than the limit.
"""

from __future__ import annotations

import asyncio
import copy
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from backends import sqlite_only
from cityos.entities import update
from cityos.entities.model import Entity
from cityos.errors import BadRequestData
from cityos.store.sqlite import SQLiteStore
from cityos.temporal.history import changed_instances

V = "https://example.org/"
OLD = "2026-01-01T00:00:00.000Z"
NEW = "2026-01-02T00:00:00.000Z"
JSON = {"Content-Type": "application/json"}


def stored() -> Entity:
    def prop(value: Any, **more: Any) -> dict[str, Any]:
        return {"type": "Property", "value": value, "createdAt": OLD, "modifiedAt": OLD, **more}

    return {
        "id": "urn:x:a",
        "type": [V + "Sensor"],
        "scope": ["/a"],
        "createdAt": OLD,
        "modifiedAt": OLD,
        "attrs": {
            V + "temperature": [prop(20, **{V + "accuracy": prop(0.5)})],
            V + "address": [prop({"street": "Rua", "number": 1})],
            V + "speed": [prop(1, datasetId="urn:d:1"), prop(2, datasetId="urn:d:2")],
            V + "name": [prop("n")],
        },
    }


def fragment(attrs: dict[str, Any], **members: Any) -> Entity:
    return {"id": "urn:x:a", "type": [], "modifiedAt": NEW, "attrs": attrs, **members}


def patch(value: Any, **more: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, "createdAt": NEW, "modifiedAt": NEW, **more}


MUTATORS = {
    "partial update": update.partial_update("urn:x:a", V + "temperature", {"value": 21, "modifiedAt": NEW}, None),
    "partial update, null sub-attribute": update.partial_update(
        "urn:x:a", V + "temperature", {V + "accuracy": None, "modifiedAt": NEW}, None
    ),
    "partial update, one dataset": update.partial_update(
        "urn:x:a", V + "speed", {"value": 9, "modifiedAt": NEW}, "urn:d:2"
    ),
    "update attrs": update.update_attrs("urn:x:a", fragment({V + "name": [patch("m")]})),
    "update attrs, null instance": update.update_attrs(
        "urn:x:a", fragment({V + "speed": [{"type": None, "null": True, "datasetId": "urn:d:1"}]})
    ),
    "append with types and scope": update.append(
        "urn:x:a",
        fragment(
            {V + "speed": [patch(5, datasetId="urn:d:1")], V + "new": [patch(1)]}, type=[V + "Other"], scope=["/b"]
        ),
        no_overwrite=True,
        add_types=True,
    ),
    "merge": update.merge(
        "urn:x:a",
        fragment(
            {
                V + "address": [patch({"number": 2})],
                V + "temperature": [{"type": "Property", V + "accuracy": patch(1)}],
            },
            type=[V + "Other"],
        ),
    ),
    "replace attr": update.replace_attr("urn:x:a", V + "speed", [patch(7, datasetId="urn:d:2")]),
    "delete attr": update.delete_attr("urn:x:a", V + "speed", dataset="urn:d:1", delete_all=False, stamp=NEW),
    "prune": update.prune("urn:x:a", {V + "name"}, keep=True, stamp=NEW),
    "delete scope": update.delete_scope("urn:x:a", stamp=NEW),
}


@pytest.mark.parametrize("name", MUTATORS)
def test_no_mutator_changes_the_stored_entity(name: str) -> None:
    current = stored()
    snapshot = copy.deepcopy(current)
    after = MUTATORS[name](current).entity
    assert current == snapshot
    assert after is not None and after != current
    # the instances left alone are shared: the history and side-row comparisons see them at once
    for iri, instances in after["attrs"].items():
        for instance in instances:
            if instance in current["attrs"].get(iri, []):
                assert any(instance is old for old in current["attrs"][iri])


def test_a_partial_update_records_the_changed_instance_only() -> None:
    current = stored()
    after = update.partial_update("urn:x:a", V + "speed", {"value": 9, "modifiedAt": NEW}, "urn:d:2")(current).entity
    assert after is not None
    assert [
        (attr, instance.get("datasetId"), instance["value"]) for attr, instance in changed_instances(current, after)
    ] == [(V + "speed", "urn:d:2", 9)]


@sqlite_only
def test_a_tenant_is_inserted_by_its_first_committed_write(tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "city.db"

    def refuse(current: Entity | None) -> update.Outcome:
        raise BadRequestData("refused")

    entity = stored()

    async def run() -> None:
        store = SQLiteStore(str(path))
        await store.open()
        try:
            with pytest.raises(BadRequestData):
                await store.mutate("t1", [("urn:x:a", refuse)], atomic=True)
            assert not await store.tenant_exists("t1")  # the insert went with the rolled-back write
            await store.mutate("t1", [("urn:x:a", update.create(entity))], atomic=True)
            assert await store.tenant_exists("t1")
            await store.mutate("t1", [("urn:x:b", update.create({**entity, "id": "urn:x:b"}))], atomic=True)
        finally:
            await store.close()

    asyncio.run(run())
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM tenants").fetchall() == [("t1",)]
        assert db.execute("SELECT count(*) FROM entities WHERE tenant = 't1'").fetchone() == (2,)


def test_nesting_is_checked_exactly_around_the_bracket_count(client: TestClient) -> None:
    """The default limit is 64: brackets inside strings count but nest nothing, so a shallow body
    with many of them is accepted; a body nested one level too deep is still refused."""
    shallow = {"id": "urn:ngsi-ld:T:nest1", "type": "T", "note": {"type": "Property", "value": "[{" * 100}}
    response = client.post("/ngsi-ld/v1/entities", content=orjson.dumps(shallow), headers=JSON)
    assert response.status_code == 201
    value: Any = 1
    for _ in range(63):  # with the entity object and the attribute object: 65 levels
        value = [value]
    deep = {"id": "urn:ngsi-ld:T:nest2", "type": "T", "deep": {"type": "Property", "value": value}}
    response = client.post("/ngsi-ld/v1/entities", content=orjson.dumps(deep), headers=JSON)
    assert response.status_code == 400
    assert "max_nesting_depth" in response.json()["detail"]
