"""GTFS static feeds: read a zip, validate it, map it to Smart Data Models UrbanMobility entities.

Validation runs before anything is written: a feed with errors (missing files or columns, bad
dates and times, references to stops, trips, routes or services that do not exist, duplicate ids)
is refused whole, with each problem named by file and line. Warnings (stops a few metres apart, an
expired calendar) are reported and do not stop the import.
"""

from __future__ import annotations

import csv
import io
import math
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cityos.ingest.sink import Sink, WriteSummary

Row = dict[str, str]
REQUIRED_FILES = ("agency", "stops", "routes", "trips", "stop_times")
COLUMNS = {  # required columns per file
    "agency": ("agency_name", "agency_url", "agency_timezone"),
    "stops": ("stop_id",),
    "routes": ("route_id", "route_type"),
    "trips": ("route_id", "service_id", "trip_id"),
    "stop_times": ("trip_id", "stop_id", "stop_sequence"),
    "calendar": (
        "service_id",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "start_date",
        "end_date",
    ),
    "calendar_dates": ("service_id", "date", "exception_type"),
    "shapes": ("shape_id", "shape_pt_lat", "shape_pt_lon", "shape_pt_sequence"),
    "frequencies": ("trip_id", "start_time", "end_time", "headway_secs"),
    "transfers": ("from_stop_id", "to_stop_id", "transfer_type"),
}
KEYS = {"agency": "agency_id", "stops": "stop_id", "routes": "route_id", "trips": "trip_id", "calendar": "service_id"}
WEEKDAYS = COLUMNS["calendar"][1:8]
TIME_RE = re.compile(r"^\d{1,3}:[0-5]\d:[0-5]\d$")
TOO_CLOSE_METRES = 2.0


@dataclass(frozen=True, slots=True)
class Issue:
    severity: str  # "error" or "warning"
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message}"


@dataclass
class Feed:
    """The feed's tables: file stem -> rows, each row with its line number in `_line`."""

    tables: dict[str, list[Row]] = field(default_factory=dict)
    columns: dict[str, set[str]] = field(default_factory=dict)

    def rows(self, name: str) -> list[Row]:
        return self.tables.get(name, [])


class GtfsError(Exception):
    """The feed cannot be imported; `issues` says why."""

    def __init__(self, issues: list[Issue]) -> None:
        errors = [i for i in issues if i.severity == "error"]
        super().__init__(f"the GTFS feed has {len(errors)} error(s); first: {errors[0] if errors else '?'}")
        self.issues = issues


def read_feed(path: Path) -> tuple[Feed, list[Issue]]:
    """The tables of a GTFS zip (the .txt files, at the top or in one folder)."""
    feed, issues = Feed(), []
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        return feed, [Issue("error", path.name, None, f"cannot read the zip: {exc}")]
    with archive:
        for info in archive.infolist():
            name = info.filename.rsplit("/", 1)[-1]
            if info.is_dir() or not name.endswith(".txt"):
                continue
            try:
                text = archive.read(info).decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                issues.append(Issue("error", name, None, f"not UTF-8 text: {exc.reason} at byte {exc.start}"))
                continue
            reader = csv.DictReader(io.StringIO(text))
            header = [column.strip() for column in reader.fieldnames or []]
            if len(set(header)) != len(header):
                issues.append(Issue("error", name, 1, "the header repeats a column"))
            rows = []
            for row in reader:
                if None in row:
                    issues.append(Issue("error", name, reader.line_num, "the row has more fields than the header"))
                clean = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                clean["_line"] = str(reader.line_num)
                rows.append(clean)
            feed.tables[name[:-4]] = rows
            feed.columns[name[:-4]] = set(header)
    return feed, issues


def _valid_date(value: str) -> bool:
    try:
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return len(value) == 8


def _number(value: str, low: float, high: float) -> bool:
    try:
        number = float(value)
    except ValueError:
        return False
    return low <= number <= high


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(h))


