"""Query pages after issue 15's fifth pass: each page read on the event loop's connection when it is
short (else on a reader thread, with the same answer), geo `near` tested in SQL with Python's
haversine to the bit, q and type expressions compiled once per text and context, paging links
from a template, and the query floor (benchmarks/query_floor.py) answering the same bodies."""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson
import pytest
from benchmarks import scale_reads
from benchmarks.entities import ENTITY_TYPE, random_point
from benchmarks.query_floor import Floor, prepare
from starlette.requests import Request
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.jsonld.termmap import TermMap, define_terms
from cityos.ngsild.querying import LINK_SAFE, pagination_links
from cityos.query.entity_query import QuerySpec, build_entity_query
from cityos.query.geo import EARTH_RADIUS, haversine
from cityos.settings import Settings
from cityos.store import sqlite_query

ENTITIES = "/ngsi-ld/v1/entities"
STORED = 300  # benchmark entities in the module's file


def test_sql_haversine_is_pythons_to_the_bit() -> None:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE w (min_x REAL, min_y REAL)")
    rng = random.Random(5)
    points = [(rng.uniform(-180, 180), rng.uniform(-90, 90)) for _ in range(20000)]
    points += [(rng.uniform(-8.7, -8.5), rng.uniform(41.1, 41.2)) for _ in range(20000)]
    connection.executemany("INSERT INTO w VALUES (?, ?)", points)
    sql = f"SELECT min_x, min_y, {sqlite_query.HAVERSINE.format(a='w')} FROM w"
    for lon, lat in [(-8.6, 41.16), (2, 48), (0.0, 0.0), (179.9, -89.0), (-8.61234, 41.15)]:
        phi = math.radians(lat)
        for x, y, distance in connection.execute(sql, (2 * EARTH_RADIUS, phi, math.cos(phi), float(lon))):
            assert distance == haversine(lon, lat, x, y)


def _old_links(request: Request, limit: int, offset: int, has_more: bool, base: str = "") -> list[str]:
    """pagination_links before the template (issue 15's fourth pass), the reference."""
    if limit == 0:
        return []

    def link(new_offset: int, rel: str) -> str:
        merged = {**dict(parse_qsl(base)), **request.query_params} if base else dict(request.query_params)
        params = {k: v for k, v in merged.items() if k not in ("limit", "offset", "entityMap")}
        params.update({"limit": str(limit), "offset": str(new_offset)})
        query = "&".join(f"{k}={quote(v, safe=LINK_SAFE)}" for k, v in sorted(params.items()))
        return f'<{request.url.path.rstrip("/")}?{query}>; rel="{rel}";type="application/json"'

    links = []
    if offset > 0:
        links.append(link(max(0, offset - limit), "prev"))
    if has_more:
        links.append(link(offset + limit, "next"))
    return links


@pytest.mark.parametrize(
    "params",
    [
        {"type": "T"},
        {"type": "T", "limit": "5", "offset": "7"},
        {"q": 'a>5;b=="x y"', "type": "A,B", "attrs": "a,b", "entityMap": "true"},
        {"georel": "near;maxDistance==500", "geometry": "Point", "coordinates": "[1,2]", "type": "é"},
        {"type": "T&U", "idPattern": "urn:.*#x", "count": "true"},
    ],
)
@pytest.mark.parametrize("path", [ENTITIES, ENTITIES + "/", "/ngsi-ld/v1/temporal/entities"])
def test_links_are_the_old_links(params: dict[str, str], path: str) -> None:
    scope = {"type": "http", "path": path, "query_string": urlencode(params).encode(), "headers": []}
    scope["server"] = ("127.0.0.1", 1026)
    for limit, offset, has_more in [(20, 0, True), (20, 0, False), (5, 7, True), (5, 7, False), (0, 3, True)]:
        for base in ("", "type=Old&q=z%3E1&limit=3"):
            request = Request(dict(scope))
            expected = _old_links(Request(dict(scope)), limit, offset, has_more, base)
            assert pagination_links(request, limit, offset, has_more, base) == expected


def test_a_kept_q_follows_its_context() -> None:
    terms = TermMap()
    define_terms(terms, {"@vocab": "https://a.example/"})
    first = build_entity_query(QuerySpec(type_expr="T", q="speed>5"), terms.expand)
    again = build_entity_query(QuerySpec(type_expr="T", q="speed>5"), terms.expand)
    assert again.predicate is first.predicate  # compiled once for this text and context
    assert first.value_filters[0].attr == "https://a.example/speed"
    define_terms(terms, {"speed": "https://b.example/velocity"})  # a new generation: compiled again
    renamed = build_entity_query(QuerySpec(type_expr="T", q="speed>5"), terms.expand)
    assert renamed.value_filters[0].attr == "https://b.example/velocity"
    entity = {"id": "urn:x:1", "type": ["https://a.example/T"], "attrs": {}}
    entity["attrs"]["https://b.example/velocity"] = [{"type": "Property", "value": 7}]
    assert renamed.predicate is not None and renamed.predicate(entity)
    assert first.predicate is not None and not first.predicate(entity)
    other = TermMap()  # another context: its own compiled q
    define_terms(other, {"@vocab": "https://c.example/"})
    assert build_entity_query(QuerySpec(q="speed>5"), other.expand).value_filters[0].attr == "https://c.example/speed"


