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
from html.parser import HTMLParser
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


def _scanned(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, int]:
    """The map's layers as a fresh read of the API gives them: each type with its located count."""
    types = client.get(f"{API}/types", headers=headers).json()["typeList"]
    found = {}
    for entity_type in types:
        query = {"type": entity_type, "limit": 0, "count": "true", "attrs": "location"}
        found[entity_type] = int(
            client.get(f"{API}/entities", params=query, headers=headers).headers["ngsild-results-count"]
        )
    return {t: n for t, n in found.items() if n}


def test_the_map_pages_layers_follow_each_committed_change_exactly(console: TestClient) -> None:
    """The types and located counts are read once (two scans of every entity, console/layers.py),
    then follow each committed create, delete, move, new or removed location, type change and
    batch: after each, the page shows what a fresh read of the API gives, without reading again."""
    from cityos.mapdata.changes import RETOUCH

    kept = console.app.state.console_layers if hasattr(console.app.state, "console_layers") else None  # type: ignore[attr-defined]
    assert kept is None or kept.hits == 0
    time.sleep(RETOUCH + 0.1)  # the fixture's writes have surely committed
    assert _map_layers(console) == {"OffStreetParking": 1}
    cache = console.app.state.console_layers  # type: ignore[attr-defined]
    assert (cache.hits, cache.misses) == (0, 1)
    second = {**PARKING, "id": "urn:ngsi-ld:OffStreetParking:p2"}
    moved = {"location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [-116.7, 36.95]}}}
    retyped = {**second, "type": "Building"}  # replaced whole: another type
    both = {**PARKING, "id": "urn:ngsi-ld:OffStreetParking:p9", "type": ["OffStreetParking", "Building"]}
    batch = [{**PARKING, "id": f"urn:ngsi-ld:OffStreetParking:b{n}"} for n in range(3)] + [{"id": "bad"}]
    steps: list[tuple[str, str, Any]] = [
        ("POST", f"{API}/entities", second),  # a create
        ("POST", f"{API}/entities/{SECRET['id']}/attrs", {"location": TOWER["location"]}),  # a new location
        ("PATCH", f"{API}/entities/{PARKING['id']}/attrs", moved),  # a move
        ("PATCH", f"{API}/entities/{PARKING['id']}/attrs", {"availableSpotNumber": {"type": "Property", "value": 3}}),
        ("POST", f"{API}/entityOperations/upsert?options=replace", [retyped]),  # a type change
        ("POST", f"{API}/entities", both),  # two types
        ("POST", f"{API}/entityOperations/create", batch),  # a batch, one refused
        ("DELETE", f"{API}/entities/{second['id']}", None),  # a delete
        ("DELETE", f"{API}/entities/{SECRET['id']}/attrs/location", None),  # a location removed
        ("POST", f"{API}/entityOperations/delete", [e["id"] for e in batch[:2]]),
        ("POST", f"{API}/entities", {**SPOT, "id": "urn:ngsi-ld:ParkingSpot:s2"}),  # no location: no layer
    ]
    for method, path, body in steps:
        answer = console.request(method, path, json=body)
        assert answer.status_code < 300 or path.endswith("/create"), (path, answer.status_code, answer.text)
        assert _map_layers(console) == _scanned(console), (method, path)
    assert _map_layers(console) == {"OffStreetParking": 3, "Building": 1}
    assert cache.misses == 1 and cache.hits == len(steps) + 1  # never read again
    assert cache.followed >= 10


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


def test_a_restricted_users_map_layers_are_kept_for_her_policy_view_only(
    secured_city: tuple[TestClient, str], db_url: str
) -> None:
    """Under --auth required the layers are kept per policy view (console/layers.py): shared by the
    users the same rules apply to, never by one who may see less, read again after a layout change
    and after a policy change."""
    from cityos.mapdata.changes import RETOUCH

    secured, token = secured_city
    for name, role in (("walt", "parking-viewer"), ("nora", "nobody")):
        made = cli(db_url, "users", "create", name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
        assert made.returncode == 0, made.stderr
    sessions = {}
    for name in ("vera", "walt", "nora"):
        signed = secured.post("/console/signin", data={"username": name, "password": PASSWORD}, follow_redirects=False)
        sessions[name] = {"Cookie": f"cityos_session={signed.cookies['cityos_session']}"}
    secured.cookies.clear()
    admin = {"Authorization": f"Bearer {token}"}
    time.sleep(RETOUCH + 0.1)
    assert _map_layers(secured, sessions["vera"]) == {"OffStreetParking": 1}
    cache = secured.app.state.console_layers  # type: ignore[attr-defined]
    assert (cache.hits, cache.misses) == (0, 1)
    assert _map_layers(secured, sessions["vera"]) == {"OffStreetParking": 1}
    assert _map_layers(secured, sessions["walt"]) == {"OffStreetParking": 1}  # the same rules: shared
    assert (cache.hits, cache.misses) == (2, 1)
    assert _map_layers(secured, sessions["nora"]) == {}  # no rule lets her read anything: her own answer
    assert _map_layers(secured, {"Cookie": f"cityos_session={token}"}) == {"OffStreetParking": 1, "Building": 1}
    assert (cache.hits, cache.misses) == (2, 3)
    assert _map_layers(secured, sessions["nora"]) == {}
    assert (cache.hits, cache.misses) == (3, 3)
    third = {**PARKING, "id": "urn:ngsi-ld:OffStreetParking:p3"}
    assert secured.post(f"{API}/entities", json=third, headers=admin).status_code == 201
    assert _map_layers(secured, sessions["walt"]) == {"OffStreetParking": 2}  # a create, followed
    assert _map_layers(secured, sessions["nora"]) == {}
    assert (cache.hits, cache.misses) == (5, 3)  # no read again
    buildings = {
        "id": "viewers-read-buildings",
        "effect": "allow",
        "principals": {"roles": ["parking-viewer"]},
        "actions": ["read"],
        "resources": {"types": ["Building"]},
    }
    added = secured.post("/cityos/v1/admin/policies", json=buildings, headers=admin)
    assert added.status_code in (200, 201), added.text
    time.sleep(RETOUCH + 0.1)
    assert _map_layers(secured, sessions["vera"]) == {"OffStreetParking": 2, "Building": 1}  # a new view
    hits = cache.hits
    assert _map_layers(secured, sessions["walt"]) == {"OffStreetParking": 2, "Building": 1}
    assert cache.hits == hits + 1
    assert _map_layers(secured, sessions["nora"]) == {}  # every view is new after a policy change
    assert cache.hits == hits + 1


def test_the_layers_follow_a_scope_and_an_exact_location() -> None:
    """What a policy view's rules test besides types and ids (a scope, an area on the exact
    location) changes the layers of that view: such a change drops them, a new value does not."""
    from cityos.mapdata.changes import GEO, _layers_changed

    square = {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]]}
    notched = {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 2], [1, 1], [0, 2], [0, 0]]]}  # the same box
    value = "https://example.org/value"

    def entity(shape: dict[str, Any], scope: str | None = None, n: int = 1) -> Any:
        attrs = {GEO: [{"type": "GeoProperty", "value": shape}], value: [{"type": "Property", "value": n}]}
        return {"id": "urn:x:1", "type": ["T"], "attrs": attrs} | ({"scope": [scope]} if scope else {})

    assert not _layers_changed(entity(square), entity(square, n=2), False)
    assert _layers_changed(entity(square), entity(notched), False)
    assert _layers_changed(entity(square), entity(square, "/north"), False)
    assert _layers_changed(entity(square), None, False) and _layers_changed(None, entity(square), False)


