"""GTFS import (good and deliberately broken feeds) and GTFS-Realtime, read back through the API."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from backends import cli_env
from cityos.app import create_app
from cityos.ingest import gtfs, gtfs_realtime
from cityos.ingest.sink import StoreSink
from cityos.jsonld.registry import ContextRegistry
from cityos.net import OutboundPolicy
from cityos.settings import Settings
from cityos.store import open_store

DATA = Path(__file__).parent / "data" / "gtfs"
INVALID = DATA / "invalid"
REALTIME = DATA / "realtime"
API = "/ngsi-ld/v1/entities"


def run_with_sink(database: str, action: Any) -> Any:
    """Run `action(sink)` against a store on `database`, as the CLI does."""

    async def main() -> Any:
        store = open_store(database)
        await store.open()
        try:
            return await action(StoreSink(store, ContextRegistry(OutboundPolicy()).core_terms()))
        finally:
            await store.close()

    return asyncio.run(main())


@pytest.fixture
def database(db_url: str) -> str:
    """The test's database (each test runs on SQLite and on PostgreSQL)."""
    return db_url


def api(database: str) -> TestClient:
    return TestClient(create_app(Settings(database=database)), base_url="http://127.0.0.1:1026")


def keyvalues(client: TestClient, entity_type: str, **params: str) -> list[dict[str, Any]]:
    response = client.get(API, params={"type": entity_type, "options": "keyValues", "limit": "1000", **params})
    assert response.status_code == 200, response.text
    entities: list[dict[str, Any]] = response.json()
    return entities


