"""Citizen services (citizen/): the AQI tables against hand-computed values, and the JSON API on both
back-ends, its values compared with the stored entities and only what the anonymous caller may read."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from backends import make_key
from cityos.app import create_app
from cityos.citizen import aqi, departures, http, services
from cityos.ingest import gtfs, gtfs_realtime
from cityos.settings import Settings

API = "/ngsi-ld/v1"
HERE = {"lat": 36.9083, "lon": -116.7596}


def prop(value: object) -> dict[str, object]:
    return {"type": "Property", "value": value}


def place(kind: str, name: str, lon: float, lat: float, **attrs: object) -> dict[str, object]:
    body: dict[str, object] = {"id": f"urn:ngsi-ld:{kind}:{name}", "type": kind, "name": prop(name)}
    body["location"] = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}
    body.update({k: prop(v) for k, v in attrs.items()})
    return body


AIR = place("AirQualityObserved", "central", -116.7596, 36.9083, pm25=80, pm10=160, no2=100, o3=120, so2=10, co=1000)
AIR["pm25"] = {"type": "Property", "value": 80, "observedAt": "2026-12-01T10:00:00Z"}  # the reading's own time
AIR_FAR = place("AirQualityObserved", "far", -116.70, 36.95, pm25=12.0)
FEED = Path(__file__).parent.parent / "src" / "cityos" / "ingest" / "data" / "gtfs" / "sample-feed.zip"
GTFS_KINDS = ("Agency", "Stop", "Station", "Route", "Service", "CalendarRule", "CalendarDateRule", "Trip", "StopTime")
# a GTFS-Realtime trip update (text format) as a feed would send it: CITY1 leaves its first stop 2 min late
REALTIME = """header { gtfs_realtime_version: "2.0" timestamp: 1199714100 }
entity { id: "u1" trip_update { trip { trip_id: "CITY1" }
  stop_time_update { stop_sequence: 1 stop_id: "STAGECOACH" departure { delay: 120 } } } }"""
HOURS = [{"dayOfWeek": "Monday", "opens": "10:00:00", "closes": "17:00:00"}]
ENTITIES = [
    AIR,
    AIR_FAR,
    place("OffStreetParking", "main", -116.7612, 36.9061, availableSpotNumber=87, totalSpotNumber=120),
    place("OffStreetParking", "hidden", -116.7600, 36.9080, availableSpotNumber=5, totalSpotNumber=10, secret=1),
    place("Museum", "museum", -116.7591, 36.9079, openingHoursSpecification=HOURS, description="Local history"),
    place("PointOfInterest", "visitors", -116.7593, 36.9081, category=["429"]),
]


def test_us_aqi_against_hand_computed_values() -> None:
    # PM2.5 35.9: (150-101)/(55.4-35.5)*(35.9-35.5)+101 = 101.98 -> 102; 12.0 -> 49/26.3*2.9+51 = 56.4 -> 56
    assert aqi.us_sub_index("pm25", 35.9) == 102
    assert aqi.us_sub_index("pm25", 12.0) == 56
    assert aqi.us_sub_index("pm25", 9.0) == 50 and aqi.us_sub_index("pm25", 400) is None
    assert aqi.us_sub_index("pm10", 160) == 103  # 49/99*5+101 = 103.47
    assert aqi.us_sub_index("no2", 100) == 50  # 100*24.45/46.01 = 53.1 ppb -> 53 -> top of "good"
    assert aqi.us_sub_index("o3", 120) == 71  # 0.0611 ppm -> 0.061: 49/0.015*0.006+51 = 70.6
    assert aqi.us_sub_index("so2", 10) == 4  # 3.8 ppb -> 3: 50/35*3 = 4.3
    assert aqi.us_sub_index("co", 1000) == 9  # 0.87 ppm -> 0.8: 50/4.4*0.8 = 9.1
    index = aqi.us_aqi({"pm25": 35.9, "pm10": 160, "o3": 120})
    assert (index.value, index.category, index.primary) == (103, "unhealthy-for-sensitive-groups", ["pm10"])
    assert aqi.us_aqi({}).value is None


def test_china_aqi_against_hand_computed_values() -> None:
    # HJ 633-2012: PM2.5 80 in 75..115 -> 50/40*5+100 = 106.25, rounded up to 107
    assert aqi.cn_sub_index("pm25", 80) == 107
    assert aqi.cn_sub_index("pm10", 160) == 105  # 50/100*10+100
    assert aqi.cn_sub_index("no2", 100) == 50
    assert aqi.cn_sub_index("o3", 120) == 38  # 50/160*120 = 37.5 -> 38
    assert aqi.cn_sub_index("so2", 10) == 4  # 3.33 -> 4
    assert aqi.cn_sub_index("co", 1000) == 10  # 1 mg/m³: 50/5*1
    assert aqi.cn_sub_index("so2", 900) is None  # above the 1-hour table
    index = aqi.cn_aqi({"pm25": 80, "pm10": 160, "no2": 100, "o3": 120, "so2": 10, "co": 1000})
    assert (index.value, index.category, index.primary) == (107, "lightly-polluted", ["pm25"])
    clean = aqi.cn_aqi({"pm25": 30})
    assert (clean.value, clean.category, clean.primary) == (43, "excellent", [])  # no primary at 50 or below


def test_a_service_runs_by_its_calendar_and_its_exceptions() -> None:
    weekdays = {"monday": True, "tuesday": True, "wednesday": True, "thursday": True, "friday": True}
    rule = {"startDate": "2026-01-01", "endDate": "2026-12-31", **weekdays}
    removed = {"appliesOn": "2026-12-07", "exceptionType": "2"}
    added = {"appliesOn": "2026-12-12", "exceptionType": "1"}
    assert departures.runs_on(date(2026, 12, 8), [rule], [removed, added])  # a Tuesday
    assert not departures.runs_on(date(2026, 12, 7), [rule], [removed, added])  # a Monday, removed
    assert departures.runs_on(date(2026, 12, 12), [rule], [removed, added])  # a Saturday, added
    assert not departures.runs_on(date(2026, 12, 13), [rule], [removed, added])  # a Sunday
    assert not departures.runs_on(date(2027, 1, 4), [rule], [])  # after the calendar's end
    assert departures.seconds("25:10:05") == 25 * 3600 + 605  # after midnight, on the service day


def test_where_refuses_bad_places() -> None:
    assert services.where({"lat": "1", "lon": "2"}).radius == services.DEFAULT_RADIUS
    for bad in ({"lat": "x", "lon": "2"}, {"lat": "91", "lon": "0"}, {"lat": "1", "lon": "2", "radius": "999999"}, {}):
        with pytest.raises(services.Invalid):
            services.where(bad)
    assert round(services.metres(36.9083, -116.7596, 36.9061, -116.7612)) == 283  # 244.6 m north, 142.3 m east


@pytest.fixture(scope="module")
def city(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Auth required; the anonymous caller may read the four public types, but not the `hidden` car park."""
    policy = tmp_path_factory.mktemp("policy") / "policies.yaml"
    public = {
        "id": "public-city-data",
        "effect": "allow",
        "principals": {"anonymous": True},
        "actions": ["read"],
        "resources": {
            "types": ["AirQualityObserved", "OffStreetParking", "Museum", "PointOfInterest"],
            "idPattern": "^urn:ngsi-ld:[A-Za-z]+:(central|far|main|museum|visitors)$",
        },
    }
    transit = {
        "id": "public-transit",
        "effect": "allow",
        "principals": {"anonymous": True},
        "actions": ["read"],
        "resources": {"types": [f"Gtfs{kind}" for kind in GTFS_KINDS]},
    }
    policy.write_text(yaml.safe_dump({"policies": [public, transit]}))
    token = make_key(module_db_url, "--name", "admin", "--role", "admin")
    page_key = make_key(module_db_url, "--name", "citizen-page")
    settings = Settings(database=module_db_url, auth="required", policy_file=str(policy), citizen_open311_key=page_key)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        client.headers["X-Admin"] = token
        admin = {"Authorization": f"Bearer {token}"}
        for entity in ENTITIES:
            made = client.post(f"{API}/entities", json=entity, headers=admin)
            assert made.status_code == 201, made.text
        with resources.as_file(resources.files("cityos.ingest").joinpath("data", "gtfs", FEED.name)) as path:
            feed, _ = gtfs.read_feed(path)
        bodies = list(gtfs.entities(feed))
        for start in range(0, len(bodies), 100):
            made = client.post(f"{API}/entityOperations/create", json=bodies[start : start + 100], headers=admin)
            assert made.status_code == 201, made.text
        update = gtfs_realtime.parse_feed(REALTIME.encode(), text=True).entity[0]
        body = gtfs_realtime.trip_update_body(update, "2008-01-07T13:55:00Z", "")
        assert body is not None
        done = client.post(f"{API}/entityOperations/upsert", params={"options": "update"}, json=[body], headers=admin)
        assert done.status_code in (201, 204), done.text
        yield client


