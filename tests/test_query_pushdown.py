"""The pushed-down SQL paths of a query on a store of 12,000 entities (SQLite and PostgreSQL).

Two things are checked:

1. Soundness: every query's result is exactly what an independent brute-force Python filter over
   the generated data gives (so a prefilter in SQL never drops a match), and the SQL part alone
   returns a superset of it.
2. The pushdown is really used: the store decodes only the narrowed candidates (or, when every
   filter is exact in SQL, only the page); and, on SQLite only (these read SQLite's own EXPLAIN
   QUERY PLAN and virtual machine), the SQL that `_selection` builds searches the side tables
   (entity_types, entity_attrs, attr_values, the R*Tree) with their indexes.

The data is random but seeded; values are rounded to 5 decimals and the query shapes use more
digits, so no generated value lies exactly on a query boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

import cityos.store.sqlite as sqlite_store
import cityos.store.sqlite_query as sqlite_query
from backends import db_rows, module_sqlite_only
from cityos.app import create_app
from cityos.entities.expiry import now_key
from cityos.query.entity_query import QuerySpec, build_entity_query
from cityos.query.geo import parse_geo_query
from cityos.settings import Settings
from cityos.store import is_postgres
from cityos.store.base import EntityQuery, QueryResult
from cityos.store.sqlite_query import _selection, register_geo_functions

ENTITIES = "/ngsi-ld/v1/entities"
BATCH = "/ngsi-ld/v1/entityOperations"
SIZE = 12_000
CHUNK = 1_000
FORECAST = "urn:ngsi-ld:Dataset:forecast"
EARTH_RADIUS = 6_371_008.8
PORTO = (-8.6111, 41.1496)  # query reference point (the generated values have 5 decimals at most)
BOX = (-8.6523456, -8.5876543, 41.1234567, 41.1765432)  # min_lon, max_lon, min_lat, max_lat
STATUSES = ("ok", "faulty", "unknown")
Entity = dict[str, Any]
Test = Callable[[Entity], bool]


# -- the generated city -----------------------------------------------------------------------------
def _spots(rnd: random.Random) -> Any:
    """availableSpotNumber in every shape q compares: ints, floats, strings, booleans, arrays,
    and two instances (datasetId)."""
    roll = rnd.random()
    if roll < 0.65:
        return {"type": "Property", "value": rnd.randint(0, 500)}
    if roll < 0.75:
        return {"type": "Property", "value": rnd.randint(0, 499) + 0.5}
    if roll < 0.80:
        return {"type": "Property", "value": "full"}
    if roll < 0.83:
        return {"type": "Property", "value": True}
    if roll < 0.90:
        return {"type": "Property", "value": [rnd.randint(0, 500), rnd.randint(0, 500)]}
    return [
        {"type": "Property", "value": rnd.randint(0, 500)},
        {"type": "Property", "value": rnd.randint(0, 500), "datasetId": FORECAST},
    ]


def _porto(rnd: random.Random) -> tuple[float, float]:
    return round(rnd.uniform(-8.70, -8.55), 5), round(rnd.uniform(41.10, 41.20), 5)


def generate(seed: int = 2024) -> list[Entity]:
    rnd = random.Random(seed)
    entities: list[Entity] = []
    for n in range(SIZE):
        roll = rnd.random()
        kind: Any = (
            "OffStreetParking"
            if roll < 0.4
            else "AirQualityObserved"
            if roll < 0.7
            else "Streetlight"
            if roll < 0.9
            else ["OffStreetParking", "Building"]
        )
        entity: Entity = {"id": f"urn:ngsi-ld:Thing:{n:05d}", "type": kind}
        if rnd.random() < 0.8:
            entity["availableSpotNumber"] = _spots(rnd)
        if rnd.random() < 0.5:
            entity["no2"] = {"type": "Property", "value": round(rnd.uniform(0, 120), 2)}
        if rnd.random() < 0.6:
            entity["status"] = {"type": "Property", "value": rnd.choice(STATUSES)}
        if rnd.random() < 0.1:
            word = rnd.choice(STATUSES)
            entity["label"] = {"type": "LanguageProperty", "languageMap": {"en": word, "pt": word[::-1]}}
        roll = rnd.random()
        if roll < 0.87:
            entity["location"] = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": list(_porto(rnd))}}
        elif roll < 0.90:
            madrid = [round(rnd.uniform(-3.8, -3.6), 5), round(rnd.uniform(40.3, 40.5), 5)]
            entity["location"] = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": madrid}}
        roll = rnd.random()
        if roll < 0.1:
            (x, y), side = _porto(rnd), round(rnd.uniform(0.001, 0.01), 5)
            ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
            entity["area"] = {"type": "GeoProperty", "value": {"type": "Polygon", "coordinates": [ring]}}
        elif roll < 0.2:
            (x, y), length = _porto(rnd), round(rnd.uniform(0.001, 0.02), 5)
            line = [[x, y], [x + length, y]]
            entity["area"] = {"type": "GeoProperty", "value": {"type": "LineString", "coordinates": line}}
        entities.append(entity)
    return entities


CITY = generate()


@pytest.fixture(scope="module")
def big(module_db_url: str) -> Iterator[tuple[TestClient, Starlette]]:
    """One app over one database holding the generated city (loaded once for the module and back-end)."""
    settings = Settings(database=module_db_url)
    app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1:1026") as client:
        for start in range(0, SIZE, CHUNK):
            response = client.post(BATCH + "/upsert", json=CITY[start : start + CHUNK])
            assert response.status_code == 201, response.text[:500]
        yield client, app


# -- independent reference semantics ----------------------------------------------------------------
def instances(entity: Entity, attr: str) -> list[Entity]:
    found = entity.get(attr)
    return [] if found is None else found if isinstance(found, list) else [found]


def values(entity: Entity, attr: str) -> list[Any]:
    """The values q compares: each instance's value (a language map's strings), arrays flattened."""
    out: list[Any] = []
    for instance in instances(entity, attr):
        raw = instance["languageMap"].values() if "languageMap" in instance else [instance["value"]]
        for item in raw:
            out.extend(item if isinstance(item, list) else [item])
    return out


def numbers(entity: Entity, attr: str) -> list[float]:
    return [v for v in values(entity, attr) if isinstance(v, int | float) and not isinstance(v, bool)]


def has(attr: str) -> Test:
    return lambda e: attr in e


def num(attr: str, test: Callable[[float], bool]) -> Test:
    return lambda e: any(test(v) for v in numbers(e, attr))


def text(attr: str, *wanted: str) -> Test:
    return lambda e: any(isinstance(v, str) and v in wanted for v in values(e, attr))


def typed(*names: str) -> Test:
    def test(entity: Entity) -> bool:
        kinds = entity["type"] if isinstance(entity["type"], list) else [entity["type"]]
        return any(name in kinds for name in names)

    return test


def both(*tests: Test) -> Test:
    return lambda e: all(t(e) for t in tests)


def either(*tests: Test) -> Test:
    return lambda e: any(t(e) for t in tests)


def great_circle(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Metres, via unit vectors and atan2 (a different formula from the broker's haversine)."""

    def unit(p: tuple[float, float]) -> tuple[float, float, float]:
        lon, lat = math.radians(p[0]), math.radians(p[1])
        return math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)

    (ax, ay, az), (bx, by, bz) = unit(a), unit(b)
    cross = (ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx)
    return EARTH_RADIUS * math.atan2(math.hypot(*cross), ax * bx + ay * by + az * bz)


