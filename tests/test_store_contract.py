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
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cityos.cli import main as cli_main
from cityos.entities import update
from cityos.entities.expiry import now_key
from cityos.entities.model import Entity
from cityos.errors import AlreadyExists, NgsiLdError, ResourceNotFound
from cityos.query.pushdown import ValueFilter
from cityos.store import EXPERIMENTAL_POSTGRES, open_store
from cityos.store.base import EntityQuery, EntityStore, QueryResult, StoredContextRow

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


@pytest.fixture(scope="session")
def postgres_skip_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here (None: they can); puts PostGIS in the database."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[dev]')"

    async def probe() -> None:
        connection = await asyncpg.connect(POSTGRES, timeout=3)
        try:
            await connection.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        finally:
            await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError) as exc:
        return f"no PostgreSQL server reachable at {POSTGRES} ({exc})"
    return None


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
        store = open_store(url, experimental=True)
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
        store = open_store(url, experimental=True)
        with pytest.raises(SchemaNotCurrent, match="cityos db upgrade"):
            loop.run_until_complete(store.open())
        assert [m.version for m in loop.run_until_complete(_migrate(url))] == list(range(1, LATEST + 1))
        assert loop.run_until_complete(_migrate(url)) == []  # nothing left to do
        loop.run_until_complete(store.open())
        loop.run_until_complete(store.close())
        assert cli_main(["db", "status", "--database", url]) == 0


def test_postgres_is_refused_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EXPERIMENTAL_POSTGRES, raising=False)
    with pytest.raises(ValueError, match=f"incomplete.*{EXPERIMENTAL_POSTGRES}=1"):
        open_store("postgresql://cityos@db.invalid/cityos")
    monkeypatch.setenv(EXPERIMENTAL_POSTGRES, "1")
    assert type(open_store("postgresql://cityos@db.invalid/cityos")).__name__ == "PostgresStore"


def test_postgres_names_what_is_missing() -> None:
    pytest.importorskip("asyncpg")
    from cityos.store.postgres import BackendIncomplete, PostgresStore

    store = PostgresStore("postgresql://cityos@db.invalid/cityos")
    with pytest.raises(BackendIncomplete, match=r"PostgresStore\.load_subscriptions is not implemented yet"):
        asyncio.run(store.load_subscriptions())
    with pytest.raises(NotImplementedError, match="temporal_query"):
        asyncio.run(store.temporal_query("", None))  # type: ignore[arg-type]
    with pytest.raises(BackendIncomplete, match="set_change_listener"):
        store.set_change_listener(lambda change, lookup: [], None)


def test_db_commands_leave_sqlite_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["db", "upgrade", "--database", str(tmp_path / "x.db")]) == 0
    assert "nothing to upgrade" in capsys.readouterr().out
    assert not (tmp_path / "x.db").exists()


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
        workers = [open_store(url, experimental=True) for _ in range(2)]

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
