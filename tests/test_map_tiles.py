"""GET /tiles/{z}/{x}/{y}.mvt on both back-ends: tiles decoded with an independent decoder
(tests/mvt_decode.py, Google's protobuf runtime) and checked against the stored entities."""

from __future__ import annotations

import itertools
import math
import random
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from access_helpers import DEFAULT, secured_app
from cityos.app import create_app
from cityos.mapdata import changes
from cityos.mapdata.cache import TILES_PER_CHANGE, Cached, TileCache
from cityos.mapdata.tiles import MAX_ZOOM, Tile
from cityos.query.pushdown import ValueFilter
from cityos.settings import Settings
from mvt_decode import decode

MAX_FEATURES = 40
BATCH = "/ngsi-ld/v1/entityOperations/upsert"
JSON = {"Content-Type": "application/json"}


def parking(i: int, rng: random.Random) -> dict[str, Any]:
    lon, lat = round(rng.uniform(-8.62, -8.60), 6), round(rng.uniform(41.14, 41.16), 6)
    return {
        "id": f"urn:ngsi-ld:OffStreetParking:t{i}",
        "type": "OffStreetParking",
        "availableSpotNumber": {"type": "Property", "value": i},
        "totalSpotNumber": {"type": "Property", "value": 500},
        "status": {"type": "Property", "value": "open" if i % 2 else "closed"},
        "name": {"type": "Property", "value": "x" * 500},  # not a display attribute: never in a tile
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
    }


def building(i: int) -> dict[str, Any]:
    west, south = -8.615 + i * 0.002, 41.145
    ring = [[west, south], [west + 0.001, south], [west + 0.001, south + 0.001], [west, south + 0.001], [west, south]]
    return {
        "id": f"urn:ngsi-ld:Building:t{i}",
        "type": "Building",
        "height": {"type": "Property", "value": 10.5 * (i + 1)},
        "location": {"type": "GeoProperty", "value": {"type": "Polygon", "coordinates": [ring]}},
    }


def station(i: int, rng: random.Random) -> dict[str, Any]:
    lon, lat = round(rng.uniform(-8.62, -8.60), 6), round(rng.uniform(41.14, 41.16), 6)
    return {
        "id": f"urn:ngsi-ld:AirQualityObserved:t{i}",
        "type": "AirQualityObserved",
        "pm25": {"type": "Property", "value": 5.0 * i},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}},
    }


def city() -> list[dict[str, Any]]:
    rng = random.Random(18)
    return [
        *(parking(i, rng) for i in range(150)),
        *(building(i) for i in range(3)),
        *(station(i, rng) for i in range(10)),
    ]


CITY = city()


def tile_of(lon: float, lat: float, z: int) -> Tile:
    n = 1 << z
    return Tile(z, int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n))


def inside(entity: dict[str, Any], tile: Tile) -> bool:
    west, south, east, north = tile.bounds()
    geometry = entity["location"]["value"]
    points = [geometry["coordinates"]] if geometry["type"] == "Point" else geometry["coordinates"][0]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return max(xs) >= west and min(xs) <= east and max(ys) >= south and min(ys) <= north


def whole() -> Tile:
    """The deepest tile holding the whole test city."""
    return next(t for z in range(16, 0, -1) if all(inside(e, t := tile_of(-8.61, 41.15, z)) for e in CITY))


def url(tile: Tile) -> str:
    return f"/tiles/{tile.z}/{tile.x}/{tile.y}.mvt"


@pytest.fixture(scope="module")
def client(module_db_url: str) -> Iterator[TestClient]:
    app = create_app(Settings(database=module_db_url, tile_max_features=MAX_FEATURES))
    with TestClient(app, base_url="http://127.0.0.1:1026") as test_client:
        assert test_client.post(BATCH, json=CITY, headers=JSON).status_code == 201
        yield test_client


