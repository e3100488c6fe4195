"""A mutator says which attributes it gave a new list (Outcome.relisted, handed on as
EntityChange.relisted), every other attribute being the very list of the stored entity: the side
rows, the history and the map tiles then compare those alone. Their answers must be the ones the
walk of every attribute gives, whatever the upsert, the partial updates (PATCH attrs, PATCH
attrs/{attr}), the merge, the attribute's replace, its delete or a purge adds, replaces, removes or
moves; through the SQLite writer too."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from backends import sqlite_only
from cityos.entities import update
from cityos.entities.model import Entity, parse_attribute, parse_entity, parse_fragment, parse_instance
from cityos.jsonld.termmap import TermMap
from cityos.store import side_rows
from cityos.store.side_rows import changed_values, geo_untouched, geo_values
from cityos.temporal.history import changed_instances
from test_sqlite_write_path import history, written
from test_sqlite_write_path import side_rows as stored_side_rows

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


# -- the other mutators: PATCH attrs, merge, PATCH attrs/{attr}, PUT attrs/{attr}, deletes, purge --------
TERMS = TermMap(vocab=V)
NULL = "urn:ngsi-ld:null"
STORED = {
    "id": "urn:x:1",
    "type": "Sensor",
    "scope": "/city",
    "a": {"type": "Property", "value": 1, "observedAt": OLD},
    "b": {"type": "Property", "value": "text"},
    "where": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1.0, 2.0]}},
    "c": [{"type": "Property", "value": 3}, {"type": "Property", "value": 4, "datasetId": "urn:d:1"}],
    "rel": {"type": "Relationship", "object": "urn:x:2"},
    "name": {"type": "LanguageProperty", "languageMap": {"en": "one", "fr": "un"}},
    "address": {
        "type": "Property",
        "value": {"street": "Main", "number": 1},
        "unit": {"type": "Property", "value": "m"},
    },
}
MOVED = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [3.0, 4.0]}}


def _patch(body: dict[str, Any], **options: Any) -> update.Mutator:
    return update.update_attrs("urn:x:1", parse_fragment(body, TERMS, stamp=NEW), **options)


def _merge(body: dict[str, Any]) -> update.Mutator:
    return update.merge("urn:x:1", parse_fragment(body, TERMS, stamp=NEW, nulls="deep"))


def _partial(name: str, body: dict[str, Any]) -> update.Mutator:
    """As the handler parses PATCH attrs/{attr} (ngsild/entities.py partial_attribute_update)."""
    patch = parse_instance(name, body, TERMS, stamp=NEW, nulls="instance", value_optional=True)
    patch.pop("createdAt", None)
    dataset = patch.pop("datasetId", None)
    return update.partial_update("urn:x:1", V + name, patch, dataset)


def _replace(name: str, body: Any) -> update.Mutator:
    return update.replace_attr("urn:x:1", V + name, parse_attribute(name, body, TERMS, stamp=NEW))


def _delete(name: str, dataset: str | None = None, *, every: bool = False) -> update.Mutator:
    return update.delete_attr("urn:x:1", V + name, dataset=dataset, delete_all=every, stamp=NEW)


MUTATORS = {
    "patch: a value changed": lambda: _patch({"a": {"type": "Property", "value": 2}}),
    "patch: the same value": lambda: _patch({"a": {"type": "Property", "value": 1, "observedAt": OLD}}),
    "patch: a new attribute": lambda: _patch({"d": {"type": "Property", "value": 7}}),
    "patch: the location moved": lambda: _patch({"where": MOVED}),
    "patch: a datasetId instance": lambda: _patch({"c": {"type": "Property", "value": 5, "datasetId": "urn:d:1"}}),
    "patch: a LanguageProperty": lambda: _patch({"name": {"type": "LanguageProperty", "languageMap": {"en": "two"}}}),
    "patch: null deletes an instance": lambda: _patch({"c": NULL}),
    "patch: null deletes the location": lambda: _patch({"where": NULL}),
    "patch: noOverwrite": lambda: _patch(
        {"a": {"type": "Property", "value": 9}, "d": {"type": "Property", "value": 7}}, no_overwrite=True
    ),
    "patch: out of order, with a type": lambda: _patch(
        {"type": "Other", "c": {"type": "Property", "value": 5}, "a": {"type": "Property", "value": "six"}}
    ),
    "merge: a value changed": lambda: _merge({"a": {"value": 2}}),
    "merge: an object merged": lambda: _merge({"address": {"value": {"number": 2, "street": None}}}),
    "merge: a sub-property removed": lambda: _merge({"address": {"unit": None}}),
    "merge: null deletes an attribute": lambda: _merge({"b": None}),
    "merge: null deletes the location": lambda: _merge({"where": None}),
    "merge: the location moved": lambda: _merge({"where": MOVED}),
    "merge: a datasetId instance": lambda: _merge({"c": {"value": 8, "datasetId": "urn:d:1"}}),
    "merge: a LanguageProperty": lambda: _merge({"name": {"type": "LanguageProperty", "languageMap": {"de": "eins"}}}),
    "merge: new attributes and a scope": lambda: _merge(
        {"scope": "/other", "z": {"type": "Property", "value": 1}, "d": {"type": "Property", "value": [1, "x"]}}
    ),
    "partial: a reading": lambda: _partial("a", {"value": 2, "observedAt": NEW}),
    "partial: the same value": lambda: _partial("a", {"value": 1}),
    "partial: the location moved": lambda: _partial("where", {"type": "GeoProperty", "value": MOVED["value"]}),
    "partial: a datasetId instance": lambda: _partial("c", {"value": 6, "datasetId": "urn:d:1"}),
    "partial: a LanguageProperty": lambda: _partial("name", {"type": "LanguageProperty", "languageMap": {"en": "x"}}),
    "partial: a sub-property removed": lambda: _partial("address", {"unit": None}),
    "partial: null deletes the instance": lambda: _partial("c", {"value": NULL, "datasetId": "urn:d:1"}),
    "replace: an attribute": lambda: _replace("b", {"type": "Property", "value": 10}),
    "replace: the location": lambda: _replace("where", MOVED),
    "replace: a datasetId instance": lambda: _replace("c", {"type": "Property", "value": 0, "datasetId": "urn:d:1"}),
    "delete: an attribute": lambda: _delete("rel"),
    "delete: a datasetId instance": lambda: _delete("c", "urn:d:1"),
    "delete: every instance": lambda: _delete("c", every=True),
    "delete: the location": lambda: _delete("where"),
    "delete: the scope": lambda: update.delete_scope("urn:x:1", stamp=NEW),
    "purge: keep two": lambda: update.prune("urn:x:1", {V + "a", V + "where"}, keep=True, stamp=NEW),
    "purge: drop the location": lambda: update.prune("urn:x:1", {V + "where", V + "b"}, keep=False, stamp=NEW),
}
MOVES_GEO = {name for name in MUTATORS if "location" in name}


@pytest.mark.parametrize("name", MUTATORS)
def test_every_mutator_relists_what_it_changes_and_the_comparisons_agree_with_a_full_walk(name: str) -> None:
    """Each mutator shares the lists of the attributes it leaves alone and names the rest in
    `relisted`; the side rows, the history and the geo shortcut then give what a walk of every
    attribute gives on copies that share nothing (no shortcut by identity at all)."""
    stored = parse_entity(STORED, TERMS, stamp=OLD)
    pristine = copy.deepcopy(stored)
    outcome = MUTATORS[name]()(stored)
    after, relisted = outcome.entity, outcome.relisted
    assert after is not None and relisted is not None
    for attr, instances in after["attrs"].items():
        assert attr in relisted or instances is stored["attrs"][attr]
    assert all(attr in after["attrs"] or attr in relisted for attr in stored["attrs"])  # a removed one is relisted
    assert stored == pristine  # `before` is left as it was
    old, new = stored["attrs"], after["attrs"]
    apart_before, apart_after = copy.deepcopy(stored), copy.deepcopy(after)
    assert list(changed_values(old, new, relisted)) == list(changed_values(apart_before["attrs"], apart_after["attrs"]))
    assert changed_instances(stored, after, relisted) == changed_instances(apart_before, apart_after)
    assert changed_instances(stored, after, relisted) or name.endswith("same value") or "scope" in name
    side_rows._last_geo = (None, None, False)
    with_relisted = geo_untouched(old, new, relisted)
    side_rows._last_geo = (None, None, False)
    assert with_relisted == geo_untouched(old, new)
    assert with_relisted is (name not in MOVES_GEO)
    assert with_relisted is (geo_values(stored) == geo_values(after))


def _walked(mutator: update.Mutator) -> update.Mutator:
    """`mutator` with its relisted attributes forgotten: the store walks every attribute."""

    def run(current: Entity | None) -> update.Outcome:
        return dataclasses.replace(mutator(current), relisted=None)

    return run


@sqlite_only
@pytest.mark.parametrize("name", MUTATORS)
def test_the_sqlite_writer_leaves_with_relisted_the_rows_of_a_full_walk(name: str, tmp_path: Path, db_url: str) -> None:
    """Each mutation through the SQLite writer (side rows, geo rows, history) leaves the rows it
    leaves when it walks every attribute."""
    entity = parse_entity(STORED, TERMS, stamp=OLD)
    files = {"relisted": tmp_path / "relisted.db", "walked": tmp_path / "walked.db"}
    for kind, path in files.items():
        mutator = MUTATORS[name]()
        asyncio.run(written(path, [(entity["id"], update.create(copy.deepcopy(entity)))], atomic=True))
        created = len(history(path))
        operation = (entity["id"], mutator if kind == "relisted" else _walked(mutator))
        result = asyncio.run(written(path, [operation], atomic=True))[0]
        assert result.error is None and result.change is not None
        assert (result.change.relisted is None) is (kind == "walked")
        assert len(history(path)) > created or name.endswith("same value")
    assert stored_side_rows(files["relisted"]) == stored_side_rows(files["walked"])
    assert [row[1:4] for row in history(files["relisted"])] == [row[1:4] for row in history(files["walked"])]