def geometry(entity: Entity, attr: str) -> dict[str, Any] | None:
    found = entity.get(attr)
    return None if found is None else found["value"]


def near(max_distance: float, attr: str = "location") -> Test:
    def test(entity: Entity) -> bool:
        shape = geometry(entity, attr)
        if shape is None:
            return False
        assert shape["type"] == "Point"
        x, y = shape["coordinates"]
        return great_circle(PORTO, (x, y)) <= max_distance

    return test


def inside(x: float, y: float) -> bool:
    return BOX[0] < x < BOX[1] and BOX[2] < y < BOX[3]


def vertices(shape: dict[str, Any]) -> list[list[float]]:
    if shape["type"] == "Point":
        return [shape["coordinates"]]
    if shape["type"] == "LineString":
        coordinates: list[list[float]] = shape["coordinates"]
        return coordinates
    ring: list[list[float]] = shape["coordinates"][0]
    return ring


def within_box(attr: str) -> Test:
    """Axis-aligned squares, horizontal lines and points lie within the (convex) box iff all their
    vertices lie strictly inside it (no generated vertex is on its edge)."""

    def test(entity: Entity) -> bool:
        shape = geometry(entity, attr)
        return shape is not None and all(inside(x, y) for x, y in vertices(shape))

    return test


def intersects_box(attr: str) -> Test:
    """Axis-aligned shapes meet the box iff their extents overlap on both axes."""

    def test(entity: Entity) -> bool:
        shape = geometry(entity, attr)
        if shape is None:
            return False
        xs = [x for x, _ in vertices(shape)]
        ys = [y for _, y in vertices(shape)]
        return min(xs) <= BOX[1] and max(xs) >= BOX[0] and min(ys) <= BOX[3] and max(ys) >= BOX[2]

    return test


