"""A year of real hourly history for the demo stations, from the time series CityOS ships.

Each shipped series (data/timeseries/) is read row by row and re-labelled: its columns become
attributes of demo stations (a Beijing air-quality and weather station becomes the demo's central
AirQualityObserved and WeatherObserved; an I-94 traffic counter in Minneapolis becomes a
TrafficFlowObserved). Times are converted from the series' local time to UTC and kept as recorded.

The instances are plain data; load_history hands them to a TemporalSink, the seam through which a
temporal store (or a client of the temporal API) receives them.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from importlib import resources
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from cityos.ingest.convert import format_utc

COMPASS = ("N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW", "NW", "NNW")
MISSING = frozenset({"", "NA", "NaN", "nan"})


@dataclass(frozen=True, slots=True)
class HistoryInstance:
    """One observed value of one attribute of one entity."""

    entity_id: str
    entity_type: str
    attribute: str
    observed_at: str
    value: float | str
    unit_code: str | None = None

    def instance(self) -> dict[str, Any]:
        """The NGSI-LD attribute instance (normalized), as the temporal API takes it."""
        body: dict[str, Any] = {"type": "Property", "value": self.value, "observedAt": self.observed_at}
        if self.unit_code:
            body["unitCode"] = self.unit_code
        return body


@dataclass(frozen=True, slots=True)
class Column:
    """A series column: the station role it belongs to, the attribute it becomes, its unit."""

    name: str
    role: str
    attribute: str
    unit: str | None = None
    convert: Callable[[str], float] = float


@dataclass(frozen=True, slots=True)
class Series:
    file: str
    zone: tzinfo
    local_time: Callable[[dict[str, str]], datetime]  # naive local time of a row
    columns: tuple[Column, ...]
    description: str


def wind_degrees(compass: str) -> float:
    """A 16-point compass direction as degrees in (-180, 180], as the SDM schemas want it."""
    degrees = COMPASS.index(compass.strip().upper()) * 22.5
    return degrees if degrees <= 180 else degrees - 360


def _beijing_time(row: dict[str, str]) -> datetime:
    return datetime(int(row["year"]), int(row["month"]), int(row["day"]), int(row["hour"]))


def _minneapolis_time(row: dict[str, str]) -> datetime:
    return datetime.strptime(row["datetime"], "%Y-%m-%d %H:%M:%S")


SERIES = {
    "beijing-air-quality": Series(
        "beijing-aotizhongxin-2016-03_2017-02.csv.gz",
        timezone(timedelta(hours=8)),  # China Standard Time, no daylight saving
        _beijing_time,
        (
            Column("PM2.5", "air", "pm25", "GQ"),
            Column("PM10", "air", "pm10", "GQ"),
            Column("SO2", "air", "so2", "GQ"),
            Column("NO2", "air", "no2", "GQ"),
            Column("CO", "air", "co", "GQ"),
            Column("O3", "air", "o3", "GQ"),
            Column("TEMP", "weather", "temperature", "CEL"),
            Column("PRES", "weather", "atmosphericPressure", "A97"),
            Column("DEWP", "weather", "dewPoint", "CEL"),
            Column("RAIN", "weather", "precipitation", "MMT"),
            Column("WSPM", "weather", "windSpeed", "MTS"),
            Column("wd", "weather", "windDirection", "DD", wind_degrees),
        ),
        "UCI Beijing Multi-Site Air Quality, Aotizhongxin station, 2016-03-01 to 2017-02-28",
    ),
    "minneapolis-traffic": Series(
        "minneapolis-i94-traffic-2016-10_2017-09.csv.gz",
        ZoneInfo("America/Chicago"),
        _minneapolis_time,
        (Column("traffic_volume", "traffic", "intensity"),),
        "UCI Metro Interstate Traffic Volume, westbound I-94, 2016-10-01 to 2017-09-30",
    ),
}


def series_rows(series: Series) -> Iterator[dict[str, str]]:
    raw = resources.files("cityos.ingest").joinpath("data", "timeseries", series.file).read_bytes()
    yield from csv.DictReader(io.StringIO(gzip.decompress(raw).decode("utf-8")))


def type_of(entity_id: str) -> str:
    """The type named in an id of the form urn:ngsi-ld:{Type}:{name}, as the demo stations' are."""
    parts = entity_id.split(":")
    if len(parts) < 4 or parts[:2] != ["urn", "ngsi-ld"]:
        raise ValueError(f"{entity_id} is not of the form urn:ngsi-ld:Type:name")
    return parts[2]


def series_instances(name: str, stations: Mapping[str, str]) -> Iterator[HistoryInstance]:
    """The instances of a shipped series, its station roles re-labelled to entity ids
    (urn:ngsi-ld:{Type}:{name}); missing values are skipped, as are local times that do not exist
    (the spring daylight-saving gap)."""
    series = SERIES[name]
    columns = [c for c in series.columns if c.role in stations]
    types = {role: type_of(entity_id) for role, entity_id in stations.items()}
    for row in series_rows(series):
        local = series.local_time(row).replace(tzinfo=series.zone)
        if local.astimezone(UTC).astimezone(series.zone).replace(tzinfo=None) != local.replace(tzinfo=None):
            continue
        observed = format_utc(local)
        for column in columns:
            raw = row.get(column.name, "").strip()
            if raw in MISSING:
                continue
            yield HistoryInstance(
                stations[column.role], types[column.role], column.attribute, observed, column.convert(raw), column.unit
            )


def latest(instances: Iterable[HistoryInstance]) -> dict[tuple[str, str], HistoryInstance]:
    """The last instance of each (entity, attribute): the current values of a station."""
    found: dict[tuple[str, str], HistoryInstance] = {}
    for item in instances:
        key = (item.entity_id, item.attribute)
        if key not in found or item.observed_at >= found[key].observed_at:
            found[key] = item
    return found


class TemporalSink(Protocol):
    """Where history goes: a temporal store, or a client of POST /temporal/entities/{id}/attrs."""

    async def add_attribute_instances(
        self, tenant: str, entity_id: str, entity_type: str, attrs: Mapping[str, Sequence[dict[str, Any]]]
    ) -> None:
        """Append instances (normalized, with observedAt; attribute names as terms of the core
        @context) to an entity's attribute history, creating the temporal entity if needed."""


async def load_history(
    sink: TemporalSink,
    tenant: str,
    instances: Iterable[HistoryInstance],
    *,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Hand every instance to the sink, grouped per entity in batches; returns how many.
    `progress` hears how many have been handed over after each batch."""
    pending: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    counts: dict[tuple[str, str], int] = {}
    total = 0
    sent = 0
    for item in instances:
        key = (item.entity_id, item.entity_type)
        attrs = pending.setdefault(key, {})
        attrs.setdefault(item.attribute, []).append(item.instance())
        counts[key] = counts.get(key, 0) + 1
        total += 1
        if counts[key] >= batch_size:
            await sink.add_attribute_instances(tenant, item.entity_id, item.entity_type, pending.pop(key))
            sent += counts[key]
            counts[key] = 0
            if progress is not None:
                progress(sent)
    for (entity_id, entity_type), attrs in pending.items():
        await sink.add_attribute_instances(tenant, entity_id, entity_type, attrs)
        sent += counts[(entity_id, entity_type)]
        if progress is not None:
            progress(sent)
    return total