def validate(feed: Feed, today: date | None = None) -> list[Issue]:
    """Every problem of a feed, errors first-found first."""
    issues: list[Issue] = []

    def error(file: str, row: Row | None, message: str) -> None:
        issues.append(Issue("error", file + ".txt", int(row["_line"]) if row else None, message))

    def warn(file: str, row: Row | None, message: str) -> None:
        issues.append(Issue("warning", file + ".txt", int(row["_line"]) if row else None, message))

    for name in REQUIRED_FILES:
        if name not in feed.tables:
            error(name, None, "required file is missing")
    if "calendar" not in feed.tables and "calendar_dates" not in feed.tables:
        error("calendar", None, "the feed needs calendar.txt or calendar_dates.txt")
    for name, required in COLUMNS.items():
        if name in feed.tables:
            for column in required:
                if column not in feed.columns.get(name, set()):
                    error(name, None, f"missing required column {column}")
    for name, key in KEYS.items():
        seen: set[str] = set()
        for row in feed.rows(name):
            value = row.get(key, "")
            if value and value in seen:
                error(name, row, f"duplicate {key} {value!r}")
            seen.add(value)
        if name != "agency":
            for row in feed.rows(name):
                if key in row and not row[key]:
                    error(name, row, f"{key} is empty")

    def present(name: str, key: str) -> set[str]:
        return {row.get(key, "") for row in feed.rows(name)}

    agencies = present("agency", "agency_id")
    stops, routes, trips = present("stops", "stop_id"), present("routes", "route_id"), present("trips", "trip_id")
    services = present("calendar", "service_id") | present("calendar_dates", "service_id")
    shapes = present("shapes", "shape_id")
    if len(feed.rows("agency")) > 1 and "" in agencies:
        error("agency", None, "agency_id is required when the feed has several agencies")
    for row in feed.rows("stops"):
        if row.get("location_type", "0") in ("", "0", "1", "2"):
            if not row.get("stop_name"):
                error("stops", row, f"stop {row.get('stop_id')} has no stop_name")
            if not _number(row.get("stop_lat", ""), -90, 90) or not _number(row.get("stop_lon", ""), -180, 180):
                error("stops", row, f"stop {row.get('stop_id')} has no valid stop_lat/stop_lon")
        parent = row.get("parent_station")
        if parent and parent not in stops:
            error("stops", row, f"parent_station {parent!r} is not in stops.txt")
    for row in feed.rows("routes"):
        if not row.get("route_short_name") and not row.get("route_long_name"):
            error("routes", row, f"route {row.get('route_id')} has neither route_short_name nor route_long_name")
        if not row.get("route_type", "").isdigit():
            error("routes", row, f"route_type {row.get('route_type')!r} is not a number")
        agency = row.get("agency_id")
        if agency and "agency" in feed.tables and agency not in agencies:
            error("routes", row, f"agency_id {agency!r} is not in agency.txt")
    for row in feed.rows("trips"):
        if row.get("route_id") not in routes:
            error("trips", row, f"route_id {row.get('route_id')!r} is not in routes.txt")
        if services and row.get("service_id") not in services:
            error("trips", row, f"service_id {row.get('service_id')!r} is not in calendar.txt or calendar_dates.txt")
        if row.get("shape_id") and row["shape_id"] not in shapes:
            error("trips", row, f"shape_id {row['shape_id']!r} is not in shapes.txt")
    for row in feed.rows("stop_times"):
        if row.get("trip_id") not in trips:
            error("stop_times", row, f"trip_id {row.get('trip_id')!r} is not in trips.txt")
        if row.get("stop_id") not in stops:
            error("stop_times", row, f"stop_id {row.get('stop_id')!r} is not in stops.txt")
        if not row.get("stop_sequence", "").isdigit():
            error("stop_times", row, f"stop_sequence {row.get('stop_sequence')!r} is not a whole number")
        for column in ("arrival_time", "departure_time"):
            if row.get(column) and not TIME_RE.match(row[column]):
                error("stop_times", row, f"{column} {row[column]!r} is not H:MM:SS")
    for row in feed.rows("calendar"):
        for column in ("start_date", "end_date"):
            if not _valid_date(row.get(column, "")):
                error("calendar", row, f"{column} {row.get(column)!r} is not a YYYYMMDD date")
        if any(row.get(day) not in ("0", "1") for day in WEEKDAYS):
            error("calendar", row, "the weekday columns must be 0 or 1")
    for row in feed.rows("calendar_dates"):
        if not _valid_date(row.get("date", "")):
            error("calendar_dates", row, f"date {row.get('date')!r} is not a YYYYMMDD date")
        if row.get("exception_type") not in ("1", "2"):
            error("calendar_dates", row, f"exception_type {row.get('exception_type')!r} must be 1 or 2")
    for row in feed.rows("shapes"):
        if not _number(row.get("shape_pt_lat", ""), -90, 90) or not _number(row.get("shape_pt_lon", ""), -180, 180):
            error("shapes", row, "shape_pt_lat/shape_pt_lon is not a valid coordinate")
        if not row.get("shape_pt_sequence", "").isdigit():
            error("shapes", row, f"shape_pt_sequence {row.get('shape_pt_sequence')!r} is not a whole number")
    for row in feed.rows("frequencies"):
        if row.get("trip_id") not in trips:
            error("frequencies", row, f"trip_id {row.get('trip_id')!r} is not in trips.txt")
        for column in ("start_time", "end_time"):
            if not TIME_RE.match(row.get(column, "")):
                error("frequencies", row, f"{column} {row.get(column)!r} is not H:MM:SS")
    for row in feed.rows("transfers"):
        for column in ("from_stop_id", "to_stop_id"):
            if row.get(column) not in stops:
                error("transfers", row, f"{column} {row.get(column)!r} is not in stops.txt")
    counts: dict[str, int] = {}
    for row in feed.rows("shapes"):
        counts[row.get("shape_id", "")] = counts.get(row.get("shape_id", ""), 0) + 1
    for shape_id in sorted(k for k, n in counts.items() if n < 2):
        warn("shapes", None, f"shape {shape_id} has a single point: it is not imported")
    _warn_close_stops(feed, warn)
    ends = [row["end_date"] for row in feed.rows("calendar") if _valid_date(row.get("end_date", ""))]
    today = today or date.today()
    if ends and max(ends) < today.strftime("%Y%m%d"):
        warn("calendar", None, f"the service calendar ended on {max(ends)}: the feed has expired")
    return issues


