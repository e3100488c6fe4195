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
            point = _to_shape(instance.get("value"))
            if point is None or not polygon.covers(point):
                return False
        return True

    return test