def test_a_tile_draws_each_entity_it_holds(client: TestClient) -> None:
    checked = 0
    for entity in CITY[::7]:
        coordinates = entity["location"]["value"]["coordinates"]
        lon, lat = coordinates if entity["location"]["value"]["type"] == "Point" else coordinates[0][0]
        tile = tile_of(lon, lat, 17)
        response = client.get(url(tile))
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/vnd.mapbox-vector-tile"
        assert response.headers["x-tile-layer"] == "entities"
        layer = decode(response.content)["entities"]
        assert layer["version"] == 2 and layer["extent"] == 4096
        expected = {e["id"]: e for e in CITY if inside(e, tile)}
        drawn = {f["properties"]["id"]: f for f in layer["features"]}
        assert set(drawn) == set(expected)
        for entity_id, feature in drawn.items():
            stored = expected[entity_id]
            props = feature["properties"]
            assert props["type"] == stored["type"]
            assert "name" not in props
            for name in ("availableSpotNumber", "totalSpotNumber", "status", "pm25", "height"):
                if name in stored:
                    assert props[name] == stored[name]["value"]
            if stored["location"]["value"]["type"] == "Point":
                assert feature["type"] == 1
                ((x, y),) = feature["paths"][0]
                assert -1 <= x <= 4097 and -1 <= y <= 4097  # on the tile (its edges included)
            else:
                assert feature["type"] == 3 and len(feature["paths"][0]) == 5  # a closed ring
        checked += 1
    assert checked > 10


def test_a_building_is_a_polygon_with_its_height(client: TestClient) -> None:
    tile = tile_of(-8.6145, 41.1455, 16)
    layer = decode(client.get(url(tile), params={"type": "Building"}).content)["entities"]
    [feature] = [f for f in layer["features"] if f["properties"]["id"] == "urn:ngsi-ld:Building:t0"]
    assert feature["type"] == 3 and feature["properties"]["height"] == 10.5
    ring = feature["paths"][0]
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring))
    assert area > 0  # the exterior ring is clockwise with y down (MVT 2.1, 4.3.4.4)


def test_a_crowded_tile_has_clusters_that_count_every_entity(client: TestClient) -> None:
    tile = whole()
    response = client.get(url(tile))
    assert response.headers["x-tile-layer"] == "clusters"
    layers = decode(response.content)
    assert set(layers) == {"clusters"}
    clusters = layers["clusters"]["features"]
    expected = [e for e in CITY if inside(e, tile)]
    assert sum(f["properties"]["count"] for f in clusters) == len(expected) == len(CITY)
    assert len(clusters) <= 16 * 16
    types = {t for f in clusters for t in f["properties"]["types"].split(",")}
    assert types == {"OffStreetParking", "Building", "AirQualityObserved"}
    assert all(0 <= x <= 4096 and 0 <= y <= 4096 for f in clusters for (x, y) in f["paths"][0])


def test_type_and_q_filter_the_tile(client: TestClient) -> None:
    tile = whole()
    stations = decode(client.get(url(tile), params={"type": "AirQualityObserved", "q": "pm25>20"}).content)
    ids = {f["properties"]["id"] for f in stations["entities"]["features"]}
    assert ids == {f"urn:ngsi-ld:AirQualityObserved:t{i}" for i in range(5, 10)}
    several = decode(client.get(url(tile), params={"type": "Building,AirQualityObserved"}).content)
    assert len(several["entities"]["features"]) == 13
    clustered = decode(
        client.get(url(tile), params={"type": "OffStreetParking", "q": "availableSpotNumber>=100"}).content
    )
    assert sum(f["properties"]["count"] for f in clustered["clusters"]["features"]) == 50


