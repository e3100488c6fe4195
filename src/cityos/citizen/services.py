"""The citizen services' core: each asks the public NGSI-LD API (a `Reader`, in practice
console/client.py's ApiClient as the anonymous caller) and shapes plain data for the API and the page.

No store access here: what a citizen sees is exactly what the access policies give the anonymous
caller; a caller refused at the API's door (no policy grants the public anything) sees nothing, and a
failed query comes back as `Unavailable` with the API's status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cityos.citizen import aqi
from cityos.console.client import API, Answer

MAX_RADIUS = 20_000  # metres: a "near me" search wider than a town is refused
DEFAULT_RADIUS = 2_000
MAX_RESULTS = 50
PARKING_TYPES = ("OffStreetParking", "ParkingSpot", "OnStreetParking")
PLACE_TYPES = ("PointOfInterest", "Museum", "Garden", "TouristDestination")


class Reader(Protocol):
    async def get(self, path: str, params: Mapping[str, Any] | None = None, **kw: Any) -> Answer: ...


class Invalid(ValueError):
    """A bad parameter: the handler answers 400 with this text."""


@dataclass
class Unavailable(Exception):
    """The API refused or failed: the handler passes its status on."""

    status: int
    detail: str


@dataclass(frozen=True)
class Where:
    lat: float
    lon: float
    radius: int


def where(params: Mapping[str, str]) -> Where:
    """lat, lon (WGS84 degrees) and radius (metres, default 2 km, at most MAX_RADIUS)."""
    try:
        lat, lon = float(params["lat"]), float(params["lon"])
        radius = int(params.get("radius") or DEFAULT_RADIUS)
    except (KeyError, ValueError) as bad:
        raise Invalid("lat and lon (degrees) are required; radius is a whole number of metres") from bad
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or math.isnan(lat) or math.isnan(lon):
        raise Invalid("lat must be within -90..90 and lon within -180..180")
    if not 1 <= radius <= MAX_RADIUS:
        raise Invalid(f"radius must be between 1 and {MAX_RADIUS} metres")
    return Where(lat, lon, radius)


def metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(min(1.0, h)))


def flat(entity: Mapping[str, Any]) -> dict[str, Any]:
    """An entity's attributes as plain values (keyValues) plus `observedAt`: when its attributes
    were last measured (the latest observedAt; the readings' own time, not the entity's)."""
    out: dict[str, Any] = {"id": entity.get("id"), "type": entity.get("type")}
    stamps: dict[str, str] = {}
    for name, attribute in entity.items():
        if name in ("id", "type", "@context"):
            continue
        if isinstance(attribute, list):  # several instances (datasetId): the first
            attribute = attribute[0] if attribute else None
        if not isinstance(attribute, dict):
            out[name] = attribute
            continue
        for key in ("value", "object", "json", "languageMap", "vocab"):
            if key in attribute:
                out[name] = attribute[key]
                break
        if isinstance(attribute.get("observedAt"), str):
            stamps[name] = attribute["observedAt"]
    out["observedAt"] = stamps
    return out


def observed(entity: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    """The latest observedAt of `names`, else the entity's dateObserved."""
    stamps = entity.get("observedAt") or {}
    found = [stamps[n] for n in names if n in stamps]
    return max(found) if found else entity.get("dateObserved")


def _point(entity: Mapping[str, Any]) -> tuple[float, float] | None:
    """(lat, lon) of a Point location, or of a geometry's first position."""
    geometry = entity.get("location")
    if not isinstance(geometry, dict):
        return None
    coords: Any = geometry.get("coordinates")
    while isinstance(coords, list) and coords and isinstance(coords[0], list):
        coords = coords[0]
    if isinstance(coords, list) and len(coords) >= 2:
        return float(coords[1]), float(coords[0])
    return None


async def near(api: Reader, types: tuple[str, ...], at: Where) -> list[dict[str, Any]]:
    """Entities of `types` within the radius (NGSI-LD geo-query near;maxDistance), nearest first,
    each with `distance` in metres, flattened (`flat`), as the API gives them to the anonymous caller."""
    params = {
        "type": ",".join(types),
        "georel": f"near;maxDistance=={at.radius}",
        "geometry": "Point",
        "coordinates": f"[{at.lon},{at.lat}]",
        "limit": MAX_RESULTS,
    }
    answer = await api.get(f"{API}/entities", params)
    if answer.status in (401, 403):  # no policy makes anything public: nothing to show
        return []
    if not answer.ok or not isinstance(answer.body, list):
        detail = answer.body.get("detail", "") if isinstance(answer.body, dict) else ""
        raise Unavailable(answer.status, str(detail or "the data could not be read"))
    found = []
    for normalized in answer.body:
        entity = flat(normalized)
        point = _point(entity)
        if point is not None:
            found.append({**entity, "distance": round(metres(at.lat, at.lon, *point))})
    return sorted(found, key=lambda e: (e["distance"], e["id"]))


def common(entity: Mapping[str, Any]) -> dict[str, Any]:
    point = _point(entity)
    return {
        "id": entity["id"],
        "type": entity.get("type"),
        "name": entity.get("name"),
        "distance": entity["distance"],
        "location": {"lat": point[0], "lon": point[1]} if point else None,
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


async def air_quality(api: Reader, at: Where) -> dict[str, Any]:
    """Stations near the caller with their pollutants (µg/m³) and both health indices."""
    stations = []
    for entity in await near(api, ("AirQualityObserved",), at):
        levels = {p: v for p in aqi.POLLUTANTS if (v := _number(entity.get(p))) is not None}
        us, cn = aqi.us_aqi(levels), aqi.cn_aqi(levels)
        stations.append(
            {
                **common(entity),
                "observed": observed(entity, aqi.POLLUTANTS),
                "pollutants": levels,
                "usAqi": {"value": us.value, "category": us.category, "primary": us.primary, "parts": us.parts},
                "cnAqi": {"value": cn.value, "category": cn.category, "primary": cn.primary, "parts": cn.parts},
            }
        )
    return {"stations": stations, "units": "µg/m³"}


async def parking(api: Reader, at: Where) -> dict[str, Any]:
    """Car parks near the caller with their free spaces (availableSpotNumber) and capacity."""
    sites = []
    for entity in await near(api, PARKING_TYPES, at):
        free = _number(entity.get("availableSpotNumber"))
        total = _number(entity.get("totalSpotNumber"))
        if free is None and entity.get("type") == "ParkingSpot":
            free = 1.0 if entity.get("status") == "free" else 0.0
            total = 1.0
        sites.append(
            {
                **common(entity),
                "free": int(free) if free is not None else None,
                "total": int(total) if total is not None else None,
                "observed": observed(entity, ("availableSpotNumber", "status")),
            }
        )
    return {"parking": sites}


async def places(api: Reader, at: Where) -> dict[str, Any]:
    """Points of interest and tourist destinations near the caller, with their opening hours."""
    found = []
    for entity in await near(api, PLACE_TYPES, at):
        hours = entity.get("openingHoursSpecification") or entity.get("openingHours")
        found.append(
            {
                **common(entity),
                "description": entity.get("description"),
                "category": entity.get("category"),
                "openingHours": hours if isinstance(hours, (list, str)) else None,
            }
        )
    return {"places": found}
