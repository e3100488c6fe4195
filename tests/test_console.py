"""The console without a browser: its message catalogues, its view helpers, and its pages served
in-process over both back-ends (they are clients of the public API, so the access policies decide
what a signed-in user sees: tests/test_console_browser.py drives the same pages in chromium)."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from backends import db_rows, make_key
from cityos.app import create_app
from cityos.audit import http as audit_http
from cityos.console import i18n, views
from cityos.settings import Settings
from mvt_decode import decode
from test_auth_keys import cli

pytestmark = pytest.mark.slow(seconds=100)

CONSOLE = Path(__file__).parent.parent / "src" / "cityos" / "console"
API = "/ngsi-ld/v1"
PARKING: dict[str, Any] = {
    "id": "urn:ngsi-ld:OffStreetParking:p1",
    "type": "OffStreetParking",
    "availableSpotNumber": {"type": "Property", "value": 12, "observedAt": "2026-01-02T03:04:05Z", "unitCode": "C62"},
    "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [-116.76, 36.9]}},
    "name": {"type": "Property", "value": "Main car park"},
}
SPOT: dict[str, Any] = {
    "id": "urn:ngsi-ld:ParkingSpot:s1",
    "type": "ParkingSpot",
    "refParkingSite": {"type": "Relationship", "object": PARKING["id"]},
    "status": {"type": "Property", "value": "free", "reliability": {"type": "Property", "value": 0.9}},
}
KEY = r"""(?<![\w.])t\(["']([a-z]+\.[a-z_.0-9]*[a-z0-9_])["']"""  # t("a.key"), not t("alert.status." ~ s)
SECRET: dict[str, Any] = {
    "id": "urn:ngsi-ld:Building:b1",
    "type": "Building",
    "floorsAboveGround": {"type": "Property", "value": 3},
}
TOWER: dict[str, Any] = {  # a Building on the map, which a parking viewer may not read
    "id": "urn:ngsi-ld:Building:b2",
    "type": "Building",
    "floorsAboveGround": {"type": "Property", "value": 9},
    "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [-116.75, 36.91]}},
}


def test_both_catalogues_have_every_key_the_templates_use() -> None:
    english, chinese = i18n.catalogue("en"), i18n.catalogue("zh")
    assert set(english) == set(chinese)
    used = set()
    for template in (CONSOLE / "templates").glob("*.html"):
        used |= set(re.findall(KEY, template.read_text()))
    used |= set(re.findall(KEY, (CONSOLE / "http.py").read_text()))
    assert len(used) > 80
    assert used - set(english) == set()
    assert all(chinese[k] != english[k] or k == "app.name" for k in english)  # translated, not copied


def test_the_language_is_chosen_by_query_cookie_then_browser() -> None:
    assert i18n.choose("zh", "en", "en-US") == "zh"
    assert i18n.choose(None, "zh", "en-US") == "zh"
    assert i18n.choose(None, None, "zh-CN,zh;q=0.9,en;q=0.8") == "zh"
    assert i18n.choose("klingon", None, "fr-FR") == "en"
    assert i18n.Translator("zh")("entities.found", n=3) == "找到 3 个实体"


def test_views_shape_attributes_relationships_and_alerts() -> None:
    rows = {r.name: r for r in views.rows(SPOT)}
    assert rows["refParkingSite"].kind == "Relationship" and rows["refParkingSite"].value == PARKING["id"]
    assert [s.name for s in rows["status"].sub] == ["reliability"]
    assert views.relationships(SPOT) == [("refParkingSite", PARKING["id"])]
    parking = {r.name: r for r in views.rows(PARKING)}["availableSpotNumber"]
    assert (parking.value, parking.unit, parking.observed_at, parking.numeric) == (
        12,
        "C62",
        "2026-01-02T03:04:05Z",
        True,
    )
    assert views.numeric_attributes(PARKING) == ["availableSpotNumber"]
    assert views.readings([PARKING], 5)[0]["value"] == 12
    open_alert = {"id": "a1", "type": "Alert", "status": {"type": "Property", "value": "open"}}
    done = {"id": "a2", "type": "Alert", "status": {"type": "Property", "value": "resolved"}}
    assert [a["id"] for a in views.alerts([open_alert, done])] == ["a1"]
    assert views.colour("OffStreetParking") == "#1f77b4" and views.colour("Unknown").startswith("#")
    assert (views.unit("GQ"), views.unit("CEL"), views.unit("XYZ")) == ("µg/m³", "°C", "XYZ")


@pytest.fixture
def console(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database=db_url)), base_url="http://127.0.0.1:1026") as client:
        for entity in (PARKING, SPOT, SECRET):
            assert client.post(f"{API}/entities", json=entity).status_code == 201
        yield client


