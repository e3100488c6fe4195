"""The console in a real browser (Debian's chromium, Playwright for Python) against a real
`cityos serve --demo-on-empty`: every page loads without console errors in English and Chinese,
on a desktop and a phone, with no serious WCAG 2.2 AA violation (axe-core); the map shows the demo
entities from vector tiles and follows a change made through the API by the change stream; the
time slider replays known history; the charts draw the temporal API's values. Screenshots go to
docs/console/ (docs/console.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from console_browser import PHONE, browser_fixture, open_tab  # noqa: F401 (the `browser` fixture)
from server_process import LoggedServer

pytestmark = pytest.mark.slow(seconds=90)

API = "/ngsi-ld/v1"
PARKING = "urn:ngsi-ld:OffStreetParking:beatty-main-street"
AIR = "urn:ngsi-ld:AirQualityObserved:beatty-central"
PAGES = {
    "overview": "/",
    "entities": "/console/entities?type=OffStreetParking",
    "entity": f"/console/entity?id={quote(AIR, safe='')}",
    "map": "/console/map",
    "operations": "/console/operations",
    "admin": "/console/admin",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedServer]:
    folder = tmp_path_factory.mktemp("console")
    city = LoggedServer(folder / "serve.log", "--demo-on-empty", "--database", str(folder / "city.db"))
    city.start()
    try:
        httpx.post(city.base + "/cityos/v1/indicators/compute", timeout=60).raise_for_status()  # the KPI tiles
        yield city
    finally:
        city.stop()


def ready(tab: Any, path: str) -> None:
    if path == "/console/map":
        tab.page.wait_for_selector("#map[data-loaded]", timeout=20000)
    if path.startswith("/console/entity?"):
        tab.page.wait_for_selector("#charts[data-ready]", timeout=20000)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_page_loads_clean_and_accessible(server: LoggedServer, browser: Any, language: str) -> None:
    tab = open_tab(browser, language=language)
    for name, path in PAGES.items():
        tab.goto(server.base + path)
        ready(tab, path)
        assert tab.page.locator("html").get_attribute("lang") == ("zh-Hans" if language == "zh" else "en")
        tab.clean()
        assert tab.axe() == [], f"{name} ({language})"
        tab.shot(f"{name}-{language}")
    tab.page.context.close()


def test_the_language_switch_and_localised_numbers(server: LoggedServer, browser: Any) -> None:
    tab = open_tab(browser)
    tab.goto(server.base + "/")
    assert tab.page.locator("h1").inner_text() == "City overview"
    tab.page.get_by_role("link", name="简体中文").click()
    tab.page.wait_for_load_state("load")
    assert tab.page.locator("h1").inner_text() == "城市概览"
    tab.goto(server.base + "/console/entities?type=GtfsStopTime")  # the cookie keeps the choice
    assert "找到" in tab.page.locator("#result-count").inner_text()
    tab.clean()
    tab.page.context.close()


def test_the_phone_sized_pages(server: LoggedServer, browser: Any) -> None:
    tab = open_tab(browser, viewport=PHONE)
    for name, path in PAGES.items():
        tab.goto(server.base + path)
        ready(tab, path)
        overflow = tab.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} scrolls sideways by {overflow}px on a phone"
        tab.clean()
        tab.shot(f"{name}-phone")
    tab.page.context.close()


def test_the_entity_browser_pages_on_the_server(server: LoggedServer, browser: Any) -> None:
    total = int(
        httpx.get(f"{server.base}{API}/entities", params={"type": "GtfsStopTime", "limit": 0, "count": "true"}).headers[
            "NGSILD-Results-Count"
        ]
    )
    assert total > 20
    tab = open_tab(browser)
    tab.goto(server.base + "/console/entities?type=GtfsStopTime")
    first = tab.page.locator("#results tbody tr").all_inner_texts()
    assert len(first) == 20
    tab.page.get_by_role("link", name="Next").click()
    tab.page.wait_for_load_state("load")
    second = tab.page.locator("#results tbody tr").all_inner_texts()
    assert second and not set(first) & set(second)
    assert tab.page.locator("#page-of").inner_text() == f"Page 2 of {-(-total // 20)}"
    tab.clean()
    tab.page.context.close()


def test_the_entity_page_charts_its_history(server: LoggedServer, browser: Any) -> None:
    values = httpx.get(
        f"{server.base}{API}/temporal/entities/{AIR}",
        params={"attrs": "pm25", "options": "temporalValues", "lastN": "2000"},
    ).json()["pm25"]["values"]
    tab = open_tab(browser)
    tab.goto(server.base + PAGES["entity"])
    ready(tab, PAGES["entity"])
    chart = tab.page.locator("figure.chart[data-attr=pm25]")
    assert chart.get_attribute("data-points") == str(len(values))
    assert chart.locator("canvas").count() == 1
    tab.page.select_option("#c-agg", "avg")
    tab.page.wait_for_selector("#charts[data-ready] figure.chart[data-attr=pm25] canvas")
    tab.clean()
    tab.page.context.close()


def test_the_map_draws_tiles_and_follows_the_change_stream(server: LoggedServer, browser: Any) -> None:
    """The features come from vector tiles, a change made through the API arrives by the change
    stream (no query of the whole set again), and a click opens the entity's details."""
    tab = open_tab(browser)
    asked: list[str] = []
    tab.page.on("request", lambda r: asked.append(r.url))
    tab.goto(server.base + "/console/map")
    tab.page.wait_for_selector("#map[data-loaded][data-streaming]", timeout=20000)
    assert int(tab.page.locator("#map").get_attribute("data-loaded")) >= 15
    shown = f"window.cityosMap.shown('OffStreetParking')['{PARKING}']"
    before = httpx.get(f"{server.base}{API}/entities/{PARKING}", params={"format": "keyValues"}).json()
    assert tab.until(shown)["availableSpotNumber"] == before["availableSpotNumber"]
    assert tab.page.evaluate("Object.keys(window.cityosMap.shown('AirQualityObserved')).length") >= 2
    assert any("/tiles/" in url and "type=OffStreetParking" in url for url in asked)
    queries = [url for url in asked if "/ngsi-ld/v1/entities?" in url]
    assert queries and all("limit=100" in url and "attrs=location" in url for url in queries)  # the bounds only
    new = 3 if before["availableSpotNumber"] != 3 else 4
    httpx.patch(
        f"{server.base}{API}/entities/{PARKING}/attrs", json={"availableSpotNumber": {"type": "Property", "value": new}}
    ).raise_for_status()
    tab.until(f"{shown}.availableSpotNumber === {new}")
    target = f"{{source: 's-OffStreetParking', sourceLayer: 'entities', id: '{PARKING}'}}"
    stale = f"window.cityosMap.map.getFeatureState({target})"
    assert tab.page.evaluate(stale)["stale"] is True  # the tile's copy gives way to the stream's
    drawn = "window.cityosMap.map.queryRenderedFeatures({layers: ['l-OffStreetParking-live-point']})"
    assert tab.until(f"{drawn}.map(f => f.properties.availableSpotNumber + ' ' + f.id)") == [f"{new} {PARKING}"]
    assert [url for url in asked if "/ngsi-ld/v1/entities?" in url] == queries  # no polling
    # click a symbol: its details (the entity as the API gives it) and a link to its page
    tab.page.evaluate("window.cityosMap.map.jumpTo({center: [-116.7612, 36.9061], zoom: 17})")
    tab.until("window.cityosMap.map.loaded()")
    box = tab.page.locator("#map canvas").bounding_box()
    point = tab.page.evaluate("window.cityosMap.map.project([-116.7612, 36.9061])")
    tab.page.mouse.click(box["x"] + point["x"], box["y"] + point["y"])
    tab.page.wait_for_selector("#map-details table")
    assert PARKING in tab.page.locator("#map-details a").inner_text()
    assert "availableSpotNumber" in tab.page.locator("#map-details table").inner_text()
    tab.clean()
    tab.page.context.close()