class TestGoodFeeds:
    def test_sample_feed_becomes_urban_mobility_entities(self, database: str) -> None:
        report = run_with_sink(database, lambda sink: gtfs.import_feed(DATA / "sample-feed.zip", sink))
        assert report.failed == []
        assert report.counts == {
            "GtfsAgency": 1,
            "GtfsStop": 9,
            "GtfsRoute": 5,
            "GtfsService": 2,
            "GtfsCalendarRule": 2,
            "GtfsCalendarDateRule": 1,
            "GtfsTrip": 11,
            "GtfsStopTime": 28,
            "GtfsFrequency": 11,
        }
        assert [str(i) for i in report.issues] == [
            "calendar.txt: warning: the service calendar ended on 20101231: the feed has expired"
        ]
        with api(database) as client:
            stops = {s["id"]: s for s in keyvalues(client, "GtfsStop")}
            assert len(stops) == 9
            stagecoach = stops["urn:ngsi-ld:GtfsStop:STAGECOACH"]
            assert stagecoach["name"] == "Stagecoach Hotel & Casino (Demo)"
            assert stagecoach["location"] == {"type": "Point", "coordinates": [-116.751677, 36.915682]}
            assert stagecoach["operatedBy"] == ["urn:ngsi-ld:GtfsAgency:DTA"]
            [route] = keyvalues(client, "GtfsRoute", q='shortName=="10"')
            assert route["name"] == "Airport - Bullfrog" and route["routeType"] == "3"
            trip = client.get(f"{API}/urn:ngsi-ld:GtfsTrip:AB1", params={"options": "keyValues"}).json()
            assert trip["headSign"] == "to Bullfrog" and trip["hasService"] == "urn:ngsi-ld:GtfsService:FULLW"
            assert trip["hasRoute"] == "urn:ngsi-ld:GtfsRoute:AB" and trip["direction"] == 0
            times = keyvalues(client, "GtfsStopTime", q='hasTrip=="urn:ngsi-ld:GtfsTrip:CITY1"')
            assert sorted(t["stopSequence"] for t in times) == [1, 2, 3, 4, 5]
            first = next(t for t in times if t["stopSequence"] == 1)
            assert first["arrivalTime"] == "06:00:00" and first["hasStop"] == "urn:ngsi-ld:GtfsStop:STAGECOACH"
            [rule] = keyvalues(client, "GtfsCalendarRule", q='hasService=="urn:ngsi-ld:GtfsService:WE"')
            assert rule["saturday"] is True and rule["monday"] is False and rule["endDate"] == "2010-12-31"
            [agency] = keyvalues(client, "GtfsAgency")
            assert agency["agencyName"] == "Demo Transit Authority" and agency["timezone"] == "America/Los_Angeles"
            near = client.get(
                API,
                params={
                    "type": "GtfsStop",
                    "georel": "near;maxDistance==300",
                    "geometry": "Point",
                    "coordinates": "[-116.7617,36.9057]",
                    "options": "keyValues",
                },
            ).json()
            assert {s["id"] for s in near} == {"urn:ngsi-ld:GtfsStop:EMSI"}

    def test_good_feed_with_prefix_stations_transfers_and_reimport(self, database: str) -> None:
        for _ in range(2):  # importing again replaces, it does not duplicate
            report = run_with_sink(database, lambda sink: gtfs.import_feed(DATA / "good_feed.zip", sink, prefix="tf:"))
            assert report.failed == [] and report.written == 73
        with api(database) as client:
            assert len(keyvalues(client, "GtfsStop")) == 9
            [station] = keyvalues(client, "GtfsStation")
            assert station["id"] == "urn:ngsi-ld:GtfsStation:tf:BEATTY_AIRPORT_STATION"
            airport = client.get(
                f"{API}/urn:ngsi-ld:GtfsStop:tf:BEATTY_AIRPORT", params={"options": "keyValues"}
            ).json()
            assert airport["hasParentStation"] == station["id"]
            assert len(keyvalues(client, "GtfsTransferRule")) == 2
            [agency] = keyvalues(client, "GtfsAgency")
            assert agency["agencyName"] == "Autorité de passage de démonstration" and agency["phone"] == "123 12314"

    def test_shapes(self, tmp_path: Path, database: str) -> None:
        """The sample feeds have no shape points; one added to a copy becomes a GtfsShape LineString."""
        import zipfile

        feed = tmp_path / "shaped.zip"
        with zipfile.ZipFile(DATA / "sample-feed.zip") as source, zipfile.ZipFile(feed, "w") as target:
            for item in source.infolist():
                data = source.read(item)
                if item.filename == "shapes.txt":
                    data += b"\nS1,36.91,-116.76,1,0\nS1,36.92,-116.75,2,1.4\n"
                if item.filename == "trips.txt":
                    data = data.replace(b"AB,FULLW,AB1,to Bullfrog,0,1,", b"AB,FULLW,AB1,to Bullfrog,0,1,S1")
                target.writestr(item.filename, data)
        run_with_sink(database, lambda sink: gtfs.import_feed(feed, sink))
        with api(database) as client:
            [shape] = keyvalues(client, "GtfsShape")
            assert shape["location"] == {"type": "LineString", "coordinates": [[-116.76, 36.91], [-116.75, 36.92]]}
            assert shape["distanceTravelled"] == [0.0, 1.4]
            trip = client.get(f"{API}/urn:ngsi-ld:GtfsTrip:AB1", params={"options": "keyValues"}).json()
            assert trip["hasShape"] == shape["id"]


BROKEN = {
    "missing_stops": ["stops.txt: error: required file is missing", "stop_times.txt:2: error: stop_id 'STAGECOACH'"],
    "undefined_stop": ["stop_times.txt:11: error: stop_id 'NADAR' is not in stops.txt"],
    "missing_column": ["agency.txt: error: missing required column agency_name"],
    "bad_date_format": [
        "calendar.txt:2: error: start_date '2007.01.01' is not a YYYYMMDD date",
        "calendar_dates.txt:2: error: date '2007-06-04' is not a YYYYMMDD date",
    ],
}