def expected(test: Test) -> list[str]:
    return [entity["id"] for entity in CITY if test(entity)]


BOX_RING = [[BOX[0], BOX[2]], [BOX[1], BOX[2]], [BOX[1], BOX[3]], [BOX[0], BOX[3]], [BOX[0], BOX[2]]]
NEAR = f"[{PORTO[0]},{PORTO[1]}]"
NEAR_800 = parse_geo_query("near;maxDistance==800", "Point", NEAR, None)
WITHIN = parse_geo_query("within", "Polygon", [BOX_RING], None)
WITHIN_AREA = parse_geo_query("within", "Polygon", [BOX_RING], "area")
INTERSECTS_AREA = parse_geo_query("intersects", "Polygon", [BOX_RING], "area")

# (name, the query as the store sees it, the reference filter)
CASES: list[tuple[str, QuerySpec, Test]] = [
    ("type", QuerySpec(type_expr="Streetlight"), typed("Streetlight")),
    ("type-union", QuerySpec(type_expr="Streetlight,Building"), typed("Streetlight", "Building")),
    ("type-and", QuerySpec(type_expr="OffStreetParking;Building"), typed("Building")),
    ("gt", QuerySpec(q="availableSpotNumber>450"), num("availableSpotNumber", lambda v: v > 450)),
    ("ge", QuerySpec(q="availableSpotNumber>=450"), num("availableSpotNumber", lambda v: v >= 450)),
    ("lt", QuerySpec(q="availableSpotNumber<3"), num("availableSpotNumber", lambda v: v < 3)),
    ("le-float", QuerySpec(q="no2<=5.5"), num("no2", lambda v: v <= 5.5)),
    ("eq", QuerySpec(q="availableSpotNumber==123"), num("availableSpotNumber", lambda v: v == 123)),
    ("eq-half", QuerySpec(q="availableSpotNumber==123.5"), num("availableSpotNumber", lambda v: v == 123.5)),
    ("range", QuerySpec(q="availableSpotNumber==100..110"), num("availableSpotNumber", lambda v: 100 <= v <= 110)),
    ("list", QuerySpec(q="availableSpotNumber==1,2,3"), num("availableSpotNumber", lambda v: v in (1, 2, 3))),
    ("string", QuerySpec(q='status=="faulty"'), text("status", "faulty")),
    ("string-list", QuerySpec(q='status=="faulty","unknown"'), text("status", "faulty", "unknown")),
    ("string-on-numbers", QuerySpec(q='availableSpotNumber=="full"'), text("availableSpotNumber", "full")),
    ("language-map", QuerySpec(q='label=="ytluaf"'), text("label", "ytluaf")),
    ("exists", QuerySpec(q="label"), has("label")),
    (
        "and",
        QuerySpec(q="availableSpotNumber>400;no2<20"),
        both(num("availableSpotNumber", lambda v: v > 400), num("no2", lambda v: v < 20)),
    ),
    (
        "or",
        QuerySpec(q="availableSpotNumber==7|no2>119"),
        either(num("availableSpotNumber", lambda v: v == 7), num("no2", lambda v: v > 119)),
    ),
    (
        "type-and-q",
        QuerySpec(type_expr="AirQualityObserved", q='no2>=100;status=="ok"'),
        both(typed("AirQualityObserved"), num("no2", lambda v: v >= 100), text("status", "ok")),
    ),
    ("attrs", QuerySpec(attrs=["label"]), has("label")),
    ("attrs-any", QuerySpec(attrs=["label", "area"]), either(has("label"), has("area"))),
    ("near", QuerySpec(geo=NEAR_800), near(800)),
    ("within", QuerySpec(geo=WITHIN), within_box("location")),
    ("within-area", QuerySpec(geo=WITHIN_AREA), within_box("area")),
    ("intersects-area", QuerySpec(geo=INTERSECTS_AREA), intersects_box("area")),
    (
        "everything",
        QuerySpec(type_expr="OffStreetParking", q="availableSpotNumber>=250", attrs=["no2"], geo=NEAR_800),
        both(typed("OffStreetParking"), num("availableSpotNumber", lambda v: v >= 250), has("no2"), near(800)),
    ),
]
CASE_IDS = [name for name, _, _ in CASES]