class _Text(HTMLParser):
    """The text a page shows outside the elements whose content is localised in the browser
    (data.num, time) or shown as written (code, raw JSON, scripts, options)."""

    SKIPPED = {"data", "time", "code", "pre", "script", "style", "option", "textarea", "title"}

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIPPED:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if not self.depth and data.strip():
            self.found.append(data.strip())


RAW_NUMBER = re.compile(r"(?<![\w-])\d{4,}(?!\w)")  # 112684, not 112,684 nor a key's ck_8727b1
RAW_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def test_every_page_writes_its_numbers_and_dates_in_the_language(console: TestClient) -> None:
    """No page shows a number of four digits or more, or an ISO date, as stored: numbers are
    written in the language (112,684) inside <data class="num">, dates are <time> elements that
    console.js writes in the language and the browser's time zone."""
    run = {
        "kind": "csv",
        "source": "stops.csv",
        "status": "finished",
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:01:00Z",
        "stored": 112684,
        "rejected": 1234,
        "rejects": [{"where": "line 7", "reason": "no id"}],
    }
    assert console.put("/cityos/v1/imports/run00000001", json=run).status_code == 204
    dated = {"dateObserved": {"type": "Property", "value": "2026-01-02T03:04:05Z"}}
    dated["dateOpened"] = {"type": "Property", "value": "2026-01-02"}
    dated["totalSpotNumber"] = {"type": "Property", "value": 12345.678}
    assert console.post(f"{API}/entities/{PARKING['id']}/attrs", json=dated).status_code == 204
    many = [{**SPOT, "id": f"urn:ngsi-ld:ParkingSpot:n{n}"} for n in range(2, 1002)]
    for start in range(0, len(many), 100):
        assert console.post(f"{API}/entityOperations/create", json=many[start : start + 100]).status_code == 201
    pages = ["/", "/console/entities?type=ParkingSpot", "/console/map", "/console/operations", "/console/admin"]
    pages.append(f"/console/entity?id={PARKING['id']}")
    for language in ("en", "zh"):
        for path in pages:
            page = console.get(path, params={"lang": language} if "?" not in path else None)
            if "?" in path:
                page = console.get(f"{path}&lang={language}")
            assert page.status_code == 200, (path, page.text)
            shown = _Text()
            shown.feed(page.text)
            raw = [text for text in shown.found if RAW_NUMBER.search(text) or RAW_DATE.search(text)]
            assert raw == [], (language, path, raw)
        operations = console.get("/console/operations", params={"lang": language}).text
        assert '<data class="num" value="112684">112,684</data>' in operations
        assert "1,234" in operations  # in "First 1 of 1,234 rejects"
        assert '<time class="when" datetime="2026-01-01T00:01:00Z">' in operations
        spots = console.get(f"/console/entities?type=ParkingSpot&lang={language}").text
        assert "1,001" in spots and "51" in spots  # found, and the pages
        entity = console.get(f"/console/entity?id={PARKING['id']}&lang={language}").text
        assert '<time class="when" datetime="2026-01-02T03:04:05Z">' in entity
        assert '<time class="day" datetime="2026-01-02">' in entity
        assert '<data class="num" value="12345.678">12,345.68</data>' in entity
    assert i18n.Translator("zh")("ops.rejects", shown=20, total=112684) == i18n.Translator("zh")(
        "ops.rejects", shown="20", total="112,684"
    )