def _warn_close_stops(feed: Feed, warn: Callable[[str, Row | None, str], None]) -> None:
    """Stops within TOO_CLOSE_METRES of each other (a grid keeps this linear)."""
    cells: dict[tuple[int, int], list[tuple[Row, tuple[float, float]]]] = {}
    for row in feed.rows("stops"):
        if row.get("location_type", "0") not in ("", "0"):
            continue  # stations and entrances sit on their stops by design
        try:
            point = (float(row["stop_lat"]), float(row["stop_lon"]))
        except (KeyError, ValueError):
            continue
        cell = (int(point[0] * 10_000), int(point[1] * 10_000))
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for other, other_point in cells.get((cell[0] + dx, cell[1] + dy), []):
                    distance = _metres(point, other_point)
                    if distance < TOO_CLOSE_METRES:
                        warn(
                            "stops",
                            row,
                            f"stops {other['stop_id']} and {row['stop_id']} are {distance:.1f} m apart",
                        )
        cells.setdefault(cell, []).append((row, point))


# -- mapping to Smart Data Models (UrbanMobility) -------------------------------------------------


def urn(kind: str, prefix: str, *parts: str) -> str:
    return f"urn:ngsi-ld:{kind}:{prefix}" + "_".join(quote(part, safe="-._~:") for part in parts)


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:]}"


def _time(value: str) -> str:
    return value.zfill(8)


def _put(body: dict[str, Any], name: str, value: Any) -> None:
    if value not in ("", None):
        body[name] = {"type": "Property", "value": value}


def _link(body: dict[str, Any], name: str, target: str | list[str] | None) -> None:
    if target:
        body[name] = {"type": "Relationship", "object": target}