def store_query(big: tuple[TestClient, Starlette], spec: QuerySpec, **paging: Any) -> QueryResult:
    client, app = big
    query = build_entity_query(spec, app.state.services.contexts.core_terms().expand)
    for key, value in paging.items():
        setattr(query, key, value)
    assert client.portal is not None
    result: QueryResult = client.portal.call(app.state.services.store.query_entities, "", query)
    return result


def entity_query(big: tuple[TestClient, Starlette], spec: QuerySpec) -> EntityQuery:
    return build_entity_query(spec, big[1].state.services.contexts.core_terms().expand)


def database_of(big: tuple[TestClient, Starlette]) -> str:
    database: str = big[1].state.services.settings.database
    return database


@contextlib.contextmanager
def sqlite_database(big: tuple[TestClient, Starlette]) -> Iterator[sqlite3.Connection]:
    path = database_of(big)
    assert not is_postgres(path)
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.create_function("regexp", 2, sqlite_store._regexp, deterministic=True)
        register_geo_functions(connection)
        yield connection


def sql_candidates(big: tuple[TestClient, Starlette], spec: QuerySpec) -> list[str]:
    """The ids the pushed-down SQL part of a query lets through, on either back-end."""
    query, database = entity_query(big, spec), database_of(big)
    if is_postgres(database):
        from cityos.store.postgres.sql import Params, where

        p = Params()
        condition = where("", query, now_key(), p)
        return [row[0] for row in db_rows(database, f"SELECT e.id FROM entities e WHERE {condition}", *p.values)]
    with sqlite_database(big) as db:
        source, condition, params, order = _selection(db, "", query, now_key())
        return [row[0] for row in db.execute(f"SELECT e.id FROM {source} WHERE {condition} ORDER BY {order}", params)]


# -- 1. soundness -----------------------------------------------------------------------------------
def test_the_generated_city_exercises_every_case() -> None:
    for name, _, test in CASES:
        assert 1 <= len(expected(test)) < SIZE // 2, name


@pytest.mark.parametrize(("name", "spec", "test"), CASES, ids=CASE_IDS)
def test_results_equal_brute_force(big: tuple[TestClient, Starlette], name: str, spec: QuerySpec, test: Test) -> None:
    result = store_query(big, spec, count=True)
    assert [entity["id"] for entity in result.entities] == expected(test)
    assert result.total == len(expected(test))


@pytest.mark.parametrize(("name", "spec", "test"), CASES, ids=CASE_IDS)
def test_sql_prefilter_never_drops_a_match(
    big: tuple[TestClient, Starlette], name: str, spec: QuerySpec, test: Test
) -> None:
    candidates = set(sql_candidates(big, spec))
    assert set(expected(test)) <= candidates
    if name != "or":  # an OR is left to the predicate (query/pushdown.py); everything else narrows
        assert len(candidates) < SIZE


def api_ids(client: TestClient, params: dict[str, str]) -> tuple[list[str], str]:
    """Every id a GET /entities query returns, following its next links; and its count header."""
    found: list[str] = []
    response = client.get(ENTITIES, params={**params, "limit": "1000", "count": "true"})
    count = response.headers["NGSILD-Results-Count"]
    while True:
        assert response.status_code == 200, response.text
        found.extend(entity["id"] for entity in response.json())
        following = [v for v in response.headers.get_list("link") if 'rel="next"' in v]
        if not following:
            return found, count
        response = client.get(following[0][1 : following[0].index('>; rel="next"')])


