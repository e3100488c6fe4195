"""The temporal half of the storage contract: one history written into SQLite and into PostgreSQL
(a fresh migrated schema), then the same questions asked of both must get the same answers --
temporal_query, temporal_aggregate and temporal_entity for many query shapes, before and after
changing, deleting and purging instances. instanceIds are random per back-end, so they are checked
(present, unique) and then left out of the comparison.

The PostgreSQL-only tests at the end cover what SQLite has no counterpart for: monthly partitions
created on demand by several workers at once, retention dropping whole partitions (also one that
another worker still has in its cache, or one busy writers keep), and read timeouts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cityos.entities import update
from cityos.entities.model import NULL_URI, Entity, Instance
from cityos.errors import BadRequestData, QueryTimeout
from cityos.store import open_store
from cityos.store.base import EntityStore
from cityos.store.temporal_base import (
    SCOPE_ATTR,
    AggregationSpec,
    TemporalQuery,
    TemporalWindow,
    stats_for,
)
from cityos.temporal.history import HistoryRecorder
from cityos.temporal.query import to_micros

pytestmark = pytest.mark.slow(seconds=70)

R = TypeVar("R")
V = "https://example.org/"
TYPE_SENSOR, TYPE_METER, TYPE_CAR = V + "Sensor", V + "Meter", V + "Car"
TEMP, STATUS, READING, NEAR, LABEL, CONFIG, NOTE, SPEED = (
    V + name for name in ("temperature", "status", "reading", "near", "label", "config", "note", "speed")
)
DS_A, DS_B = "urn:ds:a", "urn:ds:b"
FIRST = datetime(2023, 11, 3, 5, 0, tzinfo=UTC)
STEP = timedelta(days=4, hours=5, minutes=17)  # 40 readings from November to April, at changing hours


def at(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def us(text: str) -> int:
    return to_micros(datetime.fromisoformat(text))


class Backend:
    """An open store and the event loop it lives on (an asyncpg pool is bound to one loop)."""

    def __init__(self, name: str, store: EntityStore, loop: asyncio.AbstractEventLoop) -> None:
        self.name, self.store, self.loop = name, store, loop

    def run(self, coroutine: Coroutine[Any, Any, R]) -> R:
        return self.loop.run_until_complete(coroutine)


@contextmanager
def opened(name: str, database: str) -> Iterator[Backend]:
    loop = asyncio.new_event_loop()
    store = open_store(database)
    try:
        loop.run_until_complete(store.open())
        store.set_change_listener(HistoryRecorder(), None, name="history")
        yield Backend(name, store, loop)
    finally:
        loop.run_until_complete(store.close())
        loop.close()


# -- one history ------------------------------------------------------------------------------------
def prop(value: Any, moment: datetime | None, **extra: Any) -> Instance:
    instance: Instance = {"type": "Property", "value": value}
    if moment is not None:
        instance["observedAt"] = at(moment)
        instance["createdAt"] = at(moment + timedelta(seconds=1))
        instance["modifiedAt"] = at(moment + timedelta(seconds=2))
    instance.update(extra)
    return instance


def sensor_writes(n: int) -> list[list[tuple[str, Instance]]]:
    """Three temporal POSTs for entity n: numbers, texts, JSON values, datasets, a relationship, a
    language map, deletions, expiring and timeless instances, scopes, month ends, before 1970."""
    offset = timedelta(minutes=n)
    readings: list[tuple[str, Instance]] = []
    others: list[tuple[str, Instance]] = []
    for k in range(40):
        moment = FIRST + k * STEP + offset
        value: Any = ((k * (n + 3)) % 17) * 0.25 - 1 if k % 3 else (k * n) % 9
        readings.append((TEMP, prop(value, moment)))
        if k % 4 == 0:
            kinds: list[Any] = ["ok", "warn", "fail", {"a": k % 3}, True, [1, "x"]]
            others.append((STATUS, prop(kinds[(k + n) % len(kinds)], moment)))
        if k % 3 == 0:
            for dataset in (None, DS_A, DS_B):
                extra = {} if dataset is None else {"datasetId": dataset}
                others.append((READING, prop((k + n) % 5 + (dataset == DS_A) * 0.5, moment, **extra)))
        if k % 10 == n % 10:
            others.append(
                (NEAR, {"type": "Relationship", "object": f"urn:ngsi-ld:Meter:{k % 4:02d}", "observedAt": at(moment)})
            )
    edges = [
        datetime(2024, 1, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 2, 29, 12, tzinfo=UTC),
        datetime(2024, 3, 1, tzinfo=UTC),
    ]
    others += [(TEMP, prop(n + 0.5 * i, moment)) for i, moment in enumerate(edges)]
    others += [
        (
            LABEL,
            {
                "type": "LanguageProperty",
                "languageMap": {"en": f"l{n % 3}", "nl": "x"},
                "observedAt": at(FIRST + 5 * STEP),
            },
        ),
        (
            CONFIG,
            {
                "type": "Property",
                "value": n % 2,
                "createdAt": at(FIRST + n * STEP),
                "modifiedAt": at(FIRST + (n + 20) * STEP),
            },
        ),  # no observedAt: kept by its system times
        (NOTE, {"type": "Property", "value": f"timeless {n}"}),  # no time at all: never purged
        (STATUS, {"type": "Property", "value": NULL_URI, "deletedAt": at(FIRST + (n + 7) * STEP)}),
        (STATUS, prop("hidden", FIRST + 3 * STEP, expiresAt="2001-01-01T00:00:00Z")),
        (STATUS, prop("kept", FIRST + 4 * STEP + offset, expiresAt="2999-01-01T00:00:00Z")),
    ]
    if n % 3 == 0:
        scopes = [["/city/north"], ["/city/south", "/city/north/x"], ["/city/south"], []]
        if n == 6:  # its last scope matches: valid until forever
            scopes = [["/city/south"], ["/city/north"]]
        others += [(SCOPE_ATTR, prop(scope, FIRST + (4 + 9 * i + n) * STEP)) for i, scope in enumerate(scopes)]
    if n == 2:  # the attribute changes kind: stored last (a Property) is not newest in time
        others.append((NEAR, prop("urn:ngsi-ld:Meter:01", FIRST + 2 * STEP)))
    if n == 1:
        others += [
            (TEMP, prop(-4, datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC))),
            (TEMP, prop(-3, datetime(1969, 12, 15, tzinfo=UTC))),
        ]
    # the same attribute, datasetId and observedAt again: a later instance replaces an earlier one,
    # in the same request as in a later one
    again = [(TEMP, prop(100 + n, FIRST + 2 * STEP + offset)), (TEMP, prop(200 + n, FIRST + 2 * STEP + offset))]
    return [readings[:25] + again[:1], others + again[1:], [*readings[25:], (READING, prop(7, FIRST + offset))]]


def car_changes(n: int) -> list[Callable[[], update.Mutator]]:
    """Core API changes of a car, whose history the HistoryRecorder appends inside mutate."""
    car = f"urn:ngsi-ld:Car:{n}"

    def stamp(k: int) -> str:
        return at(FIRST + k * STEP + timedelta(seconds=n))

    def entity(k: int, **attrs: list[Instance]) -> Entity:
        return {
            "id": car,
            "type": [TYPE_CAR],
            "createdAt": stamp(0),
            "modifiedAt": stamp(k),
            "attrs": {V + name: value for name, value in attrs.items()},
        }

    def speed(k: int, value: float, **extra: Any) -> Instance:
        return {**prop(value, FIRST + k * STEP + timedelta(seconds=n)), "modifiedAt": stamp(k), **extra}

    created = entity(0, speed=[speed(0, 10 + n)], status=[prop("parked", FIRST)])
    created["scope"] = ["/city/north"]
    changes: list[Callable[[], update.Mutator]] = [lambda: update.create(created)]
    for k in range(1, 12):
        fragment = entity(k, speed=[speed(k, (k * 7 + n) % 30 * 1.5)])
        if k % 4 == 0:
            fragment["attrs"][V + "speed"].append(speed(k, k, datasetId=DS_A))
        if k == 5:
            fragment["scope"] = ["/city/south"]
            fragment["type"] = [TYPE_CAR, TYPE_SENSOR]  # the temporal entity's types are unioned
        if k == 9:
            fragment["attrs"][V + "speed"].append({"type": "Property", "datasetId": DS_A, "null": True})
        if k == 11:  # a new value observed at the same time as the previous one: ties go by storage order
            fragment["attrs"][V + "speed"] = [{**speed(10, 99), "modifiedAt": stamp(11)}]
        changes.append(lambda fragment=fragment: update.merge(car, fragment))
    changes.append(lambda: update.delete_attr(car, V + "status", dataset=None, delete_all=True, stamp=stamp(12)))
    return changes


def load(backend: Backend) -> None:
    store, run = backend.store, backend.run
    writes = {n: sensor_writes(n) for n in range(10)}
    for step in range(3):  # round robin: instances of entities interleave in storage order
        for n, calls in writes.items():
            types = [TYPE_SENSOR] if n < 7 else [TYPE_METER]
            if step == 1 and n % 2 == 0:
                types = [*types, TYPE_METER]
            run(store.temporal_write("", f"urn:ngsi-ld:{'Sensor' if n < 7 else 'Meter'}:{n:02d}", types, calls[step]))
    run(store.temporal_write("t2", "urn:ngsi-ld:Sensor:00", [TYPE_SENSOR], writes[3][0]))
    cars = {n: car_changes(n) for n in range(3)}
    for step in range(len(cars[0])):
        operations = [(f"urn:ngsi-ld:Car:{n}", cars[n][step]()) for n in cars]
        results = run(store.mutate("", operations, atomic=True))
        assert all(r.error is None for r in results)


# -- the questions ----------------------------------------------------------------------------------
def _numbers_above(limit: float) -> Callable[[Entity], bool]:
    def test(entity: Entity) -> bool:
        values = [i.get("value") for i in entity["attrs"].get(TEMP, []) + entity["attrs"].get(V + "speed", [])]
        return any(isinstance(v, int | float) and not isinstance(v, bool) and v > limit for v in values)

    return test


def _north(scopes: Any) -> bool:
    return any(isinstance(s, str) and s.startswith("/city/north") for s in scopes)


DEC, JAN, FEB, MAR = (
    us(f"{month}T00:00:00+00:00") for month in ("2023-12-01", "2024-01-01", "2024-02-01", "2024-03-01")
)
QUERIES: dict[str, Callable[[], TemporalQuery]] = {
    "everything": lambda: TemporalQuery(count=True),
    "observedAt window": lambda: TemporalQuery(window=TemporalWindow("observedAt", DEC, FEB), count=True),
    "observedAt from": lambda: TemporalQuery(window=TemporalWindow("observedAt", FEB, None)),
    "observedAt before": lambda: TemporalQuery(window=TemporalWindow("observedAt", None, DEC)),
    "observedAt, a month edge": lambda: TemporalQuery(window=TemporalWindow("observedAt", MAR - 1, MAR + 1)),
    "createdAt window": lambda: TemporalQuery(window=TemporalWindow("createdAt", DEC, MAR), count=True),
    "modifiedAt": lambda: TemporalQuery(window=TemporalWindow("modifiedAt"), attrs=[CONFIG, V + "speed"]),
    "deletedAt": lambda: TemporalQuery(window=TemporalWindow("deletedAt"), count=True),
    "deletedAt window": lambda: TemporalQuery(window=TemporalWindow("deletedAt", JAN, None)),
    "lastN 1": lambda: TemporalQuery(last_n=1),
    "lastN 3 in a window": lambda: TemporalQuery(last_n=3, window=TemporalWindow("observedAt", None, FEB)),
    "lastN with datasets": lambda: TemporalQuery(last_n=2, attrs=[READING], datasets=[DS_A, None]),
    "lastN, capped": lambda: TemporalQuery(last_n=4, max_instances=17),
    "datasets default": lambda: TemporalQuery(datasets=[None], attrs=[READING, V + "speed"]),
    "datasets a": lambda: TemporalQuery(datasets=[DS_A], count=True),
    "datasets default and b": lambda: TemporalQuery(datasets=[None, DS_B], attrs=[READING]),
    "attrs": lambda: TemporalQuery(attrs=[TEMP]),
    "attrs, several": lambda: TemporalQuery(attrs=[STATUS, NEAR, LABEL], count=True),
    "attrs, none stored": lambda: TemporalQuery(attrs=[V + "nothing"], count=True),
    "ids": lambda: TemporalQuery(ids=["urn:ngsi-ld:Sensor:02", "urn:ngsi-ld:Meter:08", "urn:x:none"], count=True),
    "idPattern": lambda: TemporalQuery(id_pattern="Sensor:0[1-3]", count=True),
    "idPattern anchored": lambda: TemporalQuery(id_pattern="^urn:ngsi-ld:Car:[02]$"),
    "types": lambda: TemporalQuery(types=[TYPE_METER], count=True),
    "types and attrs": lambda: TemporalQuery(types=[TYPE_CAR, TYPE_METER], attrs=[V + "speed", NEAR]),
    "a page": lambda: TemporalQuery(limit=3, offset=2, count=True),
    "a page, descending": lambda: TemporalQuery(limit=4, offset=1, count=True, descending=True),
    "the last page": lambda: TemporalQuery(limit=5, offset=10, count=True),
    "past the end": lambda: TemporalQuery(limit=5, offset=40, count=True),
    "limit 0": lambda: TemporalQuery(limit=0, count=True),
    "instance cap": lambda: TemporalQuery(max_instances=37, count=True),
    "instance cap in a window": lambda: TemporalQuery(window=TemporalWindow("observedAt", JAN, None), max_instances=5),
    "entities only": lambda: TemporalQuery(max_instances=0, count=True),
    "without instances too": lambda: TemporalQuery(
        window=TemporalWindow("observedAt", MAR, None), require_instances=False, count=True
    ),
    "predicate": lambda: TemporalQuery(predicate=_numbers_above(205), count=True),
    "predicate, a page": lambda: TemporalQuery(predicate=_numbers_above(2), limit=3, offset=1),
    "predicate in a window": lambda: TemporalQuery(
        predicate=_numbers_above(3), window=TemporalWindow("observedAt", FEB, None), limit=2, count=True
    ),
    "predicate on the scope": lambda: TemporalQuery(predicate=lambda e: "/city/south" in e.get("scope", [])),
    "scopeQ": lambda: TemporalQuery(scope_test=_north, count=True),
    "scopeQ in a window": lambda: TemporalQuery(scope_test=_north, window=TemporalWindow("observedAt", JAN, None)),
    "scopeQ, lastN, predicate": lambda: TemporalQuery(scope_test=_north, last_n=2, predicate=_numbers_above(1)),
    "scopeQ, a page": lambda: TemporalQuery(scope_test=_north, limit=2, offset=1, count=True, max_instances=9),
}
AGGREGATED = (
    "everything",
    "observedAt window",
    "createdAt window",
    "deletedAt",
    "datasets default and b",
    "attrs, several",
    "types and attrs",
    "a page, descending",
    "predicate in a window",
    "scopeQ in a window",
    "lastN 1",
)
HOUR, DAY = 3_600_000_000, 86_400_000_000
SPECS = {
    "one period": AggregationSpec(),
    "days": AggregationSpec(micros=DAY),
    "weeks from an origin": AggregationSpec(micros=7 * DAY, origin=us("2023-11-20T06:30:00+00:00")),
    "hours from an origin after the data": AggregationSpec(micros=5 * HOUR, origin=us("2024-06-01T00:00:00+00:00")),
    "months": AggregationSpec(months=1),
    "months from mid-month": AggregationSpec(months=1, origin=us("2023-11-30T23:00:00+00:00")),
    "two months": AggregationSpec(months=2, origin=us("2023-10-31T12:00:00+00:00")),
    "quarters from after the data": AggregationSpec(months=3, origin=us("2024-05-15T00:00:00+00:00")),
    "months from before 1970": AggregationSpec(months=1, origin=us("1969-11-30T00:00:00.250000+00:00")),
    # only what the methods need (the API asks for no more): the rest is 0 or None on both
    "days, avg only": AggregationSpec(micros=DAY, stats=stats_for(["avg"])),
    "one period, count and min": AggregationSpec(stats=stats_for(["totalCount", "min"])),
    "months, distinct and stddev": AggregationSpec(months=1, stats=stats_for(["distinctCount", "stddev"])),
}


def _without_ids(page_entities: list[Entity]) -> list[Entity]:
    """The entities with every instance's instanceId checked (present, unique) and left out."""
    seen: set[str] = set()
    out = []
    for entity in page_entities:
        attrs = {}
        for attr, instances in entity["attrs"].items():
            kept = []
            for instance in instances:
                instance_id = instance["instanceId"]
                assert instance_id.startswith("urn:ngsi-ld:Instance:") and (attr, instance_id) not in seen
                seen.add((attr, instance_id))  # type: ignore[arg-type]
                kept.append({k: v for k, v in instance.items() if k != "instanceId"})
            attrs[attr] = kept
        out.append({**entity, "attrs": attrs})
    return out


