"""Raw values (UltraLight strings, JSON values, CSV cells) to typed NGSI-LD attributes.

One table of value types serves the IoT Agent's attribute mappings and the CSV mappings, so a
"Number" means the same thing whichever way a value came in. The names follow the FIWARE IoT Agent
(Number, Integer, Boolean, Text, DateTime, geo:point, geo:json, Relationship), matched without case.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from cityos.entities.values import check_geometry, is_uri
from cityos.errors import NgsiLdError

AUTO = "auto"
KINDS = {
    "": AUTO,
    "auto": AUTO,
    "property": AUTO,
    "number": "number",
    "float": "number",
    "double": "number",
    "integer": "integer",
    "int": "integer",
    "boolean": "boolean",
    "bool": "boolean",
    "text": "text",
    "string": "text",
    "datetime": "datetime",
    "date": "date",
    "geo:point": "point",
    "point": "point",
    "geo:json": "geojson",
    "geojson": "geojson",
    "geoproperty": "geojson",
    "relationship": "relationship",
    "json": "json",
    "structuredvalue": "json",
}
TRUE = frozenset({"true", "1", "yes", "on"})
FALSE = frozenset({"false", "0", "no", "off"})


class ConversionError(ValueError):
    """A raw value does not fit its declared type; the message names the value and the type."""


def value_kind(name: str) -> str:
    """The canonical kind for a type name; ValueError for names no mapping may use."""
    kind = KINDS.get(name.strip().lower())
    if kind is None:
        raise ValueError(f"unknown value type {name!r}; use one of {', '.join(sorted(k for k in KINDS if k))}")
    return kind


def utc_timestamp(raw: Any, what: str = "timestamp") -> str:
    """An ISO 8601 date-time as NGSI-LD observedAt wants it (UTC, ending in Z); a value without an
    offset is taken as UTC."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        moment = datetime.fromtimestamp(raw, UTC)
    elif isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw.strip())
        except ValueError as exc:
            raise ConversionError(f"{what} {raw!r} is not an ISO 8601 date-time") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    else:
        raise ConversionError(f"{what} {raw!r} is not an ISO 8601 date-time")
    return format_utc(moment)


def format_utc(moment: datetime) -> str:
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def _auto(raw: Any) -> Any:
    """FIWARE's autocast: a string that reads as a number or a boolean becomes one."""
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return raw
    return number if number == number and number not in (float("inf"), float("-inf")) else raw


def convert_value(raw: Any, kind: str, what: str) -> tuple[str, Any]:
    """(attribute type, value) for a raw value of a canonical kind (see value_kind).

    The attribute type is Property, GeoProperty or Relationship; ConversionError says why a value
    does not fit, naming `what` (e.g. "attribute t of device sensor-1").
    """
    try:
        return _convert(raw, kind)
    except (ValueError, TypeError, OverflowError, NgsiLdError) as exc:
        raise ConversionError(f"{what}: {raw!r} is not a valid {kind} ({exc})") from exc


def _convert(raw: Any, kind: str) -> tuple[str, Any]:
    if kind == AUTO:
        return "Property", _auto(raw)
    if kind == "number":
        if isinstance(raw, bool):
            raise ValueError("a boolean is not a number")
        number = float(raw) if isinstance(raw, str) else raw
        if not isinstance(number, int | float) or number != number or number in (float("inf"), float("-inf")):
            raise ValueError("not a finite number")
        return "Property", number
    if kind == "integer":
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError("not an integer")
        return "Property", int(raw.strip() if isinstance(raw, str) else raw)
    if kind == "boolean":
        if isinstance(raw, bool):
            return "Property", raw
        text = str(raw).strip().lower()
        if text in TRUE:
            return "Property", True
        if text in FALSE:
            return "Property", False
        raise ValueError("expected true or false")
    if kind == "text":
        return "Property", raw if isinstance(raw, str) else orjson.dumps(raw).decode()
    if kind == "datetime":
        return "Property", utc_timestamp(raw)
    if kind == "date":
        return "Property", datetime.strptime(str(raw).strip(), "%Y-%m-%d").date().isoformat()
    if kind == "point":
        if isinstance(raw, str):
            lat_text, lon_text = raw.split(",")
            lat, lon = float(lat_text), float(lon_text)
        else:
            lat, lon = float(raw[0]), float(raw[1])
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError("latitude or longitude out of range")
        return "GeoProperty", {"type": "Point", "coordinates": [lon, lat]}
    if kind == "geojson":
        geometry = orjson.loads(raw) if isinstance(raw, str) else raw
        return "GeoProperty", check_geometry(geometry, "geometry")
    if kind == "relationship":
        if not is_uri(raw):
            raise ValueError("not a URI")
        return "Relationship", raw
    if kind == "json":
        return "Property", orjson.loads(raw) if isinstance(raw, str) else raw
    raise ValueError(f"unknown kind {kind!r}")  # pragma: no cover


def attribute(kind: str, value: Any, *, observed_at: str | None = None, unit_code: str | None = None) -> dict[str, Any]:
    """A normalized NGSI-LD attribute for a converted value."""
    member = "object" if kind == "Relationship" else "value"
    body: dict[str, Any] = {"type": kind, member: value}
    if observed_at is not None:
        body["observedAt"] = observed_at
    if unit_code and kind == "Property":
        body["unitCode"] = unit_code
    return body
