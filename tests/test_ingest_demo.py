"""The demo city: what `cityos demo` and `cityos serve --demo-on-empty` load, and the year of real
hourly history prepared for its stations (checked against the shipped CSV files)."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from starlette.testclient import TestClient

from backends import cli_env
from cityos.app import create_app
from cityos.ingest import demo, gtfs, history
from cityos.ingest.sink import StoreSink
from cityos.jsonld.registry import ContextRegistry
from cityos.net import OutboundPolicy
from cityos.settings import Settings
from cityos.store import open_store
from notify_helpers import free_port

API = "/ngsi-ld/v1/entities"
AIR = "urn:ngsi-ld:AirQualityObserved:beatty-central"
WEATHER = "urn:ngsi-ld:WeatherObserved:beatty-central"
TRAFFIC = "urn:ngsi-ld:TrafficFlowObserved:beatty-us95"


def shipped_rows(name: str) -> list[dict[str, str]]:
    raw = resources.files("cityos.ingest").joinpath("data", "timeseries", name).read_bytes()
    return list(csv.DictReader(io.StringIO(gzip.decompress(raw).decode("utf-8"))))


@pytest.fixture(scope="module")
def beijing() -> list[history.HistoryInstance]:
    return list(history.series_instances("beijing-air-quality", {"air": AIR, "weather": WEATHER}))


@pytest.fixture(scope="module")
def traffic() -> list[history.HistoryInstance]:
    return list(history.series_instances("minneapolis-traffic", {"traffic": TRAFFIC}))


class TestHistory:
    def test_air_quality_instances_match_the_csv(self, beijing: list[history.HistoryInstance]) -> None:
        rows = shipped_rows("beijing-aotizhongxin-2016-03_2017-02.csv.gz")
        assert len(rows) == 8760  # one year, hourly
        by_key = {(i.entity_id, i.attribute, i.observed_at): i for i in beijing}
        assert len(by_key) == len(beijing)  # one instance per station, attribute and hour
        counts = Counter((i.entity_id, i.attribute) for i in beijing)
        for column, entity_id, attribute in (
            ("PM2.5", AIR, "pm25"),
            ("NO2", AIR, "no2"),
            ("O3", AIR, "o3"),
            ("TEMP", WEATHER, "temperature"),
            ("wd", WEATHER, "windDirection"),
        ):
            assert counts[(entity_id, attribute)] == sum(r[column] != "NA" for r in rows), column
        for row in rows[::997]:  # a sample across the year, local time UTC+8 turned into UTC
            local = datetime(int(row["year"]), int(row["month"]), int(row["day"]), int(row["hour"]))
            stamp = (local - timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M:%SZ")
            if row["PM2.5"] != "NA":
                item = by_key[(AIR, "pm25", stamp)]
                assert item.value == float(row["PM2.5"]) and item.unit_code == "GQ"
            if row["PRES"] != "NA":
                assert by_key[(WEATHER, "atmosphericPressure", stamp)].value == float(row["PRES"])
        first = min(i.observed_at for i in beijing)
        last = max(i.observed_at for i in beijing)
        assert (first, last) == ("2016-02-29T16:00:00Z", "2017-02-28T15:00:00Z")
        assert {i.value for i in beijing if i.attribute == "windDirection"} <= {d * 22.5 for d in range(-7, 9)}

    def test_traffic_instances_match_the_csv(self, traffic: list[history.HistoryInstance]) -> None:
        rows = shipped_rows("minneapolis-i94-traffic-2016-10_2017-09.csv.gz")
        filled = [r for r in rows if r["traffic_volume"]]
        assert len(rows) == 8760 and len(traffic) == len(filled)
        stamps = [i.observed_at for i in traffic]
        assert len(set(stamps)) == len(stamps) and stamps == sorted(stamps)
        assert traffic[0] == history.HistoryInstance(
            TRAFFIC, "TrafficFlowObserved", "intensity", "2016-10-01T05:00:00Z", 1195.0
        )  # CDT
        january = next(i for i in traffic if i.observed_at.startswith("2017-01-15T06"))  # CST: midnight local
        row = next(r for r in rows if r["datetime"] == "2017-01-15 00:00:00")
        assert january.value == float(row["traffic_volume"])
        span = datetime.fromisoformat(stamps[-1]) - datetime.fromisoformat(stamps[0])
        assert span >= timedelta(days=364)

    def test_load_history_hands_every_instance_to_the_sink(self, traffic: list[history.HistoryInstance]) -> None:
        class Recorder:
            def __init__(self) -> None:
                self.calls: list[tuple[str, str, dict[str, list[dict[str, Any]]]]] = []

            async def add_attribute_instances(
                self, tenant: str, entity_id: str, entity_type: str, attrs: Mapping[str, Sequence[dict[str, Any]]]
            ) -> None:
                assert entity_type == "TrafficFlowObserved"
                self.calls.append((tenant, entity_id, {k: list(v) for k, v in attrs.items()}))

        sink = Recorder()
        total = asyncio.run(history.load_history(sink, "city", traffic, batch_size=1000))
        assert total == len(traffic)
        assert sum(len(v) for _, _, attrs in sink.calls for v in attrs.values()) == len(traffic)
        assert all(tenant == "city" and entity_id == TRAFFIC for tenant, entity_id, _ in sink.calls)
        assert len(sink.calls) == -(-len(traffic) // 1000)
        assert sink.calls[0][2]["intensity"][0] == {
            "type": "Property",
            "value": 1195.0,
            "observedAt": "2016-10-01T05:00:00Z",
        }


def test_the_demo_moves_its_transit_calendar_to_run_today_by_whole_weeks() -> None:
    today = date(2026, 12, 7)
    feed, _, weeks = demo.demo_feed(today)
    (full, weekend) = sorted(feed.rows("calendar"), key=lambda row: row["service_id"])
    assert weeks > 0 and full["service_id"] == "FULLW"
    start, end = (datetime.strptime(full[c], "%Y%m%d").date() for c in ("start_date", "end_date"))
    assert start <= today and today + timedelta(days=365) <= end < today + timedelta(days=372)
    assert (start - date(2007, 1, 1)).days == 7 * weeks  # whole weeks: every date keeps its weekday
    moved = datetime.strptime(feed.rows("calendar_dates")[0]["date"], "%Y%m%d").date()
    assert (moved - date(2007, 6, 4)).days == 7 * weeks and moved.weekday() == date(2007, 6, 4).weekday()
    assert weekend["end_date"] == full["end_date"]
    assert demo.shift_calendar(feed, today) == 0  # a calendar that runs already is left alone
    # a real import is not moved: `cityos gtfs` reads the feed's dates as they are
    with resources.as_file(resources.files("cityos.ingest").joinpath("data", "gtfs", "sample-feed.zip")) as path:
        real, _ = gtfs.read_feed(path)
    assert {row["end_date"] for row in real.rows("calendar")} == {"20101231"}


def load_into(database: str) -> demo.DemoReport:
    async def main() -> demo.DemoReport:
        store = open_store(database)
        await store.open()
        try:
            return await demo.load_demo(StoreSink(store, ContextRegistry(OutboundPolicy()).core_terms()))
        finally:
            await store.close()

    return asyncio.run(main())


class TestDemo:
    def test_loads_a_coherent_city(self, db_url: str, beijing: list[history.HistoryInstance]) -> None:
        report = load_into(db_url)
        assert report.failed == []
        assert report.counts["OffStreetParking"] == 3 and report.gtfs["GtfsStop"] == 9
        assert set(report.counts) == {
            "OffStreetParking",
            "AirQualityObserved",
            "WeatherObserved",
            "TrafficFlowObserved",
            "Streetlight",
            "WasteContainer",
            "Building",
            "Garden",
            "PointOfInterest",
            "Museum",
        }
        assert report.history_stations == sorted([AIR, WEATHER, TRAFFIC]) and not report.history_stored
        text = "\n".join(report.lines())
        assert f"{API}?type=OffStreetParking" in text and "Loaded the CityOS demo city" in text
        with TestClient(create_app(Settings(database=db_url)), base_url="http://127.0.0.1:1026") as client:
            parking = client.get(API, params={"type": "OffStreetParking", "options": "keyValues"}).json()
            assert {p["name"] for p in parking} >= {"Main Street car park (Demo)"}
            assert all("Porto" not in str(p) for p in parking)  # the example's own place is gone
            # everything lies around Beatty, Nevada, where the GTFS demo feed runs
            near = client.get(
                API,
                params={
                    "type": ",".join(report.counts),
                    "georel": "near;maxDistance==8000",
                    "geometry": "Point",
                    "coordinates": "[-116.7592,36.9086]",
                    "limit": "100",
                },
            ).json()
            assert len(near) == sum(report.counts.values())  # within 8 km of the town centre
            air = client.get(f"{API}/{AIR}").json()
            last = max(
                (i for i in beijing if i.entity_id == AIR and i.attribute == "pm25"), key=lambda i: i.observed_at
            )
            assert air["pm25"] == {
                "type": "Property",
                "value": last.value,
                "observedAt": last.observed_at,
                "unitCode": "GQ",
            }
            stops = client.get(API, params={"type": "GtfsStop", "limit": "100"}).json()
            assert len(stops) == 9

    def test_serve_loads_the_demo_only_into_an_empty_database(self, db_url: str) -> None:
        assert Settings().demo_on_empty is False  # tests and plain `cityos serve` never load it
        settings = Settings(database=db_url, demo_on_empty=True)
        report = {"service_code": "pothole", "lat": "36.91", "long": "-116.76"}
        with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
            assert len(client.get(API, params={"type": "OffStreetParking"}).json()) == 3
            assert client.delete(f"{API}/urn:ngsi-ld:OffStreetParking:beatty-airport").status_code == 204
            first_key = client.app.state.open311.page_key  # type: ignore[attr-defined]
        with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
            assert len(client.get(API, params={"type": "OffStreetParking"}).json()) == 2  # not loaded again
            # the citizens' page key: the same key, a new secret at each start (citizen/page_key.py)
            second_key = client.app.state.open311.page_key  # type: ignore[attr-defined]
            assert first_key.split(".")[0] == second_key.split(".")[0] and first_key != second_key
            keys = client.get("/cityos/v1/admin/keys").json()
            assert [k["name"] for k in keys].count("citizen-page (demo)") == 1
            page = next(k for k in keys if k["name"] == "citizen-page (demo)")
            assert page["roles"] == [] and page["groups"] == [] and page["tenants"] == [""]
            stale = client.post("/open311/v2/requests.json", data={**report, "api_key": first_key})
            assert stale.status_code == 403, stale.text
            assert client.post("/city/api/reports", data=report).status_code == 200  # the page's own key


def test_make_run_serves_the_demo_city(db_url: str, beijing: list[history.HistoryInstance]) -> None:
    """What `make run` does on a fresh clone: `cityos serve --demo-on-empty` on an empty database (the
    SQLite file `make run` uses, and an empty PostgreSQL schema)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cityos", "serve", "--demo-on-empty", "--database", db_url],
        env=cli_env(CITYOS_PORT=str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                response = httpx.get(f"{base}{API}", params={"type": "OffStreetParking"}, timeout=2)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        assert sorted(e["id"] for e in response.json()) == [
            "urn:ngsi-ld:OffStreetParking:beatty-airport",
            "urn:ngsi-ld:OffStreetParking:beatty-main-street",
            "urn:ngsi-ld:OffStreetParking:beatty-stagecoach",
        ]
        # the demo city's rules (ingest/data/demo-rules) judged its load: open alerts as soon as the port opens
        alerts = httpx.get(
            f"{base}{API}", params={"type": "Alert", "q": 'status=="open"', "options": "keyValues"}, timeout=10
        )
        assert alerts.status_code == 200, alerts.text
        found = {a["id"]: a for a in alerts.json()}
        last = {key: float(item.value) for key, item in history.latest(beijing).items()}
        central = "urn:ngsi-ld:AirQualityObserved:beatty-central"
        assert last[(central, "pm25")] > 15 and last[(central, "no2")] > 25  # the rules' levels
        expected = {  # (rule, entity): the value that met it (the last hour of real history, or the layout's)
            ("pm25-over-who-24h-guideline", central): {"pm25": last[(central, "pm25")]},
            ("no2-over-who-24h-guideline", central): {"no2": last[(central, "no2")]},
            ("no2-over-who-24h-guideline", "urn:ngsi-ld:AirQualityObserved:beatty-north"): {"no2": 69.0},
            ("car-park-almost-full", "urn:ngsi-ld:OffStreetParking:beatty-stagecoach"): {"occupancy": 0.86},
            ("waste-container-full", "urn:ngsi-ld:WasteContainer:beatty-main-street"): {"fillingLevel": 0.85},
        }
        assert sorted(found) == sorted(f"urn:ngsi-ld:Alert:{rule}:{entity}" for rule, entity in expected)
        for (rule, entity), values in expected.items():
            alert = found[f"urn:ngsi-ld:Alert:{rule}:{entity}"]
            assert (alert["alertSource"], alert["rule"], alert["triggerValues"]) == (entity, rule, values)
        # a year of real hourly history: twelve monthly PM2.5 averages, each over the month's readings
        history_url = f"{base}/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:AirQualityObserved:beatty-central"
        monthly = httpx.get(
            history_url,
            params={
                "timerel": "between",
                "timeAt": "2016-03-01T00:00:00Z",
                "endTimeAt": "2017-03-01T00:00:00Z",
                "attrs": "pm25",
                "aggrMethods": "avg,totalCount",
                "aggrPeriodDuration": "P1M",
                "options": "aggregatedValues",
            },
            timeout=30,
        )
        assert monthly.status_code == 200, monthly.text
        counts = monthly.json()["pm25"]["totalCount"]
        assert len(counts) == 12 and all(count[0] > 600 for count in counts)
        provider = _citizens_page_works_out_of_the_box(base)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)
    log = err.decode()
    assert "Loaded the CityOS demo city" in log and f"http://127.0.0.1:{port}/ngsi-ld/v1/entities" in log
    assert "calendar moved" in log and "weeks forward to run today" in log
    # the page's Open311 key, made for the demo, is named by its id only: its secret is never logged
    key_id = re.search(r"posts its reports to Open311 with the API key (\S+) ", log)
    assert key_id is not None, log[-3000:]
    assert f"{key_id.group(1)}." not in log
    assert provider == f"key:{key_id.group(1)}"  # the page's report was filed with that key