def same(got: Any, expected: Any, where: str) -> None:
    """Equal, floats to 1e-12 (a sum may add in another order); says where they differ."""
    if isinstance(expected, float) and isinstance(got, float):
        assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-12), f"{where}: {got!r} != {expected!r}"
    elif isinstance(expected, dict) and isinstance(got, dict):
        assert list(got) == list(expected), f"{where}: keys {list(got)} != {list(expected)}"
        for key in expected:
            same(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple) and isinstance(got, list | tuple):
        assert len(got) == len(expected), f"{where}: {len(got)} items != {len(expected)}\n{got}\n{expected}"
        for index, (g, e) in enumerate(zip(got, expected, strict=True)):
            same(g, e, f"{where}[{index}]")
    else:
        assert type(got) is type(expected) and got == expected, f"{where}: {got!r} != {expected!r}"


def answers(backend: Backend, tenants: tuple[str, ...] = ("", "t2")) -> dict[str, Any]:
    """Every question's answer, comparable across back-ends."""
    store, run = backend.store, backend.run
    found: dict[str, Any] = {}
    for tenant in tenants:
        for name, build in QUERIES.items():
            page = run(store.temporal_query(tenant, build()))
            found[f"{tenant}/query/{name}"] = (_without_ids(page.entities), page.total, page.has_more, page.cut)
        for name in AGGREGATED:
            for label, spec in SPECS.items():
                result = dataclasses.asdict(run(store.temporal_aggregate(tenant, QUERIES[name](), spec)))
                if not spec.wants_times():  # first and last may be 0 then (AggregationSpec)
                    for entity in result["entities"]:
                        for series in (s for listed in entity["attrs"].values() for s in listed):
                            for period in series["periods"]:
                                period["first"] = period["last"] = None
                found[f"{tenant}/aggregate/{name}/{label}"] = result
        ids = [f"urn:ngsi-ld:Sensor:{n:02d}" for n in range(7)] + ["urn:ngsi-ld:Meter:08", "urn:ngsi-ld:Car:1", "urn:x"]
        for entity_id in ids:
            info = run(store.temporal_entity(tenant, entity_id))
            found[f"{tenant}/entity/{entity_id}"] = None if info is None else dataclasses.asdict(info)
    return found


