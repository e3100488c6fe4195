"""The indicator engine on both back-ends, over the demo city loaded as `serve --demo-on-empty`
loads it: each value checked against a plain-Python computation over the shipped files, stored as
a KeyPerformanceIndicator entity with its history, verified from its provenance, marked
incomplete or in error rather than wrong, computed on its schedule."""

from __future__ import annotations

import csv
import gzip
import io
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings
from notify_helpers import receiving

pytestmark = pytest.mark.slow(seconds=60)

INDICATORS = "/cityos/v1/indicators"
ENTITIES = "/ngsi-ld/v1/entities"
KPI = "urn:ngsi-ld:KeyPerformanceIndicator:{}:city"
EXTRA = {
    "transit-stops.toml": """id = "transit-stops"
name = "Transit stops"
standard = "test"
clause = "-"
unit = "C62"
period = "daily"
formula = "stops"
[inputs.stops]
kind = "count"
type = "GtfsStop"
unit = "C62"
""",
    "zero-division.toml": """id = "zero-division"
name = "A share of nothing"
standard = "test"
clause = "-"
unit = "P1"
period = "daily"
formula = "100 * stops / nothing"
[inputs.stops]
kind = "count"
type = "GtfsStop"
unit = "C62"
[inputs.nothing]
kind = "count"
type = "NoSuchType"
unit = "C62"
""",
}


def _csv(package: str, *parts: str) -> list[dict[str, str]]:
    raw = resources.files(package).joinpath(*parts).read_bytes()
    return list(csv.DictReader(io.StringIO(gzip.decompress(raw).decode("utf-8"))))


def beijing_mean(column: str) -> tuple[float, int]:
    """The mean of a column of the shipped Beijing file, and how many readings it has."""
    values = [float(r[column]) for r in _csv("cityos.ingest", "data", "timeseries", BEIJING) if r[column] != "NA"]
    return sum(values) / len(values), len(values)


BEIJING = "beijing-aotizhongxin-2016-03_2017-02.csv.gz"


def traffic_aadt() -> float:
    """Mean hourly volume times 24."""
    by_hour = traffic_by_hour()
    return sum(by_hour.values()) / len(by_hour) * 24


