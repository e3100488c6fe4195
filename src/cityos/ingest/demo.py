"""The demo city: real data files shipped with CityOS, loaded into one coherent place.

`cityos demo` (and `cityos serve --demo-on-empty`, which `make run` uses) loads the GTFS Demo Transit
Authority feed, Smart Data Models entities placed around the same town (data/demo-city.yaml) and
sets the stations' current values from the last hour of a real year of hourly history. The history
itself goes to a TemporalSink when one is given (history.load_history).

The feed's service calendar ran from 2007 to 2010. So that the citizens' page shows departures
today, the demo (and only the demo: `cityos gtfs` imports a feed as it is) moves the feed's
calendar.txt and calendar_dates.txt dates forward by whole weeks when it loads it (shift_calendar),
keeping each date's weekday, until the calendar ends a year or more after the day of the load.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from importlib import resources
from typing import Any

import orjson
import yaml

from cityos.ingest import gtfs, history
from cityos.ingest.sink import Body, Sink, write_batches

# attributes of the SDM examples that describe the example's own place, not the demo city's
PLACE_ATTRIBUTES = frozenset(
    {
        "address",
        "areaServed",
        "municipalityInfo",
        "refPointOfInterest",
        "refDevice",
        "refRecord",
        "refSeeAlso",
        "refStreetlightGroup",
        "refStreetlightModel",
        "containedInPlace",
        "occupier",
        "owner",
        "source",
        "dataProvider",
        "wardId",
        "zoneId",
        "zoneName",
        "image",
        "mapUrl",
        "additionalInfoURL",
        "touristArea",
        "title",
        "priceRange",
        "alternateName",
        "license_plate",
        "parkingSiteId",
        "description",
        "name",
    }
)
DATA_SOURCE = "https://github.com/smart-data-models (CC BY 4.0), placed in the CityOS demo city"
AHEAD = timedelta(days=365)  # how long after the load the demo's shifted calendar still runs


@dataclass
class DemoReport:
    counts: dict[str, int] = field(default_factory=dict)
    gtfs: dict[str, int] = field(default_factory=dict)
    gtfs_shift_weeks: int = 0
    history_instances: int = 0
    history_stations: list[str] = field(default_factory=list)
    history_span: tuple[str, str] = ("", "")
    history_stored: bool = False
    failed: list[str] = field(default_factory=list)

    def lines(self, base_url: str = "http://127.0.0.1:1026") -> list[str]:
        """What was loaded, and three URLs to open, for the console."""
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.counts.items()))
        transit = ", ".join(f"{n} {t}" for t, n in sorted(self.gtfs.items()))
        stored = "stored" if self.history_stored else "not stored (no history sink given)"
        out = [
            "Loaded the CityOS demo city (Beatty, Nevada):",
            f"  Smart Data Models entities: {types}",
            f"  GTFS Demo Transit Authority: {transit}"
            + (
                f" (calendar moved {self.gtfs_shift_weeks} weeks forward to run today)" if self.gtfs_shift_weeks else ""
            ),
            f"  Hourly history: {self.history_instances} instances for {len(self.history_stations)} stations,"
            f" {self.history_span[0]} to {self.history_span[1]}, {stored}; current values set from the last hour",
        ]
        if self.failed:
            out.append(f"  Refused: {len(self.failed)} entities, first: {self.failed[0]}")
        api = base_url.rstrip("/") + "/ngsi-ld/v1/entities"
        out += [
            "Open:",
            f"  {api}?type=OffStreetParking&options=keyValues",
            f"  {api}?type=GtfsStop&options=keyValues",
            f"  {api}/urn:ngsi-ld:AirQualityObserved:beatty-central",
        ]
        return out


def _data(*parts: str) -> Any:
    return resources.files("cityos.ingest").joinpath("data", *parts)


def _plain(value: Any) -> Any:
    """SDM examples write dates as {"@type": "DateTime", "@value": ...}: keep the string."""
    if isinstance(value, dict):
        if set(value) == {"@type", "@value"}:
            return value["@value"]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def template(name: str) -> Body:
    """A shipped SDM normalized example, without its @context (the core context applies)."""
    body: Body = orjson.loads(_data("sdm", f"{name}.json").read_bytes())
    body.pop("@context", None)
    result: Body = _plain(body)
    return result


def city_bodies(layout: dict[str, Any]) -> list[Body]:
    """The Smart Data Models entities of the demo layout."""
    templates: dict[str, Body] = {}
    bodies = []
    for item in layout["entities"]:
        kind = item["template"]
        if kind not in templates:
            templates[kind] = template(kind)
        body = {k: v for k, v in copy.deepcopy(templates[kind]).items() if k not in PLACE_ATTRIBUTES}
        body["id"] = f"urn:ngsi-ld:{kind}:{item['id']}"
        where = item["location"]
        geometry = where if isinstance(where, dict) else {"type": "Point", "coordinates": where}
        body["location"] = {"type": "GeoProperty", "value": geometry}
        body["name"] = {"type": "Property", "value": item["name"]}
        address = dict(layout["address"])
        if item.get("street"):
            address["streetAddress"] = item["street"]
        body["address"] = {"type": "Property", "value": address}
        body["dataProvider"] = {"type": "Property", "value": DATA_SOURCE}
        for name, value in (item.get("attrs") or {}).items():
            body[name] = {"type": "Property", "value": value}
        bodies.append(body)
    return bodies


def layout() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(_data("demo-city.yaml").read_text(encoding="utf-8"))
    return loaded


def history_instances(plan: dict[str, Any]) -> list[history.HistoryInstance]:
    instances: list[history.HistoryInstance] = []
    for item in plan.get("history", []):
        instances.extend(history.series_instances(item["series"], item["stations"]))
    return instances


def _yyyymmdd(value: str) -> date | None:
    try:
        return datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        return None


def shift_calendar(feed: gtfs.Feed, today: date) -> int:
    """Move the feed's service dates (calendar.txt's start_date and end_date, calendar_dates.txt's
    date) forward by the fewest whole weeks that make its calendar run until at least a year after
    `today` (weekdays stay: a Monday rule still falls on Mondays); the number of weeks (0: none).
    The demo's only: a real feed's dates are the agency's."""
    ends = [d for row in feed.rows("calendar") if (d := _yyyymmdd(row.get("end_date", ""))) is not None]
    ends += [d for row in feed.rows("calendar_dates") if (d := _yyyymmdd(row.get("date", ""))) is not None]
    if not ends:
        return 0
    weeks = math.ceil((today + AHEAD - max(ends)).days / 7)
    if weeks <= 0:
        return 0
    step = timedelta(weeks=weeks)
    for table, columns in (("calendar", ("start_date", "end_date")), ("calendar_dates", ("date",))):
        for row in feed.rows(table):
            for column in columns:
                moved = _yyyymmdd(row.get(column, ""))
                if moved is not None:
                    row[column] = (moved + step).strftime("%Y%m%d")
    return weeks


