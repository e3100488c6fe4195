"""PostgreSQL only: what a write of many entities stores (store/postgres/write_plan.py, issue 15
eleventh pass). The documents of a multi-row write travel as a text[] zipped with their recordset
(ROWS FROM), a box row whose attribute keeps one box is rewritten in place (boxes_moved), and an
operation's relisted attributes narrow the side rows' comparison only when it started from the
stored document itself. The stored rows must be exactly those the documents make. The history's
instance columns (instance_columns.py, temporal.py) are checked here too."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson

from cityos.entities import update
from cityos.entities.model import Entity
from cityos.store import open_store
from cityos.store.postgres.instance_columns import new_instance_ids
from cityos.store.postgres.temporal import PostgresTemporal, _Put
from cityos.store.postgres.temporal_partitions import DAY_US, month_of, partition_name
from cityos.store.postgres.write_plan import WritePlan
from cityos.store.side_rows import geo_boxes, indexed_values
from cityos.temporal.query import to_micros
from test_store_contract import PAST, V, _migrate, geo, make, postgres_schema, prop

ODD = 'quote " backslash \\ tab \t é ☃ \U0001f600 {braces,} NULL'


def _point(x: float, y: float, **extra: Any) -> dict[str, Any]:
    return {**geo({"type": "Point", "coordinates": [x, y]}), **extra}


def _square(x: float) -> dict[str, Any]:
    ring = [[x, 1.0], [x + 1, 1.0], [x + 1, 2.0], [x, 2.0], [x, 1.0]]
    return geo({"type": "Polygon", "coordinates": [ring]})


def _us(text: str) -> int:
    return to_micros(datetime.fromisoformat(text))


def _becomes(entity: Entity, relisted: tuple[str, ...] | None = None) -> update.Mutator:
    def run(current: Entity | None) -> update.Outcome:
        return update.Outcome(entity, relisted=relisted)

    return run


def _patch(name: str, value: Any) -> update.Mutator:
    """One attribute's list replaced, every other list shared with the mutator's input (what
    Outcome.relisted promises)."""

    def run(current: Entity | None) -> update.Outcome:
        assert current is not None
        attrs = {**current["attrs"], V + name: [prop(value)]}
        return update.Outcome({**current, "attrs": attrs, "modifiedAt": "2026-03-03T00:00:00Z"}, relisted=(V + name,))

    return run


def _spy(monkeypatch: Any) -> list[list[str]]:
    """The CTEs of each write's plan."""
    seen: list[list[str]] = []
    original = WritePlan.ctes

    def spied(self: WritePlan, *args: Any) -> list[str]:
        answer = original(self, *args)
        seen.append(answer)
        return answer

    monkeypatch.setattr(WritePlan, "ctes", spied)
    return seen


async def _rows_match(store: Any, entity_ids: list[str]) -> None:
    """Each entity's row holds its document as stored text, and its side rows are those it makes."""
    for entity_id in entity_ids:
        row = await store.pool.fetchrow(
            "SELECT pk, doc::text AS doc, types, attrs FROM entities WHERE id = $1", entity_id
        )
        entity = orjson.loads(row["doc"])
        assert entity["id"] == entity_id and orjson.dumps(entity).decode() == row["doc"]
        assert list(row["types"]) == entity["type"] and list(row["attrs"]) == list(entity["attrs"])
        values = await store.pool.fetch("SELECT attr, num, txt FROM attr_values WHERE pk = $1", row["pk"])
        assert Counter(tuple(r) for r in values) == Counter(indexed_values(entity))
        boxes = await store.pool.fetch(
            "SELECT attr, min_x, max_x, min_y, max_y, point, type,"
            " ST_XMin(box) = min_x AND ST_XMax(box) = max_x AND ST_YMin(box) = min_y AND ST_YMax(box) = max_y AS boxed"
            " FROM entity_geo WHERE pk = $1",
            row["pk"],
        )
        assert all(r["boxed"] for r in boxes)
        assert all(r["type"] == entity["type"][0] for r in boxes)
        assert Counter((r[0], tuple(r[1:5]), r[5]) for r in boxes) == Counter(geo_boxes(entity))


@contextmanager
def _opened_store(postgres_skip_reason: str | None) -> Iterator[tuple[Callable[[Any], Any], Any]]:
    """A PostgresStore (its pool) on a fresh migrated schema, and the loop's run_until_complete."""
    with postgres_schema(postgres_skip_reason) as (loop, url):
        run = loop.run_until_complete
        run(_migrate(url))
        store: Any = open_store(url)
        run(store.open())
        try:
            yield run, store
        finally:
            run(store.close())