def test_the_time_slider_replays_history(server: LoggedServer, browser: Any) -> None:
    tab = open_tab(browser)
    tab.goto(server.base + "/console/map")
    tab.page.wait_for_selector("#map[data-loaded]", timeout=20000)
    tab.page.locator("#map-time").fill("500")  # half way through the last 30 days of history
    tab.page.wait_for_selector("#map[data-replayed]:not([data-replayed=''])", timeout=10000)
    at, applied = tab.page.locator("#map").get_attribute("data-replayed").split()
    assert int(applied) >= 2
    expected = httpx.get(
        f"{server.base}{API}/temporal/entities/{AIR}",
        params={"attrs": "pm25", "options": "temporalValues", "timerel": "before", "timeAt": at, "lastN": "1"},
    ).json()["pm25"]["values"][0][0]
    assert tab.page.evaluate(f"window.cityosMap.hist['{AIR}']") == expected
    target = f"{{source: 's-AirQualityObserved', sourceLayer: 'entities', id: '{AIR}'}}"
    on_tile = f"window.cityosMap.map.getFeatureState({target})"
    assert tab.page.evaluate(on_tile)["hist"] == expected  # the tile's feature is recoloured by it
    tab.page.locator("#map-time").fill("1000")  # back to live: the replayed values go
    tab.page.wait_for_selector("#map[data-replayed='']")
    assert "hist" not in tab.page.evaluate(on_tile)
    tab.page.evaluate("document.getElementById('map-3d').click()")
    tab.page.wait_for_timeout(300)
    assert tab.page.evaluate("window.cityosMap.map.getPitch()") == 60
    assert tab.page.evaluate("window.cityosMap.map.getLayoutProperty('l-Building-3d', 'visibility')") == "visible"
    tab.page.evaluate(
        "window.cityosMap.map.jumpTo({center: [-116.7605, 36.9072], zoom: 17.2, pitch: 60, bearing: -20})"
    )
    tab.until("window.cityosMap.map.loaded()")
    extruded = "window.cityosMap.map.queryRenderedFeatures({layers: ['l-Building-3d']}).map(f => f.id)"
    assert "urn:ngsi-ld:Building:beatty-town-office" in tab.until(extruded)
    tab.shot("map-3d")
    tab.clean()
    tab.page.context.close()


def test_screenshots_are_written(server: LoggedServer) -> None:
    shots = Path(__file__).parent.parent / "docs" / "console"
    assert (shots / "overview-en.png").exists()