def test_the_pages_show_the_city(console: TestClient) -> None:
    overview = console.get("/")
    assert overview.status_code == 200 and "City overview" in overview.text
    assert "default-src 'self'" in overview.headers["content-security-policy"]
    assert "OffStreetParking" in overview.text and 'value="3"' in overview.text  # three entities in all
    listing = console.get("/console/entities", params={"type": "OffStreetParking"})
    assert PARKING["id"] in listing.text and "1 entities found" in listing.text
    page = console.get("/console/entity", params={"id": PARKING["id"]})
    assert page.status_code == 200
    assert 'data-attrs="availableSpotNumber"' in page.text  # a chart for the numeric attribute
    assert SPOT["id"] in page.text  # the relationship that points here
    spot = console.get("/console/entity", params={"id": SPOT["id"]})
    assert "reliability" in spot.text and f"id={PARKING['id'].replace(':', '%3A')}" in spot.text
    assert console.get("/console/entity", params={"id": "urn:ngsi-ld:X:none"}).status_code == 404
    assert 'action="/console/entity/edit"' in page.text  # auth off: anyone may write, so it is offered
    form = {"id": PARKING["id"], "attr": "availableSpotNumber", "value": "7", "numeric": "1"}
    assert console.post("/console/entity/edit", data=form, follow_redirects=False).status_code == 303
    assert (
        console.get(f"{API}/entities/{PARKING['id']}", params={"format": "keyValues"}).json()["availableSpotNumber"]
        == 7
    )
    assert console.post("/console/entity/edit", data={**form, "value": "many"}).status_code == 400
    map_page = console.get("/console/map")
    config = json.loads(re.search(r'id="map-config">(.*?)</script>', map_page.text).group(1))  # type: ignore[union-attr]
    assert {layer["type"] for layer in config["layers"]} == {"OffStreetParking"}  # the only one with a location
    assert config["basemap"] == "" and config["api"] == "/console/api/ngsi-ld/v1"
    operations = console.get("/console/operations")
    assert operations.status_code == 200 and 'id="new-subscription"' in operations.text
    made = console.post(
        "/console/subscriptions",
        data={"type": "OffStreetParking", "attrs": "availableSpotNumber", "uri": "https://notify.example.org/x"},
        follow_redirects=False,
    )
    assert made.status_code == 303, made.text
    listed = console.get(f"{API}/subscriptions").json()
    assert [s["watchedAttributes"] for s in listed] == [["availableSpotNumber"]]
    assert "https://notify.example.org/x" in console.get("/console/operations").text
    admin = console.get("/console/admin")  # auth off: the open principal administers
    assert admin.status_code == 200 and 'id="audit"' in admin.text and "entity.create" in admin.text


def _tamper(database: str, sql: str) -> None:
    """A change made behind the broker's back, straight in the database."""
    if database.startswith("postgresql"):
        db_rows(database, sql + " RETURNING seq")  # asyncpg: outside a transaction, committed
        return
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute(sql)
        db.commit()


