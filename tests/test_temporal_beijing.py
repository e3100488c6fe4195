"""A real year through the temporal API: the hourly readings of the Aotizhongxin air-quality station
in Beijing (March 2016 - February 2017, 8,760 rows, the Beijing Multi-Site Air-Quality data set that
CityOS ships in cityos/ingest/data/timeseries/), loaded with POST /temporal/entities[/{id}/attrs],
then aggregated by the broker and checked against the same figures computed here in plain Python.
"""

from __future__ import annotations

import csv
import gzip
import io
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Any

import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings

TEMPORAL = "/ngsi-ld/v1/temporal/entities"
STATION = "urn:ngsi-ld:AirQualityObserved:Beijing-Aotizhongxin"
SERIES = "data/timeseries/beijing-aotizhongxin-2016-03_2017-02.csv.gz"
BEIJING = timezone(timedelta(hours=8))
YEAR = {"timerel": "between", "timeAt": "2016-03-01T00:00:00Z", "endTimeAt": "2017-03-01T00:00:00Z"}
CHUNK = 1000

Reading = tuple[datetime, float | None, float | None]  # (UTC time, PM2.5, temperature); None: not available


def readings() -> list[Reading]:
    raw = resources.files("cityos.ingest").joinpath(SERIES).read_bytes()
    rows = csv.DictReader(io.StringIO(gzip.decompress(raw).decode()))
    found = []
    for row in rows:
        local = datetime(int(row["year"]), int(row["month"]), int(row["day"]), int(row["hour"]), tzinfo=BEIJING)
        found.append((local.astimezone(UTC), _number(row["PM2.5"]), _number(row["TEMP"])))
    return found


def _number(text: str) -> float | None:
    return None if text in ("", "NA") else float(text)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def chunks(data: list[Reading]) -> Iterator[dict[str, Any]]:
    """Attribute fragments of CHUNK hours each; hours without a reading are skipped (NA)."""
    for start in range(0, len(data), CHUNK):
        fragment: dict[str, list[dict[str, Any]]] = {"pm25": [], "temperature": []}
        for moment, pm25, temperature in data[start : start + CHUNK]:
            for name, value in (("pm25", pm25), ("temperature", temperature)):
                if value is not None:
                    fragment[name].append({"type": "Property", "value": value, "observedAt": stamp(moment)})
        yield fragment


@pytest.fixture(scope="module")
def data() -> list[Reading]:
    found = readings()
    assert len(found) == 8760
    return found


@pytest.fixture(scope="module")
def station(data: list[Reading], module_db_url: str) -> Iterator[TestClient]:
    settings = Settings(database=module_db_url, temporal_page_size=1000)
    with TestClient(create_app(settings)) as client:
        fragments = chunks(data)
        created = client.post(TEMPORAL, json={"id": STATION, "type": "AirQualityObserved", **next(fragments)})
        assert created.status_code == 201, created.text
        for fragment in fragments:
            response = client.post(f"{TEMPORAL}/{STATION}/attrs", json=fragment)
            assert response.status_code == 204, response.text
        yield client


def monthly(data: list[Reading], column: int) -> dict[str, list[float]]:
    """Plain Python: the available values per UTC calendar month of the year's window."""
    months: dict[str, list[float]] = defaultdict(list)
    start, end = datetime(2016, 3, 1, tzinfo=UTC), datetime(2017, 3, 1, tzinfo=UTC)
    for reading in data:
        value = reading[column]
        if value is not None and start <= reading[0] < end:
            months[reading[0].strftime("%Y-%m-01T00:00:00Z")].append(value)
    return months


def aggregate(client: TestClient, attr: str, methods: str, duration: str, **window: str) -> dict[str, Any]:
    params = {"options": "aggregatedValues", "aggrMethods": methods, "aggrPeriodDuration": duration, "attrs": attr}
    response = client.get(f"{TEMPORAL}/{STATION}", params={**params, **window})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()[attr]
    return result


def by_start(points: list[list[Any]]) -> dict[str, Any]:
    return {start: value for value, start, _ in points}