def test_cache_headers_and_a_revalidation(client: TestClient) -> None:
    tile = tile_of(-8.61, 41.15, 15)
    first = client.get(url(tile))
    assert first.headers["cache-control"].startswith("private, max-age=")
    again = client.get(url(tile), headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/tiles/23/0/0.mvt", "z must be"),
        ("/tiles/-1/0/0.mvt", "z must be"),
        ("/tiles/2/4/0.mvt", "x and y"),
        ("/tiles/2/0/-1.mvt", "x and y"),
        ("/tiles/a/0/0.mvt", "integers"),
        ("/tiles/99999999999999999999/0/0.mvt", "z must be"),
        ("/tiles/1/0/0.mvt?q=((", "q"),
        ("/tiles/1/0/0.mvt?q=a%3D%3D1%7C", "q"),
        ("/tiles/1/0/0.mvt?type=%3B%3B", "type"),
        ("/tiles/1/0/0.mvt?bbox=1", "bbox"),
    ],
)
def test_bad_input_is_a_400(client: TestClient, path: str, detail: str) -> None:
    response = client.get(path)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert detail in response.json()["detail"]


def test_a_restricted_caller_sees_only_what_it_may_read(db_url: str) -> None:
    with secured_app(Settings(database=db_url, tile_max_features=MAX_FEATURES)) as city_app:
        admin = city_app.principal("admin", admin=True)
        reader = city_app.principal(
            "reader", types={DEFAULT + "Building", DEFAULT + "AirQualityObserved"}, hidden={DEFAULT + "height"}
        )
        client = city_app.client
        assert client.post(BATCH, json=CITY, headers={**JSON, **city_app.as_(admin)}).status_code == 201
        tile = whole()
        seen = decode(client.get(url(tile), headers=city_app.as_(reader)).content)
        features = seen["entities"]["features"]
        assert {f["properties"]["type"] for f in features} == {"Building", "AirQualityObserved"}
        assert len(features) == 13 and all("height" not in f["properties"] for f in features)
        everything = decode(client.get(url(tile), headers=city_app.as_(admin)).content)
        assert sum(f["properties"]["count"] for f in everything["clusters"]["features"]) == len(CITY)
        # more than drawn one by one, under a policy judged in Python: counted from the documents
        services = client.app.state.services  # type: ignore[attr-defined]
        services.settings = Settings(database=db_url, tile_max_features=5)
        few = decode(client.get(url(tile), headers=city_app.as_(reader)).content)
        assert sum(f["properties"]["count"] for f in few["clusters"]["features"]) == 13
        assert {t for f in few["clusters"]["features"] for t in f["properties"]["types"].split(",")} == {
            "Building",
            "AirQualityObserved",
        }
        # a q-filtered view's counts kept for the admin (mapdata/kept_cells.py) never answer a
        # restricted caller: hers are counted by the store under her policy
        kept = client.app.state["changes"].kept  # type: ignore[attr-defined]
        low = tile_of(-8.61, 41.15, 10)
        assert all(inside(e, low) for e in CITY)
        time.sleep(changes.RETOUCH + 0.1)
        params = {"type": "AirQualityObserved", "q": "pm25>10"}
        counted = decode(client.get(url(low), params=params, headers=city_app.as_(admin)).content)
        assert sum(f["properties"]["count"] for f in counted["clusters"]["features"]) == 7
        assert (kept.reads, kept.hits) == (1, 0)
        parker = city_app.principal("parker", types={DEFAULT + "OffStreetParking"})
        hidden = client.get(url(low), params=params, headers=city_app.as_(parker))
        assert hidden.status_code == 200 and hidden.content == b""
        reader_sees = decode(client.get(url(low), params=params, headers=city_app.as_(reader)).content)
        assert sum(f["properties"]["count"] for f in reader_sees["clusters"]["features"]) == 7
        assert (kept.reads, kept.hits) == (1, 0)


