"""An upsert's mutator says which attributes it gave a new list (Outcome.relisted, handed on as
EntityChange.relisted), every other attribute being the very list of the stored entity: the side
rows, the history and the map tiles then compare those alone. Their answers must be the ones the
walk of every attribute gives, whatever the upsert adds, replaces or moves."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cityos.entities import update
from cityos.entities.model import Entity
from cityos.store import side_rows
from cityos.store.side_rows import changed_values, geo_untouched
from cityos.temporal.history import changed_instances

V = "https://example.org/"
OLD = "2026-01-01T00:00:00.000Z"
NEW = "2026-01-02T00:00:00.000Z"


def _instance(value: Any, kind: str = "Property", **members: Any) -> dict[str, Any]:
    member = "object" if kind == "Relationship" else "value"
    return {"type": kind, member: value, "createdAt": OLD, "modifiedAt": OLD, **members}


def _stored() -> Entity:
    return {
        "id": "urn:x:1",
        "type": [V + "Sensor"],
        "createdAt": OLD,
        "modifiedAt": OLD,
        "attrs": {
            V + "a": [_instance(1)],
            V + "b": [_instance("text")],
            V + "where": [_instance({"type": "Point", "coordinates": [1.0, 2.0]}, "GeoProperty")],
            V + "c": [_instance(3), _instance(4, datasetId="urn:d:1")],
            V + "rel": [_instance("urn:x:2", "Relationship")],
        },
    }


def _fragment(attrs: dict[str, list[dict[str, Any]]]) -> Entity:
    stamped = {
        name: [{**i, "createdAt": NEW, "modifiedAt": NEW} for i in instances] for name, instances in attrs.items()
    }
    return {"id": "urn:x:1", "type": [V + "Sensor"], "createdAt": NEW, "modifiedAt": NEW, "attrs": stamped}


CASES = {
    "one reading": {V + "a": [_instance(2, observedAt=NEW)]},
    "the same reading again": {V + "a": [_instance(1)]},
    "two attributes, out of the stored order": {V + "c": [_instance(5)], V + "a": [_instance(6)]},
    "a new attribute": {V + "d": [_instance(7)]},
    "a new one before a stored one": {V + "d": [_instance(7)], V + "b": [_instance("other")]},
    "the location moved": {V + "where": [_instance({"type": "Point", "coordinates": [3.0, 4.0]}, "GeoProperty")]},
    "a new GeoProperty": {V + "zone": [_instance({"type": "Point", "coordinates": [5.0, 6.0]}, "GeoProperty")]},
    "a second datasetId": {V + "a": [_instance(8, datasetId="urn:d:2")]},
    "a number becoming a text": {V + "a": [_instance("eight")]},
    "nothing": {},
}


GEO_CASES = {"the location moved", "a new GeoProperty"}


@pytest.mark.parametrize("name", CASES)
def test_the_relisted_attributes_give_the_answers_of_a_walk_of_all(name: str) -> None:
    stored = _stored()
    pristine = copy.deepcopy(stored)
    outcome = update.upsert(_fragment(CASES[name]), mode="update")(stored)
    after = outcome.entity
    assert after is not None and outcome.relisted == tuple(CASES[name])
    for attr, instances in after["attrs"].items():  # the contract the comparisons rely on
        assert attr in outcome.relisted or instances is stored["attrs"][attr]
    assert stored == pristine  # `before` is left as it was
    old, new = stored["attrs"], after["attrs"]
    assert list(changed_values(old, new, outcome.relisted)) == list(changed_values(old, new))
    assert changed_instances(stored, after, outcome.relisted) == changed_instances(stored, after)
    side_rows._last_geo = (None, None, False)  # no remembered answer for either
    with_relisted = geo_untouched(old, new, outcome.relisted)
    side_rows._last_geo = (None, None, False)
    assert with_relisted == geo_untouched(old, new)
    assert with_relisted is (name not in GEO_CASES)


def test_geo_untouched_answers_again_only_for_the_same_two_dicts() -> None:
    stored = _stored()
    moved = update.upsert(_fragment(CASES["the location moved"]), mode="update")(stored).entity
    reading = update.upsert(_fragment(CASES["one reading"]), mode="update")(stored).entity
    assert moved is not None and reading is not None
    assert geo_untouched(stored["attrs"], moved["attrs"]) is False
    assert geo_untouched(stored["attrs"], reading["attrs"]) is True  # not the answer remembered for `moved`
    assert geo_untouched(stored["attrs"], moved["attrs"]) is False
