"""The geographic area of a policy: an entity is inside when its location lies within the polygon
(shapely, in the lon/lat plane, as the geo-queries of query/geo.py). An entity without a location,
or with one GEOS cannot read, is outside: an area policy never grants what it cannot place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import shapely  # type: ignore[import-untyped]

from cityos.entities.model import NGSI, Entity
from cityos.entities.values import check_geometry
from cityos.errors import BadRequestData
from cityos.query.geo import _to_shape

LOCATION = NGSI + "location"


def _is_xy(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) >= 2
        and all(isinstance(c, int | float) and not isinstance(c, bool) for c in value[:2])
    )


def check_area(value: Any) -> dict[str, Any]:
    geometry = check_geometry(value, "resources.area")
    if geometry["type"] not in ("Polygon", "MultiPolygon"):
        raise BadRequestData("resources.area must be a GeoJSON Polygon or MultiPolygon")
    if _to_shape(geometry) is None:
        raise BadRequestData("resources.area is not a valid polygon")
    return geometry


def inside(area: dict[str, Any]) -> Callable[[Entity], bool]:
    """A test of entities against the area (prepared once, per compiled view)."""
    polygon: Any = _to_shape(area)
    shapely.prepare(polygon)

    def test(entity: Entity) -> bool:
        instances = entity["attrs"].get(LOCATION)
        if not instances:
            return False
        for instance in instances:
            value = instance.get("value")
            coordinates: Any = value.get("coordinates") if isinstance(value, dict) else None
            if isinstance(value, dict) and value.get("type") == "Point" and _is_xy(coordinates):
                if not shapely.intersects_xy(polygon, coordinates[0], coordinates[1]):  # a point: on or inside
                    return False
                continue
            shape = _to_shape(value)
            if shape is None or not polygon.covers(shape):
                return False
        return True

    return test
