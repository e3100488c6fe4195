"""Query pages rendered through entities/render_cache.py: byte for byte what rendering each entity
and `orjson.dumps` of the list give, under every option, on a hit as on a miss; never stale after a
write or a redefined term, nor past an attribute's expiry; bounded; and the same answers over HTTP
on both back-ends as the path that decodes every document. Both back-ends give stored forms: SQLite
its deflated bytes, PostgreSQL the json column's text (store/postgres/store.py _stored)."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from cityos.auth.principal import Principal
from cityos.entities import render_cache
from cityos.entities.render import RenderOptions, render_entity
from cityos.entities.render_cache import HIDDEN, RenderCache, render_one, render_page
from cityos.jsonld.registry import ContextRegistry
from cityos.jsonld.termmap import TermMap, define_terms
from cityos.net import OutboundPolicy
from cityos.ngsild import entity_maps
from cityos.policy.compiled import PolicyAuthorizer
from cityos.policy.decision import EVERYTHING
from cityos.policy.enforce import renders_cached
from cityos.policy.model import Policy, parse_policy
from cityos.store import sqlite_query
from cityos.store.base import EntityQuery
from cityos.store.postgres import pages as postgres_pages
from cityos.store.sqlite_layout import deflate, inflate
from test_read_path import V, terms
from test_read_path import stored as read_path_entity

ENTITIES = "/ngsi-ld/v1/entities"
EXPAND = ContextRegistry(OutboundPolicy()).core_terms().expand


def stored(number: int) -> dict[str, Any]:
    return read_path_entity(number, speed=number, gone=False)


def decode(data: bytes) -> dict[str, Any]:
    entity: dict[str, Any] = orjson.loads(inflate(data))
    return entity


def expected(entities: list[dict[str, Any]], options: RenderOptions, context: Any = None) -> bytes:
    rendered = [r for e in entities if (r := render_entity(e, options))]
    if context is not None:
        rendered = [{**r, "@context": context} for r in rendered]
    return orjson.dumps(rendered)


def every_options(mapping: TermMap) -> list[RenderOptions]:
    keeps = (None, frozenset({V + "speed"}), frozenset({V + "nothing"}))
    found = []
    for fmt, sys_attrs, lang, attrs, datasets in itertools.product(
        ("normalized", "concise", "keyValues"), (False, True), (None, "pt"), keeps, (None, frozenset({"urn:d:1"}))
    ):
        found.append(RenderOptions(mapping, fmt, sys_attrs, attrs=attrs, lang=lang, datasets=datasets))
    found.append(RenderOptions(mapping, omit=frozenset({V + "owner"}), pick_id=False))
    found.append(RenderOptions(mapping, attrs=frozenset(), pick_id=False, pick_type=False, pick_scope=False))
    return found


def test_a_page_is_the_same_bytes_on_a_miss_and_on_a_hit() -> None:
    cache = RenderCache()
    mapping = terms()
    entities = [stored(n) for n in range(5)]
    documents = [deflate(orjson.dumps(e)) for e in entities]
    context = {"@vocab": V}
    for options in every_options(mapping):
        want = expected(entities, options)
        want_ld = expected(entities, options, context)
        for _ in range(2):  # a miss, then hits (fresh bytes objects, as each read makes)
            items: list[Any] = [bytes(d) for d in documents[:3]] + entities[3:]  # stored and decoded items
            assert render_page(items, decode, options, cache=cache) == want, options
            ld = render_page(items, decode, options, orjson.dumps(context), cache=cache)
            assert ld == want_ld, options


def test_a_changed_document_or_a_redefined_term_is_never_served_from_the_cache() -> None:
    cache = RenderCache()
    mapping = terms()
    options = RenderOptions(mapping)
    entity = stored(1)
    first = render_page([deflate(orjson.dumps(entity))], decode, options, cache=cache)
    entity["attrs"][V + "speed"][0]["value"] = 99
    second = render_page([deflate(orjson.dumps(entity))], decode, options, cache=cache)
    assert orjson.loads(first)[0]["speed"][0]["value"] == 1
    assert orjson.loads(second)[0]["speed"][0]["value"] == 99
    define_terms(mapping, {"velocity": V + "speed"})  # the same TermMap object, a new generation
    third = render_page([deflate(orjson.dumps(entity))], decode, options, cache=cache)
    assert "velocity" in orjson.loads(third)[0] and third == expected([entity], options)


def test_the_cache_stays_within_its_budget() -> None:
    cache = RenderCache(budget=20_000)
    options = RenderOptions(terms())
    for n in range(200):
        render_page([deflate(orjson.dumps(stored(n)))], decode, options, cache=cache)
        assert cache.size <= cache.budget
    assert 0 < len(cache._entries) < 200
    tokens = RenderCache()
    for n in range(600):  # option sets past MAX_TOKENS reset the cache instead of growing
        tokens.token(RenderOptions(terms(), lang=str(n)))
    assert len(tokens._tokens) <= 256


def test_stored_forms_leave_expired_documents_decoded_and_pruned(monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE entities (pk INTEGER PRIMARY KEY, doc BLOB, next_expiry TEXT)")
    entity = stored(1)
    entity["attrs"][V + "owner"][0]["expiresAt"] = "2030-01-01T00:00:00Z"
    data = deflate(orjson.dumps(entity))
    connection.execute("INSERT INTO entities VALUES (1, ?, ?)", (data, "2030-01-01T00:00:00.000000Z"))
    connection.execute("INSERT INTO entities VALUES (2, ?, NULL)", (data,))
    rows = connection.execute("SELECT doc, next_expiry FROM entities ORDER BY pk DESC").fetchall()
    before = sqlite_query._stored(rows, "2029-12-31T23:59:59.999999Z")
    assert before == [data, data]
    assert sqlite_query._rows(connection, "SELECT pk FROM entities ORDER BY pk DESC", ()) == rows[::-1]  # key order
    after = sqlite_query._stored(rows, "2030-01-01T00:00:00.000000Z")
    assert after[0] == data and isinstance(after[1], dict) and V + "owner" not in after[1]["attrs"]


def test_postgres_stored_forms_leave_expired_documents_decoded_and_pruned() -> None:
    """The same rule as SQLite's: only a row whose next_expiry is past is decoded (and pruned)."""
    entity = stored(1)
    entity["attrs"][V + "owner"][0]["expiresAt"] = "2030-01-01T00:00:00Z"
    text = orjson.dumps(entity).decode()
    rows: Any = [(text, None), (text, "2030-01-01T00:00:00.000000Z")]
    before = postgres_pages.stored(rows, "2029-12-31T23:59:59.999999Z")
    assert before == [text.encode(), text.encode()] and postgres_pages.decode(text.encode()) == entity
    after = postgres_pages.stored(rows, "2030-01-01T00:00:00.000000Z")
    assert after[0] == text.encode() and isinstance(after[1], dict) and V + "owner" not in after[1]["attrs"]


