"""PostgreSQL only: what a write's one statement stores (store/postgres/write_plan.py). Its rows
travel as JSON (json_to_recordset) instead of asyncpg arrays, and an update rewrites the attr_values
rows of the attributes whose indexed values changed only: the stored rows must still be exactly
those the documents make, texts, numbers and documents byte for byte."""

from __future__ import annotations

import base64
import os
from collections import Counter
from typing import Any

import orjson

from cityos.entities import update
from cityos.entities.model import Entity
from cityos.store import open_store
from cityos.store.side_rows import geo_boxes, indexed_values
from test_store_contract import V, _migrate, make, postgres_schema, prop

ODD = 'quote " backslash \\ tab \t é ☃ \U0001f600 {braces,} NULL'


def _patch(name: str, value: Any) -> update.Mutator:
    def run(current: Entity | None) -> update.Outcome:
        assert current is not None
        attrs = {k: v for k, v in current["attrs"].items() if k != V + name}
        if value is not None:
            attrs[V + name] = [prop(value)]
        return update.Outcome({**current, "attrs": attrs, "modifiedAt": "2026-02-02T00:00:00Z"})

    return run


def _retype(first: str) -> update.Mutator:
    def run(current: Entity | None) -> update.Outcome:
        assert current is not None
        return update.Outcome({**current, "type": [first, *current["type"]], "modifiedAt": "2026-02-03T00:00:00Z"})

    return run


def _move(coordinates: list[float]) -> update.Mutator:
    def move(current: Entity | None) -> update.Outcome:
        assert current is not None
        where = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": coordinates}}
        attrs = {**current["attrs"], V + "where": [where]}
        return update.Outcome({**current, "attrs": attrs, "modifiedAt": "2026-02-04T00:00:00Z"})

    return move


def test_postgres_a_write_stores_exactly_the_rows_its_documents_make(postgres_skip_reason: str | None) -> None:
    with postgres_schema(postgres_skip_reason) as (loop, url):
        run = loop.run_until_complete
        run(_migrate(url))
        store = open_store(url)
        run(store.open())
        try:
            first = make(
                "urn:x:1",
                "T",
                n=prop(1.5),
                big=prop(1e308),
                words=prop([ODD, "b", 3, True]),
                name=prop(ODD),
                where={"type": "GeoProperty", "value": {"type": "Point", "coordinates": [2.25, 48.5]}},
            )
            second = make("urn:x:" + ODD.replace(" ", ""), "T", "U" + ODD, n=prop(-0.0))
            run(store.mutate("", [("urn:x:1", update.create(first))], atomic=True))
            run(store.mutate("", [(second["id"], update.create(second))], atomic=True))
            # n and name: one row each, rewritten in place (a number, a text, a number becoming a text
            # and back); words: a list, its rows deleted and inserted; big removed, extra added
            steps = [("n", 2), ("n", 2), ("name", "other"), ("words", ["x", 7]), ("big", None), ("extra", ODD)]
            steps += [("n", "seven"), ("name", -7.25), ("n", 1e308), ("name", ODD)]
            for name, value in steps:
                run(store.mutate("", [("urn:x:1", _patch(name, value))], atomic=True))
            for entity_id in ("urn:x:1", second["id"]):
                text, pk, types, attrs = run(
                    store.pool.fetchrow("SELECT doc::text, pk, types, attrs FROM entities WHERE id = $1", entity_id)
                )
                entity = orjson.loads(text)
                assert orjson.dumps(entity).decode() == text  # the stored text is the document's own
                assert types == entity["type"] and attrs == list(entity["attrs"])
                stored = run(store.pool.fetch("SELECT attr, num, txt FROM attr_values WHERE pk = $1", pk))
                assert Counter(tuple(r) for r in stored) == Counter(indexed_values(entity))
                boxes = run(
                    store.pool.fetch("SELECT attr, min_x, max_x, min_y, max_y, point FROM entity_geo WHERE pk = $1", pk)
                )
                assert [(r[0], tuple(r[1:5]), r[5]) for r in boxes] == geo_boxes(entity)
            # the first type changes while the location is left alone (its boxes are kept): the
            # boxes take the new type (map clusters count by it, grid.py); then the location moves
            for mutator in (_retype(V + "Moved"), _patch("n", 3), _move([3.5, 49.5])):
                run(store.mutate("", [("urn:x:1", mutator)], atomic=True))
                pk, first = run(store.pool.fetchrow("SELECT pk, types[1] FROM entities WHERE id = 'urn:x:1'"))
                boxes = run(store.pool.fetch("SELECT min_x, min_y, type FROM entity_geo WHERE pk = $1", pk))
                x, y = (3.5, 49.5) if mutator.__name__ == "move" else (2.25, 48.5)
                assert [tuple(r) for r in boxes] == [(x, y, first)] and first == V + "Moved"
            got = run(store.get_entity("", "urn:x:1"))
            assert got is not None and got["attrs"][V + "extra"][0]["value"] == ODD
            assert V + "big" not in got["attrs"]
        finally:
            run(store.close())


def test_postgres_an_update_of_a_document_is_hot(postgres_skip_reason: str | None) -> None:
    """Migration 14: `entities` leaves room on its pages, so an update that keeps the entity's
    types, attributes and expiry can write the new version on the same page (a HOT update: no new
    index entries)."""
    with postgres_schema(postgres_skip_reason) as (loop, url):
        run = loop.run_until_complete
        run(_migrate(url))
        store = open_store(url)
        run(store.open())
        try:
            options = run(store.pool.fetchval("SELECT reloptions FROM pg_class WHERE oid = 'entities'::regclass"))
            assert "fillfactor=70" in options
            ids = [f"urn:x:{n}" for n in range(40)]
            big = base64.b64encode(os.urandom(900)).decode()  # ~1.2 KB that pglz cannot shrink: a few rows a page
            run(
                store.mutate(
                    "", [(i, update.create(make(i, "T", n=prop(0), text=prop(big)))) for i in ids], atomic=True
                )
            )
            pages = "SELECT id, (ctid::text::point)[0] AS page FROM entities WHERE id = ANY($1::text[])"
            before = {r["id"]: r["page"] for r in run(store.pool.fetch(pages, ids))}
            assert len(set(before.values())) > 1  # several pages, each with rows and room
            for i in ids:  # one write each: the versions a committed write left are pruned for the next
                run(store.mutate("", [(i, _patch("n", 1))], atomic=True))
            after = {r["id"]: r["page"] for r in run(store.pool.fetch(pages, ids))}
            # each page had room for at least one new version (at fillfactor 100 the full pages
            # keep none); more when page pruning frees what the earlier writes left, which other
            # sessions' snapshots on a shared server may hold back
            kept = [i for i in ids if after[i] == before[i]]
            assert len(kept) >= len(set(before.values())) - 1
            stored = run(store.pool.fetchval("SELECT doc::text FROM entities WHERE id = 'urn:x:7'"))
            assert orjson.loads(stored)["attrs"][V + "n"][0]["value"] == 1
        finally:
            run(store.close())