def _citizens_page_works_out_of_the_box(base: str) -> str:
    """The citizens' page of `make run`: departures now at a demo stop (the demo's calendar is moved
    to run today), and a report filed with no key configured (the demo made the page's)."""
    stop = "urn:ngsi-ld:GtfsStop:BEATTY_AIRPORT"  # the shuttle leaves it every day at 06:20
    answer = httpx.get(f"{base}/city/api/departures", params={"stop": stop, "count": "3"}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    now = datetime.now(ZoneInfo("America/Los_Angeles"))
    assert body["zone"] == "America/Los_Angeles" and len(body["departures"]) == 3, body
    for departure in body["departures"]:
        when = datetime.fromisoformat(departure["expected"])
        assert now - timedelta(minutes=1) <= when <= now + timedelta(days=1), departure
    form = {"service_code": "bin-overflowing", "lat": "36.9095", "long": "-116.7587", "description": "Full"}
    answer = httpx.post(f"{base}/city/api/reports", data=form, timeout=30)
    assert answer.status_code == 200, answer.text
    request_id = answer.json()[0]["service_request_id"]
    stored = httpx.get(
        f"{base}{API}/urn:ngsi-ld:Open311ServiceRequest:{request_id}", params={"options": "keyValues"}, timeout=10
    )
    assert stored.status_code == 200, stored.text
    report = stored.json()
    assert report["service_code"] == "bin-overflowing" and report["description"] == "Full"
    # the page's key is a key of the trust layer: without it, Open311 refuses the same report
    refused = httpx.post(f"{base}/open311/v2/requests.json", data=form, timeout=30)
    assert refused.status_code == 403, refused.text
    return str(report["dataProvider"])
