"""Forecasts (issue 17, part 4) and the register of models (part 5), on both back-ends.

History is written through the temporal API, averaged per hour by the store, forecast and written
as a TimeSeriesForecast entity through the one write path. The seasonal-naive method (ours, no
optional dependency) is checked against plain Python over the same readings; the statsforecast
model runs where the optional dependency is installed. The backtest metrics are checked against
plain-Python loops and a hand-worked example."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.insight import forecast as fc
from cityos.insight.backtest import coverage, mase, table
from cityos.insight.forecast_service import baseline_method
from cityos.insight.register import RegisterEntry
from cityos.settings import Settings

START = datetime(2020, 1, 1, tzinfo=UTC)
HOURS = 28 * 24 + 30  # more than the forecaster's 28 days of history
GAP = range(100, 105)  # hours without a reading
STATION = "urn:ngsi-ld:AirQualityObserved:test-station"
SHORT = "urn:ngsi-ld:AirQualityObserved:new-station"
FORECAST = "urn:ngsi-ld:TimeSeriesForecast:pm25-next-day:AirQualityObserved:test-station"


def level(hour: int) -> float:
    return round(40 + 10 * math.sin(2 * math.pi * (hour % 24) / 24) + 0.5 * (hour // 24), 3)


def readings(hour: int) -> list[tuple[datetime, float]]:
    """One reading an hour, two (averaging to the level) every 50th hour, none in the gap."""
    at = START + timedelta(hours=hour)
    if hour in GAP:
        return []
    if hour % 50 == 7:
        return [(at + timedelta(minutes=10), level(hour) - 1), (at + timedelta(minutes=40), level(hour) + 1)]
    return [(at + timedelta(minutes=30), level(hour))]


def instances(hours: range) -> list[dict[str, Any]]:
    return [
        {"type": "Property", "value": value, "observedAt": at.strftime("%Y-%m-%dT%H:%M:%SZ")}
        for hour in hours
        for at, value in readings(hour)
    ]


@pytest.fixture
def city(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database=db_url)), base_url="http://127.0.0.1:1026") as client:
        for entity, hours in ((STATION, range(HOURS)), (SHORT, range(HOURS - 10, HOURS))):
            body = {"id": entity, "type": "AirQualityObserved", "pm25": instances(hours)}
            answer = client.post("/ngsi-ld/v1/temporal/entities", json=body)
            assert answer.status_code in (201, 204), answer.text
        yield client


def expected_naive() -> tuple[list[float], float]:
    """Plain Python: the last day's hourly values, and the residual sigma of the filled window."""
    window = list(range(HOURS - 28 * 24, HOURS))
    known = {h: level(h) for h in window if h not in GAP}
    before, after = min(GAP) - 1, max(GAP) + 1
    filled = [
        known[h] if h in known else known[before] + (known[after] - known[before]) * (h - before) / (after - before)
        for h in window
    ]
    diffs = [filled[i] - filled[i - 24] for i in range(24, len(filled))]
    return filled[-24:], math.sqrt(sum(d * d for d in diffs) / len(diffs))