def compare(lite: Backend, pg: Backend) -> dict[str, Any]:
    expected, got = answers(lite), answers(pg)
    assert list(got) == list(expected)
    for name, answer in expected.items():
        same(got[name], answer, name)
    return expected


@pytest.fixture
def pair(tmp_path: Path, fresh_postgres: str) -> Iterator[tuple[Backend, Backend]]:
    with opened("sqlite", str(tmp_path / "temporal.db")) as lite, opened("postgres", fresh_postgres) as pg:
        for backend in (lite, pg):
            load(backend)
        yield lite, pg


def instance_ids(backend: Backend, entity_id: str, attr: str) -> list[str]:
    """The instanceIds of an attribute, oldest first, in one back-end."""
    page = backend.run(backend.store.temporal_query("", TemporalQuery(ids=[entity_id], attrs=[attr])))
    return [i["instanceId"] for i in page.entities[0]["attrs"][attr]]


# -- the same answers -------------------------------------------------------------------------------
def test_every_question_answers_as_on_sqlite(pair: tuple[Backend, Backend]) -> None:
    lite, pg = pair
    expected = compare(lite, pg)
    # the history did exercise what it is meant to
    entities, total, has_more, cut = expected["/query/everything"]
    assert total == 13 and len(entities) == 13 and not has_more and cut is not None
    assert expected["/query/a page"][2] and expected["/query/instance cap"][3] is not None
    assert expected["/query/lastN, capped"][3] is not None and expected["/query/scopeQ"][1] == 7
    assert 0 < expected["/query/predicate"][1] < 13 and expected["t2/query/everything"][1] == 1
    assert any(SCOPE_ATTR in e["attrs"] for e in expected["/query/scopeQ in a window"][0])
    deleted = expected["/query/deletedAt"][0]
    assert {e["id"] for e in deleted} >= {"urn:ngsi-ld:Car:0", "urn:ngsi-ld:Sensor:00"}
    months = {e["id"]: e for e in expected["/aggregate/everything/months from mid-month"]["entities"]}
    periods = months["urn:ngsi-ld:Sensor:01"]["attrs"][TEMP][0]["periods"]
    assert periods[0]["index"] < 0 and periods[0]["first"] < 0  # before 1970, so before the origin
    assert expected["/entity/urn:ngsi-ld:Car:1"]["types"] == [TYPE_CAR, TYPE_SENSOR]