def entities(feed: Feed, prefix: str = "") -> Iterator[dict[str, Any]]:
    """The feed as NGSI-LD bodies: agencies, stops and stations, routes, services and their
    calendar rules, trips, stop times, shapes, frequencies and transfers."""
    agencies = feed.rows("agency")
    sole_agency = urn("GtfsAgency", prefix, agencies[0].get("agency_id") or "agency") if len(agencies) == 1 else None
    for row in agencies:
        body: dict[str, Any] = {"id": urn("GtfsAgency", prefix, row.get("agency_id") or "agency"), "type": "GtfsAgency"}
        _put(body, "agencyName", row.get("agency_name"))
        _put(body, "name", row.get("agency_name"))
        _put(body, "page", row.get("agency_url"))
        _put(body, "timezone", row.get("agency_timezone"))
        _put(body, "language", row.get("agency_lang"))
        _put(body, "phone", row.get("agency_phone"))
        yield body
    stations = {row["stop_id"] for row in feed.rows("stops") if row.get("location_type") == "1"}
    for row in feed.rows("stops"):
        kind = "GtfsStation" if row["stop_id"] in stations else "GtfsStop"
        body = {"id": urn(kind, prefix, row["stop_id"]), "type": kind}
        _put(body, "name", row.get("stop_name"))
        _put(body, "code", row.get("stop_code"))
        _put(body, "description", row.get("stop_desc"))
        _put(body, "zoneCode", row.get("zone_id"))
        _put(body, "page", row.get("stop_url"))
        _put(body, "wheelChairAccessible", row.get("wheelchair_boarding"))
        if row.get("stop_lat") and row.get("stop_lon"):
            point = {"type": "Point", "coordinates": [float(row["stop_lon"]), float(row["stop_lat"])]}
            body["location"] = {"type": "GeoProperty", "value": point}
        parent = row.get("parent_station")
        if parent:
            _link(body, "hasParentStation", urn("GtfsStation" if parent in stations else "GtfsStop", prefix, parent))
        _link(body, "operatedBy", [sole_agency] if sole_agency else None)
        yield body
    for row in feed.rows("routes"):
        body = {"id": urn("GtfsRoute", prefix, row["route_id"]), "type": "GtfsRoute"}
        _put(body, "shortName", row.get("route_short_name"))
        _put(body, "name", row.get("route_long_name") or row.get("route_short_name"))
        _put(body, "description", row.get("route_desc"))
        _put(body, "routeType", row.get("route_type"))
        _put(body, "page", row.get("route_url"))
        _put(body, "routeColor", row.get("route_color"))
        _put(body, "routeTextColor", row.get("route_text_color"))
        _put(body, "routeSortOrder", int(row["route_sort_order"]) if row.get("route_sort_order") else None)
        agency = row.get("agency_id")
        _link(body, "operatedBy", urn("GtfsAgency", prefix, agency) if agency else sole_agency)
        yield body
    services = dict.fromkeys(r["service_id"] for r in feed.rows("calendar") + feed.rows("calendar_dates"))
    for service in services:
        body = {"id": urn("GtfsService", prefix, service), "type": "GtfsService"}
        _put(body, "name", service)
        _link(body, "operatedBy", sole_agency)
        yield body
    for row in feed.rows("calendar"):
        body = {"id": urn("GtfsCalendarRule", prefix, row["service_id"]), "type": "GtfsCalendarRule"}
        _link(body, "hasService", urn("GtfsService", prefix, row["service_id"]))
        for day in WEEKDAYS:
            _put(body, day, row[day] == "1")
        _put(body, "startDate", _date(row["start_date"]))
        _put(body, "endDate", _date(row["end_date"]))
        yield body
    for row in feed.rows("calendar_dates"):
        body = {
            "id": urn("GtfsCalendarDateRule", prefix, row["service_id"], row["date"]),
            "type": "GtfsCalendarDateRule",
        }
        _link(body, "hasService", urn("GtfsService", prefix, row["service_id"]))
        _put(body, "appliesOn", _date(row["date"]))
        _put(body, "exceptionType", row["exception_type"])
        yield body
    for row in feed.rows("trips"):
        body = {"id": urn("GtfsTrip", prefix, row["trip_id"]), "type": "GtfsTrip"}
        _put(body, "headSign", row.get("trip_headsign"))
        _put(body, "shortName", row.get("trip_short_name"))
        _put(body, "direction", int(row["direction_id"]) if row.get("direction_id", "").isdigit() else None)
        _put(body, "block", row.get("block_id"))
        _put(body, "wheelChairAccessible", row.get("wheelchair_accessible"))
        _put(body, "bikesAllowed", row.get("bikes_allowed"))
        _link(body, "hasRoute", urn("GtfsRoute", prefix, row["route_id"]))
        _link(body, "hasService", urn("GtfsService", prefix, row["service_id"]))
        _link(body, "hasShape", urn("GtfsShape", prefix, row["shape_id"]) if row.get("shape_id") else None)
        yield body
    for row in feed.rows("stop_times"):
        body = {"id": urn("GtfsStopTime", prefix, row["trip_id"], row["stop_sequence"]), "type": "GtfsStopTime"}
        _link(body, "hasTrip", urn("GtfsTrip", prefix, row["trip_id"]))
        _link(body, "hasStop", urn("GtfsStop", prefix, row["stop_id"]))
        _put(body, "stopSequence", int(row["stop_sequence"]))
        _put(body, "arrivalTime", _time(row["arrival_time"]) if row.get("arrival_time") else None)
        _put(body, "departureTime", _time(row["departure_time"]) if row.get("departure_time") else None)
        _put(body, "stopHeadsign", row.get("stop_headsign"))
        _put(body, "pickupType", row.get("pickup_type"))
        _put(body, "dropOffType", row.get("drop_off_type"))
        _put(body, "distanceTravelled", float(row["shape_dist_traveled"]) if row.get("shape_dist_traveled") else None)
        yield body
    yield from _shapes(feed, prefix)
    for row in feed.rows("frequencies"):
        body = {"id": urn("GtfsFrequency", prefix, row["trip_id"], row["start_time"]), "type": "GtfsFrequency"}
        _link(body, "hasTrip", urn("GtfsTrip", prefix, row["trip_id"]))
        _put(body, "startTime", _time(row["start_time"]))
        _put(body, "endTime", _time(row["end_time"]))
        _put(body, "headwaySeconds", int(row["headway_secs"]) if row["headway_secs"].isdigit() else None)
        _put(body, "exactTimes", row.get("exact_times") == "1")
        yield body
    for row in feed.rows("transfers"):
        body = {
            "id": urn("GtfsTransferRule", prefix, row["from_stop_id"], row["to_stop_id"]),
            "type": "GtfsTransferRule",
        }
        _link(body, "hasOrigin", urn("GtfsStop", prefix, row["from_stop_id"]))
        _link(body, "hasDestination", urn("GtfsStop", prefix, row["to_stop_id"]))
        _put(body, "transferType", row.get("transfer_type"))
        _put(body, "minimumTransferTime", int(row["min_transfer_time"]) if row.get("min_transfer_time") else None)
        yield body