@pytest.mark.parametrize(
    ("params", "test"),
    [
        ({"type": "OffStreetParking"}, typed("OffStreetParking")),
        (
            {"type": "AirQualityObserved", "q": "no2>60"},
            both(typed("AirQualityObserved"), num("no2", lambda v: v > 60)),
        ),
        (
            {
                "q": "availableSpotNumber==200..300",
                "georel": "near;maxDistance==2000",
                "geometry": "Point",
                "coordinates": NEAR,
            },
            both(num("availableSpotNumber", lambda v: 200 <= v <= 300), near(2000)),
        ),
    ],
    ids=["exact-in-sql", "predicate", "q-and-geo"],
)
def test_api_pages_through_exactly_the_brute_force_result(
    big: tuple[TestClient, Starlette], params: dict[str, str], test: Test
) -> None:
    found, count = api_ids(big[0], params)
    assert found == expected(test)
    assert count == str(len(expected(test)))


@pytest.mark.parametrize(
    ("limit", "offset"), [(10, 0), (100, 2500), (1000, 4000), (7, len(expected(typed("Streetlight"))) - 3)]
)
@pytest.mark.parametrize(
    "spec", [QuerySpec(type_expr="Streetlight"), QuerySpec(q='status=="ok"')], ids=["exact", "predicate"]
)
def test_pages_are_slices_of_the_brute_force_result(
    big: tuple[TestClient, Starlette], spec: QuerySpec, limit: int, offset: int
) -> None:
    test = typed("Streetlight") if spec.type_expr else text("status", "ok")
    everything = expected(test)
    result = store_query(big, spec, limit=limit, offset=offset)
    assert [e["id"] for e in result.entities] == everything[offset : offset + limit]
    assert result.has_more == (offset + limit < len(everything))


NEAR_3000 = parse_geo_query("near;maxDistance==3000", "Point", NEAR, None)  # SQLite: walks entity_geo_walk
GEO_PAGED: list[tuple[str, QuerySpec, Test]] = [
    ("near-few", QuerySpec(geo=NEAR_800), near(800)),
    ("near-broad", QuerySpec(geo=NEAR_3000), near(3000)),
    ("near-typed", QuerySpec(type_expr="OffStreetParking", geo=NEAR_3000), both(typed("OffStreetParking"), near(3000))),
    (
        "near-and-q",
        QuerySpec(q="availableSpotNumber>=250", geo=NEAR_3000),
        both(num("availableSpotNumber", lambda v: v >= 250), near(3000)),
    ),
    ("within", QuerySpec(geo=WITHIN), within_box("location")),
    ("intersects-shapes", QuerySpec(geo=INTERSECTS_AREA), intersects_box("area")),
]


@pytest.fixture(scope="module")
def analyzed(big: tuple[TestClient, Starlette]) -> tuple[TestClient, Starlette]:
    """The big store with planner statistics (PostgreSQL: as autovacuum would soon have them; without
    them it probes attr_values_num per candidate when q and geo are combined)."""
    client, app = big
    if is_postgres(database_of(big)):
        assert client.portal is not None
        client.portal.call(app.state.services.store.refresh_statistics)
    return big


@pytest.mark.parametrize(
    "where", [(5, 0), (20, 7), (7, -3), (20, -1), (20, 0.5)], ids=["first", "second", "last", "end", "middle"]
)
@pytest.mark.parametrize(("name", "spec", "test"), GEO_PAGED, ids=[name for name, _, _ in GEO_PAGED])
def test_geo_pages_and_counts_are_exact(
    analyzed: tuple[TestClient, Starlette], name: str, spec: QuerySpec, test: Test, where: tuple[int, float]
) -> None:
    """Any page of a geo-query (near, within, intersects; with a type or q) is the slice of the
    brute-force result in creation order, whichever plan chose it, and its count is exact."""
    everything = expected(test)
    limit, at = where
    offset = int(len(everything) * at) if isinstance(at, float) else at % len(everything) if at < 0 else at
    result = store_query(analyzed, spec, limit=limit, offset=offset, count=True)
    assert [e["id"] for e in result.entities] == everything[offset : offset + limit]
    assert result.total == len(everything)
    assert result.has_more == (offset + limit < len(everything))