def test_changed_instances_answer_as_on_sqlite(pair: tuple[Backend, Backend]) -> None:
    lite, pg = pair
    sensor, car = "urn:ngsi-ld:Sensor:01", "urn:ngsi-ld:Car:2"
    outcomes: dict[str, list[Any]] = {}
    for backend in pair:
        store, run = backend.store, backend.run
        temps, speeds = instance_ids(backend, sensor, TEMP), instance_ids(backend, car, V + "speed")
        outcomes[backend.name] = [
            # a new value and observedAt moves the instance to another month's partition
            run(store.temporal_modify_instance("", sensor, TEMP, temps[5], prop(42.25, FIRST + 60 * STEP))),
            run(store.temporal_modify_instance("", sensor, TEMP, temps[6], {"value": "now text"})),
            run(store.temporal_modify_instance("", sensor, TEMP, "urn:ngsi-ld:Instance:none", {"value": 1})),
            run(store.temporal_modify_instance("", sensor, STATUS, temps[7], {"value": 1})),  # not its attribute
            run(store.temporal_modify_instance("", "urn:x:none", TEMP, temps[7], {"value": 1})),
            run(store.temporal_delete_instance("", sensor, TEMP, temps[0])),
            run(store.temporal_delete_instance("", sensor, TEMP, temps[0])),
            run(store.temporal_delete_instance("", car, V + "speed", speeds[3])),
            run(store.temporal_delete_attribute("", sensor, READING, dataset=DS_A, delete_all=False)),
            run(store.temporal_delete_attribute("", sensor, READING, dataset=DS_A, delete_all=False)),
            run(store.temporal_delete_attribute("", sensor, READING, dataset=None, delete_all=False)),
            run(store.temporal_delete_attribute("", "urn:ngsi-ld:Sensor:02", STATUS, dataset=None, delete_all=True)),
            run(store.temporal_delete_attribute("", "urn:x:none", STATUS, dataset=None, delete_all=True)),
            run(store.temporal_delete_entity("", "urn:ngsi-ld:Sensor:03")),
            run(store.temporal_delete_entity("", "urn:ngsi-ld:Sensor:03")),
            run(store.temporal_delete_entity("t2", "urn:ngsi-ld:Sensor:04")),
            # a temporal POST after the changes: new instances, one replacing a stored one in a new month
            run(store.temporal_write("", "urn:ngsi-ld:Sensor:03", [TYPE_SENSOR], [(TEMP, prop(1, FIRST))])),
            run(store.temporal_write("", sensor, [TYPE_SENSOR], [(TEMP, prop(-7.5, FIRST + 60 * STEP))])),
        ]
    assert outcomes["postgres"] == outcomes["sqlite"]
    assert outcomes["sqlite"][:6] == [True, True, False, False, False, True]
    compare(lite, pg)