def _shapes(feed: Feed, prefix: str) -> Iterator[dict[str, Any]]:
    points: dict[str, list[tuple[int, float, float, str]]] = {}
    for row in feed.rows("shapes"):
        points.setdefault(row["shape_id"], []).append(
            (
                int(row["shape_pt_sequence"]),
                float(row["shape_pt_lon"]),
                float(row["shape_pt_lat"]),
                row.get("shape_dist_traveled", ""),
            )
        )
    for shape_id, shape in points.items():
        shape.sort()
        if len(shape) < 2:
            continue
        line = {"type": "LineString", "coordinates": [[lon, lat] for _, lon, lat, _ in shape]}
        body: dict[str, Any] = {"id": urn("GtfsShape", prefix, shape_id), "type": "GtfsShape"}
        body["location"] = {"type": "GeoProperty", "value": line}
        if all(d for *_, d in shape):
            _put(body, "distanceTravelled", [float(d) for *_, d in shape])
        yield body


@dataclass
class GtfsReport:
    counts: dict[str, int]
    issues: list[Issue]
    written: int
    failed: list[str]


async def import_feed(
    path: Path,
    sink: Sink,
    tenant: str = "",
    *,
    prefix: str = "",
    batch_size: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> GtfsReport:
    """Validate a feed and, if it has no errors, write all its entities (GtfsError otherwise)."""
    feed, issues = read_feed(path)
    return await write_feed(feed, issues, sink, tenant, prefix=prefix, batch_size=batch_size, progress=progress)


async def write_feed(
    feed: Feed,
    issues: list[Issue],
    sink: Sink,
    tenant: str = "",
    *,
    prefix: str = "",
    batch_size: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> GtfsReport:
    """import_feed's second half, for a feed already read (`issues`: its reading's)."""
    if not any(i.severity == "error" for i in issues):
        issues += validate(feed)
    if any(i.severity == "error" for i in issues):
        raise GtfsError(issues)
    bodies = list(entities(feed, prefix))
    counts: dict[str, int] = {}
    for body in bodies:
        counts[body["type"]] = counts.get(body["type"], 0) + 1
    summary = WriteSummary()
    for start in range(0, len(bodies), batch_size):
        summary.add(await sink.upsert(tenant, bodies[start : start + batch_size], replace=True))
        if progress is not None:
            progress(min(start + batch_size, len(bodies)), len(bodies))
    failed = [f"{r.entity_id}: {r.error}" for r in summary.failed]
    return GtfsReport(counts, issues, summary.written, failed)