def test_the_store_gives_stored_forms_that_change_with_every_write(client: TestClient) -> None:
    """Both back-ends answer a stored-form query with bytes (the path is really taken), which
    decode to what the decoding path gives, and a write gives other bytes."""
    car = {"id": "urn:ngsi-ld:Car:s1", "type": "Car", "speed": {"type": "Property", "value": 1}}
    assert client.post(ENTITIES, json=car).status_code == 201
    services = client.app.state.services  # type: ignore[attr-defined]
    query = EntityQuery(types=["https://uri.etsi.org/ngsi-ld/default-context/Car"], limit=10)
    stored_query = EntityQuery(types=query.types, limit=10, stored_form=True)

    def run(q: EntityQuery) -> Any:
        assert client.portal is not None
        return client.portal.call(services.store.query_entities, "", q)

    first = run(stored_query)
    assert first.stored is not None and len(first.stored) == 1 and isinstance(first.stored[0], bytes)
    assert first.decode(first.stored[0]) == run(query).entities[0]
    patch = {"speed": {"type": "Property", "value": 2}}
    assert client.patch(f"{ENTITIES}/urn:ngsi-ld:Car:s1/attrs", json=patch).status_code == 204
    second = run(stored_query)
    assert second.stored[0] != first.stored[0] and second.decode(second.stored[0]) == run(query).entities[0]


def test_an_attribute_is_not_served_from_the_cache_once_it_expired(client: TestClient) -> None:
    """A page cached while an attribute was alive: once its expiresAt passes, the page leaves it out
    (the row's next_expiry says so, the document is decoded and pruned, not taken as bytes)."""
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    car = {
        "id": "urn:ngsi-ld:Car:e1",
        "type": "Car",
        "speed": {"type": "Property", "value": 1},
        "brief": {"type": "Property", "value": 2, "expiresAt": soon.isoformat().replace("+00:00", "Z")},
    }
    assert client.post(ENTITIES, json=car).status_code == 201
    for _ in range(2):  # a miss, then a hit
        response = client.get(ENTITIES, params={"type": "Car"})
        assert response.status_code == 200 and "brief" in response.json()[0]
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    for _ in range(2):
        response = client.get(ENTITIES, params={"type": "Car"})
        assert response.status_code == 200 and "brief" not in response.json()[0]
        assert response.json()[0]["speed"]["value"] == 1


def _uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    select = entity_maps.select

    async def decoded(*args: Any) -> Any:
        return await select(*args[:6])

    monkeypatch.setattr(entity_maps, "select", decoded)