def test_purge_answers_as_on_sqlite_and_drops_whole_months(pair: tuple[Backend, Backend]) -> None:
    lite, pg = pair
    months = partitions(pg)
    assert {"temporal_instances_1969_12", "temporal_instances_2023_11", "temporal_instances_2024_04"} <= set(months)
    cutoffs = [us("1970-01-01T00:00:00+00:00"), us("2024-01-17T10:00:00+00:00"), us("2024-02-01T00:00:00+00:00")]
    for before in cutoffs:
        removed = {b.name: b.run(b.store.temporal_purge(before)) for b in pair}
        assert removed["postgres"] == removed["sqlite"] > 0, before
        compare(lite, pg)
    left = partitions(pg)
    assert [m for m in left if m < "temporal_instances_2024_02"] == []  # dropped whole, not emptied
    assert "temporal_instances_2024_02" in left and "temporal_instances_timeless" in left
    # writing into a month whose partition was dropped creates it again
    for backend in pair:
        backend.run(backend.store.temporal_write("", "urn:new", [TYPE_METER], [(TEMP, prop(3, FIRST))]))
    compare(lite, pg)
    assert "temporal_instances_2023_11" in partitions(pg)
    removed = {b.name: b.run(b.store.temporal_purge(us("3000-01-01T00:00:00+00:00"))) for b in pair}
    assert removed["postgres"] == removed["sqlite"] > 0
    compare(lite, pg)
    assert partitions(pg) == ["temporal_instances_timeless"]
    # the entity of tenant t2 had no timeless instance: it is gone, as on SQLite
    assert lite.run(lite.store.temporal_entity("t2", "urn:ngsi-ld:Sensor:00")) is None


def test_purge_of_some_types_answers_as_on_sqlite(pair: tuple[Backend, Backend]) -> None:
    """temporal_retention_types: only the entities of the types given lose their older instances
    (an entity with several types goes if any is given), the same on both back-ends."""
    lite, pg = pair
    before = us("2024-01-17T10:00:00+00:00")
    old = TemporalQuery(ids=["urn:ngsi-ld:Sensor:01"], attrs=[TEMP])
    kept = len(lite.run(lite.store.temporal_query("", old)).entities[0]["attrs"][TEMP])
    assert {b.name: b.run(b.store.temporal_purge(before, [])) for b in pair} == {"sqlite": 0, "postgres": 0}
    removed = {b.name: b.run(b.store.temporal_purge(before, [TYPE_METER])) for b in pair}
    assert removed["postgres"] == removed["sqlite"] > 0
    compare(lite, pg)
    for backend in pair:  # a Sensor that never was a Meter keeps its history; a Meter has none that old
        assert len(backend.run(backend.store.temporal_query("", old)).entities[0]["attrs"][TEMP]) == kept
        meter = backend.run(backend.store.temporal_query("", TemporalQuery(ids=["urn:ngsi-ld:Meter:07"], attrs=[TEMP])))
        times = [i.get("observedAt", "") for i in meter.entities[0]["attrs"][TEMP]]
        assert times and min(times) >= "2024-01-17T10:00:00", times