def demo_feed(today: date | None = None) -> tuple[gtfs.Feed, list[gtfs.Issue], int]:
    """The demo's GTFS feed, read, its calendar shifted to run `today` (default: the local date),
    its reading's issues and the weeks it was moved."""
    with resources.as_file(_data("gtfs", "sample-feed.zip")) as feed_path:
        feed, issues = gtfs.read_feed(feed_path)
    return feed, issues, shift_calendar(feed, today or date.today())


def entity_ids() -> list[str]:
    """Every entity the demo city writes (its transit feed, its Smart Data Models entities; the
    stations with a history are among them), read from its files without writing anything. The
    calendar date rules' ids carry their (shifted) dates: those of a load on another week differ,
    and whatever is in the tenant is removed anyway (ingest/service.py)."""
    feed, _, _ = demo_feed()
    transit = [body["id"] for body in gtfs.entities(feed, "")]
    return sorted({*transit, *(body["id"] for body in city_bodies(layout()))})


class _HistoryProgress:
    """Reports the history load in steps of a tenth, so a slow start-up says what it is doing."""

    def __init__(self, total: int, progress: Callable[[str], None]) -> None:
        self.total = max(total, 1)
        self.progress = progress
        self.shown = 0

    def __call__(self, done: int) -> None:
        tenth = done * 10 // self.total
        if tenth > self.shown:
            self.shown = tenth
            self.progress(f"history {tenth * 10}% ({done} of {self.total} hourly instances)")


async def load_demo(
    sink: Sink,
    tenant: str = "",
    *,
    history_sink: history.TemporalSink | None = None,
    progress: Callable[[str], None] | None = None,
    today: date | None = None,
) -> DemoReport:
    """Load the whole demo city through `sink` (and its history through `history_sink`);
    `progress` hears a short line at each step; the transit calendar is moved to run `today`
    (default: the local date; shift_calendar)."""
    say = progress or (lambda _: None)
    plan = layout()
    report = DemoReport()
    say("GTFS Demo Transit Authority feed")
    feed, issues, report.gtfs_shift_weeks = demo_feed(today)
    transit = await gtfs.write_feed(feed, issues, sink, tenant)
    report.gtfs = transit.counts
    report.failed += transit.failed
    say("Smart Data Models entities")
    bodies = city_bodies(plan)
    instances = history_instances(plan)
    by_id = {body["id"]: body for body in bodies}
    for (entity_id, attr), last in history.latest(instances).items():
        by_id[entity_id][attr] = last.instance()
    for body in bodies:
        report.counts[body["type"]] = report.counts.get(body["type"], 0) + 1
    summary = await write_batches(sink, tenant, bodies, replace=True)
    report.failed += [f"{r.entity_id}: {r.error}" for r in summary.failed]
    report.history_instances = len(instances)
    report.history_stations = sorted({i.entity_id for i in instances})
    if instances:
        times = [i.observed_at for i in instances]
        report.history_span = (min(times), max(times))
    if history_sink is not None:
        await history.load_history(
            history_sink, tenant, instances, progress=_HistoryProgress(len(instances), say) if progress else None
        )
        report.history_stored = True
    return report
