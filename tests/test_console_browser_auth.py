"""The console's map in a real browser with --auth required: MapLibre's tile requests and the
EventSource carry no Authorization header, so they are read with the session cookie (the door,
docs/security.md), and the policies restrict what the signed-in user's map draws. One server for
the module (the demo city, a parking viewer, an admin key for the writes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from backends import make_key
from console_browser import PARKING_VIEWERS, browser_fixture, open_tab  # noqa: F401 (the `browser` fixture)
from server_process import LoggedServer
from test_auth_keys import cli

pytestmark = pytest.mark.slow(seconds=60)

API = "/ngsi-ld/v1"
PARKING = "urn:ngsi-ld:OffStreetParking:beatty-main-street"
PASSWORD = "a long console password"


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoggedServer, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("console-auth")
    database = str(folder / "city.db")
    made = cli(database, "users", "create", "vera", "--role", "parking-viewer", "--password-stdin", stdin=PASSWORD)
    assert made.returncode == 0, made.stderr
    admin = {"Authorization": "Bearer " + make_key(database, "--name", "admin", "--role", "admin")}
    policies = folder / "policies.yaml"
    policies.write_text(yaml.safe_dump(PARKING_VIEWERS))
    server = LoggedServer(
        folder / "serve.log",
        "--demo-on-empty",
        "--database",
        database,
        "--auth",
        "required",
        "--policy-file",
        str(policies),
    )
    server.start()
    try:
        yield server, admin
    finally:
        server.stop()


def test_the_signed_in_map_reads_tiles_and_changes_with_the_cookie(
    city: tuple[LoggedServer, dict[str, str]], browser: Any
) -> None:
    server, admin = city
    assert httpx.get(server.base + "/tiles/0/0/0.mvt").status_code == 401
    tab = open_tab(browser)
    tab.goto(server.base + "/console/signin")
    tab.page.fill("#username", "vera")
    tab.page.fill("#password", PASSWORD)
    tab.page.click("button[type=submit]")
    tab.page.wait_for_load_state("load")
    answers: list[tuple[int, str]] = []
    tab.page.on("response", lambda r: answers.append((r.status, r.url)))
    tab.goto(server.base + "/console/map")
    tab.page.wait_for_selector("#map[data-loaded][data-streaming]", timeout=20000)
    assert tab.page.evaluate(
        "JSON.parse(document.getElementById('map-config').textContent).layers.map(l => l.type)"
    ) == ["OffStreetParking"]
    shown = f"window.cityosMap.shown('OffStreetParking')['{PARKING}']"
    assert tab.until(shown)["id"] == PARKING
    assert any(status == 200 and "/tiles/" in url for status, url in answers)
    httpx.patch(
        f"{server.base}{API}/entities/{PARKING}/attrs",
        json={"availableSpotNumber": {"type": "Property", "value": 5}},
        headers=admin,
    ).raise_for_status()
    tab.until(f"{shown}.availableSpotNumber === 5")  # through the EventSource, with the cookie
    tab.clean()  # no console error, no refused request
    tab.page.context.close()