def _requests(rng: random.Random) -> Iterator[str]:
    """Scenario 5's pages over the module's file, with their variants: counts, wider circles, q ranges."""
    for _ in range(6):
        yield scale_reads.request_of("query_offset", STORED, rng)[1]
        yield scale_reads.request_of("q_offset", STORED, rng)[1]
        yield scale_reads.request_of("geo", STORED, rng)[1]
        lon, lat = random_point(rng)
        near = {"georel": "near;maxDistance==3000", "geometry": "Point"}
        params = {"type": ENTITY_TYPE, **near, "coordinates": f"[{lon},{lat}]", "count": "true", "limit": "7"}
        yield ENTITIES + "?" + urlencode(params)
    yield scale_reads.request_of("query", STORED, rng)[1]
    yield scale_reads.request_of("q_count", STORED, rng)[1]
    yield ENTITIES + "?" + urlencode({"type": ENTITY_TYPE, "q": "availableSpotNumber==10..90", "offset": "3"})


@pytest.fixture(scope="module")
def benchmark_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    database = str(tmp_path_factory.mktemp("pages") / "city.db")
    asyncio.run(scale_reads.build(database, STORED))
    return database


def test_pages_on_the_loop_equal_pages_on_a_reader(benchmark_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every page once on the loop (as served), once forced onto a reader thread (the loop gives up
    at its first look), once with the geo-query tested in Python: the same bytes and headers."""
    answers: dict[str, list[tuple[bytes, Any]]] = {}
    given_up: list[int] = []
    original = sqlite_query.SQLiteQueries._on_loop

    def counted(self: Any, run: Any) -> Any:
        result = original(self, run)
        given_up.append(result is None)
        return result

    monkeypatch.setattr(sqlite_query.SQLiteQueries, "_on_loop", counted)
    for way in ("loop", "reader", "python geo"):
        sqlite_query._slow_shapes.clear()
        monkeypatch.setattr(sqlite_query, "LOOP_CHECKS", 0 if way == "reader" else 100)
        monkeypatch.setattr(sqlite_query, "LOOP_STEPS", 1 if way == "reader" else 1000)
        if way == "python geo":  # the near test back in Python (geo_point), as before the SQL haversine
            monkeypatch.setattr(sqlite_query, "_geo_exact", _python_geo_exact)
        given_up.clear()
        with TestClient(create_app(Settings(database=benchmark_file, log_level="warning"))) as client:
            for target in _requests(random.Random(3)):
                answer = client.get(target)
                assert answer.status_code == 200, answer.text
                headers = (answer.headers.get_list("link"), answer.headers.get("ngsild-results-count"))
                answers.setdefault(target, []).append((answer.content, headers))
        assert given_up and (all(given_up) if way == "reader" else given_up.count(True) <= 3), (way, given_up)
    for target, seen in answers.items():
        assert seen[0] == seen[1] == seen[2], target
    assert any(len(orjson.loads(seen[0][0])) == 20 for seen in answers.values())


def _python_geo_exact(query: Any, alias: str) -> tuple[str, list[Any]]:
    key = query.geo.key
    point = f"geo_point(?, {alias}.min_x, {alias}.min_y)"
    return f"(CASE WHEN {alias}.shapes IS NULL THEN {point} ELSE geo_shapes(?, {alias}.shapes) END)", [key, key]


def test_the_floor_answers_the_same_bodies(benchmark_file: str, tmp_path: Path) -> None:
    """benchmarks/query_floor.py is the floor of these very requests: the same entities, in the same
    order, byte for byte (it leaves out headers and checks, not content)."""
    floor_file = tmp_path / "floor.db"
    floor_file.write_bytes(Path(benchmark_file).read_bytes())
    assert prepare(str(floor_file)) == STORED
    floor = Floor(str(floor_file))
    rng = random.Random(8)
    targets = [scale_reads.request_of(kind, STORED, rng)[1] for kind in ("query", "query_offset", "q", "geo") * 3]
    targets.append(ENTITIES + "?type=OffStreetParking&q=availableSpotNumber%3E400&limit=20&offset=4")
    with TestClient(create_app(Settings(database=str(floor_file), log_level="warning"))) as client:
        for target in targets:
            ours = client.get(target)
            assert ours.status_code == 200
            assert floor.page(target.partition("?")[2].encode()) == ours.content, target