@pytest.mark.parametrize(
    "spec",
    [QuerySpec(geo=NEAR_800), QuerySpec(geo=NEAR_3000), QuerySpec(q="availableSpotNumber>=250", geo=NEAR_3000)],
    ids=["near-few", "near-broad", "near-and-q"],
)
def test_exact_geo_queries_page_in_sql(
    analyzed: tuple[TestClient, Starlette], decodes: Decodes, spec: QuerySpec
) -> None:
    """A near query around a Point over point geometries is exact in SQL on both back-ends: a page
    (with its count) decodes only the page's documents and one more."""
    result = store_query(analyzed, spec, limit=10, offset=30, count=True)
    assert len(result.entities) == 10
    assert decodes.count <= 11, decodes.count


@module_sqlite_only
def test_sqlite_shapes_are_tested_in_sql(big: tuple[TestClient, Starlette], decodes: Decodes) -> None:
    """SQLite tests polygons and lines exactly from their walk rows too: no document is decoded to
    judge them, only the page's."""
    result = store_query(big, QuerySpec(geo=INTERSECTS_AREA), limit=10, offset=30, count=True)
    assert result.total == len(expected(intersects_box("area")))
    assert decodes.count <= 11, decodes.count


def test_post_query_on_the_big_store(big: tuple[TestClient, Starlette]) -> None:
    body = {
        "type": "Query",
        "entities": [{"type": "OffStreetParking"}],
        "q": "availableSpotNumber>300",
        "geoQ": {"georel": "within", "geometry": "Polygon", "coordinates": [BOX_RING]},
    }
    response = big[0].post(BATCH + "/query", json=body, params={"limit": "1000", "count": "true"})
    assert response.status_code == 200, response.text
    wanted = expected(
        both(typed("OffStreetParking"), num("availableSpotNumber", lambda v: v > 300), within_box("location"))
    )
    assert [e["id"] for e in response.json()] == wanted
    assert response.headers["NGSILD-Results-Count"] == str(len(wanted))


# -- 2. the pushdown is used ------------------------------------------------------------------------
# The plan and VM-step tests read SQLite's own EXPLAIN QUERY PLAN and virtual machine: SQLite only.
def plan(big: tuple[TestClient, Starlette], spec: QuerySpec) -> list[str]:
    with sqlite_database(big) as db:
        source, where, params, order = _selection(db, "", entity_query(big, spec), now_key())
        rows = db.execute(f"EXPLAIN QUERY PLAN SELECT e.pk FROM {source} WHERE {where} ORDER BY {order}", params)
        return [row[3] for row in rows]


@pytest.mark.parametrize(
    ("spec", "index"),
    [
        (QuerySpec(type_expr="Streetlight"), "SEARCH t USING PRIMARY KEY (type=?)"),
        (QuerySpec(attrs=["label"]), "SEARCH x USING PRIMARY KEY (attr=?)"),
        (QuerySpec(q="label"), "SEARCH x USING PRIMARY KEY (attr=?)"),
        (QuerySpec(q="availableSpotNumber>450"), "SEARCH x USING COVERING INDEX attr_values_num (attr=? AND num>?)"),
        (QuerySpec(q="no2<=5"), "SEARCH x USING COVERING INDEX attr_values_num (attr=? AND num<?)"),
        (
            QuerySpec(q="availableSpotNumber==100..110"),
            "SEARCH x USING COVERING INDEX attr_values_num (attr=? AND num>? AND num<?)",
        ),
        (QuerySpec(q="availableSpotNumber==123"), "SEARCH x USING COVERING INDEX attr_values_num (attr=? AND num=?)"),
        (QuerySpec(q='label=="ytluaf"'), "SEARCH x USING COVERING INDEX attr_values_txt (attr=? AND txt=?)"),
        (QuerySpec(geo=NEAR_800), "SCAN r VIRTUAL TABLE INDEX 2:"),
        (QuerySpec(geo=WITHIN), "SEARCH w USING PRIMARY KEY (attr=?)"),  # a broad box: the walk table
        (QuerySpec(geo=NEAR_3000), "SEARCH w USING PRIMARY KEY (attr=?)"),
        (
            QuerySpec(ids=["urn:ngsi-ld:Thing:00042"]),
            "SEARCH e USING INDEX sqlite_autoindex_entities_1 (tenant=? AND id=?)",
        ),
    ],
    ids=["type", "attrs", "q-exists", "gt", "le", "range", "eq", "text", "near", "within", "near-broad", "ids"],
)
@module_sqlite_only
def test_plan_uses_the_side_table_index(big: tuple[TestClient, Starlette], spec: QuerySpec, index: str) -> None:
    steps = plan(big, spec)
    assert any(step.startswith(index) for step in steps), steps
    assert not any(step.startswith("SCAN e") for step in steps), steps
    assert not any(step.startswith(f"SCAN {table}") for table in ("x", "t") for step in steps)


