"""What a page shows, from NGSI-LD documents (normalized, compacted): plain data in, plain data out,
no web framework, so each rule is tested on its own."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

CORE = {"id", "type", "@context", "scope", "createdAt", "modifiedAt", "deletedAt"}
# a colour per Smart Data Models type (the map's layers and the type badges); others get a hash colour
TYPE_COLOURS = {
    "OffStreetParking": "#1f77b4",
    "ParkingSpot": "#1f77b4",
    "AirQualityObserved": "#2ca02c",
    "WeatherObserved": "#17becf",
    "TrafficFlowObserved": "#d62728",
    "Streetlight": "#bcbd22",
    "WasteContainer": "#8c564b",
    "Building": "#7f7f7f",
    "Garden": "#98df8a",
    "GtfsStop": "#9467bd",
    "Vehicle": "#ff7f0e",
    "PointOfInterest": "#e377c2",
    "Museum": "#e377c2",
    "Alert": "#d62728",
}
PALETTE = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354")
# the value a map symbol is coloured by, per type (docs/console.md, "Map")
DISPLAY_VALUE = {
    "OffStreetParking": "availableSpotNumber",
    "AirQualityObserved": "pm25",
    "WeatherObserved": "temperature",
    "TrafficFlowObserved": "intensity",
    "WasteContainer": "fillingLevel",
    "Building": "floorsAboveGround",
}


# UN/CEFACT unit codes (NGSI-LD unitCode) shown as their symbols; others are shown as the code
UNITS = {
    "C62": "",
    "P1": "%",
    "GQ": "µg/m³",
    "GP": "mg/m³",
    "CEL": "°C",
    "MMT": "mm",
    "MTR": "m",
    "KMT": "km",
    "KMH": "km/h",
    "MTS": "m/s",
    "HUR": "h",
    "MIN": "min",
    "SEC": "s",
    "A97": "hPa",
    "KWH": "kWh",
    "KWT": "kW",
    "LTR": "L",
}


# an ISO 8601 date-time (shown in the browser's time zone and language) or a date alone (shown as it is)
DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def when(value: Any) -> str:
    """ "time" for a date-time string, "day" for a date, "" for anything else: how a page marks a
    value for static/console.js to write it in the page's language."""
    if not isinstance(value, str) or len(value) > 40:
        return ""
    if DATE_TIME.fullmatch(value):
        return "time"
    return "day" if DATE.fullmatch(value) else ""


def unit(code: str) -> str:
    return UNITS.get(code, code)


def colour(entity_type: str) -> str:
    if entity_type in TYPE_COLOURS:
        return TYPE_COLOURS[entity_type]
    return PALETTE[sum(entity_type.encode()) % len(PALETTE)]


@dataclass
class Row:
    """One attribute of an entity as the entity page lists it."""

    name: str
    kind: str  # Property, Relationship, GeoProperty, LanguageProperty, ...
    value: Any
    unit: str = ""
    observed_at: str = ""
    dataset_id: str = ""
    numeric: bool = False
    sub: list[Row] = field(default_factory=list)


def _value(attr: dict[str, Any]) -> Any:
    for key in ("value", "object", "languageMap", "vocab", "json"):
        if key in attr:
            return attr[key]
    return None


def rows(entity: dict[str, Any]) -> list[Row]:
    """The attributes of an entity (every instance of a multi-attribute), sub-attributes nested."""
    found: list[Row] = []
    for name in sorted(k for k in entity if k not in CORE):
        instances = entity[name] if isinstance(entity[name], list) else [entity[name]]
        for attr in instances:
            if isinstance(attr, dict):
                found.append(_row(name, attr))
    return found


def _row(name: str, attr: dict[str, Any]) -> Row:
    value = _value(attr)
    meta = {"type", "value", "object", "languageMap", "vocab", "json", "unitCode", "observedAt", "datasetId"}
    meta |= {"createdAt", "modifiedAt", "instanceId"}
    sub = [_row(k, v) for k, v in sorted(attr.items()) if k not in meta and isinstance(v, dict)]
    return Row(
        name=name,
        kind=str(attr.get("type", "Property")),
        value=value,
        unit=str(attr.get("unitCode", "")),
        observed_at=str(attr.get("observedAt", "")),
        dataset_id=str(attr.get("datasetId", "")),
        numeric=isinstance(value, int | float) and not isinstance(value, bool),
        sub=sub,
    )


def relationships(entity: dict[str, Any]) -> list[tuple[str, str]]:
    """(attribute, target id) for each relationship the entity holds (outgoing links)."""
    links = []
    for row in rows(entity):
        if row.kind == "Relationship":
            targets = row.value if isinstance(row.value, list) else [row.value]
            links += [(row.name, str(t)) for t in targets if t]
    return links


def numeric_attributes(entity: dict[str, Any]) -> list[str]:
    """The attributes a chart can be drawn for (a number now; its history comes from the temporal API)."""
    return sorted({row.name for row in rows(entity) if row.numeric and row.kind == "Property"})


def short_id(entity_id: str) -> str:
    """`urn:ngsi-ld:Type:name` shows as `name` where space is short."""
    parts = entity_id.split(":")
    return parts[-1] if len(parts) > 3 else entity_id


def display(entity: dict[str, Any]) -> tuple[str, Any]:
    """The attribute a type is shown by (map colours, overview readings) and its value."""
    name = DISPLAY_VALUE.get(str(entity.get("type")), "")
    attr = entity.get(name)
    return name, _value(attr) if isinstance(attr, dict) else None


def readings(entities: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The freshest numeric readings (attributes with an observedAt), newest first."""
    found = []
    for entity in entities:
        for row in rows(entity):
            if row.numeric and row.observed_at:
                found.append(
                    {"id": entity["id"], "type": entity.get("type", ""), "name": row.name, "value": row.value}
                    | {"unit": row.unit, "observedAt": row.observed_at}
                )
    found.sort(key=lambda r: r["observedAt"], reverse=True)
    return found[:limit]


def kpis(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KPI tiles from the KeyPerformanceIndicator entities insight/kpi.py writes."""
    tiles = []
    for entity in entities:
        found = entity.get("kpiValue")
        value: dict[str, Any] = found if isinstance(found, dict) else {}
        status = value.get("status", {}).get("value", "") if isinstance(value.get("status"), dict) else ""
        name = entity.get("name", {})
        tiles.append(
            {
                "id": entity["id"],
                "name": name.get("value", short_id(entity["id"])) if isinstance(name, dict) else short_id(entity["id"]),
                "value": value.get("value"),
                "unit": value.get("unitCode", ""),
                "observedAt": value.get("observedAt", ""),
                "status": status,
            }
        )
    tiles.sort(key=lambda t: t["name"])
    return tiles


def _plain(entity: dict[str, Any], name: str) -> Any:
    attr = entity.get(name)
    return _value(attr) if isinstance(attr, dict) else ""


def alerts(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Open and acknowledged Alert entities (insight/alerts.py), most severe first."""
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3, "informational": 4}
    found = []
    for entity in entities:
        status = _value(entity.get("status", {})) if isinstance(entity.get("status"), dict) else None
        if status == "resolved":
            continue
        found.append(
            {"id": entity["id"], "status": status or ""}
            | {k: _plain(entity, k) for k in ("severity", "category", "description", "alertSource", "dateIssued")}
        )
    found.sort(key=lambda a: (order.get(str(a["severity"]), 9), str(a["id"])))
    return found
