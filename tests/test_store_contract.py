"""The storage contract, run against every back-end: SQLite on a temporary file, and PostgreSQL
(a fresh schema per test in the local server's `test` database, migrated by `upgrade`).

The PostgreSQL parameter is skipped only when no server answers (CITYOS_TEST_POSTGRES names another
one). The query tests load the same data into both back-ends and compare their answers.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cityos.cli import main as cli_main
from cityos.entities import update
from cityos.entities.expiry import now_key
from cityos.entities.model import Entity
from cityos.errors import AlreadyExists, NgsiLdError, ResourceNotFound
from cityos.query.entity_maps import EntityMap
from cityos.query.pushdown import ValueFilter
from cityos.store import open_store
from cityos.store.base import (
    AttributeStats,
    ChangeListener,
    EntityChange,
    EntityLookup,
    EntityQuery,
    EntityStore,
    EntityTypeStats,
    IngestRecord,
    OutboxRow,
    QueryResult,
    RegistrationRow,
    StoredContextRow,
    StoreEvent,
    SubscriptionRow,
)

T = TypeVar("T")
POSTGRES = os.environ.get("CITYOS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
V = "https://example.org/"  # expanded attribute and type IRIs
STAMP = "2026-01-01T00:00:00.000000Z"
LATER = "2026-02-01T00:00:00.000000Z"
PAST = "2001-01-01T00:00:00Z"
FUTURE = "2999-01-01T00:00:00Z"


@dataclass
class Backend:
    """An open store and the event loop it lives on (an asyncpg pool is bound to one loop)."""

    name: str
    store: EntityStore
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)


@contextmanager
def sqlite_backend(path: Path) -> Iterator[Backend]:
    loop = asyncio.new_event_loop()
    store = open_store(str(path))
    try:
        loop.run_until_complete(store.open())
        yield Backend("sqlite", store, loop)
    finally:
        loop.run_until_complete(store.close())
        loop.close()


@contextmanager
def postgres_schema(skip_reason: str | None) -> Iterator[tuple[asyncio.AbstractEventLoop, str]]:
    """A new, empty schema (first on the search_path of the URL it yields), dropped afterwards."""
    if skip_reason is not None:
        pytest.skip(skip_reason)
    import asyncpg

    schema = f"cityos_test_{uuid.uuid4().hex[:12]}"
    url = f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}search_path={schema},public"
    loop = asyncio.new_event_loop()

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(POSTGRES)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    loop.run_until_complete(admin(f'CREATE SCHEMA "{schema}"'))
    try:
        yield loop, url
    finally:
        loop.run_until_complete(admin(f'DROP SCHEMA "{schema}" CASCADE'))
        loop.close()


async def _migrate(url: str) -> list[Any]:
    import asyncpg

    from cityos.store.postgres import upgrade

    connection = await asyncpg.connect(url)
    try:
        return await upgrade(connection)
    finally:
        await connection.close()


@contextmanager
def postgres_backend(skip_reason: str | None) -> Iterator[Backend]:
    with postgres_schema(skip_reason) as (loop, url):
        loop.run_until_complete(_migrate(url))
        store = open_store(url)
        loop.run_until_complete(store.open())
        try:
            yield Backend("postgres", store, loop)
        finally:
            loop.run_until_complete(store.close())


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, postgres_skip_reason: str | None) -> Iterator[Backend]:
    if request.param == "sqlite":
        with sqlite_backend(tmp_path / "contract.db") as opened:
            yield opened
    else:
        with postgres_backend(postgres_skip_reason) as opened:
            yield opened


# -- entities in the internal (expanded) form -------------------------------------------------------
def prop(value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, "createdAt": STAMP, "modifiedAt": STAMP, **extra}


def geo(geometry: dict[str, Any]) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": geometry, "createdAt": STAMP, "modifiedAt": STAMP}


def make(entity_id: str, *types: str, **attrs: dict[str, Any] | list[dict[str, Any]]) -> Entity:
    return {
        "id": entity_id,
        "type": [V + t for t in types],
        "createdAt": STAMP,
        "modifiedAt": STAMP,
        "attrs": {V + name: value if isinstance(value, list) else [value] for name, value in attrs.items()},
    }


def value_of(entity: Entity, name: str) -> Any:
    instances = entity["attrs"].get(V + name)
    return instances[0].get("value") if instances else None


def point(x: float, y: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [x, y]}


def ids(result: QueryResult) -> list[str]:
    return [e["id"] for e in result.entities]


# -- writes ----------------------------------------------------------------------------------------
def test_create_replace_merge_delete(backend: Backend) -> None:
    store, run = backend.store, backend.run
    first = make("urn:x:1", "Sensor", temperature=prop(20))
    [created] = run(store.mutate("", [("urn:x:1", update.create(first))], atomic=True))
    assert created.outcome is not None and created.outcome.created
    assert created.change is not None and created.change.before is None and created.change.after == first
    with pytest.raises(AlreadyExists):
        run(store.mutate("", [("urn:x:1", update.create(make("urn:x:1", "Sensor")))], atomic=True))

    replacement = make("urn:x:1", "Sensor", humidity=prop(40))
    replacement["createdAt"] = LATER
    run(store.mutate("", [("urn:x:1", update.replace(replacement))], atomic=True))
    stored = run(store.get_entity("", "urn:x:1"))
    assert stored is not None and list(stored["attrs"]) == [V + "humidity"] and stored["createdAt"] == STAMP

    fragment = make("urn:x:1", "Device", temperature=prop(21), humidity=prop(41))
    fragment["modifiedAt"] = LATER
    [merged] = run(store.mutate("", [("urn:x:1", update.merge("urn:x:1", fragment))], atomic=True))
    stored = run(store.get_entity("", "urn:x:1"))
    assert stored is not None and merged.change is not None and merged.change.after == stored
    assert stored["type"] == [V + "Sensor", V + "Device"] and stored["modifiedAt"] == LATER
    assert (value_of(stored, "temperature"), value_of(stored, "humidity")) == (21, 41)
    assert list(stored["attrs"]) == [V + "humidity", V + "temperature"]  # attribute order is kept

    [deleted] = run(store.mutate("", [("urn:x:1", update.delete("urn:x:1"))], atomic=True))
    assert deleted.change is not None and deleted.change.after is None and deleted.change.before == stored
    assert run(store.get_entity("", "urn:x:1")) is None
    assert run(store.query_entities("", EntityQuery(types=[V + "Sensor"]))).entities == []


def test_batch_savepoints_keep_the_good_operations(backend: Backend) -> None:
    store, run = backend.store, backend.run
    operations = [
        ("urn:x:a", update.create(make("urn:x:a", "T", n=prop(1)))),
        ("urn:x:a", update.create(make("urn:x:a", "T", n=prop(2)))),  # already exists: this one only fails
        ("urn:x:b", update.create(make("urn:x:b", "T", n=prop(3)))),
        ("urn:x:c", update.delete("urn:x:c")),  # does not exist
        ("urn:x:b", update.merge("urn:x:b", make("urn:x:b", "T", n=prop(4)))),  # sees b from this batch
    ]
    results = run(store.mutate("tenant1", operations, atomic=False))
    assert [type(r.error) if r.error else None for r in results] == [None, AlreadyExists, None, ResourceNotFound, None]
    a, b = run(store.get_entity("tenant1", "urn:x:a")), run(store.get_entity("tenant1", "urn:x:b"))
    assert a is not None and value_of(a, "n") == 1
    assert b is not None and value_of(b, "n") == 4
    assert run(store.tenant_exists("tenant1")) and not run(store.tenant_exists("tenant2"))
    assert run(store.tenant_exists(""))
    found = run(store.query_entities("tenant1", EntityQuery(value_filters=[ValueFilter(V + "n", "==", (4.0,))])))
    assert ids(found) == ["urn:x:b"]  # the side rows of the rolled-back savepoints are gone too


def test_a_batch_sees_its_own_earlier_operations(backend: Backend) -> None:
    """Each operation, and each listener's lookup, sees what the batch wrote before it; an entity
    deleted and created again gets a new row (last in query order); the q index follows the final
    documents; an operation a listener rejects is undone alone."""
    store, run = backend.store, backend.run
    start = [("urn:x:1", 1), ("urn:x:2", 2), ("urn:x:3", 3)]
    creates = [(i, update.create(make(i, "T", n=prop(n), where=geo(point(n, n))))) for i, n in start]
    run(store.mutate("", creates, atomic=True))
    seen: list[tuple[str, Any]] = []

    def listener(change: EntityChange, lookup: EntityLookup) -> list[OutboxRow]:
        two = lookup("urn:x:2")
        seen.append((change.entity_id, value_of(two, "n") if two is not None else None))
        if change.after is not None and value_of(change.after, "n") == 99:
            raise AlreadyExists("rejected by a listener")
        return []

    store.set_change_listener(listener, None, name="test")
    operations = [
        ("urn:x:1", update.delete("urn:x:1")),
        ("urn:x:2", update.merge("urn:x:2", make("urn:x:2", "T", n=prop(20)))),
        ("urn:x:1", update.create(make("urn:x:1", "T", n=prop(10)))),
        ("urn:x:2", update.merge("urn:x:2", make("urn:x:2", "T", n=prop(99)))),  # rejected: n stays 20
        ("urn:x:4", update.create(make("urn:x:4", "T", n=prop(4)))),
        ("urn:x:4", update.merge("urn:x:4", make("urn:x:4", "T", n=prop(40)))),
        ("urn:x:3", update.delete("urn:x:3")),
    ]
    results = run(store.mutate("", operations, atomic=False))
    store.set_change_listener(None, None, name="test")
    assert [type(r.error) if r.error else None for r in results] == [None, None, None, AlreadyExists, None, None, None]
    # the rejected operation's own listener saw its write (99); the later ones no longer do. A store
    # may run a batch again after a failure (SQLite redoes it one savepoint per entity): the last
    # pass is the one that was committed
    last_pass = seen[-len(operations) :]
    assert [n for _, n in last_pass] == [2, 20, 20, 99, 20, 20, 20]
    assert [i for i, _ in last_pass] == [i for i, _ in operations]
    assert ids(run(store.query_entities("", EntityQuery()))) == ["urn:x:2", "urn:x:1", "urn:x:4"]
    for n, expected in ((1, []), (2, []), (3, []), (10, ["urn:x:1"]), (20, ["urn:x:2"]), (40, ["urn:x:4"])):
        query = EntityQuery(value_filters=[ValueFilter(V + "n", "==", (float(n),))])
        assert ids(run(store.query_entities("", query))) == expected, n
    near = EntityQuery(geo_box=(V + "where", (0.0, 5.0, 0.0, 5.0)))
    assert ids(run(store.query_entities("", near))) == ["urn:x:2"]  # 1 was created again without it, 3 deleted


def test_a_failing_atomic_request_changes_nothing(backend: Backend) -> None:
    store, run = backend.store, backend.run
    run(store.mutate("", [("urn:x:1", update.create(make("urn:x:1", "T", n=prop(1))))], atomic=True))
    before = run(store.get_entity("", "urn:x:1"))
    operations = [
        ("urn:x:1", update.merge("urn:x:1", make("urn:x:1", "T", n=prop(2)))),
        ("urn:x:2", update.create(make("urn:x:2", "T", n=prop(2)))),
        ("urn:x:3", update.delete("urn:x:3")),
    ]
    with pytest.raises(ResourceNotFound):
        run(store.mutate("new-tenant", operations[1:], atomic=True))
    with pytest.raises(ResourceNotFound):
        run(store.mutate("", operations, atomic=True))
    assert run(store.get_entity("", "urn:x:1")) == before
    assert run(store.get_entity("", "urn:x:2")) is None
    assert not run(store.tenant_exists("new-tenant"))

    def broken(current: Entity | None) -> update.Outcome:
        raise ValueError("a bug, not an NGSI-LD error")

    with pytest.raises(ValueError):  # not an NgsiLdError: even a batch is rolled back whole
        run(store.mutate("", [("urn:x:2", operations[1][1]), ("urn:x:1", broken)], atomic=False))
    assert run(store.get_entity("", "urn:x:2")) is None


def test_concurrent_creates_of_one_id_have_one_winner(backend: Backend) -> None:
    store = backend.store

    async def race() -> list[BaseException | list[Any]]:
        writes = [
            store.mutate("", [("urn:x:r", update.create(make("urn:x:r", "T", n=prop(i))))], atomic=True)
            for i in range(4)
        ]
        return await asyncio.gather(*writes, return_exceptions=True)

    outcomes = backend.run(race())
    assert sum(isinstance(o, list) for o in outcomes) == 1
    assert all(isinstance(o, AlreadyExists) for o in outcomes if not isinstance(o, list))


def test_exclusive_holds_one_caller_at_a_time_per_name(backend: Backend) -> None:
    """store.exclusive (Open311's duplicate detection): the holders of one name take turns, other
    names and tenants do not wait. Two workers' turns: tests/test_open311.py, on a real server."""
    store = backend.store
    log: list[str] = []

    async def hold(tenant: str, name: str, tag: str) -> None:
        async with store.exclusive(tenant, name):
            log.append(f"{tag}+")
            await asyncio.sleep(0.05)
            log.append(f"{tag}-")

    async def race() -> None:
        await asyncio.gather(hold("", "n", "a"), hold("", "n", "b"), hold("", "n", "c"))

    backend.run(race())
    assert all(log[i][0] == log[i + 1][0] for i in range(0, len(log), 2)), log  # never interleaved
    log.clear()

    async def apart() -> None:
        await asyncio.gather(hold("", "n", "a"), hold("", "m", "b"), hold("t2", "n", "c"))

    backend.run(apart())
    assert [entry[1] for entry in log[:3]] == ["+", "+", "+"], log  # all three held at once


# -- queries: the same answers from every back-end ---------------------------------------------------
def city() -> list[Entity]:
    """40 entities: two types, numbers, strings, arrays, language maps, points and polygons, a
    multi-instance attribute, and expired data that must stay invisible."""
    entities = []
    for i in range(40):
        kind = "Parking" if i % 3 else "Station"
        attrs: dict[str, Any] = {
            "spots": prop(i * 2.5),
            "name": prop(f"site {i % 7}"),
            "location": geo(point(i % 10, i // 10)),
        }
        if i % 4 == 0:
            attrs["tags"] = prop(["a", "b", i])
        if i % 5 == 0:
            attrs["label"] = {"type": "LanguageProperty", "languageMap": {"en": f"l{i}", "nl": "x"}}
        if i % 6 == 0:
            attrs["area"] = geo({"type": "Polygon", "coordinates": [[[i, 0], [i + 3, 0], [i + 3, 3], [i, 0]]]})
        if i % 8 == 0:
            attrs["spots"] = [prop(i), prop(i + 100, datasetId="urn:ds:overflow")]
        if i == 7:
            attrs["old"] = prop(999, expiresAt=PAST)  # an expired attribute: invisible, still in side rows
        entity = make(f"urn:ngsi-ld:{kind}:{i:03d}", kind, **attrs)
        if i == 9:
            entity["expiresAt"] = PAST  # an expired entity: invisible everywhere
        if i == 10:
            entity["expiresAt"] = FUTURE
        entities.append(entity)
    return entities


def _spots(entity: Entity) -> float:
    return float(value_of(entity, "spots") or 0)


QUERIES: dict[str, Callable[[], EntityQuery]] = {
    "all": lambda: EntityQuery(),
    "types": lambda: EntityQuery(types=[V + "Station"]),
    "types, several": lambda: EntityQuery(types=[V + "Station", V + "Parking"], limit=7, offset=3, count=True),
    "ids": lambda: EntityQuery(ids=["urn:ngsi-ld:Parking:001", "urn:ngsi-ld:Station:003", "urn:ngsi-ld:Parking:009"]),
    "idPattern": lambda: EntityQuery(id_pattern="Station:0[0-2]", count=True),
    "idPattern anchored": lambda: EntityQuery(id_pattern="^urn:ngsi-ld:Parking:01.$"),
    "attrs": lambda: EntityQuery(attrs=[V + "tags", V + "label"], count=True),
    "attrs, expired only": lambda: EntityQuery(attrs=[V + "old"], count=True),
    "exists": lambda: EntityQuery(value_filters=[ValueFilter(V + "area", "exists")], count=True),
    "== number": lambda: EntityQuery(value_filters=[ValueFilter(V + "spots", "==", (10.0, 108.0))]),
    "== text": lambda: EntityQuery(value_filters=[ValueFilter(V + "name", "==", ("site 3", "site 5"))]),
    "== array member": lambda: EntityQuery(value_filters=[ValueFilter(V + "tags", "==", (12.0, "zzz"))]),
    "== language map": lambda: EntityQuery(value_filters=[ValueFilter(V + "label", "==", ("l25",))]),
    "<": lambda: EntityQuery(value_filters=[ValueFilter(V + "spots", "<", (10.0,))]),
    "<=": lambda: EntityQuery(value_filters=[ValueFilter(V + "spots", "<=", (10.0,))]),
    ">": lambda: EntityQuery(value_filters=[ValueFilter(V + "spots", ">", (90.0,))], count=True),
    ">=": lambda: EntityQuery(value_filters=[ValueFilter(V + "spots", ">=", (90.0,))], limit=2),
    "between": lambda: EntityQuery(value_filters=[ValueFilter(V + "spots", "between", (20.0, 40.0))]),
    "expired value": lambda: EntityQuery(value_filters=[ValueFilter(V + "old", "==", (999.0,))]),
    "filters together": lambda: EntityQuery(
        types=[V + "Parking"],
        value_filters=[ValueFilter(V + "spots", ">", (20.0,)), ValueFilter(V + "name", "==", ("site 2",))],
        count=True,
    ),
    "geo box": lambda: EntityQuery(geo_box=(V + "location", (2.0, 4.0, 1.0, 2.0)), count=True),
    "geo box edge": lambda: EntityQuery(geo_box=(V + "location", (9.0, 20.0, 3.0, 3.0))),
    "geo box polygon": lambda: EntityQuery(geo_box=(V + "area", (13.5, 14.0, 2.9, 10.0))),
    "geo box + predicate": lambda: EntityQuery(
        geo_box=(V + "location", (0.0, 5.0, 1.0, 3.0)), predicate=lambda e: _spots(e) > 50, count=True
    ),
    "predicate": lambda: EntityQuery(predicate=lambda e: "Station" in e["id"], limit=4, count=True),
    "predicate, has more": lambda: EntityQuery(predicate=lambda e: _spots(e) >= 0, limit=5, offset=5),
    "predicate, last page": lambda: EntityQuery(predicate=lambda e: _spots(e) >= 0, limit=5, offset=35, count=True),
    "sort": lambda: EntityQuery(sort=lambda es: sorted(es, key=lambda e: -_spots(e)), limit=6, offset=2, count=True),
    "sort + attrs": lambda: EntityQuery(attrs=[V + "tags"], sort=lambda es: sorted(es, key=lambda e: e["id"])[::-1]),
    "paging in SQL": lambda: EntityQuery(limit=10, offset=30, count=True),
    "offset past the end": lambda: EntityQuery(limit=10, offset=100, count=True),
    "limit 0": lambda: EntityQuery(types=[V + "Parking"], limit=0, count=True),
}


@pytest.fixture
def both(tmp_path: Path, postgres_skip_reason: str | None) -> Iterator[tuple[Backend, Backend]]:
    with sqlite_backend(tmp_path / "city.db") as lite, postgres_backend(postgres_skip_reason) as pg:
        for opened in (lite, pg):
            operations = [(e["id"], update.create(e)) for e in city()]
            assert all(r.error is None for r in opened.run(opened.store.mutate("", operations, atomic=False)))
        yield lite, pg


def test_every_query_filter_answers_as_on_sqlite(both: tuple[Backend, Backend]) -> None:
    lite, pg = both
    for name, build in QUERIES.items():
        expected = lite.run(lite.store.query_entities("", build()))
        got = pg.run(pg.store.query_entities("", build()))
        assert (ids(got), got.total, got.has_more) == (ids(expected), expected.total, expected.has_more), name
        assert got.entities == expected.entities, name
    # the data did exercise the filters
    assert lite.run(lite.store.query_entities("", QUERIES["geo box + predicate"]())).total == 9
    assert lite.run(lite.store.query_entities("", QUERIES["== array member"]())).entities
    assert lite.run(lite.store.query_entities("", QUERIES["all"]())).entities[0]["id"] == "urn:ngsi-ld:Station:000"


def test_paging_count_and_has_more(backend: Backend) -> None:
    store, run = backend.store, backend.run
    operations = [(f"urn:x:{i:02d}", update.create(make(f"urn:x:{i:02d}", "T", n=prop(i)))) for i in range(25)]
    run(store.mutate("", operations, atomic=True))
    for predicate in (None, lambda e: True):
        first = run(store.query_entities("", EntityQuery(limit=10, count=True, predicate=predicate)))
        assert (ids(first)[:2], len(first.entities), first.total, first.has_more) == (
            ["urn:x:00", "urn:x:01"],
            10,
            25,
            True,
        )
        last = run(store.query_entities("", EntityQuery(limit=10, offset=20, count=True, predicate=predicate)))
        assert (ids(last)[-1], len(last.entities), last.total, last.has_more) == ("urn:x:24", 5, 25, False)
        exact = run(store.query_entities("", EntityQuery(limit=5, offset=20, predicate=predicate)))
        assert (len(exact.entities), exact.total, exact.has_more) == (5, None, False)


def test_expiry_hides_then_purges(backend: Backend) -> None:
    store, run = backend.store, backend.run
    gone = make("urn:x:gone", "T", n=prop(1))
    gone["expiresAt"] = PAST
    stays = make("urn:x:stays", "T", n=prop(2), old=prop(7, expiresAt=PAST))
    later = make("urn:x:later", "T", n=prop(3))
    later["expiresAt"] = FUTURE
    run(store.mutate("", [(e["id"], update.create(e)) for e in (gone, stays, later)], atomic=True))

    assert run(store.get_entity("", "urn:x:gone")) is None
    visible_stays = run(store.get_entity("", "urn:x:stays"))
    assert visible_stays is not None and list(visible_stays["attrs"]) == [V + "n"]
    assert ids(run(store.query_entities("", EntityQuery(count=True)))) == ["urn:x:stays", "urn:x:later"]

    changes = run(store.purge_expired(now_key()))
    by_id = {c.entity_id: c for c in changes}
    assert set(by_id) == {"urn:x:gone", "urn:x:stays"}
    assert by_id["urn:x:gone"].after is None
    assert by_id["urn:x:stays"].after == visible_stays and by_id["urn:x:stays"].before == stays
    old = EntityQuery(value_filters=[ValueFilter(V + "old", "==", (7.0,))])
    assert run(store.query_entities("", old)).entities == []  # the side rows were rebuilt
    assert run(store.purge_expired(now_key())) == []
    assert len(run(store.purge_expired("3000-01-01T00:00:00.000000Z"))) == 1  # urn:x:later


def test_a_write_sees_the_stored_entity_as_readers_do(backend: Backend) -> None:
    """The mutator of a write gets the entity without its expired parts (an expired entity: None),
    and with the parts whose expiresAt is still to come (the row's next_expiry decides, as for reads)."""
    store, run = backend.store, backend.run
    gone = make("urn:x:w-gone", "T", n=prop(1))
    gone["expiresAt"] = PAST
    part = make("urn:x:w-part", "T", n=prop(2), old=prop(7, expiresAt=PAST), soon=prop(8, expiresAt=FUTURE))
    plain = make("urn:x:w-plain", "T", n=prop(3))
    run(store.mutate("", [(e["id"], update.create(e)) for e in (gone, part, plain)], atomic=True))
    seen: dict[str, Any] = {}

    def look(entity_id: str) -> update.Mutator:
        def run_it(current: Entity | None) -> update.Outcome:
            seen[entity_id] = None if current is None else sorted(current["attrs"])
            return update.Outcome(current)

        return run_it

    for entity_id in ("urn:x:w-gone", "urn:x:w-part", "urn:x:w-plain"):
        run(store.mutate("", [(entity_id, look(entity_id))], atomic=True))
    assert seen == {"urn:x:w-gone": None, "urn:x:w-part": [V + "n", V + "soon"], "urn:x:w-plain": [V + "n"]}


def test_hosted_contexts(backend: Backend) -> None:
    store, run = backend.store, backend.run
    run(store.save_context(StoredContextRow("", "a", "hosted", {"@context": {"x": V + "x"}}, STAMP)))
    run(store.save_context(StoredContextRow("t", "b", "cached", {"@context": {}}, STAMP)))
    run(store.save_context(StoredContextRow("", "a", "hosted", {"@context": {"y": V + "y"}}, LATER)))
    loaded = run(store.load_contexts())
    assert [(r.tenant, r.local_id, r.document, r.created_at) for r in loaded] == [
        ("t", "b", {"@context": {}}, STAMP),
        ("", "a", {"@context": {"y": V + "y"}}, LATER),
    ]
    run(store.delete_context("t", "b"))
    assert [r.local_id for r in run(store.load_contexts())] == ["a"]


# -- PostgreSQL only: migrations, the experimental gate, the unfinished contract ------------------------
def test_postgres_refuses_an_unmigrated_schema(postgres_skip_reason: str | None) -> None:
    from cityos.store.postgres import LATEST, SchemaNotCurrent

    with postgres_schema(postgres_skip_reason) as (loop, url):
        store = open_store(url)
        with pytest.raises(SchemaNotCurrent, match="cityos db upgrade"):
            loop.run_until_complete(store.open())
        assert [m.version for m in loop.run_until_complete(_migrate(url))] == list(range(1, LATEST + 1))
        assert loop.run_until_complete(_migrate(url)) == []  # nothing left to do
        loop.run_until_complete(store.open())
        loop.run_until_complete(store.close())
        assert cli_main(["db", "status", "--database", url]) == 0


def test_a_postgresql_url_selects_postgresql() -> None:
    pytest.importorskip("asyncpg")
    assert type(open_store("postgresql://cityos@db.invalid/cityos")).__name__ == "PostgresStore"
    assert type(open_store("postgres://cityos@db.invalid/cityos")).__name__ == "PostgresStore"


def test_refresh_statistics_after_a_bulk_load(backend: Backend) -> None:
    """The planner's statistics are current right after a bulk load (PostgreSQL: ANALYZE ran)."""
    store, run = backend.store, backend.run
    entities = [(f"urn:x:{i}", update.create(make(f"urn:x:{i}", "T", n=prop(i)))) for i in range(50)]
    run(store.mutate("", entities, atomic=True))
    run(store.refresh_statistics())
    if backend.name == "postgres":
        import asyncpg

        async def analysed() -> int:
            url = store.dsn  # type: ignore[attr-defined]
            connection = await asyncpg.connect(url)
            try:
                # -1 until the table is first analysed (PostgreSQL 14+), then its row estimate
                sql = "SELECT reltuples FROM pg_class WHERE oid = 'entities'::regclass"
                tuples: float = await connection.fetchval(sql)
                return int(tuples)
            finally:
                await connection.close()

        assert run(analysed()) == 50
    assert len(run(store.query_entities("", EntityQuery(limit=100))).entities) == 50


def test_db_commands_make_no_sqlite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cityos db upgrade` upgrades a SQLite file (tests/test_db_upgrade.py), but never makes one."""
    assert cli_main(["db", "upgrade", "--database", str(tmp_path / "x.db")]) == 1
    assert "no database file" in capsys.readouterr().err and not (tmp_path / "x.db").exists()


def test_ngsild_errors_stay_per_operation(backend: Backend) -> None:
    """An error inside a savepoint leaves the transaction usable for the next operations."""
    store, run = backend.store, backend.run
    operations = [(f"urn:x:{i}", update.delete(f"urn:x:{i}")) for i in range(3)]
    operations.append(("urn:x:ok", update.create(make("urn:x:ok", "T"))))
    results = run(store.mutate("", operations, atomic=False))
    assert [isinstance(r.error, NgsiLdError) for r in results] == [True, True, True, False]


def test_postgres_writers_in_two_workers_lose_no_update(postgres_skip_reason: str | None) -> None:
    """Two stores on one database (as two worker processes would have) increment one counter; the
    row lock taken before each mutator runs makes every read-modify-write see the previous one."""
    with postgres_schema(postgres_skip_reason) as (loop, url):
        loop.run_until_complete(_migrate(url))
        workers = [open_store(url) for _ in range(2)]

        def increment(current: Entity | None) -> update.Outcome:
            assert current is not None
            n = value_of(current, "n")
            return update.Outcome({**current, "attrs": {V + "n": [prop(n + 1)]}})

        async def scenario() -> Entity | None:
            for worker in workers:
                await worker.open()
            try:
                await workers[0].mutate("", [("urn:x:n", update.create(make("urn:x:n", "T", n=prop(0))))], atomic=True)
                writes = [w.mutate("", [("urn:x:n", increment)], atomic=True) for w in workers for _ in range(25)]
                await asyncio.gather(*writes)
                return await workers[1].get_entity("", "urn:x:n")
            finally:
                for worker in workers:
                    await worker.close()

        counted = loop.run_until_complete(scenario())
        assert counted is not None and value_of(counted, "n") == 50


# -- the catalogue: subscriptions and their outbox, registrations, entity maps, discovery, ingestion --
def _outbox_listener(subscription_id: str, lane: str) -> ChangeListener:
    def listener(change: EntityChange, lookup: EntityLookup) -> list[OutboxRow]:
        return [OutboxRow(change.tenant, subscription_id, lane, {"entity": change.entity_id})]

    return listener


def test_subscriptions_round_trip(backend: Backend) -> None:
    store, run = backend.store, backend.run
    first = SubscriptionRow("t1", "urn:sub:1", {"q": "a"}, {"timesSent": 0})
    run(store.save_subscription(first, create=True))
    run(store.save_subscription(SubscriptionRow("", "urn:sub:2", {"q": "b"}), create=True))
    run(store.save_subscription(SubscriptionRow("t1", "urn:sub:2", {"q": "c"}), create=True))  # ids are per tenant
    with pytest.raises(AlreadyExists):
        run(store.save_subscription(SubscriptionRow("t1", "urn:sub:1", {"q": "x"}), create=True))
    assert run(store.tenant_exists("t1"))  # created with its first subscription
    run(store.save_subscription(SubscriptionRow("t1", "urn:sub:1", {"q": "A"}, {"timesSent": 3}), create=False))
    run(store.save_subscription(SubscriptionRow("t1", "urn:sub:9", {"q": "?"}), create=False))  # no such: no-op
    loaded = run(store.load_subscriptions())
    assert [(r.tenant, r.id, r.document, r.status) for r in loaded] == [
        ("t1", "urn:sub:1", {"q": "A"}, {"timesSent": 3}),
        ("", "urn:sub:2", {"q": "b"}, {}),
        ("t1", "urn:sub:2", {"q": "c"}, {}),
    ]
    assert run(store.delete_subscription("t1", "urn:sub:1"))
    assert not run(store.delete_subscription("t1", "urn:sub:1"))
    assert [(r.tenant, r.id) for r in run(store.load_subscriptions())] == [("", "urn:sub:2"), ("t1", "urn:sub:2")]


def test_outbox_round_trip(backend: Backend) -> None:
    store, run = backend.store, backend.run
    subscription = SubscriptionRow("t", "urn:sub:1", {"q": "a"})
    run(store.save_subscription(subscription, create=True))
    wakes: list[int] = []
    store.set_change_listener(_outbox_listener("urn:sub:1", "lane-1"), lambda: wakes.append(1))
    entities = [make(f"urn:x:{i}", "T", n=prop(i)) for i in range(3)]
    run(store.mutate("t", [(e["id"], update.create(e)) for e in entities], atomic=True))
    store.set_change_listener(None, None)
    assert wakes == [1]  # once, after the commit

    first = run(store.claim_outbox(2))
    assert [(r.tenant, r.subscription_id, r.lane, r.payload, r.attempts) for r in first] == [
        ("t", "urn:sub:1", "lane-1", {"entity": "urn:x:0"}, 0),
        ("t", "urn:sub:1", "lane-1", {"entity": "urn:x:1"}, 0),
    ]
    rest = run(store.claim_outbox(10))
    assert [r.payload["entity"] for r in rest] == ["urn:x:2"]
    assert first[0].id < first[1].id < rest[0].id
    assert run(store.claim_outbox(10)) == []  # every row is claimed

    # a failed attempt is recorded and the row stays; the status goes with it
    first[0].attempts = 1
    run(store.finish_outbox(first[0], done=False, status=SubscriptionRow("t", "urn:sub:1", {}, {"timesFailed": 1})))
    [stored] = run(store.load_subscriptions())
    assert (stored.document, stored.status) == ({"q": "a"}, {"timesFailed": 1})
    run(store.release_outbox())
    again = run(store.claim_outbox(10))
    assert [(r.id, r.attempts) for r in again] == [(first[0].id, 1), (first[1].id, 0), (rest[0].id, 0)]

    run(store.finish_outbox(again[0], done=True))
    run(store.release_outbox())
    assert [r.id for r in run(store.claim_outbox(10))] == [first[1].id, rest[0].id]
    # deleting the subscription drops what it was still owed
    assert run(store.delete_subscription("t", "urn:sub:1"))
    run(store.release_outbox())
    assert run(store.claim_outbox(10)) == []


def test_registrations_round_trip(backend: Backend) -> None:
    store, run = backend.store, backend.run
    run(store.save_registration(RegistrationRow("t", "urn:reg:1", {"endpoint": "a"}), create=True))
    run(store.save_registration(RegistrationRow("t", "urn:reg:2", {"endpoint": "b"}), create=True))
    run(store.save_registration(RegistrationRow("u", "urn:reg:1", {"endpoint": "c"}), create=True))
    with pytest.raises(AlreadyExists):
        run(store.save_registration(RegistrationRow("t", "urn:reg:1", {"endpoint": "x"}), create=True))
    assert run(store.tenant_exists("t")) and run(store.tenant_exists("u"))
    run(store.save_registration(RegistrationRow("t", "urn:reg:1", {"endpoint": "A"}), create=False))
    assert [(r.id, r.document) for r in run(store.list_registrations("t"))] == [
        ("urn:reg:1", {"endpoint": "A"}),
        ("urn:reg:2", {"endpoint": "b"}),
    ]
    got = run(store.get_registration("u", "urn:reg:1"))
    assert got is not None and (got.tenant, got.id, got.document) == ("u", "urn:reg:1", {"endpoint": "c"})
    assert run(store.get_registration("t", "urn:reg:9")) is None
    assert run(store.delete_registration("t", "urn:reg:1"))
    assert not run(store.delete_registration("t", "urn:reg:1"))
    assert [r.id for r in run(store.list_registrations("t"))] == ["urn:reg:2"]
    assert run(store.list_registrations("nobody")) == []


def test_registrations_are_kept_and_forgotten(backend: Backend) -> None:
    """The registrations a store keeps in memory (store/registration_cache.py) follow its own writes
    at once, and each caller gets documents of its own."""
    store, run = backend.store, backend.run
    assert not store.registrations_none("t")  # not known yet: the first request reads them
    assert run(store.list_registrations("t")) == []  # kept: no registration
    assert store.registrations_none("t")  # known without I/O (the forwarding decision's shortcut)
    run(store.save_registration(RegistrationRow("t", "urn:reg:1", {"endpoint": "a"}), create=True))
    assert not store.registrations_none("t")  # forgotten by the write
    first = run(store.list_registrations("t"))
    assert not store.registrations_none("t")  # kept: one
    assert [(r.id, r.document) for r in first] == [("urn:reg:1", {"endpoint": "a"})]
    first[0].document["endpoint"] = "changed by a caller"
    assert run(store.list_registrations("t"))[0].document == {"endpoint": "a"}
    with pytest.raises(AlreadyExists):  # a failed write forgets too, and changes nothing
        run(store.save_registration(RegistrationRow("t", "urn:reg:1", {"endpoint": "x"}), create=True))
    run(store.save_registration(RegistrationRow("t", "urn:reg:1", {"endpoint": "b"}), create=False))
    assert [r.document for r in run(store.list_registrations("t"))] == [{"endpoint": "b"}]
    assert run(store.delete_registration("t", "urn:reg:1"))
    assert not store.registrations_none("t")
    assert run(store.list_registrations("t")) == []
    assert store.registrations_none("t")


def test_postgres_workers_forget_registrations_another_worker_changed(postgres_skip_reason: str | None) -> None:
    with postgres_workers(postgres_skip_reason) as (loop, (writer, reader)):
        run = loop.run_until_complete
        for worker in (writer, reader):
            run(asyncio.wait_for(worker._events.listening.wait(), 10))
        assert run(reader.list_registrations("t")) == []  # kept by the reader

        async def seen(expected: list[str]) -> list[str]:
            for _ in range(100):
                ids = [r.id for r in await reader.list_registrations("t")]
                if ids == expected:
                    break
                await asyncio.sleep(0.05)
            return ids

        run(writer.save_registration(RegistrationRow("t", "urn:reg:1", {"endpoint": "a"}), create=True))
        assert run(seen(["urn:reg:1"])) == ["urn:reg:1"]
        run(writer.save_registration(RegistrationRow("t", "urn:reg:1", {"endpoint": "b"}), create=False))
        for _ in range(100):
            if run(reader.list_registrations("t"))[0].document == {"endpoint": "b"}:
                break
            run(asyncio.sleep(0.05))
        assert run(reader.list_registrations("t"))[0].document == {"endpoint": "b"}
        assert run(writer.delete_registration("t", "urn:reg:1"))
        assert run(seen([])) == []
        assert reader.registrations_none("t")  # kept again, none
        run(writer.save_registration(RegistrationRow("t", "urn:reg:2", {"endpoint": "c"}), create=True))
        for _ in range(100):  # another worker's write forgets the reader's "none" through its NOTIFY
            if not reader.registrations_none("t"):
                break
            run(asyncio.sleep(0.05))
        assert not reader.registrations_none("t")
        assert run(seen(["urn:reg:2"])) == ["urn:reg:2"]


def test_entity_maps_round_trip(backend: Backend) -> None:
    store, run = backend.store, backend.run
    later = datetime(2999, 1, 1, 12, 30, 15, 250000, tzinfo=UTC)
    kept = EntityMap("urn:map:1", later, ("urn:x:b", "urn:x:a"), "type=T")
    run(store.save_entity_map("t", kept))
    run(store.save_entity_map("u", EntityMap("urn:map:1", later, ("urn:x:z",), "")))  # maps are per tenant
    assert run(store.get_entity_map("t", "urn:map:1")) == kept
    assert run(store.get_entity_map("t", "urn:map:2")) is None

    sooner = datetime(2998, 6, 1, tzinfo=UTC)
    assert run(store.update_entity_map("t", "urn:map:1", expires_at=sooner))
    assert run(store.update_entity_map("t", "urn:map:1", entity_ids=["urn:x:a"]))
    assert run(store.get_entity_map("t", "urn:map:1")) == EntityMap("urn:map:1", sooner, ("urn:x:a",), "type=T")
    assert run(store.update_entity_map("t", "urn:map:1"))  # nothing to change, but it exists
    assert not run(store.update_entity_map("t", "urn:map:2"))
    assert not run(store.update_entity_map("t", "urn:map:2", entity_ids=[]))

    replaced = EntityMap("urn:map:1", later, (), "q=x")
    run(store.save_entity_map("t", replaced))
    assert run(store.get_entity_map("t", "urn:map:1")) == replaced
    run(store.save_entity_map("t", EntityMap("urn:map:old", datetime(2001, 1, 1, tzinfo=UTC), ("urn:x:a",))))
    run(store.purge_expired(now_key()))
    assert run(store.get_entity_map("t", "urn:map:old")) is None  # expired maps are swept
    assert run(store.get_entity_map("t", "urn:map:1")) == replaced
    assert run(store.delete_entity_map("t", "urn:map:1"))
    assert not run(store.delete_entity_map("t", "urn:map:1"))
    assert run(store.get_entity_map("u", "urn:map:1")) is not None


def test_ingest_records_round_trip(backend: Backend) -> None:
    store, run = backend.store, backend.run
    g1, g2 = IngestRecord("group", "t", "k1", {"n": 1}), IngestRecord("group", "u", "k1", {"n": 2})
    d1 = IngestRecord("device", "t", "k1", {"n": 3})  # kinds are separate key spaces
    run(store.add_ingest_records([g1, g2, d1]))
    run(store.add_ingest_records([]))
    fresh = IngestRecord("group", "t", "k2", {"n": 4})
    with pytest.raises(AlreadyExists, match="group k1"):
        run(store.add_ingest_records([fresh, IngestRecord("group", "t", "k1", {"n": 5})]))
    with pytest.raises(AlreadyExists, match="group k3"):
        run(store.add_ingest_records([IngestRecord("group", "t", "k3", {}), IngestRecord("group", "t", "k3", {})]))
    assert run(store.load_ingest_records("group")) == [g1, g2]  # all or none: nothing of either batch
    assert run(store.load_ingest_records("device")) == [d1]
    run(store.add_ingest_records([fresh]))
    assert run(store.delete_ingest_record("group", "t", "k1"))
    assert not run(store.delete_ingest_record("group", "t", "k1"))
    assert run(store.load_ingest_records("group")) == [g2, fresh]
    assert run(store.load_ingest_records("nothing")) == []


def _rel(target: str) -> dict[str, Any]:
    return {"type": "Relationship", "object": target, "createdAt": STAMP, "modifiedAt": STAMP}


def test_discovery_aggregates_visible_entities(backend: Backend) -> None:
    store, run = backend.store, backend.run
    expired = make("urn:x:4", "Sensor", "Secret", secret=prop(1))
    expired["expiresAt"] = PAST
    entities = [
        make("urn:x:1", "Sensor", temperature=[prop(1, datasetId="urn:d:1"), prop(2)], location=geo(point(1, 2))),
        make("urn:x:2", "Sensor", "Device", temperature=prop(3), owner=_rel("urn:x:3")),
        make("urn:x:3", "Building"),
        make("urn:x:5", "apple", Zeta=prop("z"), owner=prop("me")),  # lower case sorts after upper case
        expired,
    ]
    run(store.mutate("t", [(e["id"], update.create(e)) for e in entities], atomic=True))
    run(store.mutate("other", [("urn:x:9", update.create(make("urn:x:9", "Other", z=prop(0))))], atomic=True))

    assert run(store.entity_types("t")) == [V + "Building", V + "Device", V + "Sensor", V + "apple"]
    assert run(store.entity_types("other")) == [V + "Other"]
    assert run(store.entity_types("nobody")) == []
    assert run(store.entity_type_attributes("t")) == {
        V + "Building": [],
        V + "Device": [V + "owner", V + "temperature"],
        V + "Sensor": [V + "location", V + "owner", V + "temperature"],
        V + "apple": [V + "Zeta", V + "owner"],
    }
    assert run(store.entity_type_stats("t", V + "Sensor")) == EntityTypeStats(
        V + "Sensor",
        2,
        {V + "location": ["GeoProperty"], V + "owner": ["Relationship"], V + "temperature": ["Property"]},
    )
    assert run(store.entity_type_stats("t", V + "Building")) == EntityTypeStats(V + "Building", 1, {})
    assert run(store.entity_type_stats("t", V + "Secret")) is None  # only an expired entity has it
    assert run(store.entity_type_stats("other", V + "Sensor")) is None

    assert run(store.attribute_names("t")) == [V + "Zeta", V + "location", V + "owner", V + "temperature"]
    assert run(store.attribute_type_names("t")) == {
        V + "Zeta": [V + "apple"],
        V + "location": [V + "Sensor"],
        V + "owner": [V + "Device", V + "Sensor", V + "apple"],
        V + "temperature": [V + "Device", V + "Sensor"],
    }
    assert run(store.attribute_stats("t", V + "temperature")) == AttributeStats(
        V + "temperature", 3, ["Property"], [V + "Device", V + "Sensor"]
    )
    assert run(store.attribute_stats("t", V + "owner")) == AttributeStats(
        V + "owner", 2, ["Property", "Relationship"], [V + "Device", V + "Sensor", V + "apple"]
    )
    assert run(store.attribute_stats("t", V + "secret")) is None
    assert run(store.attribute_stats("t", V + "nothing")) is None


# -- PostgreSQL only: several workers on one database ----------------------------------------------
@contextmanager
def postgres_workers(skip_reason: str | None, count: int = 2, **settings: float) -> Iterator[tuple[Any, list[Any]]]:
    """`count` PostgresStores (as `count` worker processes would have) on one fresh migrated schema."""
    with postgres_schema(skip_reason) as (loop, url):
        from cityos.store.postgres import PostgresStore

        loop.run_until_complete(_migrate(url))
        workers = [PostgresStore(url) for _ in range(count)]
        for worker in workers:
            for name, value in settings.items():
                setattr(worker, name, value)
        opened: list[PostgresStore] = []
        try:
            for worker in workers:
                loop.run_until_complete(worker.open())
                opened.append(worker)
            yield loop, workers
        finally:
            for worker in opened:
                loop.run_until_complete(worker.close())


async def _fill_outbox(store: Any, rows: list[OutboxRow]) -> None:
    """Outbox rows as a write transaction inserts them."""
    async with store.pool.acquire() as connection, connection.transaction():
        await store._insert_outbox(connection, rows)


def _lane_rows(lanes: int, per_lane: int) -> list[OutboxRow]:
    """Rows interleaved across lanes, as changes to many subscriptions arrive."""
    return [
        OutboxRow("", f"urn:sub:{lane}", f"lane-{lane}", {"n": n}) for n in range(per_lane) for lane in range(lanes)
    ]


def test_postgres_concurrent_claims_take_each_row_once_and_lanes_whole(postgres_skip_reason: str | None) -> None:
    """Many claims at once from two workers: no row twice, and each lane's claimed rows are one
    worker's, a prefix of the lane in id order (a later row never goes ahead of an earlier one)."""
    with postgres_workers(postgres_skip_reason) as (loop, workers):

        async def scenario() -> list[tuple[str, list[OutboxRow]]]:
            await _fill_outbox(workers[0], _lane_rows(lanes=20, per_lane=30))
            calls = [(w.worker_id, w.claim_outbox(17)) for _ in range(8) for w in workers]
            results = await asyncio.gather(*(call for _, call in calls))
            return [(worker_id, rows) for (worker_id, _), rows in zip(calls, results, strict=True)]

        claims = loop.run_until_complete(scenario())
        owner: dict[int, str] = {}
        for worker_id, rows in claims:
            assert [r.id for r in rows] == sorted(r.id for r in rows)  # oldest first
            for row in rows:
                assert row.id not in owner, f"row {row.id} claimed twice"
                owner[row.id] = worker_id
        assert owner, "nothing was claimed"
        all_rows = loop.run_until_complete(workers[0].pool.fetch("SELECT id, lane, claimed_by FROM outbox ORDER BY id"))
        by_lane: dict[str, list[Any]] = {}
        for record in all_rows:
            by_lane.setdefault(record["lane"], []).append(record)
        for lane, records in by_lane.items():
            claimed = [r for r in records if r["claimed_by"] is not None]
            assert records[: len(claimed)] == claimed, f"{lane}: the claimed rows are not a prefix"
            assert len({r["claimed_by"] for r in claimed}) <= 1, f"{lane} is split between workers"
            assert all(owner[r["id"]] == r["claimed_by"] for r in claimed)


def test_postgres_a_claim_never_overtakes_a_row_another_claimer_holds(postgres_skip_reason: str | None) -> None:
    """A row locked by a concurrent claim (not yet committed) keeps the later rows of its lane from
    every other claimer, and only them."""
    with postgres_workers(postgres_skip_reason) as (loop, (first, second)):
        run = loop.run_until_complete

        async def scenario() -> tuple[list[OutboxRow], list[OutboxRow]]:
            await _fill_outbox(first, _lane_rows(lanes=2, per_lane=3))  # ids: lane-0 odd, lane-1 even
            async with first.pool.acquire() as connection, connection.transaction():
                # as a claim in flight holds it: the oldest row of lane-0, still unclaimed
                await connection.execute("SELECT id FROM outbox WHERE id = (SELECT min(id) FROM outbox) FOR UPDATE")
                during = await second.claim_outbox(10)
            return during, await second.claim_outbox(10)

        during, after = run(scenario())
        assert [(r.lane, r.payload["n"]) for r in during] == [("lane-1", 0), ("lane-1", 1), ("lane-1", 2)]
        assert [(r.lane, r.payload["n"]) for r in after] == [("lane-0", 0), ("lane-0", 1), ("lane-0", 2)]


def test_postgres_two_dispatching_workers_deliver_every_lane_in_order(postgres_skip_reason: str | None) -> None:
    """Two workers claim and deliver (finish) until the outbox is empty: every row is delivered once,
    each lane in id order, and never while the other worker holds a row of the same lane."""
    with postgres_workers(postgres_skip_reason) as (loop, workers):
        held: dict[str, dict[str, int]] = {}  # lane -> worker -> rows claimed and not yet finished
        delivered: dict[str, list[int]] = {}
        by_worker: dict[str, int] = {}

        async def dispatch(worker: Any) -> None:
            idle = 0
            while idle < 5:
                rows = await worker.claim_outbox(9)
                for row in rows:
                    others = [w for w, n in held.get(row.lane, {}).items() if n and w != worker.worker_id]
                    assert not others, f"{row.lane} claimed by {worker.worker_id} while {others} hold it"
                    lane_held = held.setdefault(row.lane, {})
                    lane_held[worker.worker_id] = lane_held.get(worker.worker_id, 0) + 1
                idle = 0 if rows else idle + 1
                for row in rows:
                    delivered.setdefault(row.lane, []).append(row.id)
                    by_worker[worker.worker_id] = by_worker.get(worker.worker_id, 0) + 1
                    await asyncio.sleep(0.001)  # the request
                    held[row.lane][worker.worker_id] -= 1  # before the commit: never a false alarm
                    await worker.finish_outbox(row, done=True)
                await asyncio.sleep(0.005)

        async def scenario() -> None:
            await _fill_outbox(workers[0], _lane_rows(lanes=12, per_lane=25))
            await asyncio.gather(*(dispatch(w) for w in workers))

        loop.run_until_complete(scenario())
        assert sum(len(ids) for ids in delivered.values()) == 12 * 25
        for lane, ids in delivered.items():
            assert ids == sorted(ids) and len(set(ids)) == 25, lane
        assert set(by_worker) == {w.worker_id for w in workers}
        assert loop.run_until_complete(workers[0].pool.fetchval("SELECT count(*) FROM outbox")) == 0


def test_postgres_a_dead_workers_claims_are_taken_over(postgres_skip_reason: str | None) -> None:
    with postgres_workers(postgres_skip_reason, worker_heartbeat=3600.0) as (loop, (alive, doomed)):
        run = loop.run_until_complete
        run(_fill_outbox(alive, _lane_rows(lanes=2, per_lane=3)))  # ids 1..6, lanes alternate
        taken = run(doomed.claim_outbox(3))
        assert [(r.lane, r.payload["n"]) for r in taken] == [("lane-0", 0), ("lane-1", 0), ("lane-0", 1)]
        # its lanes are its own while it lives, also the rows it has not claimed yet
        assert run(alive.claim_outbox(10)) == []
        run(alive.release_outbox())
        assert run(alive.claim_outbox(10)) == []
        run(_fill_outbox(alive, [OutboxRow("", "urn:sub:x", "lane-x", {"n": 0})]))
        assert [r.lane for r in run(alive.claim_outbox(10))] == ["lane-x"]

        # it stops beating: once its heartbeat is older than the timeout, another worker takes over
        stale = "UPDATE workers SET heartbeat = now() - interval '11 seconds' WHERE id = $1"
        run(alive.pool.execute(stale, doomed.worker_id))
        rows = run(alive.claim_outbox(10))
        assert [(r.lane, r.payload["n"]) for r in rows] == [
            ("lane-0", 0),
            ("lane-1", 0),
            ("lane-0", 1),
            ("lane-1", 1),
            ("lane-0", 2),
            ("lane-1", 2),
        ]
        claimants = run(alive.pool.fetch("SELECT DISTINCT claimed_by FROM outbox"))
        assert [r["claimed_by"] for r in claimants] == [alive.worker_id]


def test_postgres_release_frees_dead_and_own_claims_only(postgres_skip_reason: str | None) -> None:
    with postgres_workers(postgres_skip_reason, count=3, worker_heartbeat=3600.0) as (loop, (me, other, dead)):
        run = loop.run_until_complete
        run(_fill_outbox(me, _lane_rows(lanes=3, per_lane=1)))
        for worker in (me, other, dead):
            assert len(run(worker.claim_outbox(1))) == 1
        run(me.pool.execute("UPDATE workers SET heartbeat = now() - interval '1 minute' WHERE id = $1", dead.worker_id))
        run(me.release_outbox())
        claims = run(me.pool.fetch("SELECT lane, claimed_by FROM outbox ORDER BY id"))
        assert [r["claimed_by"] for r in claims] == [None, other.worker_id, None]


def test_postgres_workers_register_beat_and_deregister(postgres_skip_reason: str | None) -> None:
    with postgres_workers(postgres_skip_reason, count=2, worker_heartbeat=0.05) as (loop, (observer, worker)):
        run = loop.run_until_complete
        sql = "SELECT heartbeat FROM workers WHERE id = $1"
        first = run(observer.pool.fetchval(sql, worker.worker_id))
        run(asyncio.sleep(0.3))
        assert run(observer.pool.fetchval(sql, worker.worker_id)) > first
        run(_fill_outbox(worker, _lane_rows(lanes=2, per_lane=1)))
        assert len(run(worker.claim_outbox(10))) == 2
        run(worker.close())  # releases its claims and its registration
        assert run(observer.pool.fetchval("SELECT count(*) FROM workers WHERE id = $1", worker.worker_id)) == 0
        assert run(observer.pool.fetchval("SELECT count(*) FROM outbox WHERE claimed_by IS NOT NULL")) == 0
        assert len(run(observer.claim_outbox(10))) == 2


def test_postgres_claim_periodic_has_one_winner_per_interval(postgres_skip_reason: str | None) -> None:
    with postgres_workers(postgres_skip_reason, count=3) as (loop, workers):
        run = loop.run_until_complete
        run(workers[0].save_subscription(SubscriptionRow("t", "urn:sub:p", {}), create=True))

        async def claims() -> list[bool]:
            return list(await asyncio.gather(*(w.claim_periodic("t", "urn:sub:p", 0.5) for w in workers * 3)))

        def race() -> list[bool]:
            return run(claims())

        assert sorted(race()) == [False] * 8 + [True]
        assert race() == [False] * 9  # the period is taken
        run(asyncio.sleep(0.45))  # timers of several workers fire a little apart: 100 ms of slack
        assert sorted(race()) == [False] * 8 + [True]
        assert not run(workers[1].claim_periodic("t", "urn:sub:none", 0.5))


def test_postgres_events_reach_the_other_workers(postgres_skip_reason: str | None) -> None:
    with postgres_workers(postgres_skip_reason) as (loop, (writer, reader)):
        run = loop.run_until_complete
        heard: dict[str, list[StoreEvent]] = {"writer": [], "reader": []}
        writer.set_event_listener(heard["writer"].append)
        reader.set_event_listener(heard["reader"].append)
        for worker in (writer, reader):
            run(asyncio.wait_for(worker._events.listening.wait(), 10))

        subscription = SubscriptionRow("t", "urn:sub:1", {"q": "a"})
        run(writer.save_subscription(subscription, create=True))
        with pytest.raises(AlreadyExists):  # rolled back: no event
            run(writer.save_subscription(subscription, create=True))
        run(writer.save_subscription(SubscriptionRow("t", "urn:sub:1", {"q": "b"}), create=False))
        # the same document with new bookkeeping (a periodic report): the status alone
        run(writer.save_subscription(SubscriptionRow("t", "urn:sub:1", {"q": "b"}, {"timesSent": 7}), create=False))
        run(writer.save_subscription(SubscriptionRow("t", "urn:sub:none", {}), create=False))  # no such: no event
        run(_fill_outbox(writer, [OutboxRow("t", "urn:sub:1", "lane", {})]))
        [row] = run(writer.claim_outbox(1))
        run(writer.finish_outbox(row, done=True, status=SubscriptionRow("t", "urn:sub:1", {}, {"timesSent": 1})))
        run(writer.delete_subscription("t", "urn:sub:1"))
        run(writer.add_ingest_records([IngestRecord("group", "t", "k1", {}), IngestRecord("device", "t", "d1", {})]))
        with pytest.raises(AlreadyExists):
            run(writer.add_ingest_records([IngestRecord("group", "t", "k2", {}), IngestRecord("group", "t", "k1", {})]))
        run(writer.delete_ingest_record("group", "t", "k1"))
        run(writer.delete_ingest_record("group", "t", "k1"))  # nothing deleted: no event
        run(writer.publish(StoreEvent("alert-state", "t", "rule urn:e", {"state": "open"})))  # said outright

        expected = [
            StoreEvent("subscription", "t", "urn:sub:1"),
            StoreEvent("subscription", "t", "urn:sub:1"),
            StoreEvent("subscription-status", "t", "urn:sub:1", {"timesSent": 7}),
            StoreEvent("subscription-status", "t", "urn:sub:1", {"timesSent": 1}),
            StoreEvent("subscription", "t", "urn:sub:1"),
            StoreEvent("ingest", "t", "group:k1"),
            StoreEvent("ingest", "t", "device:d1"),
            StoreEvent("ingest", "t", "group:k1"),
            StoreEvent("alert-state", "t", "rule urn:e", {"state": "open"}),
        ]

        async def settle() -> None:
            for _ in range(100):
                if len(heard["reader"]) >= len(expected):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # and nothing more arrives

        run(settle())
        assert heard["reader"] == expected
        assert heard["writer"] == []  # a worker does not hear its own writes


# -- the audit trail (store/audit_base.py) ----------------------------------------------------------
def _audited(store: EntityStore) -> None:
    from cityos.audit import recorder

    store.set_change_listener(recorder.change_listener, None, name=recorder.LISTENER)


def _chain(backend: Backend) -> list[Any]:
    from cityos.audit.chain import AuditQuery

    return backend.run(backend.store.read_audit(AuditQuery(limit=None)))


def _linked(records: list[Any]) -> bool:
    from cityos.audit.chain import GENESIS, record_hash

    prev = GENESIS
    for seq, record in enumerate(records, start=1):
        if (record.seq, record.prev, record.hash) != (seq, prev, record_hash(record.as_dict())):
            return False
        prev = record.hash
    return True


def test_audit_records_every_write_in_its_transaction(backend: Backend) -> None:
    from cityos.audit.chain import AuditQuery, AuditRow
    from cityos.auth.principal import Principal, current_principal, current_request_id

    store, run = backend.store, backend.run
    _audited(store)

    async def as_alice(coroutine: Coroutine[Any, Any, T]) -> T:
        current_principal.set(Principal("user:alice", "user"))
        current_request_id.set("req-1")
        return await coroutine

    run(as_alice(store.mutate("t", [("urn:x:1", update.create(make("urn:x:1", "T", n=prop(1))))], atomic=True)))
    operations = [
        ("urn:x:2", update.create(make("urn:x:2", "T"))),
        ("urn:x:1", update.create(make("urn:x:1", "T"))),  # fails alone: no record
        ("urn:x:2", update.delete("urn:x:2")),
    ]
    run(store.mutate("t", operations, atomic=False))
    with pytest.raises(AlreadyExists):  # an atomic request that fails leaves no record at all
        run(store.mutate("t", [("urn:x:3", update.create(make("urn:x:3", "T"))), *operations[1:2]], atomic=True))
    run(store.temporal_write("t", "urn:x:9", [V + "T"], [(V + "n", {"value": 1, "observedAt": STAMP})]))
    run(store.append_audit([AuditRow("request.denied", "t", ["urn:x:1"], "key:k1", outcome="denied")]))

    records = _chain(backend)
    assert [(r.operation, r.targets, r.principal) for r in records] == [
        ("entity.create", ["urn:x:1"], "user:alice"),
        ("entity.create", ["urn:x:2"], "open"),
        ("entity.delete", ["urn:x:2"], "open"),
        ("temporal.write", ["urn:x:9"], "open"),
        ("request.denied", ["urn:x:1"], "key:k1"),
    ]
    assert records[0].request_id == "req-1" and records[4].outcome == "denied"
    assert _linked(records)
    head = run(store.audit_head())
    assert (head.seq, head.hash) == (5, records[-1].hash)
    assert [r.seq for r in run(store.read_audit(AuditQuery(target="urn:x:2")))] == [2, 3]
    assert [r.seq for r in run(store.read_audit(AuditQuery(principal="user:alice")))] == [1]
    assert [r.seq for r in run(store.read_audit(AuditQuery(after_seq=3, limit=1)))] == [4]
    assert run(store.read_audit(AuditQuery(since=FUTURE))) == []


def test_audit_checkpoints_and_truncation(backend: Backend) -> None:
    from cityos.audit.chain import AuditCheckpoint, AuditRecord, AuditRow

    store, run = backend.store, backend.run
    rows = [AuditRow("key.create", "", [f"k{n}"], "open", time=f"2026-01-0{n}T00:00:00.000000Z") for n in (1, 2, 3)]
    run(store.append_audit(rows))
    records = _chain(backend)
    run(store.save_audit_checkpoint(AuditCheckpoint(1, records[0].hash, STAMP, "id", "sig")))
    run(store.save_audit_checkpoint(AuditCheckpoint(1, "other", STAMP, "id", "sig2")))  # one per seq
    run(store.save_audit_checkpoint(AuditCheckpoint(3, records[2].hash, STAMP, "id", "sig3")))
    assert [(c.seq, c.signature) for c in run(store.audit_checkpoints())] == [(1, "sig"), (3, "sig3")]
    assert [c.seq for c in run(store.audit_checkpoints(2, 3))] == [3]

    def anchor(last: AuditRecord) -> AuditRecord:
        return AuditRecord(last.seq, STAMP, "cityos", "audit.truncate", "", [], "ok", "", {}, last.prev, last.hash, "s")

    note = AuditRow("audit.retention", "", [], "cityos")
    assert run(store.truncate_audit("2026-01-02T12:00:00Z", anchor, note)) == 2
    remaining = _chain(backend)
    expected = [(2, "audit.truncate"), (3, "key.create"), (4, "audit.retention")]
    assert [(r.seq, r.operation) for r in remaining] == expected
    assert remaining[0].hash == records[1].hash and remaining[1].prev == remaining[0].hash
    assert remaining[2].prev == records[2].hash and remaining[2].detail == {"removed": 2, "through": 2}
    assert [c.seq for c in run(store.audit_checkpoints())] == [3]
    assert run(store.truncate_audit("2026-01-02T12:00:00Z", anchor, note)) == 0  # only the anchor is that old


def test_audit_records_catalogue_writes_without_secrets(backend: Backend) -> None:
    store, run = backend.store, backend.run
    _audited(store)
    subscription = SubscriptionRow("t", "urn:sub:1", {"id": "urn:sub:1", "type": "Subscription"})
    run(store.save_subscription(subscription, create=True))
    run(store.save_subscription(SubscriptionRow("t", "urn:sub:1", {"id": "urn:sub:1", "q": "x"}), create=False))
    assert run(store.delete_subscription("t", "urn:sub:1"))
    assert not run(store.delete_subscription("t", "urn:sub:1"))  # nothing deleted: no record
    run(store.save_registration(RegistrationRow("t", "urn:reg:1", {"id": "urn:reg:1"}), create=True))
    assert run(store.delete_registration("t", "urn:reg:1"))
    run(
        store.add_ingest_records(
            [IngestRecord("iot-group", "t", "secret-apikey", {}), IngestRecord("demo", "", "x", {})]
        )
    )
    assert run(store.delete_ingest_record("iot-group", "t", "secret-apikey"))
    records = _chain(backend)
    assert [r.operation for r in records] == [
        "subscription.create",
        "subscription.update",
        "subscription.delete",
        "registration.create",
        "registration.delete",
        "iot-group.create",
        "iot-group.delete",
    ]
    assert records[0].targets == ["urn:sub:1"] and _linked(records)
    assert records[5].targets == records[6].targets and records[5].targets[0].startswith("sha256:")
    assert all("secret-apikey" not in str(r.as_dict()) for r in records)


def test_audit_names_each_writes_own_principal_when_writes_share_a_transaction(backend: Backend) -> None:
    from cityos.auth.principal import Principal, current_principal, current_request_id

    store, run = backend.store, backend.run
    _audited(store)

    async def write_as(number: int) -> None:
        current_principal.set(Principal(f"user:{number}", "user"))
        current_request_id.set(f"req-{number}")
        entity_id = f"urn:x:{number}"
        await store.mutate("", [(entity_id, update.create(make(entity_id, "T")))], atomic=True)

    async def burst() -> None:  # queued together: SQLite commits them as one group, each in a savepoint
        await asyncio.gather(*(write_as(number) for number in range(40)))

    run(burst())
    records = _chain(backend)
    assert len(records) == 40 and _linked(records)
    assert all(r.principal == f"user:{r.targets[0][6:]}" and r.request_id == f"req-{r.targets[0][6:]}" for r in records)