def traffic_by_hour() -> dict[datetime, float]:
    """One volume per UTC hour (a repeated hour: the last row), local times that do not exist
    (the spring gap) left out, as any loader must."""
    zone = ZoneInfo("America/Chicago")
    by_hour: dict[datetime, float] = {}
    rows = _csv("cityos.ingest", "data", "timeseries", "minneapolis-i94-traffic-2016-10_2017-09.csv.gz")
    for row in rows:
        local = datetime.strptime(row["datetime"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone)
        utc = local.astimezone(UTC)
        if utc.astimezone(zone).replace(tzinfo=None) != local.replace(tzinfo=None) or not row["traffic_volume"]:
            continue
        by_hour[utc] = float(row["traffic_volume"])
    return by_hour


def demo_parking() -> tuple[int, int]:
    layout = yaml.safe_load(resources.files("cityos.ingest").joinpath("data", "demo-city.yaml").read_text())
    parks = [e["attrs"] for e in layout["entities"] if e["template"] == "OffStreetParking"]
    return sum(p["occupiedSpotNumber"] for p in parks), sum(p["totalSpotNumber"] for p in parks)


def gtfs_stops() -> int:
    feed_file = resources.files("cityos.ingest").joinpath("data", "gtfs", "sample-feed.zip")
    with resources.as_file(feed_file) as path, zipfile.ZipFile(path) as feed:
        return len(list(csv.DictReader(io.TextIOWrapper(feed.open("stops.txt"), "utf-8-sig"))))


@pytest.fixture(scope="module")
def demo(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    extra = tmp_path_factory.mktemp("indicators")
    for name, text in EXTRA.items():
        (extra / name).write_text(text, encoding="utf-8")
    settings = Settings(database=module_db_url, demo_on_empty=True, indicators_dir=str(extra))
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        answer = client.post(INDICATORS + "/compute")
        assert answer.status_code == 200, answer.text
        client.app.state.computed = {item["id"]: item for item in answer.json()}  # type: ignore[attr-defined]
        yield client


def computed(client: TestClient) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = client.app.state.computed  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize(
    ("indicator", "column"),
    [("pm25", "PM2.5"), ("pm10", "PM10"), ("no2", "NO2"), ("so2", "SO2"), ("o3", "O3")],
)
def test_air_quality_means_match_plain_python(demo: TestClient, indicator: str, column: str) -> None:
    result = computed(demo)[f"{indicator}-annual-mean"]
    mean, readings = beijing_mean(column)
    assert result["value"] == pytest.approx(mean, rel=1e-9)
    # two stations, one with a history: half the hourly readings expected are there, so incomplete
    assert result["coverage"] == pytest.approx(readings / (2 * 365 * 24), rel=1e-6)
    assert result["status"] == "incomplete" and "below the threshold 0.75" in result["reason"]
    assert result["stored"] is True


def test_traffic_and_parking_match_plain_python(demo: TestClient) -> None:
    results = computed(demo)
    assert results["traffic-aadt"]["value"] == pytest.approx(traffic_aadt(), rel=1e-9)
    assert results["traffic-aadt"]["status"] == "complete"
    occupied, spaces = demo_parking()
    assert results["parking-occupancy"]["value"] == pytest.approx(100 * occupied / spaces)
    assert results["parking-realtime-share"]["value"] == 100.0
    assert results["transit-stops"]["value"] == gtfs_stops()


def test_a_division_by_zero_is_stored_as_an_error(demo: TestClient) -> None:
    result = computed(demo)["zero-division"]
    assert (result["value"], result["status"], result["reason"]) == (None, "error", "division by zero")
    entity = demo.get(f"{ENTITIES}/{KPI.format('zero-division')}").json()
    assert entity["kpiValue"]["value"] == "error" and entity["kpiValue"]["reason"]["value"] == "division by zero"


def test_the_value_is_a_kpi_entity_with_provenance_and_history(demo: TestClient) -> None:
    entity_id = KPI.format("pm25-annual-mean")
    entity = demo.get(f"{ENTITIES}/{entity_id}").json()
    assert entity["type"] == "KeyPerformanceIndicator"
    value = entity["kpiValue"]
    assert value["value"] == pytest.approx(beijing_mean("PM2.5")[0]) and value["unitCode"] == "GQ"
    assert value["entitiesCounted"]["value"] == ["urn:ngsi-ld:AirQualityObserved:beatty-central"]
    assert value["instanceCount"]["value"] == {"concentration": beijing_mean("PM2.5")[1]}
    assert value["windowEnd"]["value"] == "2017-02-28T15:00:01Z" == value["observedAt"]
    assert value["standard"]["value"] == "ISO 37120:2018 8.1" and len(value["formulaDigest"]["value"]) == 64
    assert entity["calculationPeriod"]["value"] == {"from": "2016-02-29", "to": "2017-02-28"}
    history = demo.get(f"/ngsi-ld/v1/temporal/entities/{entity_id}", params={"attrs": "kpiValue"})
    assert history.status_code == 200 and len(history.json()["kpiValue"]) >= 1
    found = demo.get(ENTITIES, params={"type": "KeyPerformanceIndicator", "count": "true", "limit": "0"})
    assert found.headers["NGSILD-Results-Count"] == str(len(computed(demo)))


def test_verify_matches_then_sees_a_changed_window(demo: TestClient) -> None:
    for indicator_id in ("pm25-annual-mean", "traffic-aadt", "parking-occupancy", "transit-stops"):
        verdict = demo.get(f"{INDICATORS}/{indicator_id}/verify").json()
        assert verdict["matches"] is True, verdict
    # a reading added inside the recorded window: the stored value no longer follows from the data
    added = demo.post(
        "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:AirQualityObserved:beatty-north/attrs",
        json={"pm25": [{"type": "Property", "value": 5000, "observedAt": "2016-06-01T00:00:00Z"}]},
    )
    assert added.status_code in (204, 201), added.text
    verdict = demo.get(f"{INDICATORS}/so2-annual-mean/verify").json()
    assert verdict["matches"] is True  # not an input of SO2
    verdict = demo.get(f"{INDICATORS}/pm25-annual-mean/verify").json()
    assert (verdict["matches"], verdict["reason"]) == (False, "the data of the window changed since")
    assert verdict["stored"] == pytest.approx(beijing_mean("PM2.5")[0]) != verdict["recomputed"]


def test_the_api_lists_and_refuses_unknown_ids(demo: TestClient) -> None:
    listed = {item["id"]: item for item in demo.get(INDICATORS).json()}
    assert listed["pm25-annual-mean"]["inputs"]["concentration"]["attribute"] == "pm25"
    assert demo.post(f"{INDICATORS}/nope/compute").status_code == 404
    assert demo.get(f"{INDICATORS}/nope/verify").status_code == 404


def test_the_schedule_writes_and_stops(db_url: str) -> None:
    settings = Settings(database=db_url, indicators_interval=0.2)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            answer = client.get(f"{ENTITIES}/{KPI.format('pm25-annual-mean')}")
            if answer.status_code == 200:
                break
            time.sleep(0.1)
        assert answer.status_code == 200
        assert answer.json()["kpiValue"]["value"] == "incomplete"  # an empty city: no data, said so
        assert answer.json()["kpiValue"]["reason"]["value"] == "no data for concentration"


def test_a_bad_indicator_file_stops_the_start_with_its_line(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(EXTRA["transit-stops.toml"].replace('period = "daily"', "period ="))
    settings = Settings(database=db_url, indicators_dir=str(tmp_path))
    with pytest.raises(Exception) as caught, TestClient(create_app(settings)):  # the lifespan's own error
        pass
    assert "bad.toml:6: syntax error" in str(caught.value)


def test_a_computed_value_is_notified_to_subscribers(db_url: str) -> None:
    """The one write path: a subscription on KeyPerformanceIndicator hears each computation."""
    settings = Settings(database=db_url, allow_private_networks=True)
    with receiving() as receiver, TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        subscription = {
            "id": "urn:ngsi-ld:Subscription:kpi",
            "type": "Subscription",
            "entities": [{"type": "KeyPerformanceIndicator"}],
            "notification": {"endpoint": {"uri": receiver.url, "accept": "application/json"}},
        }
        assert client.post("/ngsi-ld/v1/subscriptions", json=subscription).status_code == 201
        answer = client.post(f"{INDICATORS}/parking-occupancy/compute")
        assert answer.status_code == 200 and answer.json()["status"] == "incomplete"
        [notified] = receiver.wait(1, timeout=15)
        [entity] = notified.body["data"]
        assert entity["id"] == KPI.format("parking-occupancy")
        assert entity["kpiValue"]["value"] == "incomplete"
        assert entity["kpiValue"]["reason"]["value"] == "no data for occupied, spaces"


def test_an_indicator_is_added_through_the_api_and_kept(db_url: str, tmp_path: Path) -> None:
    text = EXTRA["transit-stops.toml"]
    folder = tmp_path / "indicators"
    folder.mkdir()
    with TestClient(create_app(Settings(database=db_url)), base_url="http://127.0.0.1:1026") as client:
        refused = client.put(f"{INDICATORS}/transit-stops", content=text)
        assert refused.status_code == 422 and "--indicators-dir" in refused.json()["detail"]
    settings = Settings(database=db_url, indicators_dir=str(folder))
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        bad = client.put(
            f"{INDICATORS}/transit-stops", content=text.replace('unit = "C62"\nperiod', 'unit = "GQ"\nperiod')
        )
        assert bad.status_code == 400 and bad.json()["detail"].startswith("line 7: unit mismatch"), bad.text
        other = client.put(f"{INDICATORS}/other", content=text)
        assert other.status_code == 400 and "the path's other" in other.json()["detail"]
        assert not list(folder.iterdir())  # nothing refused is kept
        added = client.put(f"{INDICATORS}/transit-stops", content=text)
        assert added.status_code == 201 and added.json()["formula"] == "stops"
        assert client.put(f"{INDICATORS}/transit-stops", content=text).status_code == 200
        assert client.post(f"{INDICATORS}/transit-stops/compute").json()["value"] == 0.0
    assert [p.name for p in folder.iterdir()] == ["transit-stops.toml"]
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:  # loaded again at start
        assert "transit-stops" in {item["id"] for item in client.get(INDICATORS).json()}