@module_sqlite_only
def test_a_broad_filter_is_probed_per_candidate(big: tuple[TestClient, Starlette]) -> None:
    """A filter too many rows pass (here about 2,400) is not collected first: each candidate, in
    key order, probes attr_values by its key, so a page stops after its last match."""
    steps = plan(big, QuerySpec(q='status=="faulty"'))
    assert "SCAN e USING COVERING INDEX entities_listing" in steps, steps
    assert any(step.startswith("SEARCH x USING PRIMARY KEY (pk=? AND attr=?)") for step in steps), steps


@pytest.mark.parametrize(
    "spec",
    [
        QuerySpec(type_expr="Building"),
        QuerySpec(q="availableSpotNumber==123"),
        QuerySpec(q='label=="ytluaf"'),
        QuerySpec(geo=NEAR_800),
    ],
    ids=["type", "eq", "text", "near"],
)
@module_sqlite_only
def test_selective_filters_reach_entities_by_primary_key(big: tuple[TestClient, Starlette], spec: QuerySpec) -> None:
    """A selective side-table filter must drive the lookup of entities by pk, not be checked against
    every entity of the tenant (SEARCH e USING INDEX ...(tenant=?) walks them all)."""
    steps = plan(big, spec)
    assert any(step.startswith("SEARCH e USING COVERING INDEX entities_listing (pk=?") for step in steps), steps


def vm_steps(big: tuple[TestClient, Starlette], sql: str, params: list[Any]) -> int:
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    with sqlite_database(big) as db:
        db.set_progress_handler(tick, 1)
        db.execute(sql, params).fetchall()
    return count


@module_sqlite_only
def test_a_selective_filter_costs_a_fraction_of_a_full_pass(big: tuple[TestClient, Starlette]) -> None:
    """SQLite's own work (virtual machine steps) for a filter matching ~20 of 12,000 entities must be
    far below that of reading every entity of the tenant."""
    with sqlite_database(big) as db:
        source, where, params, order = _selection(
            db, "", entity_query(big, QuerySpec(q="availableSpotNumber==123")), now_key()
        )
    selective = vm_steps(big, f"SELECT e.pk FROM {source} WHERE {where} ORDER BY {order}", params)
    everything = vm_steps(
        big,
        "SELECT e.pk FROM entities e WHERE e.tenant = ? AND (e.expires_at IS NULL OR e.expires_at > ?)",
        ["", now_key()],
    )
    assert selective < everything / 10, (selective, everything)


class Decodes:
    """Counts the entity documents the store decodes (orjson.loads in the store's module)."""

    def __init__(self) -> None:
        self.count = 0

    def loads(self, data: bytes | str) -> Any:
        self.count += 1
        return orjson.loads(data)

    def dumps(self, value: Any) -> bytes:
        return orjson.dumps(value)


@pytest.fixture
def decodes(big: tuple[TestClient, Starlette], monkeypatch: pytest.MonkeyPatch) -> Decodes:
    counter = Decodes()
    if is_postgres(database_of(big)):
        import cityos.store.postgres.pages as postgres_pages
        import cityos.store.postgres.store as postgres_store

        monkeypatch.setattr(postgres_store, "orjson", counter)  # the Python-filtered cursor
        monkeypatch.setattr(postgres_pages, "orjson", counter)  # pages chosen in SQL
    else:
        monkeypatch.setattr(sqlite_query, "orjson", counter)
    return counter