def test_the_admin_page_shows_whether_the_audit_trail_verifies(
    console: TestClient, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deadline = time.monotonic() + 10  # PostgreSQL chains its records a moment after their writes
    while db_rows(db_url, "SELECT count(*) FROM audit_log")[0][0] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    checked = console.get("/cityos/v1/audit/verification", params={"fresh": "true"}).json()
    assert checked["verified"] is True and checked["problemCount"] == 0 and checked["problems"] == []
    assert checked["records"] >= 3 and checked["firstSeq"] == 1 and checked["checkedAt"].endswith("Z")
    page = console.get("/console/admin")
    assert 'data-verified="true"' in page.text and f'datetime="{checked["checkedAt"]}"' in page.text  # kept
    _tamper(db_url, "UPDATE audit_log SET principal = 'someone-else' WHERE seq = 2")
    assert 'data-verified="true"' in console.get("/console/admin").text  # the kept answer, with its time
    monkeypatch.setattr(audit_http, "VERIFIED_FOR", 0.0)  # stale at once: the next request starts a check
    meanwhile = console.get("/cityos/v1/audit/verification").json()
    assert meanwhile["checking"] is True and meanwhile["verified"] is True  # the last answer, not waited for
    assert meanwhile["checkedAt"] == checked["checkedAt"]
    monkeypatch.setattr(audit_http, "VERIFIED_FOR", 60.0)
    deadline = time.monotonic() + 10
    while (latest := console.get("/cityos/v1/audit/verification").json())["checking"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert latest["verified"] is False and latest["problemCount"] == 1
    again = console.get("/console/admin", params={"fresh": "1"})
    assert 'data-verified="false"' in again.text and "1 problem(s)" in again.text
    assert "seq 2: the content does not match its hash (record edited)" in again.text
    assert f'datetime="{checked["checkedAt"]}"' not in again.text  # a new check, a new time
    assert console.get("/cityos/v1/audit/verification", params={"when": "now"}).status_code == 400


def test_chinese_pages_and_the_switch(console: TestClient) -> None:
    assert "城市概览" in console.get("/", params={"lang": "zh"}).text
    switched = console.get("/console/language", params={"lang": "zh", "next": "/console/map"}, follow_redirects=False)
    assert switched.status_code == 303 and switched.headers["location"] == "/console/map"
    assert "城市地图" in console.get("/console/map").text  # the cookie
    away = console.get("/console/language", params={"lang": "en", "next": "//evil.example"}, follow_redirects=False)
    assert away.headers["location"] == "/"


def test_static_files_and_the_read_proxy_stay_in_bounds(console: TestClient) -> None:
    assert console.get("/console/static/vendor/maplibre-gl.js").status_code == 200
    assert console.get("/console/static/../http.py").status_code == 404
    assert console.get("/console/static/%2e%2e/http.py").status_code == 404
    geo = console.get(
        f"/console/api{API}/entities", params={"type": "OffStreetParking"}, headers={"Accept": "application/geo+json"}
    )
    assert geo.status_code == 200 and geo.json()["features"][0]["id"] == PARKING["id"]
    assert console.get("/console/api/cityos/v1/admin/keys").status_code == 404
    assert console.post(f"/console/api{API}/entities", json=SECRET).status_code == 405


POLICIES = {
    "policies": [
        {
            "id": "parking-viewers-read-parking",
            "effect": "allow",
            "principals": {"roles": ["parking-viewer"]},
            "actions": ["read"],
            "resources": {"types": ["OffStreetParking", "ParkingSpot"]},
        }
    ]
}
PASSWORD = "a long console password"


@pytest.fixture
def secured_city(db_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """The console with --auth required, a parking viewer `vera`, and an admin's token."""
    made = cli(db_url, "users", "create", "vera", "--role", "parking-viewer", "--password-stdin", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    policy = tmp_path / "policies.yaml"
    policy.write_text(yaml.safe_dump(POLICIES))
    settings = Settings(database=db_url, auth="required", policy_file=str(policy))
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        token = make_key(db_url, "--name", "admin", "--role", "admin")
        for entity in (PARKING, SPOT, SECRET, TOWER):
            made_entity = client.post(f"{API}/entities", json=entity, headers={"Authorization": f"Bearer {token}"})
            assert made_entity.status_code == 201, made_entity.text
        yield client, token


@pytest.fixture
def secured(secured_city: tuple[TestClient, str]) -> TestClient:
    return secured_city[0]


def test_sign_in_and_see_only_what_the_policies_allow(secured: TestClient) -> None:
    first = secured.get("/", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/console/signin"
    assert secured.get("/console/signin").status_code == 200
    wrong = secured.post("/console/signin", data={"username": "vera", "password": "nope"}, follow_redirects=False)
    assert wrong.status_code == 200 and "Wrong user name or password" in wrong.text
    assert "cityos_session" not in wrong.cookies
    signed = secured.post("/console/signin", data={"username": "vera", "password": PASSWORD}, follow_redirects=False)
    assert signed.status_code == 303
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    overview = secured.get("/")
    assert "OffStreetParking" in overview.text and "Building" not in overview.text
    assert secured.get("/console/entity", params={"id": SECRET["id"]}).status_code == 404
    assert secured.get(f"/console/api{API}/entities/{SECRET['id']}").status_code == 404
    assert PARKING["id"] in secured.get("/console/entities", params={"type": "OffStreetParking"}).text
    parking = secured.get("/console/entity", params={"id": PARKING["id"]})
    assert parking.status_code == 200 and 'action="/console/entity/edit"' not in parking.text  # read only
    form = {"id": PARKING["id"], "attr": "availableSpotNumber", "value": "7", "numeric": "1"}
    assert secured.post("/console/entity/edit", data=form).status_code == 403  # and the API refuses it anyway
    refused = secured.get("/console/admin")  # not an admin: each admin section says why it is absent
    assert refused.status_code == 200 and 'id="audit"' not in refused.text and 'id="keys"' not in refused.text
    assert "data-verified" not in refused.text  # nor whether the trail verifies
    assert 'id="new-subscription"' not in secured.get("/console/operations").text  # no right to subscribe
    wish = {"type": "OffStreetParking", "uri": "https://notify.example.org/x"}
    assert secured.post("/console/subscriptions", data=wish).status_code == 403
    secured.post("/console/signout")
    assert secured.get("/", follow_redirects=False).status_code == 303


def _stream(client: TestClient, into: list[str], headers: dict[str, str]) -> threading.Thread:
    """GET the change stream for a second, on a thread (the test client answers once it ends)."""

    def run() -> None:
        answer = client.get(CHANGES, params={"duration": "1"}, headers=headers)
        into.append(f"{answer.status_code}\n{answer.text}")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


CHANGES = "/cityos/v1/changes"
TILE = "/tiles/0/0/0.mvt"


def test_the_map_reads_tiles_and_changes_with_the_session_cookie(secured_city: tuple[TestClient, str]) -> None:
    """The map's browser requests carry no Authorization header: the session cookie stands for the
    token on the tiles and the change stream (GET only), and the policies restrict both."""
    secured, token = secured_city
    admin = {"Authorization": f"Bearer {token}"}
    assert secured.get(TILE).status_code == 401 and secured.get(CHANGES, params={"duration": "1"}).status_code == 401
    everything = decode(secured.get(TILE, headers=admin).content)["entities"]["features"]
    assert {f["properties"]["id"] for f in everything} == {PARKING["id"], TOWER["id"]}
    assert secured.get(TILE, headers={"Cookie": "cityos_session=cs_forged.secret"}).status_code == 401
    signed = secured.post("/console/signin", data={"username": "vera", "password": PASSWORD}, follow_redirects=False)
    session = signed.cookies["cityos_session"]
    secured.cookies.clear()  # each request below names its credentials
    cookie = {"Cookie": f"lang=en; cityos_session={session}"}
    tile = secured.get(TILE, headers=cookie)
    assert tile.status_code == 200 and "Cookie" in tile.headers["vary"]
    assert [f["properties"]["id"] for f in decode(tile.content)["entities"]["features"]] == [PARKING["id"]]
    # the cookie is a credential on the map's reads only: never on a write, nor on another route
    assert secured.get(f"{API}/entities", params={"type": "OffStreetParking"}, headers=cookie).status_code == 401
    assert secured.patch(f"{API}/entities/{PARKING['id']}/attrs", json={}, headers=cookie).status_code == 401
    assert secured.post(CHANGES, headers=cookie).status_code == 401
    got: list[str] = []
    reader = _stream(secured, got, cookie)
    hub = secured.app.state["changes"]  # type: ignore[attr-defined]
    for _ in range(200):  # the stream is open once its client is registered
        if hub.clients:
            break
        threading.Event().wait(0.01)
    assert hub.clients
    for entity, attr in ((TOWER, "floorsAboveGround"), (PARKING, "availableSpotNumber")):
        patched = secured.patch(
            f"{API}/entities/{entity['id']}/attrs", json={attr: {"type": "Property", "value": 4}}, headers=admin
        )
        assert patched.status_code == 204, patched.text
    reader.join(10)
    status, _, body = got[0].partition("\n")
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert status == "200" and [(e["id"], e["attrs"]["availableSpotNumber"]) for e in events] == [(PARKING["id"], 4)]


def _map_layers(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, int]:
    page = client.get("/console/map", headers=headers)
    assert page.status_code == 200, page.text
    config = json.loads(re.search(r'id="map-config">(.*?)</script>', page.text).group(1))  # type: ignore[union-attr]
    return {layer["type"]: layer["count"] for layer in config["layers"]}


def test_the_map_pages_layers_are_kept_until_a_write_changes_them(console: TestClient) -> None:
    """The types and located counts are kept between loads (two scans of every entity each,
    console/layers.py) and follow each create, delete, move and new location, exactly."""
    from cityos.mapdata.changes import RETOUCH

    kept = console.app.state.console_layers if hasattr(console.app.state, "console_layers") else None  # type: ignore[attr-defined]
    assert kept is None or kept.hits == 0
    time.sleep(RETOUCH + 0.1)  # the fixture's writes have surely committed
    assert _map_layers(console) == {"OffStreetParking": 1}
    assert _map_layers(console) == {"OffStreetParking": 1}
    cache = console.app.state.console_layers  # type: ignore[attr-defined]
    assert cache.hits == 1 and cache.misses == 1
    second = {**PARKING, "id": "urn:ngsi-ld:OffStreetParking:p2"}
    assert console.post(f"{API}/entities", json=second).status_code == 201
    assert _map_layers(console) == {"OffStreetParking": 2}  # read again: a create
    located = {"location": TOWER["location"]}  # the Building without a location gets one
    assert console.post(f"{API}/entities/{SECRET['id']}/attrs", json=located).status_code == 204
    assert _map_layers(console) == {"OffStreetParking": 2, "Building": 1}
    assert console.delete(f"{API}/entities/{second['id']}").status_code == 204
    assert _map_layers(console) == {"OffStreetParking": 1, "Building": 1}
    time.sleep(RETOUCH + 0.1)
    assert _map_layers(console) == {"OffStreetParking": 1, "Building": 1}  # read after the writes
    hits = cache.hits
    value = {"availableSpotNumber": {"type": "Property", "value": 3}}  # a new value changes no count
    assert console.patch(f"{API}/entities/{PARKING['id']}/attrs", json=value).status_code == 204
    assert _map_layers(console) == {"OffStreetParking": 1, "Building": 1}
    assert cache.hits == hits + 1
    assert console.delete(f"{API}/entities/{SECRET['id']}/attrs/location").status_code == 204
    assert _map_layers(console) == {"OffStreetParking": 1}


def test_the_map_layers_kept_for_an_admin_are_not_a_restricted_users(secured_city: tuple[TestClient, str]) -> None:
    from cityos.mapdata.changes import RETOUCH

    secured, token = secured_city
    time.sleep(RETOUCH + 0.1)
    admin = {"Cookie": f"cityos_session={token}"}  # an API key as the session
    assert _map_layers(secured, admin) == {"OffStreetParking": 1, "Building": 1}
    assert _map_layers(secured, admin) == {"OffStreetParking": 1, "Building": 1}
    assert secured.app.state.console_layers.hits == 1  # type: ignore[attr-defined]
    signed = secured.post("/console/signin", data={"username": "vera", "password": PASSWORD}, follow_redirects=False)
    session = signed.cookies["cityos_session"]
    secured.cookies.clear()
    assert _map_layers(secured, {"Cookie": f"cityos_session={session}"}) == {"OffStreetParking": 1}
    assert secured.app.state.console_layers.hits == 1  # type: ignore[attr-defined]