def test_downsampling_answers_as_on_sqlite(pair: tuple[Backend, Backend]) -> None:
    """temporal_downsample over the shared load (sensors' readings, several datasetIds, text values,
    times without observedAt): the same hours folded, the same answers to every question after."""
    lite, pg = pair
    before = us("2024-02-01T00:00:00+00:00")
    assert {b.name: b.run(b.store.temporal_downsample(before, [])) for b in pair} == {"sqlite": 0, "postgres": 0}
    removed = {b.name: b.run(b.store.temporal_downsample(before, [TYPE_SENSOR, TYPE_METER])) for b in pair}
    assert removed["postgres"] == removed["sqlite"] > 0, removed
    compare(lite, pg)
    assert {b.name: b.run(b.store.temporal_downsample(before, [TYPE_SENSOR, TYPE_METER])) for b in pair} == {
        "sqlite": 0,
        "postgres": 0,
    }


def test_history_rolls_back_with_its_change(pair: tuple[Backend, Backend]) -> None:
    """History is appended inside mutate's transaction: a failing atomic request leaves none."""
    lite, pg = pair
    car = "urn:ngsi-ld:Car:9"
    entity: Entity = {
        "id": car,
        "type": [TYPE_CAR],
        "createdAt": at(FIRST),
        "modifiedAt": at(FIRST),
        "attrs": {V + "speed": [prop(5, FIRST)]},
    }
    for backend in pair:
        operations = [(car, update.create(entity)), ("urn:x:missing", update.delete("urn:x:missing"))]
        with pytest.raises(Exception, match="urn:x:missing"):
            backend.run(backend.store.mutate("", operations, atomic=True))
        assert backend.run(backend.store.temporal_entity("", car)) is None
    compare(lite, pg)


# -- PostgreSQL only: partitions, several workers, timeouts --------------------------------------------
def partitions(backend: Backend) -> list[str]:
    async def names() -> list[str]:
        rows = await backend.store.pool.fetch(  # type: ignore[attr-defined]
            "SELECT c.relname FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid"
            " WHERE h.inhparent = 'temporal_instances'::regclass ORDER BY c.relname"
        )
        return [str(r["relname"]) for r in rows]

    return backend.run(names())


def count_instances(backend: Backend) -> int:
    found: int = backend.run(backend.store.pool.fetchval("SELECT count(*) FROM temporal_instances"))  # type: ignore[attr-defined]
    return found


def test_layout_is_partitioned_by_month_without_a_default(fresh_postgres: str) -> None:
    with opened("postgres", fresh_postgres) as pg:
        pool = pg.store.pool  # type: ignore[attr-defined]
        strategy = pg.run(
            pool.fetchval(
                "SELECT p.partstrat FROM pg_partitioned_table p WHERE p.partrelid = 'temporal_instances'::regclass"
            )
        )
        assert strategy == b"r"
        assert (
            pg.run(
                pool.fetchval(
                    "SELECT p.partdefid FROM pg_partitioned_table p WHERE p.partrelid = 'temporal_instances'::regclass"
                )
            )
            == 0
        )  # no DEFAULT partition
        pg.run(pg.store.temporal_write("", "urn:a", [TYPE_METER], [(TEMP, prop(1, FIRST)), (NOTE, {"value": 1})]))
        assert partitions(pg) == ["temporal_instances_2023_11", "temporal_instances_timeless"]
        bound = pg.run(
            pool.fetchval(
                "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_class c"
                " WHERE c.relname = 'temporal_instances_2023_11'"
            )
        )
        assert (
            bound == f"FOR VALUES FROM ('{us('2023-11-01T00:00:00+00:00')}') TO ('{us('2023-12-01T00:00:00+00:00')}')"
        )
        plan = "\n".join(
            r[0]
            for r in pg.run(
                pool.fetch(
                    "EXPLAIN SELECT * FROM temporal_instances i WHERE i.retained_us >= $1 AND i.retained_us < $2",
                    us("2023-11-05T00:00:00+00:00"),
                    us("2023-11-06T00:00:00+00:00"),
                )
            )
        )
        assert "temporal_instances_2023_11" in plan and "timeless" not in plan