def test_monthly_pm25_statistics(station: TestClient, data: list[Reading]) -> None:
    expected = monthly(data, 1)
    assert len(expected) == 12
    began = time.monotonic()
    result = aggregate(station, "pm25", "avg,min,max,sum,totalCount", "P1M", **YEAR)
    assert time.monotonic() - began < 10  # grouped in SQL: no year of instances through Python
    assert by_start(result["totalCount"]) == {month: len(values) for month, values in expected.items()}
    assert by_start(result["avg"]) == pytest.approx({m: statistics.fmean(v) for m, v in expected.items()})
    assert by_start(result["sum"]) == pytest.approx({m: sum(v) for m, v in expected.items()})
    assert by_start(result["min"]) == {m: min(v) for m, v in expected.items()}
    assert by_start(result["max"]) == {m: max(v) for m, v in expected.items()}
    ends = {start: end for _, start, end in result["avg"]}
    assert ends["2016-03-01T00:00:00Z"] == "2016-04-01T00:00:00Z"
    assert ends["2017-02-01T00:00:00Z"] == "2017-03-01T00:00:00Z"


def test_monthly_temperature_spread(station: TestClient, data: list[Reading]) -> None:
    expected = monthly(data, 2)
    result = aggregate(station, "temperature", "stddev,sumsq,distinctCount", "P1M", **YEAR)
    assert by_start(result["stddev"]) == pytest.approx({m: statistics.pstdev(v) for m, v in expected.items()})
    assert by_start(result["sumsq"]) == pytest.approx({m: sum(x * x for x in v) for m, v in expected.items()})
    assert by_start(result["distinctCount"]) == {m: len(set(v)) for m, v in expected.items()}


def test_daily_maximum_over_a_week(station: TestClient, data: list[Reading]) -> None:
    start, end = datetime(2016, 12, 1, tzinfo=UTC), datetime(2016, 12, 8, tzinfo=UTC)
    days: dict[str, list[float]] = defaultdict(list)
    for moment, pm25, _ in data:
        if pm25 is not None and start <= moment < end:
            days[moment.strftime("%Y-%m-%dT00:00:00Z")].append(pm25)
    window = {"timerel": "between", "timeAt": stamp(start), "endTimeAt": stamp(end)}
    result = aggregate(station, "pm25", "max", "P1D", **window)
    assert by_start(result["max"]) == {day: max(values) for day, values in days.items()}


def test_whole_year_in_one_period(station: TestClient, data: list[Reading]) -> None:
    values = [v for values in monthly(data, 1).values() for v in values]
    result = aggregate(station, "pm25", "totalCount,avg", "PT0S", **YEAR)
    assert result["totalCount"] == [[len(values), "2016-03-01T00:00:00Z", "2017-03-01T00:00:00Z"]]
    assert result["avg"][0][0] == pytest.approx(statistics.fmean(values))


def test_last_readings_and_the_instance_cap(station: TestClient, data: list[Reading]) -> None:
    response = station.get(f"{TEMPORAL}/{STATION}", params={"attrs": "pm25", "lastN": "24"})
    assert response.status_code == 200
    latest = [stamp(moment) for moment, pm25, _ in data if pm25 is not None][-24:]
    assert [i["observedAt"] for i in response.json()["pm25"]] == latest
    whole = station.get(f"{TEMPORAL}/{STATION}", params={"attrs": "pm25", **YEAR})
    assert whole.status_code == 206  # 8,700-odd instances, 1000 per answer
    assert len(whole.json()["pm25"]) == 1000
    assert whole.headers["Content-Range"].startswith("date-time 2016-03-01T00:00:00Z-")


def test_query_across_stations_with_q(station: TestClient) -> None:
    params = {"type": "AirQualityObserved", "q": "pm25>600", "options": "aggregatedValues", "aggrMethods": "max"}
    response = station.get(TEMPORAL, params={**params, **YEAR})
    assert response.status_code == 200
    body = response.json()
    assert [e["id"] for e in body] == [STATION] and body[0]["pm25"]["max"][0][0] > 600