def test_a_change_rolled_back_or_committed_unseen_gives_the_kept_layers_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """mapdata/layout.py: a followed change that never commits (rolled back) blocks keeping a new
    read until IN_FLIGHT passes, then gives the kept layers up; its commit arriving later gives
    them up again (a read meanwhile may have missed it); a committed one reaches the follower."""
    import asyncio

    from cityos.mapdata import layout

    loop = asyncio.new_event_loop()
    try:
        watch = layout.LayoutWatch(1.0)
        got: list[Any] = []
        watch.loop, watch.follower, watch.tracks = loop, got.extend, lambda tenant: tenant == "t"
        assert watch.change("other", None, PARKING) is None and watch.seen == 1  # nothing kept of it
        rolled_back = watch.change("t", None, PARKING)
        assert rolled_back is not None and not watch.settled()
        committed = watch.change("t", PARKING, None)
        assert committed is not None
        committed.call()
        loop.run_until_complete(asyncio.sleep(0))
        assert got == [("t", PARKING, None)] and watch.epoch == 0 and not watch.settled()
        monkeypatch.setattr(layout, "IN_FLIGHT", 0.0)
        time.sleep(0.01)
        assert watch.settled() and watch.epoch == 1  # taken as rolled back: the kept layers go
        rolled_back.call()  # it committed after all
        loop.run_until_complete(asyncio.sleep(0))
        assert watch.epoch == 2 and len(got) == 1
        assert not watch.keep_if_quiet(watch.seen - 1, watch.epoch, time.monotonic(), lambda: None)  # one came
    finally:
        loop.close()