def test_postgres_a_batch_stores_each_document_and_its_boxes(
    postgres_skip_reason: str | None, monkeypatch: Any
) -> None:
    """One write creates five entities, one write changes them all: locations moved (in place),
    moved and re-typed, a location of two instances moved (deleted and inserted), a location added,
    a location removed; every document and side row is the entity's own."""
    seen = _spy(monkeypatch)
    with _opened_store(postgres_skip_reason) as (run, store):
        ids = [f"urn:x:{n}" for n in range(5)]
        made = [
            make(ids[0], "T", n=prop(0), where=_point(1.0, 2.0)),
            make(ids[1], "T", n=prop(1), where=_point(3.0, 4.0), area=_square(5.0)),
            make(ids[2], "T", where=[_point(6.0, 7.0, datasetId="urn:d:a"), _point(8.0, 9.0, datasetId="urn:d:b")]),
            make(ids[3], "T", words=prop([ODD, 3, True])),
            make(ids[4], "T", name=prop(ODD), where=_point(10.0, 11.0)),
        ]
        run(store.mutate("", [(e["id"], update.create(e)) for e in made], atomic=True))
        assert "added AS" in seen[-1][0] and "r.doc::json" in seen[-1][0]  # the documents as a text[]
        run(_rows_match(store, ids))
        changed = [
            {**made[0], "attrs": {**made[0]["attrs"], V + "where": [_point(1.5, 2.5)]}},
            {
                **made[1],
                "type": [V + "U", V + "T"],
                "attrs": {**made[1]["attrs"], V + "where": [_point(3.5, 4.5)], V + "area": [_square(6.0)]},
            },
            {
                **made[2],
                "attrs": {V + "where": [_point(6.5, 7.5, datasetId="urn:d:a"), _point(8.0, 9.0, datasetId="urn:d:b")]},
            },
            {**made[3], "attrs": {**made[3]["attrs"], V + "where": [_point(12.0, 13.0)]}},
            {**made[4], "attrs": {V + "name": [prop(ODD + "!")]}},
        ]
        run(store.mutate("", [(e["id"], _becomes(e)) for e in changed], atomic=True))
        ctes = " ".join(seen[-1])
        assert "boxes_moved AS" in ctes and "boxes_gone AS" in ctes and "r.doc::json" in ctes
        run(_rows_match(store, ids))
        # the moved rows are the only rows of their (pk, attr): none left behind
        count = run(store.pool.fetchval("SELECT count(*) FROM entity_geo"))
        assert count == sum(len(geo_boxes(e)) for e in changed) == 6


def test_postgres_relisted_narrows_the_side_rows_only_from_the_stored_document(
    postgres_skip_reason: str | None,
) -> None:
    """An operation's relisted attributes hold against what it started from: two operations on one
    entity in one write, and an operation that started from the visible form of a document with an
    expired attribute, are compared whole (else the first patch's, or the expired attribute's,
    attr_values rows would be left stale)."""
    with _opened_store(postgres_skip_reason) as (run, store):
        ids = ["urn:x:a", "urn:x:b", "urn:x:c"]
        made = [
            make(ids[0], "T", n=prop(0), m=prop("zero")),
            make(ids[1], "T", n=prop(0), brief=prop(5, expiresAt=PAST)),
            make(ids[2], "T", n=prop(0), m=prop("zero"), where=_point(1.0, 2.0)),
        ]
        run(store.mutate("", [(e["id"], update.create(e)) for e in made], atomic=True))
        steps = [(ids[0], _patch("n", 1)), (ids[0], _patch("m", "one")), (ids[1], _patch("n", 2))]
        steps.append((ids[2], _patch("m", "two")))  # one operation from the stored document: narrowed
        run(store.mutate("", steps, atomic=True))
        run(_rows_match(store, ids))
        names = run(
            store.pool.fetch("SELECT attr FROM attr_values v JOIN entities e USING (pk) WHERE e.id = $1", ids[1])
        )
        assert {r["attr"] for r in names} == {V + "n"}  # the expired attribute's row went with it
        nums = run(store.pool.fetchval("SELECT num FROM attr_values WHERE attr = $1 AND num = 1", V + "n"))
        assert nums == 1.0


def test_new_instance_ids_are_version_4_uuids() -> None:
    ids = new_instance_ids(2000)
    assert len(set(ids)) == 2000
    shape = re.compile(r"^urn:ngsi-ld:Instance:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    for found in ids:
        assert shape.match(found)
        parsed = uuid.UUID(found.rsplit(":", 1)[1])
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # every variant digit is drawn (2,000 draws: each of 4 missing has odds below 1e-240)
    assert {found.rsplit(":", 1)[1].split("-")[3][0] for found in ids} == set("89ab")
    assert new_instance_ids(0) == []


def test_the_partitions_of_instances_are_their_months() -> None:
    """_partitions by day: a month's first and last microsecond, before 1970, and the timeless key."""
    keys = [
        _us("2026-03-01T00:00:00Z"),
        _us("2026-03-01T00:00:00Z") - 1,
        _us("2026-12-31T23:59:59.999999Z"),
        _us("1969-12-31T23:59:59.999999Z"),
        _us("1969-12-01T00:00:00Z"),
        -DAY_US * 40 - 1,
    ]
    puts = [_Put("a", "", "i", (), key) for key in keys]
    expected = sorted({m for key in keys if (m := month_of(key)) is not None})
    assert PostgresTemporal._partitions(puts) == [partition_name(m) for m in expected]
    assert len(expected) == 5
    timeless = _Put.of("a", {"type": "Property", "value": 1})  # no time: the timeless partition only
    assert PostgresTemporal._partitions([timeless]) is None
    stamped = _Put.of("a", {"type": "Property", "value": 1, "observedAt": "2026-05-05T00:00:00Z"})
    assert stamped.retained == _us("2026-05-05T00:00:00Z")
    assert stamped.columns[-1] == '{"type":"Property","value":1,"observedAt":"2026-05-05T00:00:00Z"}'