def test_a_cached_tile_is_drawn_again_when_an_entity_in_it_changes(client: TestClient) -> None:
    cache = client.app.state.changes.cache  # type: ignore[attr-defined]
    spot = [-8.5001, 41.3001]  # away from the test city
    tile = tile_of(*spot, 17)

    def ids_and_spots() -> dict[str, Any]:
        layer = decode(client.get(url(tile)).content).get("entities", {"features": []})
        return {f["properties"]["id"]: f["properties"].get("availableSpotNumber") for f in layer["features"]}

    assert ids_and_spots() == {}
    hits = cache.hits
    assert ids_and_spots() == {} and cache.hits == hits + 1  # served from the cache
    entity = {**parking(999, random.Random(1)), "id": "urn:ngsi-ld:OffStreetParking:moving"}
    entity["location"] = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": spot}}
    assert client.post("/ngsi-ld/v1/entities", json=entity, headers=JSON).status_code == 201
    try:
        assert ids_and_spots() == {"urn:ngsi-ld:OffStreetParking:moving": 999}
        attrs = "/ngsi-ld/v1/entities/urn:ngsi-ld:OffStreetParking:moving/attrs"
        patch = {"availableSpotNumber": {"type": "Property", "value": 7}}
        assert client.patch(attrs, json=patch, headers=JSON).status_code == 204
        assert ids_and_spots() == {"urn:ngsi-ld:OffStreetParking:moving": 7}
        moved = {"location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [-8.4, 41.4]}}}
        assert client.patch(attrs, json=moved, headers=JSON).status_code == 204
        assert ids_and_spots() == {}
    finally:
        client.delete("/ngsi-ld/v1/entities/urn:ngsi-ld:OffStreetParking:moving")


def test_cached_clusters_outlive_a_new_value_but_not_a_move(client: TestClient) -> None:
    cache = client.app.state.changes.cache  # type: ignore[attr-defined]
    tile = whole()

    def counted() -> int:
        layer = decode(client.get(url(tile)).content)["clusters"]
        return sum(f["properties"]["count"] for f in layer["features"])

    assert counted() == len(CITY)
    hits = cache.hits
    attrs = f"/ngsi-ld/v1/entities/{CITY[0]['id']}/attrs"
    patch = {"availableSpotNumber": {"type": "Property", "value": 1234}}
    assert client.patch(attrs, json=patch, headers=JSON).status_code == 204
    assert counted() == len(CITY) and cache.hits == hits + 1  # the counts cannot have changed
    far = {"location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [10.0, 50.0]}}}
    assert client.patch(attrs, json=far, headers=JSON).status_code == 204
    try:
        assert counted() == len(CITY) - 1 and cache.hits == hits + 1  # drawn again: it moved away
    finally:
        back = {"location": CITY[0]["location"], "availableSpotNumber": CITY[0]["availableSpotNumber"]}
        assert client.patch(attrs, json=back, headers=JSON).status_code == 204
    assert counted() == len(CITY)


def test_clusters_of_one_type_count_each_entity_in_the_tile_of_its_point(db_url: str) -> None:
    """A city of one type: on SQLite, the unfiltered tile reads the cell-key index alone and the
    tile with `type` joins the filters; both count each entity in the tile that holds its point, in
    the zoom z+4 tile (cell) that holds it. Another tenant's entities never count."""
    rng = random.Random(7)
    parkings = [parking(i, rng) for i in range(120)]
    with TestClient(create_app(Settings(database=db_url, tile_max_features=10, tile_cache_mb=0))) as client:
        assert client.post(BATCH, json=parkings, headers=JSON).status_code == 201
        other = {**parking(500, rng), "id": "urn:ngsi-ld:OffStreetParking:elsewhere"}
        tenant = {**JSON, "NGSILD-Tenant": "other"}
        tiles = [whole(), tile_of(-8.61, 41.15, whole().z + 1), tile_of(-8.61, 41.15, whole().z + 2)]
        for index, tile in enumerate([*tiles, tiles[0]]):
            if index == len(tiles):  # then with an entity of another tenant in the tile
                assert client.post(BATCH, json=[other], headers=tenant).status_code == 201
            points = [p["location"]["value"]["coordinates"] for p in parkings]
            inside_tile = [pt for pt in points if tile_of(pt[0], pt[1], tile.z) == tile]
            cells: dict[Tile, int] = {}
            for pt in inside_tile:
                cell = tile_of(pt[0], pt[1], tile.z + 4)
                cells[cell] = cells.get(cell, 0) + 1
            for query in ("", "?type=OffStreetParking"):
                response = client.get(url(tile) + query)
                assert response.headers["x-tile-layer"] == "clusters"
                features = decode(response.content)["clusters"]["features"]
                assert sorted(f["properties"]["count"] for f in features) == sorted(cells.values())
                assert {f["properties"]["types"] for f in features} == {"OffStreetParking"}
                for feature in features:  # each cluster's point is in the cell whose count it carries
                    (px, py) = feature["paths"][0][0]
                    col, row = min(int(px * 16 / 4096), 15), min(int(py * 16 / 4096), 15)
                    cell = Tile(tile.z + 4, tile.x * 16 + col, tile.y * 16 + row)
                    assert feature["properties"]["count"] == cells[cell]


def test_clusters_by_type_read_the_rows_types_and_follow_a_change_of_type(db_url: str) -> None:
    """A city of several types: a tile filtered by type (its `type`, then with a `q`) counts the
    entities of that type in each cell; an entity whose type changes moves to its new type's
    counts; once an entity has two types, a filter by its second one still counts it."""
    rng = random.Random(11)
    parkings = [parking(i, rng) for i in range(60)]
    stations = [station(i, rng) for i in range(40)]
    tile = whole()

    def counted(client: TestClient, query: str) -> tuple[int, set[str]]:
        """(the entities counted, the types named) of the tile's clusters."""
        response = client.get(url(tile) + query)
        assert response.headers["x-tile-layer"] == "clusters"
        features = decode(response.content)["clusters"]["features"]
        kinds = {k for f in features for k in f["properties"]["types"].split(",")}
        return sum(f["properties"]["count"] for f in features), kinds

    def cells(entities: list[dict[str, Any]]) -> list[int]:
        return cell_counts(entities, tile)

    parking_type, station_type = "OffStreetParking", "AirQualityObserved"
    with TestClient(create_app(Settings(database=db_url, tile_max_features=10, tile_cache_mb=0))) as client:
        assert client.post(BATCH, json=[*parkings, *stations], headers=JSON).status_code == 201
        assert counted(client, "") == (100, {parking_type, station_type})
        assert counted(client, f"?type={station_type}") == (40, {station_type})
        typed = decode(client.get(url(tile) + f"?type={station_type}").content)["clusters"]["features"]
        assert sorted(f["properties"]["count"] for f in typed) == cells(stations)
        assert counted(client, f"?type={station_type}&q=pm25>=100") == (20, {station_type})
        assert counted(client, f"?type={parking_type},{station_type}") == (100, {parking_type, station_type})
        # a station becomes a parking site: its row's type follows
        moved = {**parkings[0], "id": stations[0]["id"], "location": stations[0]["location"]}
        assert client.post(BATCH + "?options=replace", json=[moved], headers=JSON).status_code == 204
        assert counted(client, f"?type={station_type}") == (39, {station_type})
        assert counted(client, f"?type={parking_type}") == (61, {parking_type})
        # an entity of two types is counted by either
        twice = {**stations[1], "type": [station_type, parking_type]}
        assert client.post(BATCH + "?options=replace", json=[twice], headers=JSON).status_code == 204
        assert counted(client, f"?type={parking_type}")[0] == 62
        assert counted(client, f"?type={station_type}")[0] == 39


def test_a_file_of_schema_7_gains_its_rows_types(tmp_path: Any) -> None:
    """Schema step 8 on a file of step 7 (walk rows with cell keys, no types): every row gets its
    entity's first type, the indexes are replaced, and a tile filtered by type counts them all."""
    path = tmp_path / "seven.db"
    with TestClient(create_app(Settings(database=str(path), tile_max_features=10, tile_cache_mb=0))) as client:
        assert client.post(BATCH, json=CITY, headers=JSON).status_code == 201
    with sqlite3.connect(path) as connection:  # back to step 7's layout
        connection.execute("DROP INDEX entity_geo_walk_typed")
        connection.execute("ALTER TABLE entity_geo_walk DROP COLUMN type")
        connection.execute(
            "CREATE INDEX entity_geo_walk_cell ON entity_geo_walk (attr, cell, min_x, max_x, min_y, max_y)"
        )
        connection.execute("PRAGMA user_version = 7")
    with TestClient(create_app(Settings(database=str(path), tile_max_features=10, tile_cache_mb=0))) as client:
        typed = decode(client.get(url(whole()) + "?type=OffStreetParking").content)["clusters"]["features"]
        assert sum(f["properties"]["count"] for f in typed) == 150
        every = decode(client.get(url(whole())).content)["clusters"]["features"]
        assert sum(f["properties"]["count"] for f in every) == len(CITY)
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] >= 8
        assert connection.execute("SELECT count(*) FROM entity_geo_walk WHERE type IS NULL").fetchone()[0] == 0
        listed = connection.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'entity_geo_walk'")
        indexes = {r[0] for r in listed}
        assert "entity_geo_walk_typed" in indexes and "entity_geo_walk_cell" not in indexes


def test_a_change_bumps_the_tiles_of_its_box_at_every_zoom_only_while_a_tile_may_be_stale() -> None:
    """TileCache.touched: each zoom's tiles that a box meets (the tile of a point at every zoom, a
    whole zoom past TILES_PER_CHANGE tiles) get a new generation, once per box; with no tile kept
    and none being drawn (idle) nothing is bumped, since no stamp exists that could be stale."""
    cache = TileCache(1 << 20, 30.0)
    point = (-8.6107, 41.1496, -8.6107, 41.1496)
    assert cache.idle and cache.touched("", [point, point]) is None
    assert all(cache.stamp("", *_tile_xy(point, z)) == (0, 0, 0) for z in range(MAX_ZOOM + 1))
    cache.drawing = 1  # a tile being drawn has taken its stamps: a change now bumps
    stamps = {z: cache.stamp("", *_tile_xy(point, z)) for z in range(MAX_ZOOM + 1)}
    assert cache.touched("", [point, point], layout=False) is not None
    for z in range(MAX_ZOOM + 1):  # one bump per zoom although the box came twice (before and after)
        everything, zoom, tile = stamps[z]
        assert cache.stamp("", *_tile_xy(point, z)) == (everything, zoom, tile + 1)
        assert cache.stamp("", *_tile_xy(point, z), layout_only=True) == (0, 0, 0)  # no layout change
    cache.drawing = 0
    cache.put(("key",), Cached(b"x", "entities", '"e"', (0, 0, 0), 0.0))  # a kept tile: not idle
    district = (-8.70, 41.10, -8.55, 41.20)  # many tiles at high zooms: the whole zoom is bumped
    cache.touched("other", [district])  # another tenant's tiles: the point's bumps are not there
    for z in range(MAX_ZOOM + 1):
        x0, y1 = _tile_xy((district[0], district[1]), z)[1:]
        x1, y0 = _tile_xy((district[2], district[3]), z)[1:]
        if (x1 - x0 + 1) * (y1 - y0 + 1) > TILES_PER_CHANGE:
            assert cache.stamp("other", z, x0, y0)[1:] == (1, 0)
        else:
            tiles = [(x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)]
            assert all(cache.stamp("other", z, x, y) == (0, 0, 1) for x, y in tiles)
            assert cache.stamp("other", z, x1 + 1, y0) == (0, 0, 0)  # the next tile east: untouched


def _tile_xy(point: tuple[float, ...], z: int) -> tuple[int, int, int]:
    tile = tile_of(point[0], point[1], z)
    return z, tile.x, tile.y


def test_each_change_is_touched_again_once_it_has_surely_committed(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tile drawn between a change's first touch (in its transaction) and its commit holds the old
    value under the new generation: every change is touched again RETOUCH to RETOUCH + GATHER
    seconds later, the changes of that time in one batch of the loop's timer."""
    monkeypatch.setattr(changes, "RETOUCH", 0.3)
    monkeypatch.setattr(changes, "GATHER", 0.05)
    cache = client.app.state.changes.cache  # type: ignore[attr-defined]
    client.get(url(whole()))  # a kept tile: the cache is not idle
    assert not cache.idle
    point = [-8.3001, 41.5001]  # away from the test city: only this test's changes touch its tiles
    entity = {**parking(998, random.Random(2)), "id": "urn:ngsi-ld:OffStreetParking:retouched"}
    entity["location"] = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": point}}
    assert client.post("/ngsi-ld/v1/entities", json=entity, headers=JSON).status_code == 201
    try:
        tiles = [_tile_xy((point[0], point[1]), z) for z in (12, 18, 22)]
        before = [2, 2, 2]  # the create's own touches, first and second
        started = time.monotonic()
        while [cache.stamp("", *t)[2] for t in tiles] != before:
            assert time.monotonic() - started < 5, "the create's second touch never came"
            time.sleep(0.02)
        for value in (1, 2, 3):
            last_sent = time.monotonic()  # the last change's listener runs after this
            patch = {"availableSpotNumber": {"type": "Property", "value": value}}
            path = f"/ngsi-ld/v1/entities/{entity['id']}/attrs"
            assert client.patch(path, json=patch, headers=JSON).status_code == 204
        # the three first touches are done (the first change's second may be too, on a slow machine)
        assert all(b + 3 <= cache.stamp("", *t)[2] <= b + 6 for t, b in zip(tiles, before, strict=True))
        while [cache.stamp("", *t)[2] for t in tiles] != [b + 6 for b in before]:
            assert time.monotonic() - last_sent < 5, "the second touches never came"
            time.sleep(0.02)
        assert time.monotonic() - last_sent >= 0.3  # never before RETOUCH after the change
        time.sleep(0.5)
        assert [cache.stamp("", *t)[2] for t in tiles] == [b + 6 for b in before]  # once each
    finally:
        client.delete(f"/ngsi-ld/v1/entities/{entity['id']}")


def test_a_crowded_tile_with_a_q_counts_the_matching_entities_per_cell(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tile of more than SMALL_TYPE rows with one q comparison: its rows are matched to the pks
    the value index gives (SQLite: the list, sqlite_grid._valued; PostgreSQL: a semi-join read from
    the index alone, grid.PostgresGrid._valued), and the test checks that path was taken; each
    operator counts, per cell, exactly the entities that meet it, as a probe of each row would (an
    existence, and on SQLite a regexp, which the value index cannot answer, still probe). A quarter
    of the tile (few rows): PostgreSQL probes attr_values per row, also in the general statement
    (an entity of another tenant stored: no index-only path)."""
    from cityos.store import sqlite_grid
    from cityos.store.base import EntityQuery
    from cityos.store.postgres import grid as grid_module
    from cityos.store.postgres.grid import CROWDED, PostgresGrid
    from cityos.store.postgres.sql import Params, value_clause, where
    from cityos.store.sqlite_grid import SMALL_TYPE

    postgres = db_url.startswith("postgresql")
    taken: list[bool] = []  # the value index's path answered the tile
    probed: set[bool] = set()  # PostgreSQL: each value clause a probe per row (a tile of few rows)
    if postgres:
        answer = PostgresGrid._valued

        async def valued(self: PostgresGrid, *args: Any) -> Any:
            rows = await answer(self, *args)
            taken.append(rows is not None)
            return rows

        def recorded(value_filter: ValueFilter, p: Params, pk: str = "e.pk", probe: bool = False) -> str:
            probed.add(probe)
            return value_clause(value_filter, p, pk=pk, probe=probe)

        def general(tenant: str, query: EntityQuery, now: str, p: Params, probe: bool = False) -> str:
            if probe:  # the general statement's q, probed per row
                probed.add(probe)
            return where(tenant, query, now, p, probe=probe)

        monkeypatch.setattr(PostgresGrid, "_valued", valued)
        monkeypatch.setattr(grid_module, "value_clause", recorded)
        monkeypatch.setattr(grid_module, "where", general)
    else:
        listed = sqlite_grid._valued

        def listing(*args: Any) -> Any:
            rows = listed(*args)
            taken.append(rows is not None)
            return rows

        monkeypatch.setattr(sqlite_grid, "_valued", listing)

    rng = random.Random(23)
    parkings = [parking(i, rng) for i in range(max(SMALL_TYPE, CROWDED) + 500)]
    tile = whole()
    # a quarter of it, of fewer rows than SMALL_TYPE and CROWDED: each row probed for the q
    quarter = max(
        (Tile(tile.z + 1, 2 * tile.x + dx, 2 * tile.y + dy) for dx in (0, 1) for dy in (0, 1)),
        key=lambda t: sum(inside(p, t) for p in parkings),
    )
    assert 100 < sum(inside(p, quarter) for p in parkings) <= min(SMALL_TYPE, CROWDED)

    cases = {
        "availableSpotNumber>1000": lambda p: p["availableSpotNumber"]["value"] > 1000,
        "availableSpotNumber<=40": lambda p: p["availableSpotNumber"]["value"] <= 40,
        "availableSpotNumber==7,2001": lambda p: p["availableSpotNumber"]["value"] in (7, 2001),
        "availableSpotNumber==100..199": lambda p: 100 <= p["availableSpotNumber"]["value"] <= 199,
        'status=="open"': lambda p: p["status"]["value"] == "open",
        "status~=op.*": lambda p: p["status"]["value"].startswith("op"),
        "status": lambda p: True,
        'availableSpotNumber>1000;status=="open"': lambda p: (
            p["availableSpotNumber"]["value"] > 1000 and p["status"]["value"] == "open"
        ),
    }
    # tile_q_views=0: the store counts each tile (the kept counts, tests/test_map_kept_cells.py, would
    # answer the second ask of a view)
    settings = Settings(database=db_url, tile_max_features=10, tile_cache_mb=0, tile_q_views=0)
    with TestClient(create_app(settings)) as client:
        for start in range(0, len(parkings), 500):
            assert client.post(BATCH, json=parkings[start : start + 500], headers=JSON).status_code == 201
        # then with an entity of another tenant: the general statement (PostgreSQL: its q probed per
        # row in the quarter)
        other = ({**parkings[0], "id": "urn:ngsi-ld:OffStreetParking:elsewhere"}, {**JSON, "NGSILD-Tenant": "other"})
        for alone, (q, meets), asked in itertools.product((True, False), cases.items(), (tile, quarter)):
            if not alone and (q, asked) == (next(iter(cases)), tile):
                assert client.post(BATCH, json=[other[0]], headers=other[1]).status_code == 201
            taken.clear()
            probed.clear()
            response = client.get(url(asked), params={"type": "OffStreetParking", "q": q})
            assert response.status_code == 200, response.text
            compared = q != "status"
            by_index = alone and compared and (postgres or ("~=" not in q and ";" not in q and asked == tile))
            assert any(taken) == by_index, (q, asked)  # SQLite: one comparison, a tile of many rows
            small = asked == quarter and compared and postgres and (by_index or not alone)
            assert probed == ({True} if small else {False} if by_index and postgres else set()), (q, asked)
            met = [p for p in parkings if meets(p) and inside(p, asked)]
            layer = response.headers["x-tile-layer"]
            features = decode(response.content)[layer]["features"] if met else []
            if layer == "clusters":
                assert sorted(f["properties"]["count"] for f in features) == cell_counts(met, asked), (q, asked)
            else:  # few enough to draw each
                assert sorted(f["properties"]["id"] for f in features) == sorted(p["id"] for p in met), (q, asked)


def cell_counts(entities: list[dict[str, Any]], tile: Tile) -> list[int]:
    """How many of `entities` fall in each cluster cell of `tile` (its zoom + 4), sorted."""
    found: dict[Tile, int] = {}
    for entity in entities:
        lon, lat = entity["location"]["value"]["coordinates"]
        cell = tile_of(lon, lat, tile.z + 4)
        found[cell] = found.get(cell, 0) + 1
    return sorted(found.values())
