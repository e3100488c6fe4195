"""NGSI-LD geo-queries (ETSI GS CIM 009 V1.9.1, clause 4.10): georel, geometry, coordinates, geoproperty.

`parse_geo_query` validates the URL parameters (`parse_geoq` the `geoQ` object of subscriptions and
POST /entityOperations/query) into an immutable `GeoQuery`. `GeoQuery.matches` evaluates it against
one GeoJSON geometry, `compile_geo` turns it into a predicate over CityOS's internal entity form and
`GeoQuery.bbox_prefilter` gives the box an R*Tree can use to skip entities that cannot match.

The entity's geometry is the subject of every relation: `within` means "the entity lies within the
query geometry", `contains` "the entity contains it". Topological relations are evaluated by GEOS
(shapely) in the lon/lat plane, which is how GeoJSON (RFC 7946, 3.1.1) defines edges and how other
brokers evaluate them, with DE-9IM semantics as in PostGIS: a point on a polygon's boundary is not
`within` it, and `overlaps` needs two geometries of the same dimension. `near` distances are in
metres on a sphere, see `GeoQuery.distance`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt
import shapely  # type: ignore[import-untyped]
from shapely.errors import ShapelyError  # type: ignore[import-untyped]
from shapely.geometry import shape  # type: ignore[import-untyped]

from cityos.entities.values import check_geometry, check_name
from cityos.errors import BadRequestData

Entity = dict[str, Any]
Predicate = Callable[[Entity], bool]
Box = tuple[float, float, float, float]  # (min_lon, max_lon, min_lat, max_lat), as the R*Tree columns

EARTH_RADIUS = 6_371_008.8  # metres: the IUGG mean radius, the usual sphere for WGS84 coordinates
GEOMETRIES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")
TOPOLOGICAL = ("within", "contains", "intersects", "disjoint", "equals", "overlaps")
DEFAULT_GEOPROPERTY = "location"
SEGMENT_DEGREES = 0.01  # densify edges so projected chords follow the lon/lat edges (to within ~1.2 cm)
MAX_DENSIFIED_POINTS = 100_000
"""Most points densifying adds to one geometry: an 8 kB polygon of long edges would otherwise grow
to 14 million points (14 s of CPU); past it the step grows so the count stays at this (~0.1 s)."""


def _densify(geom: Any) -> Any:
    """`geom` with edges of at most SEGMENT_DEGREES, or longer ones for a geometry so long that
    its densified form would pass MAX_DENSIFIED_POINTS (bounded work whatever a client sends)."""
    step = max(SEGMENT_DEGREES, float(shapely.length(geom)) / MAX_DENSIFIED_POINTS)
    return shapely.segmentize(geom, step)


PREFILTER_MARGIN = 1.0  # metres added to maxDistance for the prefilter: covers the chords' deviation
FULL_LON = (-180.0, 180.0)

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DISTANCE = re.compile(rf"(maxDistance|minDistance)==({_NUMBER})")

# The prepared query geometry is always the first argument (GEOS only speeds up that side), so
# "entity within query" is "query contains entity" and vice versa.
_PREDICATES: dict[str, Callable[[Any, Any], Any]] = {
    "within": shapely.contains,
    "contains": shapely.within,
    "intersects": shapely.intersects,
    "disjoint": shapely.disjoint,
    "equals": shapely.equals,
    "overlaps": shapely.overlaps,
}

Projection = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]


@dataclass(frozen=True)
class GeoQuery:
    """A validated geo-query. `georel` is the relation name alone ("near", "within", ...); a near
    query has `max_distance` and/or `min_distance` in metres. `coordinates` is the GeoJSON array
    frozen into tuples so that the query is hashable; `geoproperty` is still a term (or IRI)."""

    georel: str
    geometry: str
    coordinates: tuple[Any, ...]
    geoproperty: str = DEFAULT_GEOPROPERTY
    max_distance: float | None = None
    min_distance: float | None = None
    _shape: Any = field(init=False, repr=False, compare=False)
    _project: Projection | None = field(init=False, repr=False, compare=False)
    _projected: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The query geometry, its projection and projected form are built once, when first needed:
        # matches() runs per entity, and a near query around a Point needs none of them.
        object.__setattr__(self, "_shape", None)
        object.__setattr__(self, "_project", None)
        object.__setattr__(self, "_projected", None)
        if self.geometry != "Point":
            self._geom()  # now: a geometry GEOS cannot build is a bad request, not a failed query

    def _geom(self) -> Any:
        if self._shape is None:
            geom = shape(self.geojson)
            shapely.prepare(geom)
            object.__setattr__(self, "_shape", geom)
        return self._shape

    def _projection(self) -> Projection:
        project = self._project
        if project is None:
            geom = self._geom()
            centre = geom if self.geometry == "Point" else geom.centroid
            project = _azimuthal_equidistant(float(centre.x), float(centre.y))
            object.__setattr__(self, "_project", project)
        return project

    def _projected_shape(self) -> Any:
        if self._projected is None:
            projected = shapely.transform(_densify(self._geom()), self._projection())
            shapely.prepare(projected)
            object.__setattr__(self, "_projected", projected)
        return self._projected

    @property
    def key(self) -> str:
        """The query as canonical JSON text (`geoQ` form): how SQL functions name it (sqlite_query.py)."""
        return json.dumps(self.to_geoq(), separators=(",", ":"))

    @staticmethod
    def from_key(key: str) -> GeoQuery:
        """The query a `key` names."""
        return parse_geoq(json.loads(key))

    def point_matches(self, lon: float, lat: float) -> bool:
        """`matches` for the 2D Point [lon, lat], without building it (the store's point rows)."""
        if self.georel == "near" and self.geometry == "Point":
            distance = haversine(self.coordinates[0], self.coordinates[1], lon, lat)
            if self.max_distance is not None and distance > self.max_distance:
                return False
            return self.min_distance is None or distance >= self.min_distance
        return self.matches({"type": "Point", "coordinates": [lon, lat]})

    @property
    def geojson(self) -> dict[str, Any]:
        """The query geometry as a GeoJSON geometry object."""
        return {"type": self.geometry, "coordinates": _thaw(self.coordinates)}

    @property
    def georel_text(self) -> str:
        """The georel as NGSI-LD writes it, e.g. `near;maxDistance==2000`."""
        parts = [self.georel]
        if self.min_distance is not None:
            parts.append(f"minDistance=={_number(self.min_distance)}")
        if self.max_distance is not None:
            parts.append(f"maxDistance=={_number(self.max_distance)}")
        return ";".join(parts)

    def to_geoq(self) -> dict[str, Any]:
        """The `geoQ` object form (subscriptions, POST /entityOperations/query)."""
        return {
            "geometry": self.geometry,
            "coordinates": _thaw(self.coordinates),
            "georel": self.georel_text,
            "geoproperty": self.geoproperty,
        }

    def distance(self, entity_geometry: Any) -> float | None:
        """Minimal distance in metres between the query geometry and a GeoJSON geometry (None if it
        is not a usable geometry).

        Point to Point is the haversine great-circle distance, exact on the sphere (a sphere is
        within ~0.5% of the WGS84 ellipsoid). Otherwise both geometries are densified to 0.01° edges
        (so they follow the lon/lat edges GeoJSON means) and projected to an azimuthal equidistant
        projection centred on the query Point, or on the query geometry's centroid, and the planar
        minimum distance is returned. That projection is exact for distances from its centre and
        never shrinks lengths elsewhere, so the result is never less than the great-circle distance
        between the two points it found; it overestimates by about rho**2/6 (relative), rho being
        the angular distance from the centre: < 0.01% within 100 km, ~0.4% at 1000 km. Edges that
        cross the antimeridian are taken the short way here but the long way by the topological
        relations (GeoJSON's reading); split such geometries as RFC 7946 recommends.
        """
        if not isinstance(entity_geometry, dict):
            return None
        if self.geometry == "Point" and entity_geometry.get("type") == "Point":
            position = entity_geometry.get("coordinates")
            if _is_position(position):
                return haversine(self.coordinates[0], self.coordinates[1], position[0], position[1])
        target = _to_shape(entity_geometry)
        if target is None:
            return None
        try:
            projected = shapely.transform(_densify(target), self._projection())
            return float(shapely.distance(self._projected_shape(), projected))
        except ShapelyError:
            return None

    def matches_any(self, geometries: str) -> bool:
        """Whether one of a JSON array's GeoJSON geometries satisfies the query (the SQL side rows)."""
        found = json.loads(geometries)
        return isinstance(found, list) and any(self.matches(geometry) for geometry in found)

    def matches(self, entity_geometry: Any) -> bool:
        """Whether a GeoJSON geometry stored in an entity satisfies the query. Malformed geometries
        never match (whatever the relation, disjoint included)."""
        if self.georel == "near":
            distance = self.distance(entity_geometry)
            if distance is None:
                return False
            if self.max_distance is not None and distance > self.max_distance:
                return False
            return self.min_distance is None or distance >= self.min_distance
        target = _to_shape(entity_geometry)
        if target is None:
            return False
        try:
            return bool(_PREDICATES[self.georel](self._geom(), target))
        except ShapelyError:  # e.g. a TopologyException on an invalid stored polygon
            return False

    def bbox_prefilter(self) -> Box | None:
        """(min_lon, max_lon, min_lat, max_lat): every matching geometry's bounding box intersects
        it, so an R*Tree can discard the rest. None when no such box exists (disjoint, or near
        with only minDistance). A box that would cross the antimeridian or reach a pole spans all
        longitudes, since one R*Tree box cannot wrap."""
        if self.geometry == "Point":  # the usual near query: no GEOS geometry needed for its bounds
            min_lon = max_lon = float(self.coordinates[0])
            min_lat = max_lat = float(self.coordinates[1])
        else:
            min_lon, min_lat, max_lon, max_lat = (float(v) for v in self._geom().bounds)
        if self.georel in ("within", "contains", "intersects", "equals", "overlaps"):
            # within: entity box inside the query box; contains: around it; others: they share a point
            return min_lon, max_lon, min_lat, max_lat
        if self.georel != "near" or self.max_distance is None:
            return None
        # Any point within angular distance c of a query point differs from it by at most c in
        # latitude and asin(sin c / cos lat) in longitude (the cap's extent), worst at the largest |lat|.
        angle = (self.max_distance + PREFILTER_MARGIN) * (1 + 1e-9) / EARTH_RADIUS
        if angle >= math.pi:
            return (*FULL_LON, -90.0, 90.0)
        lat_lo = max(-90.0, min_lat - math.degrees(angle))
        lat_hi = min(90.0, max_lat + math.degrees(angle))
        worst_lat = math.radians(max(abs(min_lat), abs(max_lat)))
        if angle + worst_lat >= math.pi / 2:  # the cap reaches a pole: every longitude
            return (*FULL_LON, lat_lo, lat_hi)
        spread = math.degrees(math.asin(min(1.0, math.sin(angle) / math.cos(worst_lat))))
        lon_lo, lon_hi = min_lon - spread, max_lon + spread
        if lon_lo < -180.0 or lon_hi > 180.0:
            return (*FULL_LON, lat_lo, lat_hi)
        return lon_lo, lon_hi, lat_lo, lat_hi


def parse_geo_query(
    georel: str | None,
    geometry: str | None,
    coordinates: str | list[Any] | None,
    geoproperty: str | None,
) -> GeoQuery | None:
    """Validate the geo-query parameters; None when there is no geo-query (georel, geometry and
    coordinates all absent; a lone geoproperty is then ignored). `coordinates` is the JSON array
    text of the URL parameter (already URL-decoded) or the parsed array of a geoQ object.
    Raises BadRequestData with a detail naming what is wrong."""
    given = {"georel": georel, "geometry": geometry, "coordinates": coordinates}
    missing = [name for name, value in given.items() if value is None]
    if len(missing) == len(given):
        return None
    if missing:
        raise BadRequestData(
            "a geo-query needs georel, geometry and coordinates together; missing: " + ", ".join(missing)
        )
    relation, max_distance, min_distance = _parse_georel(georel)
    if not isinstance(geometry, str) or geometry not in GEOMETRIES:
        raise BadRequestData(f"geometry must be one of {', '.join(GEOMETRIES)}, got {_preview(geometry)}")
    position_array = _parse_coordinates(coordinates)
    check_geometry({"type": geometry, "coordinates": position_array}, "geo-query coordinates")
    # Simple-feature validity (e.g. self-intersection) is not required: the ETSI suite queries with
    # such polygons (019_11) and GEOS evaluates the predicates on them.
    name = DEFAULT_GEOPROPERTY if geoproperty is None else check_name(geoproperty, "geoproperty")
    return GeoQuery(relation, geometry, _freeze(position_array), name, max_distance, min_distance)


def parse_geoq(value: Any) -> GeoQuery:
    """The `geoQ` object of subscriptions and POST /entityOperations/query: georel, geometry and
    coordinates are mandatory, geoproperty optional; other members are ignored."""
    if not isinstance(value, dict):
        raise BadRequestData("geoQ must be a JSON object")
    query = parse_geo_query(
        value.get("georel"), value.get("geometry"), value.get("coordinates"), value.get("geoproperty")
    )
    if query is None:
        raise BadRequestData("geoQ needs georel, geometry and coordinates")
    return query


def compile_geo(query: GeoQuery, expand: Callable[[str], str]) -> Predicate:
    """A predicate over internal entities: the entity matches when any GeoProperty instance
    (datasetId) of the expanded geoproperty matches; without that attribute it never does."""
    attribute = expand(query.geoproperty)

    def predicate(entity: Entity) -> bool:
        attrs = entity.get("attrs")
        instances = attrs.get(attribute) if isinstance(attrs, dict) else None
        if not isinstance(instances, list):
            return False
        return any(
            isinstance(instance, dict)
            and instance.get("type") == "GeoProperty"
            and query.matches(instance.get("value"))
            for instance in instances
        )

    return predicate


def haversine(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres (haversine: well-conditioned for small distances)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((phi2 - phi1) / 2) ** 2
        + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS * math.asin(math.sqrt(min(1.0, max(0.0, h))))


# --- helpers ---------------------------------------------------------------------------------------


def _parse_georel(text: Any) -> tuple[str, float | None, float | None]:
    """(relation, maxDistance, minDistance) from `near;maxDistance==N`, `within`, ..."""
    if not isinstance(text, str):
        raise BadRequestData(f"georel must be a string, got {_preview(text)}")
    relation, *modifiers = text.split(";")
    if relation in TOPOLOGICAL:
        if modifiers:
            raise BadRequestData(f"georel {relation!r} takes no distance, got {_preview(text)}")
        return relation, None, None
    if relation != "near":
        raise BadRequestData(
            f"unknown georel {_preview(text)}: expected near;maxDistance==<m>, {', '.join(TOPOLOGICAL)}"
        )
    if not modifiers:
        raise BadRequestData("georel near needs a distance: near;maxDistance==<metres> or near;minDistance==<metres>")
    if len(modifiers) > 1:
        raise BadRequestData("georel near takes exactly one of maxDistance or minDistance")
    distances: dict[str, float] = {}
    for modifier in modifiers:
        match = _DISTANCE.fullmatch(modifier)
        if match is None:
            raise BadRequestData(
                f"invalid near modifier {_preview(modifier)}: expected maxDistance==<metres> or minDistance==<metres>"
            )
        if match[1] in distances:
            raise BadRequestData(f"georel near gives {match[1]} twice")
        distance = float(match[2])
        if not math.isfinite(distance):
            raise BadRequestData(f"{match[1]} must be a finite number of metres, got {match[2]}")
        if match[1] == "maxDistance" and distance <= 0:
            raise BadRequestData("maxDistance must be a positive number of metres")
        distances[match[1]] = distance
    max_distance, min_distance = distances.get("maxDistance"), distances.get("minDistance")
    if max_distance is not None and min_distance is not None and min_distance > max_distance:
        raise BadRequestData(f"minDistance ({_number(min_distance)}) exceeds maxDistance ({_number(max_distance)})")
    return "near", max_distance, min_distance


def _parse_coordinates(coordinates: Any) -> list[Any]:
    value = coordinates
    if isinstance(coordinates, str):
        try:
            value = json.loads(coordinates)
        except (ValueError, RecursionError) as exc:
            raise BadRequestData(f"coordinates must be a JSON array, got {_preview(coordinates)}") from exc
    if not isinstance(value, list):
        raise BadRequestData(f"coordinates must be a JSON array, got {_preview(coordinates)}")
    return value


def _is_position(value: Any) -> TypeGuard[list[float]]:
    return (
        isinstance(value, list)
        and 2 <= len(value) <= 3
        and all(isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c) for c in value)
    )


def _to_shape(geometry: Any) -> Any | None:
    """A shapely geometry, or None for anything GEOS cannot read (stored data is never trusted)."""
    if not isinstance(geometry, dict):
        return None
    try:
        geom = shape(geometry)
    except (ShapelyError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return None if geom.is_empty else geom


def _azimuthal_equidistant(lon0: float, lat0: float) -> Projection:
    """Spherical azimuthal equidistant projection centred on (lon0, lat0), in metres. Written as
    (distance, azimuth) -> (x, y) so that the antipode stays far away instead of collapsing to 0."""
    lam0, phi0 = math.radians(lon0), math.radians(lat0)
    sin0, cos0 = math.sin(phi0), math.cos(phi0)

    def project(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        lam = np.radians(points[:, 0]) - lam0
        phi = np.radians(points[:, 1])
        cos_phi = np.cos(phi)
        h = np.sin((phi - phi0) / 2) ** 2 + cos0 * cos_phi * np.sin(lam / 2) ** 2
        radius = 2 * EARTH_RADIUS * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
        azimuth = np.arctan2(np.sin(lam) * cos_phi, cos0 * np.sin(phi) - sin0 * cos_phi * np.cos(lam))
        return np.column_stack((radius * np.sin(azimuth), radius * np.cos(azimuth)))

    return project


def _freeze(value: Any) -> Any:
    return tuple(_freeze(item) for item in value) if isinstance(value, list) else value


def _thaw(value: Any) -> Any:
    return [_thaw(item) for item in value] if isinstance(value, tuple) else value


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _preview(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