QUERIES: list[tuple[dict[str, str], dict[str, str]]] = [
    ({}, {}),
    ({"options": "keyValues"}, {}),
    ({"options": "concise,sysAttrs"}, {}),
    ({"format": "concise", "lang": "pt"}, {}),
    ({"attrs": "speed"}, {}),
    ({"pick": "id,speed"}, {}),
    ({"omit": "speed,type"}, {}),
    ({"attrs": "nothing"}, {}),
    ({"datasetId": "urn:d:1"}, {}),
    ({"q": "speed>1", "count": "true"}, {}),
    ({"georel": "near;maxDistance==100000", "geometry": "Point", "coordinates": "[0,0]"}, {}),
    ({"offset": "2", "limit": "2"}, {}),
    ({}, {"Accept": "application/ld+json"}),
    ({"options": "keyValues"}, {"Accept": "application/ld+json"}),
    ({}, {"NGSILD-Tenant": "other"}),
]


VOLATILE = ("date", "x-request-id", "server-timing")


def test_over_http_the_answers_are_those_of_the_decoding_path(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    for tenant in ({}, {"NGSILD-Tenant": "other"}):
        for n in range(6):
            entity = {
                "id": f"urn:ngsi-ld:Car:c{n}",
                "type": "Car",
                "speed": [
                    {"type": "Property", "value": n},
                    {"type": "Property", "value": 10 + n, "datasetId": "urn:d:1"},
                ],
                "label": {"type": "LanguageProperty", "languageMap": {"pt": f"carro {n}", "en": f"car {n}"}},
                "gone": {"type": "Property", "value": 1, "expiresAt": "2001-01-01T00:00:00Z"},
                "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [n / 10, 0]}},
            }
            assert client.post(ENTITIES, json=entity, headers=tenant).status_code == 201

    def answers() -> list[tuple[int, bytes, list[tuple[str, str]]]]:
        found = []
        for params, headers in QUERIES:
            for _ in range(2):  # the second one hits the cache
                response = client.get(ENTITIES, params={"type": "Car", **params}, headers=headers)
                kept = sorted((k, v) for k, v in response.headers.items() if k not in VOLATILE)
                found.append((response.status_code, response.content, kept))
        return found

    cached = answers()
    assert all(status == 200 for status, _, _ in cached)
    assert all(b'"gone"' not in body and b"/gone" not in body for _, body, _ in cached)
    patch = {"speed": {"type": "Property", "value": 42}}
    assert client.patch(f"{ENTITIES}/urn:ngsi-ld:Car:c3/attrs", json=patch).status_code == 204
    after_write = answers()
    assert b":42" in after_write[0][1] and b":42" not in cached[0][1]
    with monkeypatch.context() as patched:
        _uncached(patched)
        assert answers() == after_write


class Hiding:
    """A restricted access view that hides one attribute (policy/compiled.py CompiledView.project)."""

    unrestricted = False

    def __init__(self, attr: str) -> None:
        self.attr = attr

    def visible(self, entity: dict[str, Any]) -> bool:
        return True

    def project(self, entity: dict[str, Any]) -> dict[str, Any]:
        return {**entity, "attrs": {k: v for k, v in entity["attrs"].items() if k != self.attr}}


def test_an_access_view_projects_each_entity_and_keys_its_own_entries() -> None:
    cache = RenderCache()
    options = RenderOptions(terms())
    entities = [stored(n) for n in range(3)]
    items = [deflate(orjson.dumps(e)) for e in entities]
    everything = render_page(items, decode, options, cache=cache)
    for attr in (V + "owner", V + "speed"):
        view = Hiding(attr)
        want = expected([view.project(e) for e in entities], options)
        assert render_page(items, decode, options, view=view, cache=cache) == want  # type: ignore[arg-type]
        assert render_page(items, decode, options, view=view, cache=cache) == want  # type: ignore[arg-type]
    assert render_page(items, decode, options, cache=cache) == everything == expected(entities, options)


def reader_policies(hidden: str, scope: str | None = None) -> list[Policy]:
    """The reader may read T entities (of `scope` only, when given) except `hidden`."""
    resources: dict[str, Any] = {"types": [V + "T"], "exceptAttrs": [V + hidden]}
    if scope is not None:
        resources["scopes"] = [scope]
    document = {"id": "reader", "effect": "allow", "principals": {"roles": ["reader"]}, "actions": ["read"]}
    return [parse_policy({**document, "resources": resources}, EXPAND)]


READER = Principal(id="key:reader", kind="key", tenants=None, roles=frozenset({"reader"}))


def test_retrieve_under_a_policy_view_never_serves_a_hidden_attribute_from_the_cache() -> None:
    """render_one keys a restricted caller's entries by its compiled view: whichever caller reads
    first, the unrestricted one sees everything and the reader never sees `owner`; an entity the
    view may not see is HIDDEN, never a rendering; a policy change makes a new view, so nothing
    rendered under the old one is served."""
    cache = RenderCache()
    mapping = terms()
    engine = PolicyAuthorizer(reader_policies("owner"))
    entity = stored(1)
    full = orjson.dumps(render_entity(entity, RenderOptions(mapping)))
    assert b"/owner" not in full and b'"owner"' in full
    for options in every_options(mapping):
        view = engine.read_view(READER, "")
        assert renders_cached(view)
        want_all = orjson.dumps(render_entity(entity, options)) if render_entity(entity, options) else b""
        seen = render_entity(view.project(entity), options)
        want_seen = orjson.dumps(seen) if seen else b""
        for first_unrestricted in (True, False):
            cache.clear()
            document = deflate(orjson.dumps(entity))
            order = [None, view] if first_unrestricted else [view, None]
            for _ in range(2):  # a miss, then a hit
                for caller in order:
                    got = render_one(bytes(document), decode, options, view=caller, cache=cache)
                    assert got == (want_all if caller is None else want_seen), (options, caller)
        assert b'"owner"' not in want_seen and b"/owner" not in want_seen
    options = RenderOptions(mapping)
    document = deflate(orjson.dumps(entity))
    before = engine.read_view(READER, "")
    assert b'"owner"' not in render_one(document, decode, options, view=before, cache=cache)
    engine.replace(reader_policies("speed"))  # the policy changes: speed is hidden now, owner shown
    after = engine.read_view(READER, "")
    assert after is not before
    shown = render_one(document, decode, options, view=after, cache=cache)
    assert b'"owner"' in shown and b'"speed"' not in shown
    engine.replace(reader_policies("speed", scope="/b"))  # a per-entity rule: only scope /b is visible
    scoped = engine.read_view(READER, "")
    assert render_one(document, decode, options, view=scoped, cache=cache) == HIDDEN
    assert render_one(document, decode, options, orjson.dumps({"@vocab": V}), scoped, cache) == HIDDEN
    assert render_page([document], decode, options, view=scoped, cache=cache) == b"[]"  # never in a page
    moved = deflate(orjson.dumps({**entity, "scope": ["/b"]}))
    assert b'"owner"' in render_one(moved, decode, options, view=scoped, cache=cache)


def test_only_views_that_read_the_entity_alone_and_audit_nothing_render_cached() -> None:
    assert renders_cached(EVERYTHING)
    assert renders_cached(PolicyAuthorizer(reader_policies("owner")).read_view(READER, ""))
    personal = parse_policy({"id": "p", "personal": {"attrs": [V + "owner"]}}, EXPAND)
    audited = PolicyAuthorizer([*reader_policies("speed"), personal]).read_view(READER, "")
    assert not renders_cached(audited)  # a personal read is audited with the entity each response carries
    assert not renders_cached(Hiding("owner"))  # type: ignore[arg-type]  # a view that does not say so


def test_many_access_views_never_reset_the_unrestricted_entries() -> None:
    """Past MAX_VIEW_TOKENS the views' tokens are forgotten, never reused: each view still gets
    exactly its own rendering, and the unrestricted entries stay cached."""
    cache = RenderCache()
    options = RenderOptions(terms())
    entity = stored(1)
    document = deflate(orjson.dumps(entity))
    everything = render_one(document, decode, options, cache=cache)
    kept = cache.size
    views = [Hiding(attr) for attr in (V + "owner", V + "speed") for _ in range(render_cache.MAX_VIEW_TOKENS + 5)]
    for view in views:
        want = orjson.dumps(render_entity(view.project(entity), options))
        assert render_one(document, decode, options, view=view, cache=cache) == want  # type: ignore[arg-type]
    assert len(cache._tokens) <= render_cache.MAX_VIEW_TOKENS + 1
    assert cache.render(cache.token(options), document, lambda _: b"miss") == everything
    assert cache.size > kept


def test_pages_of_none_one_and_several_entities_are_json_arrays() -> None:
    """render_page joins the brackets with its first and last entities: the same bytes as
    orjson.dumps of the list for a page of 0, 1 and several, and when a view hides some."""
    cache = RenderCache(budget=0)
    options = RenderOptions(terms())
    entities = [stored(n) for n in range(4)]
    documents = [deflate(orjson.dumps(e)) for e in entities]
    for count in range(len(documents) + 1):
        page = render_page(documents[:count], decode, options, cache=cache)
        assert page == expected(entities[:count], options)
        ld = render_page(documents[:count], decode, options, orjson.dumps({"@vocab": V}), cache=cache)
        assert ld == expected(entities[:count], options, {"@vocab": V})