def test_exact_queries_page_in_sql(big: tuple[TestClient, Starlette], decodes: Decodes) -> None:
    """type alone is exact in SQL: a page deep into the result decodes only the page (and one more)."""
    result = store_query(big, QuerySpec(type_expr="OffStreetParking"), limit=10, offset=3000, count=True)
    assert len(result.entities) == 10
    assert result.total == len(expected(typed("OffStreetParking")))
    assert decodes.count <= 11


def candidates(big: tuple[TestClient, Starlette], spec: QuerySpec) -> int:
    return len(sql_candidates(big, spec))


@pytest.mark.parametrize(("name", "spec", "test"), CASES, ids=CASE_IDS)
def test_only_the_sql_candidates_are_decoded(
    big: tuple[TestClient, Starlette], decodes: Decodes, name: str, spec: QuerySpec, test: Test
) -> None:
    """The Python predicate runs only on the candidates SQL let through (or, for an exact query,
    nothing runs in Python at all and only the matches are decoded)."""
    result = store_query(big, spec, count=True)
    assert result.total == len(expected(test))
    assert decodes.count == candidates(big, spec)


@pytest.mark.parametrize(
    "spec",
    [QuerySpec(q="availableSpotNumber==123"), QuerySpec(q='label=="ytluaf"'), QuerySpec(geo=NEAR_800)],
    ids=["eq", "text", "near"],
)
def test_selective_filters_decode_a_small_fraction(
    big: tuple[TestClient, Starlette], decodes: Decodes, spec: QuerySpec
) -> None:
    store_query(big, spec, count=True)
    assert decodes.count < SIZE // 20, decodes.count


def test_an_older_sqlite_file_gains_its_geo_walk_rows(tmp_path: Any) -> None:
    """A file made before entity_geo_walk gets its rows from the stored documents when opened, and
    its broad geo-queries (which walk that table) answer as before."""
    database = str(tmp_path / "older.db")
    city = CITY[:3000]
    with TestClient(create_app(Settings(database=database)), base_url="http://127.0.0.1:1026") as client:
        response = client.post(BATCH + "/upsert", json=city)
        assert response.status_code == 201, response.text[:500]
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("DROP TABLE entity_geo_walk")
        connection.commit()
    params = {"georel": "near;maxDistance==3000", "geometry": "Point", "coordinates": NEAR, "limit": "1000"}
    with TestClient(create_app(Settings(database=database)), base_url="http://127.0.0.1:1026") as client:
        response = client.get(ENTITIES, params=params)
        assert response.status_code == 200, response.text[:500]
        found = [entity["id"] for entity in response.json()]
    with contextlib.closing(sqlite3.connect(database)) as connection:
        walked = connection.execute("SELECT COUNT(*) FROM entity_geo_walk").fetchone()[0]
    assert walked == sum(("location" in e) + ("area" in e) for e in city)
    assert found == [e["id"] for e in city if near(3000)(e)]


@pytest.mark.parametrize("module_db_url", ["postgres"], indirect=True)
def test_postgres_migration_10_marks_the_points_writes_mark(big: tuple[TestClient, Starlette]) -> None:
    """Migration 10 classifies stored box rows from their documents as the write path does (points,
    polygons, lines, Madrid's points): rerun on the big city, it leaves every flag as written."""
    import asyncpg

    from cityos.store.postgres.schema import MIGRATIONS

    update = next(m for m in MIGRATIONS if m.version == 10).sql.split(";")[1]

    async def rerun() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        connection = await asyncpg.connect(database_of(big), timeout=5)
        try:
            flags = "SELECT pk, attr, point FROM entity_geo ORDER BY pk, attr, min_x"
            written = [tuple(r) for r in await connection.fetch(flags)]
            async with connection.transaction():
                await connection.execute("UPDATE entity_geo SET point = false")
                await connection.execute(update)
                migrated = [tuple(r) for r in await connection.fetch(flags)]
                raise _RollBack
        except _RollBack:
            return written, migrated
        finally:
            await connection.close()

    written, migrated = asyncio.run(rerun())
    assert 0 < sum(point for _, _, point in written) < len(written)  # both kinds are there
    assert migrated == written


class _RollBack(Exception):
    """Leaves a test's transaction without committing it."""
