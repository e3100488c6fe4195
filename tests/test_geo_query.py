"""NGSI-LD geo-queries (clause 4.10): parsing, errors, topological relations, near distances,
the R*Tree prefilter box and the entity predicate.

Distances are checked against formulas written independently here (vector/atan2 great-circle
distance, the spherical direct problem, brute-force sampling of edges), not against geo.py's own."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityos.errors import BadRequestData
from cityos.query.geo import EARTH_RADIUS, GeoQuery, compile_geo, haversine, parse_geo_query, parse_geoq

NGSI = "https://uri.etsi.org/ngsi-ld/"
EX = "https://ex.org/"

PORTO = [-8.6291, 41.1579]
MADRID = [-3.7038, 40.4168]
HEIDELBERG = [8.6724, 49.3988]
MANNHEIM = [8.4660, 49.4875]
# a box around Heidelberg's old town and Neuenheim: lon 8.60..8.75, lat 49.35..49.45
BOX = [[[8.60, 49.35], [8.75, 49.35], [8.75, 49.45], [8.60, 49.45], [8.60, 49.35]]]


# --- independent references ------------------------------------------------------------------------


def gc_distance(a: list[float], b: list[float]) -> float:
    """Great-circle distance via unit vectors and atan2(|a x b|, a . b): a different formula from haversine."""

    def unit(p: list[float]) -> tuple[float, float, float]:
        lon, lat = math.radians(p[0]), math.radians(p[1])
        return math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)

    (ax, ay, az), (bx, by, bz) = unit(a), unit(b)
    cross = (ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx)
    return EARTH_RADIUS * math.atan2(math.hypot(*cross), ax * bx + ay * by + az * bz)


def destination(start: list[float], bearing_deg: float, distance: float) -> list[float]:
    """The spherical direct problem: the point `distance` metres from `start` along `bearing_deg`."""
    lon1, lat1, theta, delta = (
        math.radians(start[0]),
        math.radians(start[1]),
        math.radians(bearing_deg),
        distance / EARTH_RADIUS,
    )
    lat2 = math.asin(math.sin(lat1) * math.cos(delta) + math.cos(lat1) * math.sin(delta) * math.cos(theta))
    lon2 = lon1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(lat1), math.cos(delta) - math.sin(lat1) * math.sin(lat2)
    )
    lon = (math.degrees(lon2) + 540.0) % 360.0 - 180.0
    return [lon, math.degrees(lat2)]


def edge_samples(lines: list[list[list[float]]], steps: int = 2000) -> list[list[float]]:
    """Points along each edge, interpolated in lon/lat as GeoJSON defines edges."""
    samples: list[list[float]] = []
    for line in lines:
        for (x1, y1), (x2, y2) in itertools.pairwise(line):
            samples.extend([x1 + (x2 - x1) * i / steps, y1 + (y2 - y1) * i / steps] for i in range(steps + 1))
    return samples


def brute_distance(point: list[float], lines: list[list[list[float]]]) -> float:
    return min(gc_distance(point, sample) for sample in edge_samples(lines))


def geo(kind: str, coordinates: Any) -> dict[str, Any]:
    return {"type": kind, "coordinates": coordinates}


def query(georel: str, kind: str, coordinates: Any, geoproperty: str | None = None) -> GeoQuery:
    result = parse_geo_query(georel, kind, coordinates, geoproperty)
    assert result is not None
    return result


def dist(q: GeoQuery, geometry: dict[str, Any]) -> float:
    distance = q.distance(geometry)
    assert distance is not None
    return distance


def box_hits(box: tuple[float, float, float, float], geometry_coords: list[list[float]]) -> bool:
    """Does the bbox of these positions intersect the prefilter box (as the R*Tree tests it)?"""
    xs, ys = [p[0] for p in geometry_coords], [p[1] for p in geometry_coords]
    min_x, max_x, min_y, max_y = box
    return max(xs) >= min_x and min(xs) <= max_x and max(ys) >= min_y and min(ys) <= max_y


# --- parsing ---------------------------------------------------------------------------------------


def test_no_geo_query_is_none() -> None:
    assert parse_geo_query(None, None, None, None) is None
    assert parse_geo_query(None, None, None, "location") is None


def test_parse_url_parameters() -> None:
    q = query("near;maxDistance==2000", "Point", "[8.6724, 49.3988]")
    assert (q.georel, q.geometry, q.coordinates) == ("near", "Point", (8.6724, 49.3988))
    assert (q.max_distance, q.min_distance, q.geoproperty) == (2000.0, None, "location")
    assert q.geojson == {"type": "Point", "coordinates": [8.6724, 49.3988]}


def test_string_and_list_coordinates_give_equal_hashable_queries() -> None:
    from_text = query("within", "Polygon", "[[[8.6,49.35],[8.75,49.35],[8.75,49.45],[8.6,49.45],[8.6,49.35]]]")
    from_list = query("within", "Polygon", BOX)
    assert from_text == from_list
    assert hash(from_text) == hash(from_list)
    with pytest.raises(dataclasses.FrozenInstanceError):
        from_text.georel = "contains"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("georel", "max_distance", "min_distance", "canonical"),
    [
        ("near;maxDistance==1000", 1000.0, None, "near;maxDistance==1000"),
        ("near;minDistance==12.5", None, 12.5, "near;minDistance==12.5"),
    ],
)
def test_near_distances(georel: str, max_distance: float | None, min_distance: float | None, canonical: str) -> None:
    q = query(georel, "Point", HEIDELBERG)
    assert (q.georel, q.max_distance, q.min_distance) == ("near", max_distance, min_distance)
    assert q.georel_text == canonical


@pytest.mark.parametrize("georel", ["within", "contains", "intersects", "disjoint", "equals", "overlaps"])
def test_topological_georels(georel: str) -> None:
    q = query(georel, "Polygon", BOX)
    assert (q.georel, q.max_distance, q.min_distance, q.georel_text) == (georel, None, None, georel)


def test_geoproperty_kept_as_given() -> None:
    assert query("within", "Polygon", BOX, "observationSpace").geoproperty == "observationSpace"
    assert query("within", "Polygon", BOX, EX + "area").geoproperty == EX + "area"


def test_geoq_object_round_trip() -> None:
    q = parse_geoq({"geometry": "Polygon", "coordinates": BOX, "georel": "near;maxDistance==50", "extra": 1})
    assert (q.georel, q.max_distance, q.geoproperty) == ("near", 50.0, "location")
    assert q.to_geoq() == {
        "geometry": "Polygon",
        "coordinates": BOX,
        "georel": "near;maxDistance==50",
        "geoproperty": "location",
    }
    assert parse_geoq(q.to_geoq()) == q
    text_form = parse_geoq({"geometry": "Point", "coordinates": "[8.6724,49.3988]", "georel": "within"})
    assert text_form.coordinates == (8.6724, 49.3988)


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("georel", "geometry", "coordinates", "geoproperty", "detail"),
    [
        # some but not all of georel / geometry / coordinates
        ("within", "Polygon", None, None, "missing: coordinates"),
        ("within", None, BOX, None, "missing: geometry"),
        (None, "Point", "[1,2]", None, "missing: georel"),
        (None, None, "[1,2]", "location", "missing: georel, geometry"),
        ("near;maxDistance==5", None, None, None, "missing: geometry, coordinates"),
        # geometry names
        ("within", "Circle", "[1,2]", None, "geometry must be one of"),
        ("within", "point", "[1,2]", None, "geometry must be one of"),
        ("within", "GeometryCollection", "[]", None, "geometry must be one of"),
        # georel
        ("nearby", "Point", "[1,2]", None, "unknown georel"),
        ("crosses", "Point", "[1,2]", None, "unknown georel"),
        ("Within", "Point", "[1,2]", None, "unknown georel"),
        ("within;maxDistance==10", "Point", "[1,2]", None, "takes no distance"),
        ("near", "Point", "[1,2]", None, "near needs a distance"),
        ("near;", "Point", "[1,2]", None, "invalid near modifier"),
        ("near;maxDistance=1000", "Point", "[1,2]", None, "invalid near modifier"),
        ("near;maxDistance:1000", "Point", "[1,2]", None, "invalid near modifier"),
        ("near;maxDistance==-5", "Point", "[1,2]", None, "invalid near modifier"),
        ("near;maxDistance==abc", "Point", "[1,2]", None, "invalid near modifier"),
        ("near;maxDistance==", "Point", "[1,2]", None, "invalid near modifier"),
        ("near;distance==10", "Point", "[1,2]", None, "invalid near modifier"),
        ("near;maxDistance==1e999", "Point", "[1,2]", None, "finite"),
        ("near;maxDistance==1;maxDistance==2", "Point", "[1,2]", None, "exactly one"),
        ("near;minDistance==10;maxDistance==2000", "Point", "[1,2]", None, "exactly one"),  # ETSI 019_30_03
        ("near;maxDistance==0", "Point", "[1,2]", None, "positive"),  # ETSI 019_30_01
        # malformed coordinates
        ("within", "Point", "[8.68,49.41", None, "must be a JSON array"),
        ("within", "Point", "8.68,49.41", None, "must be a JSON array"),
        ("within", "Point", '{"lon": 8}', None, "must be a JSON array"),
        ("within", "Point", "", None, "must be a JSON array"),
        ("within", "Point", "[" * 100_000 + "]" * 100_000, None, "must be a JSON array"),
        ("within", "Point", 8.68, None, "must be a JSON array"),
        ("within", "Point", "[8.68]", None, "position must be an array of 2 or 3 numbers"),
        ("within", "Point", '[8.68, "49.41"]', None, "position must be an array of 2 or 3 numbers"),
        ("within", "Point", "[[8.68, 49.41]]", None, "position must be an array of 2 or 3 numbers"),
        ("within", "LineString", "[[8.68, 49.41]]", None, "at least 2 positions"),
        ("within", "MultiPolygon", "[]", None, "expected an array of polygons"),
        # polygon rings
        ("within", "Polygon", "[[[8,49],[9,49],[9,50],[8,50]]]", None, "must be closed"),
        ("within", "Polygon", "[[[8,49],[9,49],[8,49]]]", None, "at least 4 positions"),
        ("within", "MultiPolygon", "[[[[8,49],[9,49],[9,50],[8,50]]]]", None, "must be closed"),
        # out-of-range and non-finite positions
        ("within", "Point", "[181, 10]", None, "outside longitude/latitude bounds"),
        ("within", "Point", "[-180.5, 10]", None, "outside longitude/latitude bounds"),
        ("within", "Point", "[10, 90.01]", None, "outside longitude/latitude bounds"),
        ("within", "Point", "[10, -91]", None, "outside longitude/latitude bounds"),
        ("within", "Point", "[NaN, 10]", None, "outside longitude/latitude bounds"),
        ("within", "Point", "[1e999, 10]", None, "outside longitude/latitude bounds"),
        ("within", "LineString", "[[0, 0], [200, 0]]", None, "outside longitude/latitude bounds"),
        ("within", "Point", "[true, 10]", None, "position must be an array"),
        # geoproperty
        ("within", "Point", "[1,2]", "", "geoproperty must be a non-empty string"),
    ],
)
def test_errors(georel: Any, geometry: Any, coordinates: Any, geoproperty: Any, detail: str) -> None:
    with pytest.raises(BadRequestData) as caught:
        parse_geo_query(georel, geometry, coordinates, geoproperty)
    assert detail in caught.value.detail
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("within", "geoQ must be a JSON object"),
        ({}, "geoQ needs georel, geometry and coordinates"),
        ({"geometry": "Point", "coordinates": [1, 2]}, "missing: georel"),
        ({"georel": 5, "geometry": "Point", "coordinates": [1, 2]}, "georel must be a string"),
        ({"georel": "within", "geometry": ["Point"], "coordinates": [1, 2]}, "geometry must be one of"),
        ({"georel": "within", "geometry": "Point", "coordinates": {"x": 1}}, "must be a JSON array"),
    ],
)
def test_geoq_errors(value: Any, detail: str) -> None:
    with pytest.raises(BadRequestData) as caught:
        parse_geoq(value)
    assert detail in caught.value.detail


# --- distances -------------------------------------------------------------------------------------


def test_haversine_against_independent_values() -> None:
    # one degree along the equator and along a meridian: 2 pi R / 360 exactly
    assert haversine(0, 0, 1, 0) == pytest.approx(math.pi * EARTH_RADIUS / 180, rel=1e-12)
    assert haversine(10, 0, 10, 1) == pytest.approx(math.pi * EARTH_RADIUS / 180, rel=1e-12)
    # Porto - Madrid is about 422 km as the crow flies
    porto_madrid = haversine(*PORTO, *MADRID)
    assert porto_madrid == pytest.approx(gc_distance(PORTO, MADRID), rel=1e-9)
    assert porto_madrid == pytest.approx(422_700, rel=0.005)
    assert haversine(*HEIDELBERG, *MANNHEIM) == pytest.approx(gc_distance(HEIDELBERG, MANNHEIM), rel=1e-9)
    assert haversine(*HEIDELBERG, *MADRID) == pytest.approx(gc_distance(HEIDELBERG, MADRID), rel=1e-9)
    # across the antimeridian and to the antipode
    assert haversine(179.5, 0, -179.5, 0) == pytest.approx(math.pi * EARTH_RADIUS / 180, rel=1e-9)
    assert haversine(0, 0, 180, 0) == pytest.approx(math.pi * EARTH_RADIUS, rel=1e-12)


def test_near_point_max_and_min_distance() -> None:
    madrid = geo("Point", MADRID)
    d = gc_distance(PORTO, MADRID)
    assert query("near;maxDistance==430000", "Point", PORTO).matches(madrid)
    assert not query("near;maxDistance==415000", "Point", PORTO).matches(madrid)
    assert query("near;minDistance==415000", "Point", PORTO).matches(madrid)
    assert not query("near;minDistance==430000", "Point", PORTO).matches(madrid)
    assert query("near;minDistance==400000", "Point", PORTO).matches(madrid)
    assert not query("near;minDistance==423000", "Point", PORTO).matches(madrid)
    assert query("near;maxDistance==1", "Point", PORTO).distance(madrid) == pytest.approx(d, rel=1e-9)
    # the boundary is inclusive on both sides
    assert query("near;maxDistance==0.001", "Point", PORTO).matches(geo("Point", PORTO))
    assert query("near;minDistance==0", "Point", PORTO).matches(geo("Point", PORTO))


def test_near_point_reference_to_line_polygon_and_multi_targets() -> None:
    q = query("near;maxDistance==5000", "Point", HEIDELBERG)
    line = [[8.55, 49.43], [8.80, 49.44]]  # runs ~3.5 km north of the old town
    expected = brute_distance(HEIDELBERG, [line])
    assert 3000 < expected < 4500
    assert q.distance(geo("LineString", line)) == pytest.approx(expected, rel=1e-3)
    assert q.matches(geo("LineString", line))
    assert not query("near;maxDistance==3000", "Point", HEIDELBERG).matches(geo("LineString", line))
    assert query("near;minDistance==3000", "Point", HEIDELBERG).matches(geo("LineString", line))

    far_line = [[8.0, 49.9], [8.5, 50.0]]
    multi_line = [far_line, line]
    assert q.distance(geo("MultiLineString", multi_line)) == pytest.approx(expected, rel=1e-3)

    # a polygon around the reference is at distance 0; one beside it at its nearest edge
    assert q.distance(geo("Polygon", BOX)) == 0.0
    assert query("near;maxDistance==0.001", "Point", HEIDELBERG).matches(geo("Polygon", BOX))
    assert not query("near;minDistance==1", "Point", HEIDELBERG).matches(geo("Polygon", BOX))
    east = [[[8.80, 49.30], [8.90, 49.30], [8.90, 49.50], [8.80, 49.50], [8.80, 49.30]]]
    expected_east = brute_distance(HEIDELBERG, east)
    assert q.distance(geo("Polygon", east)) == pytest.approx(expected_east, rel=1e-3)
    assert q.distance(geo("MultiPolygon", [east, [[[0, 0], [1, 0], [1, 1], [0, 0]]]])) == pytest.approx(
        expected_east, rel=1e-3
    )

    multi_point = [MADRID, MANNHEIM, PORTO]
    assert q.distance(geo("MultiPoint", multi_point)) == pytest.approx(gc_distance(HEIDELBERG, MANNHEIM), rel=1e-9)
    assert query("near;maxDistance==20000", "Point", HEIDELBERG).matches(geo("MultiPoint", multi_point))
    assert not query("near;minDistance==20000", "Point", HEIDELBERG).matches(geo("MultiPoint", multi_point))


def test_near_polygon_and_line_references() -> None:
    north_of_box = destination([8.675, 49.45], 0.0, 1000.0)  # 1 km due north of the box's top edge
    target = geo("Point", north_of_box)
    q = query("near;maxDistance==1010", "Polygon", BOX)
    assert q.distance(target) == pytest.approx(brute_distance(north_of_box, BOX), rel=1e-3)
    assert q.distance(target) == pytest.approx(1000.0, rel=1e-3)
    assert q.matches(target)
    assert not query("near;maxDistance==990", "Polygon", BOX).matches(target)
    assert query("near;minDistance==990", "Polygon", BOX).matches(target)
    assert query("near;maxDistance==0.001", "Polygon", BOX).matches(geo("Point", HEIDELBERG))  # inside

    # a line reference ~100 km long, a point ~20 km off its middle
    road = [[8.0, 49.0], [9.4, 49.0]]
    off = [8.7, 49.18]
    expected = brute_distance(off, [road])
    assert query("near;maxDistance==1", "LineString", road).distance(geo("Point", off)) == pytest.approx(
        expected, rel=1e-3
    )
    # multi references: the nearest member counts
    both = [road, [[8.6, 49.4], [8.8, 49.4]]]
    assert query("near;maxDistance==1", "MultiLineString", both).distance(geo("Point", [8.7, 49.41])) == (
        pytest.approx(gc_distance([8.7, 49.41], [8.7, 49.4]), rel=1e-3)
    )
    assert query("near;maxDistance==1", "MultiPoint", [PORTO, MADRID]).distance(geo("Point", HEIDELBERG)) == (
        pytest.approx(gc_distance(HEIDELBERG, MADRID), rel=1e-3)
    )


def test_points_on_long_edges_are_on_them() -> None:
    """Edges are the lon/lat lines GeoJSON means, also for a 1-degree edge at 45 degrees north."""
    ring = [[10, 45], [11, 45], [11, 46], [10, 46], [10, 45]]
    q = query("near;maxDistance==0.05", "Polygon", [ring])
    for along in (0.005, 0.05, 0.333, 0.555, 0.995):
        assert dist(q, geo("Point", [10 + along, 45.0])) < 0.05
        assert dist(q, geo("Point", [11.0, 45 + along])) < 0.05
        assert q.matches(geo("Point", [10 + along, 46.0]))


def test_near_distance_accuracy_far_from_the_centre() -> None:
    # Polygon reference around Madrid, LineString target near Porto (~413 km away): well within 1%
    madrid_box = [[[-3.8, 40.3], [-3.6, 40.3], [-3.6, 40.5], [-3.8, 40.5], [-3.8, 40.3]]]
    porto_line = [[-8.7, 41.0], [-8.6, 41.3]]
    expected = min(gc_distance(a, b) for a in edge_samples(madrid_box, 200) for b in edge_samples([porto_line], 200))
    got = dist(query("near;maxDistance==1", "Polygon", madrid_box), geo("LineString", porto_line))
    assert got == pytest.approx(expected, rel=1e-3)
    assert got >= expected * (1 - 1e-6)  # the projection never shrinks lengths


# --- topological relations -------------------------------------------------------------------------

INNER = [[[8.65, 49.38], [8.70, 49.38], [8.70, 49.42], [8.65, 49.42], [8.65, 49.38]]]
OVERLAPPING = [[[8.70, 49.40], [8.80, 49.40], [8.80, 49.50], [8.70, 49.50], [8.70, 49.40]]]
AROUND = [[[8.0, 49.0], [9.0, 49.0], [9.0, 50.0], [8.0, 50.0], [8.0, 49.0]]]
SAME_BOX_ROTATED = [[[8.75, 49.35], [8.75, 49.45], [8.60, 49.45], [8.60, 49.35], [8.75, 49.35]]]
FAR = [[[2.0, 48.0], [3.0, 48.0], [3.0, 49.0], [2.0, 48.0]]]

TARGETS: dict[str, dict[str, Any]] = {
    "point inside": geo("Point", HEIDELBERG),
    "point outside": geo("Point", MANNHEIM),
    "point on edge": geo("Point", [8.60, 49.40]),
    "line inside": geo("LineString", [[8.65, 49.40], [8.70, 49.41]]),
    "line crossing": geo("LineString", [[8.70, 49.40], [8.90, 49.40]]),
    "polygon inside": geo("Polygon", INNER),
    "polygon overlapping": geo("Polygon", OVERLAPPING),
    "polygon around": geo("Polygon", AROUND),
    "same polygon": geo("Polygon", SAME_BOX_ROTATED),
    "multipoint in and out": geo("MultiPoint", [HEIDELBERG, MANNHEIM]),
    "multipoint inside": geo("MultiPoint", [HEIDELBERG, [8.7, 49.42]]),
    "multilinestring inside": geo("MultiLineString", [[[8.65, 49.40], [8.70, 49.41]], [[8.62, 49.36], [8.63, 49.37]]]),
    "multipolygon overlapping": geo("MultiPolygon", [OVERLAPPING, FAR]),
    "multipolygon around": geo("MultiPolygon", [AROUND, FAR]),
    "multipolygon far": geo("MultiPolygon", [FAR]),
}

# target -> (within, contains, intersects, disjoint, equals, overlaps) against BOX
EXPECTED = {
    "point inside": (True, False, True, False, False, False),
    "point outside": (False, False, False, True, False, False),
    "point on edge": (False, False, True, False, False, False),  # DE-9IM: the boundary is not within
    "line inside": (True, False, True, False, False, False),
    "line crossing": (False, False, True, False, False, False),  # different dimensions never overlap
    "polygon inside": (True, False, True, False, False, False),
    "polygon overlapping": (False, False, True, False, False, True),
    "polygon around": (False, True, True, False, False, False),
    "same polygon": (True, True, True, False, True, False),
    "multipoint in and out": (False, False, True, False, False, False),
    "multipoint inside": (True, False, True, False, False, False),
    "multilinestring inside": (True, False, True, False, False, False),
    "multipolygon overlapping": (False, False, True, False, False, True),
    "multipolygon around": (False, True, True, False, False, False),
    "multipolygon far": (False, False, False, True, False, False),
}
RELATIONS = ("within", "contains", "intersects", "disjoint", "equals", "overlaps")


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("relation", RELATIONS)
def test_topological_relations_against_polygon(target: str, relation: str) -> None:
    expected = EXPECTED[target][RELATIONS.index(relation)]
    assert query(relation, "Polygon", BOX).matches(TARGETS[target]) is expected
    # a MultiPolygon query made of BOX and a far part behaves the same except for equals/contains
    multi = query(relation, "MultiPolygon", [BOX, [[[0, 0], [1, 0], [1, 1], [0, 0]]]])
    if relation in ("within", "intersects", "disjoint"):
        assert multi.matches(TARGETS[target]) is expected


@pytest.mark.parametrize(
    ("relation", "kind", "coordinates", "target", "expected"),
    [
        # Point queries: an entity contains / equals / intersects the point
        ("contains", "Point", [8.7, 49.4], geo("LineString", [[8.6, 49.4], [8.8, 49.4]]), True),
        ("contains", "Point", [8.6, 49.4], geo("LineString", [[8.6, 49.4], [8.8, 49.4]]), False),  # endpoint
        ("intersects", "Point", [8.6, 49.4], geo("LineString", [[8.6, 49.4], [8.8, 49.4]]), True),
        ("contains", "Point", HEIDELBERG, geo("Polygon", BOX), True),
        ("contains", "Point", MANNHEIM, geo("MultiPolygon", [BOX, FAR]), False),
        ("equals", "Point", HEIDELBERG, geo("Point", HEIDELBERG), True),
        ("equals", "Point", HEIDELBERG, geo("Point", [*HEIDELBERG, 120.0]), True),  # altitude is ignored
        ("equals", "Point", HEIDELBERG, geo("MultiPoint", [HEIDELBERG]), True),
        ("disjoint", "Point", HEIDELBERG, geo("Point", MANNHEIM), True),
        ("within", "Point", HEIDELBERG, geo("Point", HEIDELBERG), True),
        # LineString queries
        ("intersects", "LineString", [[8.5, 49.4], [8.8, 49.4]], geo("Polygon", BOX), True),
        ("within", "LineString", [[8.5, 49.4], [8.8, 49.4]], geo("Point", [8.7, 49.4]), True),
        ("within", "LineString", [[8.5, 49.4], [8.8, 49.4]], geo("LineString", [[8.6, 49.4], [8.7, 49.4]]), True),
        ("overlaps", "LineString", [[8.5, 49.4], [8.8, 49.4]], geo("LineString", [[8.7, 49.4], [9.0, 49.4]]), True),
        ("overlaps", "LineString", [[8.5, 49.4], [8.8, 49.4]], geo("LineString", [[8.7, 49.3], [8.7, 49.5]]), False),
        ("intersects", "LineString", [[8.5, 49.4], [8.8, 49.4]], geo("LineString", [[8.7, 49.3], [8.7, 49.5]]), True),
        ("disjoint", "LineString", [[8.5, 49.4], [8.8, 49.4]], geo("MultiLineString", [[[8, 50], [9, 50]]]), True),
        ("contains", "LineString", [[8.6, 49.4], [8.7, 49.4]], geo("Polygon", BOX), True),
        # MultiPoint / MultiLineString queries
        ("within", "MultiPoint", [HEIDELBERG, MANNHEIM], geo("Point", MANNHEIM), True),
        ("contains", "MultiPoint", [HEIDELBERG, MANNHEIM], geo("Polygon", BOX), False),
        ("contains", "MultiPoint", [HEIDELBERG, MANNHEIM], geo("Polygon", AROUND), True),
        ("intersects", "MultiLineString", [[[0, 0], [1, 1]], [[8.5, 49.4], [8.8, 49.4]]], geo("Polygon", BOX), True),
    ],
)
def test_topological_relations_other_query_geometries(
    relation: str, kind: str, coordinates: Any, target: dict[str, Any], expected: bool
) -> None:
    assert query(relation, kind, coordinates).matches(target) is expected


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "POINT (1 2)",
        {"type": "Circle", "coordinates": [1, 2]},
        {"type": "Polygon", "coordinates": [[1, 2]]},
        {"type": "Point"},
        {"type": "Point", "coordinates": []},
        {"type": "LineString", "coordinates": [[1, 2], ["a", "b"]]},
    ],
)
@pytest.mark.parametrize("georel", ["disjoint", "intersects", "near;minDistance==0", "near;maxDistance==1e9"])
def test_malformed_stored_geometries_never_match(bad: Any, georel: str) -> None:
    q = query(georel, "Point", HEIDELBERG)
    assert q.matches(bad) is False
    assert q.distance(bad) is None


def test_invalid_stored_polygon_does_not_raise() -> None:
    bow_tie = geo("Polygon", [[[8.6, 49.3], [8.8, 49.5], [8.8, 49.3], [8.6, 49.5], [8.6, 49.3]]])
    for relation in RELATIONS:
        assert isinstance(query(relation, "Polygon", BOX).matches(bow_tie), bool)


# --- the R*Tree prefilter box ----------------------------------------------------------------------


@pytest.mark.parametrize("relation", ["within", "contains", "intersects", "equals", "overlaps"])
def test_prefilter_of_topological_relations_is_the_query_bbox(relation: str) -> None:
    assert query(relation, "Polygon", BOX).bbox_prefilter() == (8.60, 8.75, 49.35, 49.45)
    assert query(relation, "Point", HEIDELBERG).bbox_prefilter() == (8.6724, 8.6724, 49.3988, 49.3988)


def test_no_prefilter_for_disjoint_and_min_distance() -> None:
    assert query("disjoint", "Polygon", BOX).bbox_prefilter() is None
    assert query("near;minDistance==100", "Point", HEIDELBERG).bbox_prefilter() is None


def test_near_prefilter_shapes() -> None:
    degree = math.pi * EARTH_RADIUS / 180
    # at the equator the box is as wide as it is tall
    equator = query("near;maxDistance==10000", "Point", [0, 0]).bbox_prefilter()
    assert equator is not None
    _, max_lon, min_lat, max_lat = equator
    assert max_lat == pytest.approx(10001 / degree, rel=1e-6)
    assert min_lat == -max_lat
    assert max_lon == pytest.approx(max_lat, rel=1e-6)
    # at 60 degrees north a degree of longitude is half as long: twice as many degrees
    box = query("near;maxDistance==10000", "Point", [10, 60]).bbox_prefilter()
    assert box is not None
    assert (box[1] - 10) == pytest.approx(2 * (box[3] - 60), rel=1e-3)
    # polygon reference: its bbox grown on every side
    box = query("near;maxDistance==1000", "Polygon", BOX).bbox_prefilter()
    assert box is not None
    assert box[0] < 8.60 and box[1] > 8.75 and box[2] < 49.35 and box[3] > 49.45
    assert box[3] - 49.45 == pytest.approx(1001 / degree, rel=1e-6)


def test_near_prefilter_at_poles_antimeridian_and_huge_distances() -> None:
    # reaching over the pole: every longitude, latitude clamped at 90
    assert query("near;maxDistance==100000", "Point", [20, 89.5]).bbox_prefilter() == pytest.approx(
        (-180, 180, 89.5 - 100001 / (math.pi * EARTH_RADIUS / 180), 90)
    )
    # crossing the antimeridian: one box cannot wrap, so every longitude
    box = query("near;maxDistance==50000", "Point", [179.9, -17.0]).bbox_prefilter()
    assert box is not None and box[:2] == (-180, 180) and -17.5 < box[2] < box[3] < -16.5
    # more than half the globe: the whole world
    assert query("near;maxDistance==30000000", "Point", [0, 0]).bbox_prefilter() == (-180, 180, -90, 90)


@settings(max_examples=300, deadline=None)
@given(
    lon=st.floats(-180, 180),
    lat=st.floats(-89.99, 89.99),
    max_distance=st.floats(1, 3_000_000),
    bearing=st.floats(0, 360, exclude_max=True),
    fraction=st.floats(0, 1),
)
def test_prefilter_is_sound_for_points_within_max_distance(
    lon: float, lat: float, max_distance: float, bearing: float, fraction: float
) -> None:
    q = query(f"near;maxDistance=={max_distance!r}", "Point", [lon, lat])
    box = q.bbox_prefilter()
    assert box is not None
    target = destination([lon, lat], bearing, fraction * max_distance)
    assert gc_distance([lon, lat], target) == pytest.approx(fraction * max_distance, rel=1e-6, abs=1e-3)
    assert box_hits(box, [target])
    if fraction < 0.999:
        assert q.matches(geo("Point", target))


@settings(max_examples=200, deadline=None)
@given(
    lon=st.floats(-170, 170),
    lat=st.floats(-80, 80),
    width=st.floats(0.001, 2),
    height=st.floats(0.001, 2),
    max_distance=st.floats(10, 500_000),
    corner=st.integers(0, 3),
    along=st.floats(0, 1),
    bearing=st.floats(0, 360, exclude_max=True),
    fraction=st.floats(0, 1.5),
)
def test_prefilter_is_sound_for_polygon_references(
    lon: float,
    lat: float,
    width: float,
    height: float,
    max_distance: float,
    corner: int,
    along: float,
    bearing: float,
    fraction: float,
) -> None:
    """Whatever near;maxDistance accepts around a polygon lies in the prefilter box (points and lines)."""
    ring = [[lon, lat], [lon + width, lat], [lon + width, lat + height], [lon, lat + height], [lon, lat]]
    q = query(f"near;maxDistance=={max_distance!r}", "Polygon", [ring])
    box = q.bbox_prefilter()
    assert box is not None
    (x1, y1), (x2, y2) = ring[corner], ring[corner + 1]
    on_edge = [x1 + (x2 - x1) * along, y1 + (y2 - y1) * along]
    target = destination(on_edge, bearing, fraction * max_distance)
    if fraction < 0.99:  # within maxDistance of a point on the edge, so it must match
        assert q.matches(geo("Point", target))
    if q.matches(geo("Point", target)):
        assert box_hits(box, [target])
    segment = [target, destination(target, bearing + 90, max_distance / 3)]
    if abs(segment[0][0] - segment[1][0]) < 180 and q.matches(geo("LineString", segment)):
        assert box_hits(box, segment)


# --- the entity predicate --------------------------------------------------------------------------


def expand(term: str) -> str:
    """A TermMap stand-in: core terms to the NGSI-LD namespace, others to the example vocabulary."""
    if ":" in term:
        return term
    return NGSI + term if term in ("location", "observationSpace", "operationSpace") else EX + term


def entity(attrs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {"id": "urn:ngsi-ld:Sensor:1", "type": [EX + "Sensor"], "attrs": attrs}


def geoprop(geometry: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": geometry, "createdAt": "2024-01-01T00:00:00Z", **extra}


def test_compile_geo_matches_the_default_location() -> None:
    near = compile_geo(query("near;maxDistance==2000", "Point", HEIDELBERG), expand)
    assert near(entity({NGSI + "location": [geoprop(geo("Point", [8.68, 49.40]))]}))
    assert not near(entity({NGSI + "location": [geoprop(geo("Point", MANNHEIM))]}))
    within = compile_geo(query("within", "Polygon", BOX), expand)
    assert within(entity({NGSI + "location": [geoprop(geo("Point", HEIDELBERG))]}))


def test_compile_geo_any_dataset_instance_matches() -> None:
    within = compile_geo(query("within", "Polygon", BOX), expand)
    instances = [
        geoprop(geo("Point", MANNHEIM)),
        geoprop(geo("Point", HEIDELBERG), datasetId="urn:ngsi-ld:Dataset:gps"),
    ]
    assert within(entity({NGSI + "location": instances}))
    assert not within(entity({NGSI + "location": instances[:1]}))


def test_compile_geo_uses_the_expanded_geoproperty() -> None:
    attrs = {
        NGSI + "location": [geoprop(geo("Point", MANNHEIM))],
        NGSI + "observationSpace": [geoprop(geo("Polygon", INNER))],
        EX + "servedArea": [geoprop(geo("Point", HEIDELBERG))],
    }
    assert compile_geo(query("within", "Polygon", BOX, "observationSpace"), expand)(entity(attrs))
    assert compile_geo(query("within", "Polygon", BOX, "servedArea"), expand)(entity(attrs))
    assert compile_geo(query("within", "Polygon", BOX, EX + "servedArea"), expand)(entity(attrs))
    assert not compile_geo(query("within", "Polygon", BOX), expand)(entity(attrs))


def test_compile_geo_entities_without_the_attribute_never_match() -> None:
    for georel in ("disjoint", "near;minDistance==0"):
        predicate = compile_geo(query(georel, "Polygon", BOX), expand)
        assert not predicate(entity({}))
        assert not predicate(entity({EX + "other": [geoprop(geo("Point", [0, 0]))]}))
        assert not predicate({"id": "urn:ngsi-ld:Sensor:2", "type": [EX + "Sensor"]})
        # only GeoProperty instances count
        assert not predicate(entity({NGSI + "location": [{"type": "Property", "value": geo("Point", [0, 0])}]}))
        assert predicate(entity({NGSI + "location": [geoprop(geo("Point", [0, 0]))]}))


@pytest.mark.parametrize(
    ("georel", "kind", "coordinates"),
    [
        ("near;maxDistance==500", "Point", PORTO),
        ("near;minDistance==300", "Point", PORTO),
        ("near;maxDistance==800", "Polygon", [[[-8.64, 41.15], [-8.62, 41.15], [-8.62, 41.16], [-8.64, 41.15]]]),
        ("within", "Polygon", [[[-8.64, 41.15], [-8.62, 41.15], [-8.62, 41.16], [-8.64, 41.15]]]),
        ("intersects", "Polygon", [[[-8.64, 41.15], [-8.62, 41.15], [-8.62, 41.16], [-8.64, 41.15]]]),
    ],
)
def test_point_rows_and_keys_judge_as_matches_does(georel: str, kind: str, coordinates: Any) -> None:
    """The store's SQL functions name a query by its key and test point rows with point_matches
    (no geometry built): both must agree with matches() exactly, boundaries included."""
    q = query(georel, kind, coordinates)
    assert GeoQuery.from_key(q.key) == q
    rng = random.Random(5)
    points = [[round(rng.uniform(-8.66, -8.60), 5), round(rng.uniform(41.14, 41.17), 5)] for _ in range(3000)]
    points += [destination(PORTO, bearing, distance) for bearing in range(0, 360, 7) for distance in (300, 500)]
    assert any(q.point_matches(lon, lat) for lon, lat in points)
    for lon, lat in points:
        assert q.point_matches(lon, lat) == q.matches(geo("Point", [lon, lat])), (lon, lat)