def test_a_forecast_is_written_through_the_write_path(city: TestClient) -> None:
    service = city.app.state.forecasts  # type: ignore[attr-defined]
    service.method, service.method_name = baseline_method, "seasonal naive (test)"
    answer = city.post("/cityos/v1/forecasters/pm25-next-day/compute")
    assert answer.status_code == 200, answer.text
    done = {item["entity"]: item for item in answer.json()}
    assert done[SHORT]["stored"] is False and "too few to forecast" in done[SHORT]["error"]
    assert done[STATION]["stored"] is True and done[STATION]["forecast"] == FORECAST

    entity = city.get(f"/ngsi-ld/v1/entities/{FORECAST}").json()
    assert entity["type"] == "TimeSeriesForecast"
    assert entity["refEntity"]["object"] == STATION and entity["forecastedAttribute"]["value"] == "pm25"
    valid_from = START + timedelta(hours=HOURS)
    assert entity["validFrom"]["value"] == valid_from.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert entity["validTo"]["value"] == (valid_from + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%SZ")
    forecast = entity["forecast"]
    assert forecast["observedAt"] == entity["validFrom"]["value"] and forecast["unitCode"] == "GQ"
    window = range(HOURS - 28 * 24, HOURS)
    assert forecast["historyInstances"]["value"] == sum(len(readings(h)) for h in window)
    assert forecast["filledSteps"]["value"] == len(GAP)
    assert forecast["method"]["value"] == "seasonal naive (test)"

    last_day, sigma = expected_naive()
    values = forecast["value"]
    assert [v["at"] for v in values] == [
        (valid_from + timedelta(hours=k)).strftime("%Y-%m-%dT%H:%M:%SZ") for k in range(24)
    ]
    z80, z95 = NormalDist().inv_cdf(0.9), NormalDist().inv_cdf(0.975)
    for got, want in zip(values, last_day, strict=True):
        assert got["value"] == pytest.approx(want, abs=1e-6)
        assert got["lower80"] == pytest.approx(want - z80 * sigma, abs=1e-5)
        assert got["upper95"] == pytest.approx(want + z95 * sigma, abs=1e-5)

    # a second computation replaces the entity and adds to its history
    assert city.post("/cityos/v1/forecasters/compute", params={"id": "pm25-next-day"}).status_code == 200
    history = city.get(f"/ngsi-ld/v1/temporal/entities/{FORECAST}", params={"attrs": "forecast"})
    assert history.status_code == 200 and len(history.json()["forecast"]) >= 1
    assert city.post("/cityos/v1/forecasters/nope/compute").status_code == 404


def test_the_statsforecast_model_gives_ordered_intervals(city: TestClient) -> None:
    pytest.importorskip("statsforecast")
    answer = city.post("/cityos/v1/forecasters/pm25-next-day/compute")
    assert answer.status_code == 200, answer.text
    [done] = [item for item in answer.json() if item["entity"] == STATION]
    assert done["stored"] is True and len(done["values"]) == 24
    for v in done["values"]:
        assert v["lower95"] <= v["lower80"] <= v["value"] <= v["upper80"] <= v["upper95"]
    # the series is a daily wave on a slow trend: the model follows it closely
    errors = [abs(v["value"] - level(HOURS + k)) for k, v in enumerate(done["values"])]
    assert sum(errors) / len(errors) < 2.0


def test_the_register_lists_indicators_and_forecasters_and_takes_providers(city: TestClient) -> None:
    listed = city.get("/cityos/v1/insight/register").json()
    kinds = [entry["kind"] for entry in listed]
    assert kinds == sorted(kinds, key=["indicator", "forecaster"].index)
    by_id = {entry["id"]: entry for entry in listed}
    for entry in listed:
        assert {"purpose", "inputs", "method", "version", "owner", "accuracy"} <= set(entry)
    assert by_id["pm25-annual-mean"]["kind"] == "indicator"
    traffic = by_id["traffic-next-day"]
    assert traffic["inputs"][0]["attribute"] == "intensity" and "MSTL" in traffic["method"]
    assert traffic["accuracy"]["verdict"] == fc.verdict("traffic-next-day")
    parking = by_id["parking-next-hours"]["accuracy"]
    assert parking["verdict"].endswith("(on simulated data only)") and "simulated" in parking["why"]
    assert parking["backtest"]["simulated"] is True and parking["backtest"]["series"][0].startswith("simulated: ")
    rule = RegisterEntry("rule", "pm25-episode", "PM2.5 episode", "warn", [], "threshold", "1", "us", {}, "Alert")
    city.app.state.model_register.add(lambda: [rule])  # type: ignore[attr-defined]
    listed = city.get("/cityos/v1/insight/register").json()
    assert [e["id"] for e in listed if e["kind"] == "rule"] == ["pm25-episode"]
    assert listed.index(next(e for e in listed if e["kind"] == "rule")) > kinds.index("forecaster")


def test_the_register_lists_the_loaded_rules_and_the_watching_detector(db_url: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "pm25-high.toml").write_text(
        'id = "pm25-high"\nname = "PM2.5 high"\ntype = "AirQualityObserved"\nseverity = "high"\n'
        'category = "environment"\n[when]\nattribute = "pm25"\nabove = 75.0\n',
        encoding="utf-8",
    )
    settings = Settings(database=db_url, rules_dir=str(rules), anomaly_attrs="pm25")
    with TestClient(create_app(settings)) as client:
        listed = client.get("/cityos/v1/insight/register").json()
    [rule] = [e for e in listed if e["kind"] == "rule"]
    assert rule["id"] == "pm25-high" and rule["inputs"] == [{"type": "AirQualityObserved", "attribute": "pm25"}]
    assert rule["details"]["tests"] == [{"kind": "threshold", "attribute": "pm25", "above": 75.0, "per": 3600.0}]
    [detector] = [e for e in listed if e["kind"] == "detector"]
    assert detector["details"]["settings"]["threshold"] == settings.anomaly_threshold


def test_the_verdict_says_when_a_model_is_no_better_than_the_baseline() -> None:
    measured = {"forecasters": {"a": {"mase": 0.9, "baseline_mase": 0.8}, "b": {"mase": 0.5, "baseline_mase": 0.8}}}
    assert fc.verdict("a", measured) == "no better than the seasonal-naive baseline"
    assert fc.verdict("b", measured) == "better than the seasonal-naive baseline"
    assert fc.verdict("c", measured) == "not measured"


def test_the_metrics_match_a_hand_worked_example() -> None:
    # training diffs at lag 2: |3-1|, |4-2|, |5-3|, |6-4| = 2; errors on the known actuals 1 and 1
    assert mase([7, math.nan, 9], [6, 0, 10], [1, 2, 3, 4, 5, 6], 2) == pytest.approx(0.5)
    # 1 inside, 2 outside, 3 on the bound (inside), the unknown left out
    assert coverage([1, 2, 3, math.nan], [0, 2.5, 3, 0], [2, 3, 3, 1]) == pytest.approx(2 / 3)


def plain_mase(actual: list[float], forecast: list[float], train: list[float], season: int) -> float:
    errors = [abs(a - f) for a, f in zip(actual, forecast, strict=True) if a == a]
    diffs = [abs(train[i] - train[i - season]) for i in range(season, len(train))]
    diffs = [d for d in diffs if d == d]
    return (sum(errors) / len(errors)) / (sum(diffs) / len(diffs))


def test_the_metrics_match_plain_python_on_random_series() -> None:
    rng = random.Random(17)
    for _ in range(50):
        season = rng.choice([1, 7, 24])
        train = [rng.gauss(50, 10) if rng.random() > 0.05 else math.nan for _ in range(200)]
        actual = [rng.gauss(50, 10) if rng.random() > 0.1 else math.nan for _ in range(24)]
        actual[0] = 1.0  # at least one known
        forecast = [rng.gauss(50, 10) for _ in range(24)]
        assert mase(actual, forecast, train, season) == pytest.approx(plain_mase(actual, forecast, train, season))
        lower = [f - 10 for f in forecast]
        upper = [f + 10 for f in forecast]
        inside = [lo <= a <= hi for a, lo, hi in zip(actual, lower, upper, strict=True) if a == a]
        assert coverage(actual, lower, upper) == pytest.approx(sum(inside) / len(inside))


def test_the_simulated_parking_series_is_what_its_docstring_says() -> None:
    from cityos.insight.backtest import SPACES, simulated_parking

    values = simulated_parking()
    assert values == simulated_parking() and len(values) == 40 * 7 * 24  # seeded: the same each time
    assert all(v == int(v) and 0 <= v <= SPACES for v in values)
    days = [values[d * 24 : d * 24 + 24] for d in range(40 * 7)]
    weekday_noon = sum(day[12] for i, day in enumerate(days) if i % 7 < 5) / (40 * 5)
    weekend_noon = sum(day[12] for i, day in enumerate(days) if i % 7 >= 5) / (40 * 2)
    night = sum(day[3] for day in days) / len(days)
    assert 0.75 * SPACES < weekday_noon < 0.95 * SPACES and 0.5 * SPACES < weekend_noon < 0.7 * SPACES
    assert night < 0.25 * SPACES


def test_seasonal_naive_and_gap_filling_match_their_definitions() -> None:
    y, gaps = fc.fill_gaps([None, 1.0, None, None, 4.0, 5.0, None])
    assert gaps == 4 and y.tolist() == [1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 5.0]
    series = [float(v) for v in range(10)]
    found = fc.seasonal_naive(np.array(series), 5, 3)
    assert found.mean.tolist() == [7.0, 8.0, 9.0, 7.0, 8.0]  # y[T + h - 3 * ceil(h / 3)]
    lower, upper = found.bounds[95]
    # residuals y_t - y_(t-3) are all 3: sigma 3; k = 0 for h <= 3, 1 after (sqrt 2)
    z = NormalDist().inv_cdf(0.975)
    assert (upper - found.mean).tolist() == pytest.approx([z * 3] * 3 + [z * 3 * math.sqrt(2)] * 2)
    assert (found.mean - lower).tolist() == pytest.approx((upper - found.mean).tolist())


def test_the_backtest_table_says_the_verdict() -> None:
    row = {
        "series": ["a/b.csv"],
        "origins": 3,
        "mase": 1.2,
        "baseline_mase": 1.0,
        "coverage80": 0.7,
        "coverage95": 0.9,
        "baseline_coverage80": 0.8,
        "baseline_coverage95": 0.95,
    }
    text = table({"forecasters": {"x": row}})
    assert "| `x` | b.csv; 3 | 1.200 | 1.000 | 0.700 / 0.900 | 0.800 / 0.950 | no better than" in text


SHIPPED_DECLARATIONS = {  # the forecasters as they were declared in Python before they became files
    "pm25-next-day": ("AirQualityObserved", "pm25", "GQ", 3600, 24, 672, (24,), 24),
    "traffic-next-day": ("TrafficFlowObserved", "intensity", "C62", 3600, 24, 672, (24, 168), 168),
    "parking-next-hours": ("OffStreetParking", "occupiedSpotNumber", "C62", 3600, 6, 672, (24, 168), 168),
}
GOOD_FORECASTER = """id = "bins-next-day"
name = "Waste container fill level, next day"
purpose = "Plan the collection rounds."
type = "WasteContainer"
attribute = "fillingLevel"
unit = "C62"
step = "30m"
horizon = 48
history = "14d"
seasons = ["1d", "7d"]
baseline_season = "7d"
"""


def test_forecasters_are_declared_as_files() -> None:
    from cityos.insight.forecast_files import ForecasterFileError, load_forecasters, parse_forecaster, shipped

    found = {
        f.id: (f.type, f.attribute, f.unit, f.step, f.horizon, f.history, f.seasons, f.baseline_season)
        for f in shipped().values()
    }
    assert found == SHIPPED_DECLARATIONS
    made, digest = parse_forecaster(GOOD_FORECASTER, "bins.toml")
    assert (made.step, made.horizon, made.history, made.seasons, made.baseline_season) == (
        1800,
        48,
        672,
        (48, 336),
        336,
    )
    assert len(digest) == 64
    refused = {
        'unit = "C62"': ('unit = "percent"', 6, "UN/CEFACT"),
        'step = "30m"': ('step = "7s"', 7, "a minute or more"),
        'seasons = ["1d", "7d"]': ('seasons = ["7d", "1d"]', 10, "ascending"),
        'history = "14d"': ('history = "10d"', 9, "2 of the longest season"),
        "horizon = 48": ("horizon = 0", 8, "horizon is 1"),
        'baseline_season = "7d"': ('baseline_season = "45m"', 11, "whole number of steps"),
        'name = "Waste': ('colour = "red"\nname = "Waste', 2, "unknown field 'colour'"),
    }
    for good, (bad, line, reason) in refused.items():
        with pytest.raises(ForecasterFileError) as caught:
            parse_forecaster(GOOD_FORECASTER.replace(good, bad), "bad.toml")
        assert caught.value.line == line and reason in caught.value.reason, (bad, caught.value)
    with pytest.raises(ForecasterFileError, match="syntax error"):
        parse_forecaster("id = ", "bad.toml")
    with pytest.raises(ForecasterFileError, match="not a directory"):
        load_forecasters("/nonexistent")


def test_a_forecaster_file_is_served_and_registered(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "forecasters"
    folder.mkdir()
    (folder / "bins-next-day.toml").write_text(GOOD_FORECASTER, encoding="utf-8")
    replaced = (folder / "pm25.toml").write_text(
        GOOD_FORECASTER.replace("bins-next-day", "pm25-next-day").replace("horizon = 48", "horizon = 12")
    )
    assert replaced
    with TestClient(create_app(Settings(database=db_url, forecasters_dir=str(folder)))) as client:
        listed = {e["id"]: e for e in client.get("/cityos/v1/insight/register").json() if e["kind"] == "forecaster"}
        assert sorted(listed) == ["bins-next-day", "parking-next-hours", "pm25-next-day", "traffic-next-day"]
        assert listed["bins-next-day"]["inputs"][0]["attribute"] == "fillingLevel"
        assert client.app.state.forecasts.get("pm25-next-day").horizon == 12  # type: ignore[attr-defined]