def test_workers_append_into_new_months_at_once(fresh_postgres: str) -> None:
    """Several workers (stores) write history into months nobody has created yet, and into one
    entity: the months are created once, no write deadlocks, no instance is lost."""
    loop = asyncio.new_event_loop()
    workers = [open_store(fresh_postgres) for _ in range(4)]

    async def scenario() -> int:
        for worker in workers:
            await worker.open()
            worker.set_change_listener(HistoryRecorder(), None, name="history")
        try:

            async def writes(index: int, worker: EntityStore) -> None:
                for k in range(12):
                    moment = FIRST + timedelta(days=31 * (k % 6) + k // 6, hours=index)
                    shared = [(TEMP, prop(index * 100 + k, moment))]
                    await worker.temporal_write("", "urn:shared", [TYPE_METER, V + f"T{index}"], shared)
                    own = f"urn:ngsi-ld:Car:{index}-{k % 3}"
                    car: Entity = {
                        "id": own,
                        "type": [TYPE_CAR],
                        "createdAt": at(moment),
                        "modifiedAt": at(moment),
                        "attrs": {V + "speed": [prop(k, moment)]},
                    }
                    mutator = update.create(car) if k < 3 else update.merge(own, car)
                    batch = [
                        (own, mutator),
                        ("urn:shared:car", update.upsert({**car, "id": "urn:shared:car"}, mode="update")),
                    ]
                    results = await worker.mutate("", batch, atomic=False)
                    assert all(r.error is None for r in results), results

            await asyncio.wait_for(asyncio.gather(*(writes(i, w) for i, w in enumerate(workers))), timeout=60)
            info = await workers[0].temporal_entity("", "urn:shared")
            assert info is not None and sorted(info.types) == sorted([TYPE_METER] + [V + f"T{i}" for i in range(4)])
            count: int = await workers[0].pool.fetchval("SELECT count(*) FROM temporal_instances")  # type: ignore[attr-defined]
            return count
        finally:
            for worker in workers:
                await worker.close()

    try:
        # per worker and k: one shared instance, one for its own car, one for the shared car
        assert loop.run_until_complete(scenario()) == 4 * 12 * 3
    finally:
        loop.close()


def test_one_transaction_writes_into_months_created_during_it(fresh_postgres: str) -> None:
    """One mutate (one transaction) appends history to November 2023, which exists, then to months
    created in the middle of it on another connection: its partition routing must see them."""
    with opened("postgres", fresh_postgres) as pg:
        pg.run(pg.store.temporal_write("", "urn:a", [TYPE_METER], [(TEMP, prop(1, FIRST))]))
        moments = [FIRST, datetime(2024, 1, 5, tzinfo=UTC), datetime(2024, 3, 5, tzinfo=UTC), FIRST]
        operations = []
        for n, moment in enumerate(moments):
            car: Entity = {
                "id": f"urn:c:{n}",
                "type": [TYPE_CAR],
                "createdAt": at(moment),
                "modifiedAt": at(moment),
                "attrs": {V + "speed": [prop(n, moment)]},
            }
            operations.append((car["id"], update.create(car)))
        pg.run(pg.store.mutate("", operations, atomic=True))
        assert count_instances(pg) == 5
        assert "temporal_instances_2024_03" in partitions(pg)


def test_a_month_dropped_by_another_worker_is_created_again(fresh_postgres: str) -> None:
    """`first` has written into November 2023; `second` drops it: first's next writes into it (a
    temporal POST, then history appended inside mutate) create it again."""
    cutoff = us("2024-01-01T00:00:00+00:00")
    with opened("postgres", fresh_postgres) as first, opened("postgres", fresh_postgres) as second:
        first.run(first.store.temporal_write("", "urn:a", [TYPE_METER], [(TEMP, prop(1, FIRST))]))
        assert second.run(second.store.temporal_purge(cutoff)) == 1
        assert partitions(second) == ["temporal_instances_timeless"]
        first.run(first.store.temporal_write("", "urn:a", [TYPE_METER], [(TEMP, prop(2, FIRST))]))
        assert second.run(second.store.temporal_purge(cutoff)) == 1
        assert partitions(second) == ["temporal_instances_timeless"]
        car: Entity = {
            "id": "urn:c",
            "type": [TYPE_CAR],
            "createdAt": at(FIRST),
            "modifiedAt": at(FIRST),
            "attrs": {V + "speed": [prop(3, FIRST)]},
        }
        first.run(first.store.mutate("", [("urn:c", update.create(car))], atomic=True))
        first.run(first.store.temporal_write("", "urn:a", [TYPE_METER], [(TEMP, prop(4, FIRST))]))
        page = first.run(first.store.temporal_query("", TemporalQuery()))
        assert [(e["id"], [i["value"] for i in e["attrs"][next(iter(e["attrs"]))]]) for e in page.entities] == [
            ("urn:a", [4]),
            ("urn:c", [3]),
        ]


def test_a_month_dropped_behind_the_stores_back_is_created_again(fresh_postgres: str) -> None:
    """A partition of the current month dropped out of band (not by temporal_purge) is created again
    by the next write, a temporal POST as well as history appended inside mutate."""
    import asyncpg

    now = datetime.now(UTC).replace(microsecond=0)
    table = f"temporal_instances_{now.year:04d}_{now.month:02d}"

    async def drop() -> None:
        connection = await asyncpg.connect(fresh_postgres)
        try:
            await connection.execute(f"DROP TABLE {table}")
        finally:
            await connection.close()

    with opened("postgres", fresh_postgres) as pg:
        pg.run(pg.store.temporal_write("", "urn:a", [TYPE_METER], [(TEMP, prop(1, now))]))
        pg.run(drop())
        pg.run(pg.store.temporal_write("", "urn:a", [TYPE_METER], [(TEMP, prop(2, now))]))
        pg.run(drop())
        car: Entity = {
            "id": "urn:c",
            "type": [TYPE_CAR],
            "createdAt": at(now),
            "modifiedAt": at(now),
            "attrs": {V + "speed": [prop(3, now)]},
        }
        pg.run(pg.store.mutate("", [("urn:c", update.create(car))], atomic=True))
        page = pg.run(pg.store.temporal_query("", TemporalQuery(require_instances=False)))
        assert [(e["id"], [i["value"] for i in e["attrs"].get(V + "speed", [])]) for e in page.entities] == [
            ("urn:a", []),  # its instance 2 went with the second drop
            ("urn:c", [3]),
        ]
        assert table in partitions(pg)


def test_purge_while_workers_keep_writing(fresh_postgres: str) -> None:
    """Retention runs while three workers append history (into old months too): no write fails or
    is lost, and the purge removes exactly the old instances (whole months, or row by row when the
    writers keep it waiting)."""
    loop = asyncio.new_event_loop()
    workers = [open_store(fresh_postgres) for _ in range(4)]
    cutoff = datetime(2024, 3, 1, tzinfo=UTC)

    async def scenario() -> tuple[int, int, int]:
        for worker in workers:
            await worker.open()
            worker.set_change_listener(HistoryRecorder(), None, name="history")
        try:
            old = [(TEMP, prop(k, FIRST + timedelta(days=3 * k))) for k in range(40)]  # November to February
            await workers[0].temporal_write("", "urn:old", [TYPE_METER], old)
            stop = asyncio.Event()
            written = [0, 0, 0]

            async def write(index: int) -> None:
                k = 0
                while not stop.is_set() or k < 10:
                    moment = datetime(2024, 4 + k % 3, 1, tzinfo=UTC) + timedelta(minutes=index * 1000 + k)
                    car: Entity = {
                        "id": f"urn:c:{index}",
                        "type": [TYPE_CAR],
                        "createdAt": at(FIRST),
                        "modifiedAt": at(moment),
                        "attrs": {V + "speed": [prop(k, moment)]},
                    }
                    await workers[index].mutate("", [(car["id"], update.upsert(car, mode="replace"))], atomic=True)
                    written[index] += 1
                    k += 1

            async def purge() -> int:
                await asyncio.sleep(0.2)
                try:
                    removed: int = await workers[3].temporal_purge(to_micros(cutoff))
                    return removed
                finally:
                    stop.set()

            *_, removed = await asyncio.wait_for(asyncio.gather(*(write(i) for i in range(3)), purge()), timeout=60)
            kept: int = await workers[3].pool.fetchval("SELECT count(*) FROM temporal_instances")  # type: ignore[attr-defined]
            return removed, kept, sum(written)

        finally:
            for worker in workers:
                await worker.close()

    try:
        removed, kept, written = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert removed == 40 and kept == written


def test_a_busy_month_is_purged_row_by_row(fresh_postgres: str) -> None:
    """A writer holding its transaction open keeps the partition from being dropped (the purge
    gives way after its lock timeout); its rows are deleted one by one instead."""
    import asyncpg

    with opened("postgres", fresh_postgres) as pg:
        writes = [(TEMP, prop(k, FIRST + timedelta(hours=k))) for k in range(5)]
        pg.run(pg.store.temporal_write("", "urn:a", [TYPE_METER], writes))
        pg.run(pg.store.temporal_write("", "urn:b", [TYPE_METER], [(TEMP, prop(9, datetime(2024, 5, 1, tzinfo=UTC)))]))

        async def purge_while_busy() -> int:
            writer = await asyncpg.connect(fresh_postgres)
            try:
                async with writer.transaction():
                    await writer.execute("SELECT 1 FROM temporal_instances_2024_05 LIMIT 1")  # holds a lock
                    removed: int = await pg.store.temporal_purge(us("2025-01-01T00:00:00+00:00"))
                    return removed
            finally:
                await writer.close()

        assert pg.run(purge_while_busy()) == 6
        assert partitions(pg) == ["temporal_instances_2024_05", "temporal_instances_timeless"]
        assert count_instances(pg) == 0
        assert pg.run(pg.store.temporal_entity("", "urn:b")) is None


def test_a_partition_an_interrupted_purge_detached_is_dropped_next_time(fresh_postgres: str) -> None:
    """A purge detaches and renames a partition, then counts and drops it; if it stopped in between,
    the next purge drops the table (its instances were out of the store already) and the entities
    it left empty."""
    import asyncpg

    async def interrupted() -> None:
        connection = await asyncpg.connect(fresh_postgres)
        try:
            await connection.execute("ALTER TABLE temporal_instances DETACH PARTITION temporal_instances_2023_11")
            await connection.execute("ALTER TABLE temporal_instances_2023_11 RENAME TO temporal_purged_0123456789ab")
        finally:
            await connection.close()

    with opened("postgres", fresh_postgres) as pg:
        pg.run(pg.store.temporal_write("", "urn:a", [TYPE_METER], [(TEMP, prop(1, FIRST)), (TEMP, prop(2, FIRST))]))
        pg.run(pg.store.temporal_write("", "urn:b", [TYPE_METER], [(TEMP, prop(3, datetime(2024, 5, 1, tzinfo=UTC)))]))
        pg.run(interrupted())
        assert pg.run(pg.store.temporal_entity("", "urn:a")) is not None
        assert pg.run(pg.store.temporal_purge(us("2024-01-01T00:00:00+00:00"))) == 0
        assert pg.run(pg.store.temporal_entity("", "urn:a")) is None
        assert pg.run(pg.store.temporal_entity("", "urn:b")) is not None
        leftovers = pg.run(
            pg.store.pool.fetchval("SELECT count(*) FROM pg_class WHERE relname LIKE 'temporal_purged%'")  # type: ignore[attr-defined]
        )
        assert leftovers == 0


def test_reads_time_out_and_refuse_bad_patterns(fresh_postgres: str) -> None:
    import asyncpg

    with opened("postgres", fresh_postgres) as pg:
        pg.run(pg.store.temporal_write("", "urn:a", [TYPE_METER], [(TEMP, prop(1, FIRST))]))
        with pytest.raises(BadRequestData, match="idPattern"):
            pg.run(pg.store.temporal_query("", TemporalQuery(id_pattern="(")))

        async def blocked() -> None:
            locker = await asyncpg.connect(fresh_postgres)
            try:
                async with locker.transaction():
                    await locker.execute("LOCK TABLE temporal_instances IN ACCESS EXCLUSIVE MODE")
                    pg.store.query_timeout = 0.3  # type: ignore[attr-defined]
                    await pg.store.temporal_aggregate("", TemporalQuery(), AggregationSpec(months=1))
            finally:
                await locker.close()

        with pytest.raises(QueryTimeout):
            pg.run(blocked())