class TestBrokenFeeds:
    @pytest.mark.parametrize("name", sorted(BROKEN))
    def test_errors_are_named_and_nothing_is_written(self, name: str, database: str) -> None:
        with pytest.raises(gtfs.GtfsError) as caught:
            run_with_sink(database, lambda sink: gtfs.import_feed(INVALID / f"{name}.zip", sink))
        messages = [str(issue) for issue in caught.value.issues]
        for expected in BROKEN[name]:
            assert any(m.startswith(expected) for m in messages), (expected, messages)
        with api(database) as client:
            assert client.get(API, params={"type": "GtfsAgency,GtfsStop,GtfsTrip"}).json() == []

    def test_stops_too_close_is_a_warning(self, database: str) -> None:
        report = run_with_sink(database, lambda sink: gtfs.import_feed(INVALID / "duplicate_stop.zip", sink))
        assert "stops.txt:5: warning: stops BULLFROG and FROG are 0.4 m apart" in [str(i) for i in report.issues]
        assert report.counts["GtfsStop"] == 10 and report.failed == []

    def test_not_a_zip(self, tmp_path: Path) -> None:
        bogus = tmp_path / "feed.zip"
        bogus.write_bytes(b"not a zip")
        _, issues = gtfs.read_feed(bogus)
        assert [i.severity for i in issues] == ["error"] and "cannot read the zip" in issues[0].message

    def test_cli_reports_clearly(self, database: str) -> None:
        env = cli_env()
        broken = subprocess.run(
            [
                sys.executable,
                "-m",
                "cityos",
                "import",
                "gtfs",
                str(INVALID / "undefined_stop.zip"),
                "--database",
                database,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert broken.returncode == 1
        assert "stop_times.txt:11: error: stop_id 'NADAR' is not in stops.txt" in broken.stdout
        assert "undefined_stop.zip was not imported" in broken.stderr and "nothing was written" in broken.stderr
        good = subprocess.run(
            [
                sys.executable,
                "-m",
                "cityos",
                "import",
                "gtfs",
                str(DATA / "sample-feed.zip"),
                "--database",
                database,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert good.returncode == 0, good.stderr
        assert "sample-feed.zip: 70 entities loaded (1 GtfsAgency" in good.stdout
        check = subprocess.run(
            [sys.executable, "-m", "cityos", "import", "gtfs", "--check", str(INVALID / "missing_column.zip")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert check.returncode == 1 and "missing required column agency_name" in check.stdout


class FeedServer:
    """A real HTTP server on 127.0.0.1 serving one GTFS-Realtime file."""

    def __init__(self, body: bytes) -> None:
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/vehicles.pb"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer((REALTIME / "vehicle_position.pb").read_bytes())
    yield server
    server.close()


class TestRealtime:
    def test_vehicle_positions_trip_updates_and_alerts(self, database: str) -> None:
        def apply(source: Path) -> Any:
            return run_with_sink(database, lambda sink: gtfs_realtime.apply_source(str(source), sink))

        assert apply(REALTIME / "vehicle_position.pb").vehicles == 1
        occupancy = apply(REALTIME / "vehicle-position-pre-occupancy-defaults-with-occupancy-status.pb")
        assert occupancy.vehicles == 1
        updates = apply(REALTIME / "trip-updates-full.asciipb")
        assert (updates.trip_updates, updates.failed) == (2, [])
        assert apply(REALTIME / "alerts.asciipb").alerts == 1
        with api(database) as client:
            vehicle = client.get(f"{API}/urn:ngsi-ld:Vehicle:1").json()
            assert vehicle["location"]["value"] == {"type": "Point", "coordinates": [-60.0, 50.0]}
            assert vehicle["occupancyStatus"]["value"] == "FEW_SEATS_AVAILABLE"
            assert vehicle["hasTrip"]["object"] == "urn:ngsi-ld:GtfsTrip:A"
            trip = client.get(f"{API}/urn:ngsi-ld:GtfsTrip:trip-1").json()
            assert trip["delay"] == {
                "type": "Property",
                "value": 5,
                "unitCode": "SEC",
                "observedAt": "2010-09-14T09:44:28Z",
            }
            assert trip["stopTimeUpdates"]["json"][0] == {"stopSequence": 3, "arrivalDelay": 5}
            [alert] = keyvalues(client, "Alert")
            assert alert["effect"] == "DETOUR" and alert["cause"] == "CONSTRUCTION"
            assert alert["validFrom"] == "2010-09-14T09:44:28Z"
            assert alert["affectedRoutes"] == ["urn:ngsi-ld:GtfsRoute:100", "urn:ngsi-ld:GtfsRoute:219"]

    def test_updates_meet_the_static_feed(self, database: str, tmp_path: Path) -> None:
        from google.transit import gtfs_realtime_pb2 as rt

        run_with_sink(database, lambda sink: gtfs.import_feed(DATA / "sample-feed.zip", sink))
        message = rt.FeedMessage()
        message.header.gtfs_realtime_version = "2.0"
        message.header.timestamp = 1700000000
        entity = message.entity.add(id="v")
        entity.vehicle.trip.trip_id = "AB1"
        entity.vehicle.vehicle.id = "bus-7"
        entity.vehicle.position.latitude, entity.vehicle.position.longitude = 36.88, -116.81
        entity.vehicle.position.speed = 10.0
        entity.vehicle.timestamp = 1700000005
        entity.vehicle.stop_id = "BULLFROG"
        update = message.entity.add(id="u").trip_update
        update.trip.trip_id = "AB1"
        update.stop_time_update.add(stop_sequence=2).arrival.delay = 120
        source = tmp_path / "feed.pb"
        source.write_bytes(message.SerializeToString())
        run_with_sink(database, lambda sink: gtfs_realtime.apply_source(str(source), sink))
        with api(database) as client:
            trip = client.get(f"{API}/urn:ngsi-ld:GtfsTrip:AB1", params={"options": "keyValues"}).json()
            assert trip["headSign"] == "to Bullfrog" and trip["delay"] == 120  # static and realtime together
            bus = client.get(f"{API}/urn:ngsi-ld:Vehicle:bus-7").json()
            assert bus["speed"]["value"] == 36.0 and bus["speed"]["observedAt"] == "2023-11-14T22:13:25Z"
            assert bus["hasStop"]["object"] == "urn:ngsi-ld:GtfsStop:BULLFROG"

    def test_polls_a_url(self, database: str, feed_server: FeedServer) -> None:
        rounds: list[Any] = []
        run_with_sink(
            database,
            lambda sink: gtfs_realtime.poll(feed_server.url, sink, interval=0.05, rounds=3, on_round=rounds.append),
        )
        assert feed_server.hits == 3 and [r.vehicles for r in rounds] == [1, 1, 1]
        with api(database) as client:
            assert client.get(f"{API}/urn:ngsi-ld:Vehicle:1").status_code == 200

    def test_bad_sources_are_reported(self, database: str, tmp_path: Path) -> None:
        garbage = tmp_path / "garbage.pb"
        garbage.write_bytes(b"\xff\xff\xff\xff not protobuf")
        headerless = tmp_path / "headerless.pb"
        headerless.write_bytes(b"")
        rounds: list[Any] = []
        for source in (garbage, headerless, tmp_path / "missing.pb"):
            run_with_sink(
                database,
                lambda sink, s=source: gtfs_realtime.poll(str(s), sink, interval=0, rounds=1, on_round=rounds.append),
            )
        assert all(isinstance(r, gtfs_realtime.RealtimeError) for r in rounds)
        assert "not a GTFS-Realtime FeedMessage" in str(rounds[0])
        assert "lacks required fields" in str(rounds[1])
        assert "cannot read" in str(rounds[2])


def test_an_alert_publishes_a_feed_url_without_secrets_and_no_local_path(tmp_path: Path) -> None:
    from google.transit import gtfs_realtime_pb2 as rt

    message = rt.FeedMessage()
    message.header.gtfs_realtime_version = "2.0"
    message.header.timestamp = 1700000000
    message.entity.add(id="a1").alert.informed_entity.add(route_id="R1")
    secret = "https://user:pw@feeds.example.org:8443/alerts.pb?api_key=SECRET#top"
    [from_url], _ = gtfs_realtime.feed_bodies(message, source=secret)
    assert from_url["alertSource"]["value"] == "https://feeds.example.org:8443/alerts.pb"
    assert "SECRET" not in str(from_url) and "pw" not in str(from_url)
    [from_file], _ = gtfs_realtime.feed_bodies(message, source=str(tmp_path / "alerts.pb"))
    assert "alertSource" not in from_file and str(tmp_path) not in str(from_file)
    assert from_file["affectedRoutes"]["observedAt"] == "2023-11-14T22:13:20Z"  # every attribute is observed
