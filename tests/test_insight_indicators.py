"""The indicator set beyond the first eight, on both back-ends, over the demo city as
`serve --demo-on-empty` loads it: each value checked against a plain-Python computation over the
shipped CSV, YAML, Smart Data Models and GTFS files. Also the input kinds they need (threshold
counts per hour or day, within-distance counts, the city profile) refused when declared wrong."""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.insight.model import IndicatorFileError, load_indicators, parse_indicator
from cityos.insight.profile import demo_profile, parse_profile
from cityos.settings import Settings
from test_insight_engine import BEIJING, _csv, traffic_by_hour

pytestmark = pytest.mark.slow(seconds=60)

INDICATORS = "/cityos/v1/indicators"
BEIJING_ZONE = timezone(timedelta(hours=8))


MONTH = """id = "temperature-month"
name = "Mean temperature of the calendar month"
standard = "test"
clause = "-"
unit = "CEL"
period = "calendar-month"
anchor = "latest"
formula = "temperature"

[inputs.temperature]
kind = "temporal"
type = "WeatherObserved"
attribute = "temperature"
aggregation = "avg"
unit = "CEL"
"""


@pytest.fixture(scope="module")
def demo(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    extra = tmp_path_factory.mktemp("indicators")
    (extra / "temperature-month.toml").write_text(MONTH, encoding="utf-8")
    settings = Settings(database=module_db_url, demo_on_empty=True, indicators_dir=str(extra))
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        answer = client.post(INDICATORS + "/compute")
        assert answer.status_code == 200, answer.text
        results = {item["id"]: item for item in answer.json()}
        verdicts = {key: client.get(f"{INDICATORS}/{key}/verify").json() for key in results}
        results["_verify"] = verdicts
        yield results


def beijing_by_utc(column: str) -> list[tuple[datetime, float]]:
    """(UTC time, value) of a column of the shipped Beijing file, missing values left out."""
    rows = _csv("cityos.ingest", "data", "timeseries", BEIJING)
    found = []
    for row in rows:
        if row[column] == "NA":
            continue
        local = datetime(int(row["year"]), int(row["month"]), int(row["day"]), int(row["hour"]), tzinfo=BEIJING_ZONE)
        found.append((local.astimezone(UTC), float(row[column])))
    return found


def periods_where(column: str, per: str, reduce: Callable[[list[float]], float], test: Callable[[float], bool]) -> int:
    """How many UTC hours or days of the column's values, reduced, pass the test."""
    groups: dict[Any, list[float]] = defaultdict(list)
    for moment, value in beijing_by_utc(column):
        groups[moment.date() if per == "daily" else moment.replace(minute=0, second=0)].append(value)
    return sum(1 for values in groups.values() if test(reduce(values)))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def demo_entities(template: str) -> list[dict[str, Any]]:
    """The demo city's entities of a template, as keyValues: the SDM example's values, then the layout's."""
    example = orjson.loads(resources.files("cityos.ingest").joinpath("data", "sdm", f"{template}.json").read_bytes())
    base = {k: v.get("value") for k, v in example.items() if isinstance(v, dict) and "value" in v}
    layout = yaml.safe_load(resources.files("cityos.ingest").joinpath("data", "demo-city.yaml").read_text())
    return [
        {**base, **(item.get("attrs") or {}), "location": item["location"]}
        for item in layout["entities"]
        if item["template"] == template
    ]


def gtfs_stop_points() -> list[tuple[float, float]]:
    feed_file = resources.files("cityos.ingest").joinpath("data", "gtfs", "sample-feed.zip")
    with resources.as_file(feed_file) as path, zipfile.ZipFile(path) as feed:
        rows = list(csv.DictReader(io.TextIOWrapper(feed.open("stops.txt"), "utf-8-sig")))
    return [(float(r["stop_lon"]), float(r["stop_lat"])) for r in rows]


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (mean Earth radius), independent of the broker's geo code."""
    lon1, lat1, lon2, lat2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


def near_transit(location: Any) -> bool:
    """Within 500 m of a stop: a point by its distance; a polygon if a corner is (a sufficient
    test, checked clear of the 500 m edge so the broker's exact polygon distance agrees)."""
    points = location["coordinates"][0] if isinstance(location, dict) else [location]
    nearest = min(metres(tuple(p), stop) for p in points for stop in gtfs_stop_points())
    assert abs(nearest - 500) > 50, nearest  # not a borderline case
    return nearest <= 500


@pytest.mark.parametrize(
    ("indicator", "column", "per", "reduce", "test"),
    [
        ("pm25-days-over-who-guideline", "PM2.5", "daily", mean, lambda v: v > 15),
        ("pm10-days-over-eu-limit", "PM10", "daily", mean, lambda v: v > 50),
        ("so2-days-over-eu-limit", "SO2", "daily", mean, lambda v: v > 125),
        ("no2-hours-over-eu-limit", "NO2", "hourly", max, lambda v: v > 200),
        ("o3-hours-over-eu-information-threshold", "O3", "hourly", max, lambda v: v > 180),
        ("summer-days", "TEMP", "daily", max, lambda v: v > 25),
        ("frost-days", "TEMP", "daily", min, lambda v: v < 0),
        ("tropical-nights", "TEMP", "daily", min, lambda v: v > 20),
        ("icing-days", "TEMP", "daily", max, lambda v: v < 0),
        ("heavy-precipitation-days", "RAIN", "daily", sum, lambda v: v >= 10),
    ],
)
def test_threshold_counts_match_plain_python(
    demo: dict[str, dict[str, Any]],
    indicator: str,
    column: str,
    per: str,
    reduce: Callable[[list[float]], float],
    test: Callable[[float], bool],
) -> None:
    result = demo[indicator]
    assert result["value"] == periods_where(column, per, reduce, test), result
    assert demo["_verify"][indicator]["matches"] is True
    # one weather station with a year of history: complete; two air stations, one with history: not
    expected = "complete" if column in ("TEMP", "RAIN") else "incomplete"
    assert result["status"] == expected, result


def test_weather_traffic_and_co_match_plain_python(demo: dict[str, dict[str, Any]]) -> None:
    temperatures = [v for _, v in beijing_by_utc("TEMP")]
    assert demo["temperature-annual-mean"]["value"] == pytest.approx(mean(temperatures), rel=1e-9)
    rain = [v for _, v in beijing_by_utc("RAIN")]
    assert demo["precipitation-annual-total"]["value"] == pytest.approx(math.fsum(rain), rel=1e-9, abs=1e-9)
    assert demo["co-annual-mean"]["value"] == pytest.approx(mean([v for _, v in beijing_by_utc("CO")]), rel=1e-9)
    assert demo["traffic-peak-hour"]["value"] == max(traffic_by_hour().values())
    for key in ("temperature-annual-mean", "precipitation-annual-total", "traffic-peak-hour"):
        assert demo[key]["status"] == "complete" and demo["_verify"][key]["matches"] is True


def test_parking_transit_and_profile_match_plain_python(demo: dict[str, dict[str, Any]]) -> None:
    parks = demo_entities("OffStreetParking")
    available, spaces = sum(p["availableSpotNumber"] for p in parks), sum(p["totalSpotNumber"] for p in parks)
    assert demo["parking-availability"]["value"] == pytest.approx(100 * available / spaces)
    population = demo_profile()["population"]
    assert population == 1010
    assert demo["parking-spaces-per-100k"]["value"] == pytest.approx(100_000 * spaces / population)
    assert demo["transit-stops-per-100k"]["value"] == pytest.approx(100_000 * len(gtfs_stop_points()) / population)
    assert demo["transit-trips-realtime-share"]["value"] == 0.0  # the demo has no GTFS-Realtime feed
    for indicator, template in (("buildings-near-transit", "Building"), ("places-near-transit", "PointOfInterest")):
        entities = demo_entities(template)
        share = 100 * sum(near_transit(e["location"]) for e in entities) / len(entities)
        assert demo[indicator]["value"] == pytest.approx(share), demo[indicator]
        assert demo[indicator]["status"] == "complete" and demo["_verify"][indicator]["matches"] is True
    assert demo["places-near-transit"]["value"] == 50.0  # the visitor center yes, Rhyolite no


def test_streetlights_and_waste_match_plain_python(demo: dict[str, dict[str, Any]]) -> None:
    lights = demo_entities("Streetlight")
    assert demo["streetlight-power-draw"]["value"] == pytest.approx(sum(e["powerConsumption"] for e in lights))
    faulty = sum(e["status"] != "ok" for e in lights)
    assert demo["streetlight-defect-share"]["value"] == pytest.approx(100 * faulty / len(lights))
    managed = sum(e["controllingMethod"] == "individual" for e in lights)
    assert demo["streetlight-telemanaged-share"]["value"] == pytest.approx(100 * managed / len(lights))
    bins = demo_entities("WasteContainer")
    levels = [e["fillingLevel"] for e in bins if "fillingLevel" in e]
    assert demo["waste-fill-level"]["value"] == pytest.approx(100 * sum(levels) / len(levels))
    assert demo["waste-containers-full-share"]["value"] == pytest.approx(
        100 * sum(v >= 0.8 for v in levels) / len(levels)
    )
    assert demo["waste-telemonitored-share"]["value"] == pytest.approx(100 * len(levels) / len(bins))
    for key in ("streetlight-power-draw", "waste-fill-level", "waste-containers-full-share"):
        assert demo[key]["status"] == "complete" and demo["_verify"][key]["matches"] is True


def test_a_calendar_month_is_its_utc_month(demo: dict[str, dict[str, Any]]) -> None:
    result = demo["temperature-month"]
    february = [v for moment, v in beijing_by_utc("TEMP") if (moment.year, moment.month) == (2017, 2)]
    assert result["value"] == pytest.approx(mean(february), rel=1e-9)
    assert result["window"] == ["2017-02-01T00:00:00Z", "2017-03-01T00:00:00Z"]
    assert result["coverage"] == pytest.approx(len(february) / (28 * 24), abs=1e-6)
    assert demo["_verify"]["temperature-month"]["matches"] is True


def test_every_shipped_indicator_computes_on_the_demo(demo: dict[str, dict[str, Any]]) -> None:
    shipped = load_indicators()
    assert len(shipped) >= 25 and "temperature-month" not in shipped
    for key in shipped:
        assert demo[key]["status"] in ("complete", "incomplete") and demo[key]["value"] is not None, demo[key]
        assert demo[key]["stored"] is True


def test_without_a_profile_per_population_is_incomplete(db_url: str) -> None:
    with TestClient(create_app(Settings(database=db_url)), base_url="http://127.0.0.1:1026") as client:
        result = client.post(f"{INDICATORS}/transit-stops-per-100k/compute").json()
    assert (result["value"], result["status"]) == (None, "incomplete")
    assert result["reason"] == "no data for population"


THRESHOLD = """id = "hot"
name = "Hot days"
standard = "test"
clause = "-"
unit = "C62"
period = "yearly"
formula = "days"

[inputs.days]
kind = "temporal"
type = "WeatherObserved"
attribute = "temperature"
aggregation = "max"
per = "daily"
compare = ">"
threshold = 25
unit = "C62"
"""


def refused(text: str) -> IndicatorFileError:
    with pytest.raises(IndicatorFileError) as caught:
        parse_indicator(text, "x.toml")
    return caught.value


def test_new_input_kinds_are_checked_at_load() -> None:
    item = parse_indicator(THRESHOLD, "x.toml").inputs["days"]
    assert (item.per, item.compare, item.threshold) == ("daily", ">", 25.0)
    error = refused(THRESHOLD.replace('compare = ">"\n', ""))
    assert "needs per, compare and threshold (missing compare)" in error.reason and error.line == 14
    assert "per must be one of hourly, daily" in refused(THRESHOLD.replace('per = "daily"', 'per = "weekly"')).reason
    assert "compare must be" in refused(THRESHOLD.replace('compare = ">"', 'compare = "=="')).reason
    assert (
        "in C62"
        in refused(THRESHOLD.replace('unit = "C62"\n', 'unit = "CEL"\n', 2).replace('"CEL"', '"C62"', 1)).reason
    )
    within = THRESHOLD.split("[inputs.days]")[0] + '[inputs.days]\nkind = "within"\ntype = "Building"\nunit = "C62"\n'
    assert "within needs near and a distance" in refused(within).reason
    assert (
        "a within input has no attribute"
        in refused(within + 'near = "GtfsStop"\ndistance = 5\nattribute = "x"\n').reason
    )
    profile = THRESHOLD.split("[inputs.days]")[0] + '[inputs.days]\nkind = "profile"\nkey = "area"\nunit = "C62"\n'
    assert "the profile's area is in KMK" in refused(profile).reason
    assert "key must be one of population, area" in refused(profile.replace('"area"', '"gdp"')).reason


def test_a_profile_file_is_checked(tmp_path: Path) -> None:
    assert parse_profile('population = 5000\narea = 12.5\nsource = "census"\n', "p.toml") == {
        "population": 5000.0,
        "area": 12.5,
    }
    for bad, reason in (("population = -1", "positive"), ("people = 3", "unknown field"), ("area = 'x'", "wrong type")):
        with pytest.raises(IndicatorFileError, match=reason):
            parse_profile(bad, "p.toml")


DISTRICTS = """id = "district-test"
name = "Faulty lights and mean temperature per district"
standard = "test"
clause = "-"
unit = "P1"
period = "daily"
scope = "district"
coverage = 0.0
formula = "100 * faulty / lights + 0 * temperature"
version = 1

[inputs.faulty]
kind = "count"
type = "Streetlight"
q = 'status!="ok"'
unit = "C62"

[inputs.lights]
kind = "count"
type = "Streetlight"
unit = "C62"

[inputs.temperature]
kind = "temporal"
type = "WeatherObserved"
attribute = "temperature"
aggregation = "avg"
unit = "C62"

[districts.north]
name = "North (test)"
polygon = [[10.0, 50.0], [11.0, 50.0], [11.0, 51.0], [10.0, 51.0], [10.0, 50.0]]

[districts.south]
polygon = [[10.0, 48.0], [11.0, 48.0], [11.0, 49.0], [10.0, 49.0], [10.0, 48.0]]
"""


def test_a_district_scope_gives_one_entity_per_polygon(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "district-test.toml").write_text(DISTRICTS, encoding="utf-8")
    settings = Settings(database=db_url, indicators_dir=str(tmp_path))
    entities = [
        ("Streetlight", "n1", [10.5, 50.5], {"status": "ok"}),
        ("Streetlight", "n2", [10.6, 50.5], {"status": "defectiveLamp"}),
        ("Streetlight", "s1", [10.5, 48.5], {"status": "ok"}),
        ("Streetlight", "out", [20.0, 48.5], {"status": "defectiveLamp"}),  # in no district
        ("WeatherObserved", "n", [10.5, 50.6], {}),
        ("WeatherObserved", "s", [10.5, 48.6], {}),
    ]
    now = datetime.now(UTC).replace(microsecond=0)
    stamps = [(now - timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%SZ") for h in (2, 1)]
    history = {"n": [10.0, 20.0], "s": [30.0]}
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        for kind, name, point, attrs in entities:
            body = {"id": f"urn:ngsi-ld:{kind}:{name}", "type": kind}
            body["location"] = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": point}}
            body |= {key: {"type": "Property", "value": value} for key, value in attrs.items()}
            assert client.post("/ngsi-ld/v1/entities", json=body).status_code == 201
        for name, values in history.items():
            instances = [
                {"type": "Property", "value": v, "observedAt": t} for v, t in zip(values, stamps, strict=False)
            ]
            added = client.post(
                f"/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WeatherObserved:{name}/attrs",
                json={"temperature": instances},
            )
            assert added.status_code in (201, 204), added.text
        answer = client.post(f"{INDICATORS}/district-test/compute")
        assert answer.status_code == 200, answer.text
        results = {item["district"]: item for item in answer.json()}
        assert results["north"]["value"] == 50.0 and results["south"]["value"] == 0.0
        assert results["north"]["entity"] == "urn:ngsi-ld:KeyPerformanceIndicator:district-test:north"
        north = client.get(f"/ngsi-ld/v1/entities/{results['north']['entity']}").json()
        assert north["areaServed"]["value"] == "North (test)"
        assert north["kpiValue"]["inputValues"]["value"] == {"faulty": 1.0, "lights": 2.0, "temperature": 15.0}
        south = client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:KeyPerformanceIndicator:district-test:south").json()
        assert south["kpiValue"]["inputValues"]["value"] == {"faulty": 0.0, "lights": 1.0, "temperature": 30.0}
        assert client.get(f"{INDICATORS}/district-test/verify").json()["matches"] is True
        listed = {item["id"]: item for item in client.get(INDICATORS).json()}
        assert set(listed["district-test"]["districts"]) == {"north", "south"}


def test_district_tables_are_checked() -> None:
    text = DISTRICTS.split("[inputs.temperature]")[0].replace(" + 0 * temperature", "")
    north = "[districts.north]\npolygon = [[10.0, 50.0], [11.0, 50.0], [11.0, 51.0], [10.0, 51.0], [10.0, 50.0]]\n"
    assert parse_indicator(text + north, "x.toml").districts[0].name == "north"
    assert "needs a [districts] table" in refused(text).reason
    assert "closed ring" in refused(text + north.replace("[10.0, 50.0]]", "[10.0, 50.5]]")).reason
    assert "unknown field 'area'" in refused(text + north + "area = 3\n").reason