def stored(city: TestClient, entity_id: str) -> dict[str, object]:
    token = city.headers["X-Admin"]
    answer = city.get(
        f"{API}/entities/{entity_id}", params={"options": "keyValues"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200
    body: dict[str, object] = answer.json()
    return body


def test_air_quality_near_me(city: TestClient) -> None:
    answer = city.get("/city/api/air", params={**HERE, "radius": 1000})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [s["id"] for s in body["stations"]] == [AIR["id"]]  # the far one is outside 1 km
    station = body["stations"][0]
    entity = stored(city, str(AIR["id"]))
    assert station["pollutants"] == {p: entity[p] for p in aqi.POLLUTANTS}
    assert station["distance"] == 0 and station["name"] == entity["name"]
    assert station["observed"] == "2026-12-01T10:00:00Z"
    # by hand: PM2.5 80 is in 55.5..125.4, 49/69.9*24.5+151 = 168.2; the others as in the tests above
    assert station["usAqi"]["parts"] == {"pm25": 168, "pm10": 103, "o3": 71, "no2": 50, "so2": 4, "co": 9}
    assert (station["usAqi"]["value"], station["usAqi"]["category"]) == (168, "unhealthy")
    assert station["cnAqi"]["parts"] == {"pm25": 107, "pm10": 105, "o3": 38, "no2": 50, "so2": 4, "co": 10}
    assert (station["cnAqi"]["value"], station["cnAqi"]["primary"]) == (107, ["pm25"])
    wide = city.get("/city/api/air", params={**HERE, "radius": 10000}).json()
    assert [s["id"] for s in wide["stations"]] == [AIR["id"], AIR_FAR["id"]]  # nearest first


def test_answers_are_cacheable(city: TestClient) -> None:
    first = city.get("/city/api/parking", params=HERE)
    assert first.status_code == 200 and first.headers["cache-control"].startswith("public, max-age=")
    again = city.get("/city/api/parking", params=HERE, headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert city.get("/city/api/parking", params=HERE, headers={"If-None-Match": '"other"'}).status_code == 200


def test_parking_near_me_shows_only_public_car_parks(city: TestClient) -> None:
    body = city.get("/city/api/parking", params=HERE).json()
    assert [p["id"] for p in body["parking"]] == ["urn:ngsi-ld:OffStreetParking:main"]  # "hidden" is not public
    entity = stored(city, "urn:ngsi-ld:OffStreetParking:main")
    assert (body["parking"][0]["free"], body["parking"][0]["total"]) == (
        entity["availableSpotNumber"],
        entity["totalSpotNumber"],
    )
    assert body["parking"][0]["distance"] == 283  # 244.6 m north, 142.3 m east


def test_places_near_me_with_opening_hours(city: TestClient) -> None:
    body = city.get("/city/api/places", params=HERE).json()
    by_id = {p["id"]: p for p in body["places"]}
    assert set(by_id) == {"urn:ngsi-ld:Museum:museum", "urn:ngsi-ld:PointOfInterest:visitors"}
    assert by_id["urn:ngsi-ld:Museum:museum"]["openingHours"] == HOURS
    assert by_id["urn:ngsi-ld:Museum:museum"]["description"] == "Local history"


def test_bad_questions_are_refused_with_problem_details(city: TestClient) -> None:
    asked: list[dict[str, Any]] = [{"lat": "north", "lon": "1"}, {"lat": "1"}, {**HERE, "radius": "0"}]
    for params in asked:
        answer = city.get("/city/api/air", params=params)
        assert answer.status_code == 400 and answer.json()["type"].endswith("BadRequestData")


def test_the_page_the_manifest_and_the_service_worker(city: TestClient) -> None:
    english = city.get("/city/", params={"lang": "en"})
    assert english.status_code == 200 and "Air quality near me" in english.text
    assert "script-src 'self'" in english.headers["content-security-policy"]
    assert "附近的空气质量" in city.get("/city/", params={"lang": "zh"}).text
    manifest = city.get("/city/manifest.webmanifest", params={"lang": "zh"})
    assert manifest.headers["content-type"] == "application/manifest+json"
    body = manifest.json()
    assert (body["name"], body["start_url"], body["display"], body["lang"]) == (
        "我的城市",
        "/city/",
        "standalone",
        "zh-Hans",
    )
    for icon in body["icons"]:
        assert city.get(icon["src"]).headers["content-type"] == "image/png"
    worker = city.get("/city/sw.js")
    assert worker.status_code == 200 and "cityos-city-v1" in worker.text
    assert city.get("/city/static/city.js").status_code == 200
    assert city.get("/city/static/../http.py").status_code == 404


def test_both_catalogues_have_the_same_keys() -> None:
    english, chinese = http.catalogue("en"), http.catalogue("zh")
    assert set(english) == set(chinese)
    assert all(chinese[k] != english[k] for k in english)


def test_report_a_problem_and_follow_it(city: TestClient) -> None:
    form = {"service_code": "pothole", "lat": str(HERE["lat"]), "long": str(HERE["lon"]), "description": "<b>hole</b>"}
    made = city.post("/city/api/reports", data=form)
    assert made.status_code == 200, made.text
    request_id = made.json()[0]["service_request_id"]
    followed = city.get(f"/open311/v2/requests/{request_id}.json").json()[0]
    assert followed["service_code"] == "pothole" and followed["status"] == "open"
    refused = city.post("/city/api/reports", data={"service_code": "no-such-service", "lat": "36.9", "long": "-116.76"})
    assert refused.status_code == 404 and refused.json()[0]["code"] == 404  # Open311's own error shape
    huge = city.post("/city/api/reports", content=b"x" * (6 * 1024 * 1024), headers={"Content-Type": "text/plain"})
    assert huge.status_code == 413 and huge.json()[0]["code"] == 413  # refused before it is read


def scheduled_from_the_files(stop: str, day: str) -> list[tuple[str, str]]:
    """(trip, HH:MM:SS) of the departures from `stop` on `day` (a weekday column), read from the
    feed's own files, not from the entities: the independent answer."""
    with zipfile.ZipFile(FEED) as archive:

        def table(name: str) -> list[dict[str, str]]:
            return list(csv.DictReader(io.TextIOWrapper(archive.open(name), "utf-8-sig")))

        running = {row["service_id"] for row in table("calendar.txt") if row[day] == "1"}
        trips = {row["trip_id"] for row in table("trips.txt") if row["service_id"] in running}
        return sorted(
            (row["trip_id"], row["departure_time"].zfill(8))
            for row in table("stop_times.txt")
            if row["stop_id"] == stop and row["trip_id"] in trips
        )


def test_next_departures_with_realtime_delays(city: TestClient) -> None:
    stop = "urn:ngsi-ld:GtfsStop:STAGECOACH"
    near = city.get("/city/api/stops", params={"lat": 36.915682, "lon": -116.751677, "radius": 500}).json()
    assert [s["id"] for s in near["stops"]] == [stop]
    answer = city.get("/city/api/departures", params={"stop": stop, "at": "2008-01-07T05:50:00-08:00", "count": 3})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    monday = datetime.fromisoformat("2008-01-07T00:00:00-08:00")
    wanted = []
    for trip, clock in scheduled_from_the_files("STAGECOACH", "monday"):
        hours, minutes, secs = (int(p) for p in clock.split(":"))
        delay = 120 if trip == "CITY1" else 0  # the realtime update above
        wanted.append((monday + timedelta(hours=hours, minutes=minutes, seconds=secs + delay), trip))
    assert len(wanted) == 3
    got = [(datetime.fromisoformat(d["expected"]), d["trip"].rsplit(":", 1)[-1]) for d in body["departures"]]
    assert got == sorted(wanted)
    city1 = next(d for d in body["departures"] if d["trip"].endswith("CITY1"))
    assert (city1["delay"], city1["realtime"], city1["scheduled"]) == (120, True, "2008-01-07T06:00:00-08:00")
    assert body["stop"]["name"] == "Stagecoach Hotel & Casino (Demo)" and body["zone"] == "America/Los_Angeles"
    later = city.get("/city/api/departures", params={"stop": stop, "at": "2008-01-07T06:30:00-08:00", "count": 3})
    shown = [(d["trip"].rsplit(":", 1)[-1], d["scheduled"], d["delay"]) for d in later.json()["departures"]]
    assert shown == [  # CITY2 at 06:58, then tomorrow's first runs, without today's realtime delay
        ("CITY2", "2008-01-07T06:58:00-08:00", None),
        ("CITY1", "2008-01-08T06:00:00-08:00", None),
        ("STBA", "2008-01-08T06:00:00-08:00", None),
    ]
    outside = city.get("/city/api/departures", params={"stop": stop, "at": "2011-06-01T08:00:00-07:00"}).json()
    assert outside["departures"] == []  # the feed's calendar ends in 2010
    assert city.get("/city/api/departures", params={"stop": "urn:ngsi-ld:GtfsStop:NOPE"}).status_code == 404
    assert city.get("/city/api/departures", params={"stop": "x"}).status_code == 400
