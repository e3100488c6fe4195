"""render_owned (a decoded document rendered in place, entities/render.py) gives byte for byte what
render_entity gives, under every option and for every member kind, key order included; render_entity
leaves its entity as it was; and the stored-bytes paths (render_page, render_one) use it."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import orjson

from cityos.entities import render as render_module
from cityos.entities.render import RenderOptions, render_entity, render_owned
from cityos.entities.render_cache import RenderCache, render_one, render_page
from cityos.jsonld.termmap import TermMap, define_terms
from test_read_path import STAMP, V, stored, terms


def corpus() -> list[dict[str, Any]]:
    """Entities with each member kind and order the renderer treats differently."""
    plain = stored(2, gone=False)
    odd = stored(3)
    attrs = odd["attrs"]
    attrs[V + "late"] = [{"value": 1, "type": "Property", "createdAt": STAMP}]  # "type" not first
    attrs[V + "extra"] = [{"type": "Property", "value": 2, "someMember": "x", "modifiedAt": STAMP}]
    attrs[V + "timed"] = [
        {"type": "Property", "value": 3, "expiresAt": STAMP, "deletedAt": STAMP, "instanceId": "urn:i:1"}
    ]
    attrs[V + "object"] = [{"type": "Property", "value": {"createdAt": "kept", "a": [1]}, "createdAt": STAMP}]
    attrs[V + "list"] = [{"type": "ListProperty", "valueList": [1, 2], "createdAt": STAMP, "modifiedAt": STAMP}]
    attrs[V + "json"] = [{"type": "JsonProperty", "json": {"k": 1}, "createdAt": STAMP, "modifiedAt": STAMP}]
    attrs[V + "geo"] = [
        {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1.0, 2.0]}, "createdAt": STAMP},
        {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [3.0, 4.0]}, "datasetId": "urn:d:1"},
    ]
    attrs[V + "sealed"] = [{"type": "Relationship", "object": "urn:p:9", "entityTypeSealed": V + "T"}]
    attrs[V + "empty"] = []
    odd["type"] = [V + "T", V + "Other"]
    odd["scope"] = ["/a", "/b"]
    return [plain, odd, {"id": "urn:x:bare", "type": [V + "T"], "attrs": {}}]


def every_options(mapping: TermMap) -> list[RenderOptions]:
    found = []
    keeps: tuple[frozenset[str] | None, ...] = (None, frozenset({V + "speed", V + "late"}), frozenset())
    for fmt, sys_attrs, lang, attrs, datasets in itertools.product(
        ("normalized", "concise", "keyValues"),
        (False, True),
        (None, "pt", "en;q=0.5,*"),
        keeps,
        (None, frozenset({"urn:d:1"}), frozenset({None, "urn:d:1"})),
    ):
        found.append(RenderOptions(mapping, fmt, sys_attrs, attrs=attrs, lang=lang, datasets=datasets))
    found.append(RenderOptions(mapping, omit=frozenset({V + "owner", V + "late"}), pick_id=False))
    found.append(RenderOptions(mapping, "concise", pick_type=False, pick_scope=False))
    return found


def test_in_place_rendering_is_the_same_bytes_as_render_entity_under_every_option() -> None:
    user = TermMap()  # a Link context naming some attributes, others left as IRIs or @vocab-relative
    define_terms(user, {"velocity": V + "speed", "T": V + "T", "ex": V})
    for mapping in (terms(), user, TermMap()):
        for options in every_options(mapping):
            for entity in corpus():
                before = orjson.dumps(entity)
                want = orjson.dumps(render_entity(entity, options))
                assert orjson.dumps(entity) == before  # render_entity changes nothing it was given
                for _ in range(2):  # the instance shapes planned, then the plans reused
                    assert orjson.dumps(render_owned(copy.deepcopy(entity), options)) == want, options


def test_stored_bytes_are_rendered_in_place_and_entities_given_are_not(monkeypatch: Any) -> None:
    calls: list[str] = []

    def counting(entity: dict[str, Any], options: RenderOptions) -> dict[str, Any]:
        calls.append(entity["id"])
        return render_owned(entity, options)

    monkeypatch.setattr("cityos.entities.render_cache.render_owned", counting)
    options = RenderOptions(terms())
    entities = corpus()
    documents = [orjson.dumps(e) for e in entities]
    want = orjson.dumps([render_entity(e, options) for e in entities])
    given = copy.deepcopy(entities)
    page = render_page([documents[0], given[1], documents[2]], orjson.loads, options, cache=RenderCache(budget=0))
    assert page == want
    assert calls == [entities[0]["id"], entities[2]["id"]]  # the decoded ones only
    assert given == entities  # an entity handed in (not decoded here) is left as it was
    one = render_one(documents[1], orjson.loads, options, cache=RenderCache(budget=0))
    assert one == orjson.dumps(render_entity(entities[1], options))


def test_the_shape_plans_stay_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(render_module, "MAX_SHAPES", 8)
    options = RenderOptions(terms())
    for n in range(40):
        instance: dict[str, Any] = {"type": "Property", "value": n, f"member{n}": n}  # a new shape each time
        entity: dict[str, Any] = {"id": "urn:x:1", "type": [V + "T"], "attrs": {V + "a": [instance]}}
        want = orjson.dumps(render_entity(entity, options))
        assert orjson.dumps(render_owned(copy.deepcopy(entity), options)) == want
        assert len(render_module._PLANS[False, False]) <= 8


def test_the_whole_entity_loop_is_taken_for_unfiltered_options_and_gives_the_same_bytes(monkeypatch: Any) -> None:
    """render_owned's loop for a request without attrs/pick/omit/datasetId (_owned_whole) runs for
    exactly those options, under every format, sysAttrs and lang, and renders as render_entity."""
    taken: list[RenderOptions] = []
    whole = render_module._owned_whole

    def counting(entity: dict[str, Any], options: RenderOptions) -> dict[str, Any]:
        taken.append(options)
        return whole(entity, options)

    monkeypatch.setattr(render_module, "_owned_whole", counting)
    user = TermMap()
    define_terms(user, {"velocity": V + "speed", "T": V + "T", "ex": V})
    entities = corpus()
    entities[0]["scope"] = ["/one"]  # a scope of one is rendered as a string
    for mapping in (terms(), user, TermMap()):
        for options in every_options(mapping):
            unfiltered = (
                options.attrs is None
                and options.omit is None
                and options.datasets is None
                and options.pick_id
                and options.pick_type
                and options.pick_scope
            )
            for entity in entities:
                taken.clear()
                want = orjson.dumps(render_entity(entity, options))
                assert orjson.dumps(render_owned(copy.deepcopy(entity), options)) == want, options
                assert bool(taken) == (unfiltered and options.format != "keyValues"), options
