"""The citizens' page in a real browser (Debian's chromium, Playwright) against a real
`cityos serve --demo-on-empty`, on a phone (390x844), in English and Chinese: it loads without console
errors, with no serious WCAG 2.2 AA violation (axe-core), shows what is near from /city/api/, files a
report with a photo through Open311 and follows it, and installs its service worker with the shell.
On both back-ends (tests/backends.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from console_browser import PHONE, chromium, open_tab
from server_process import LoggedServer

pytestmark = pytest.mark.slow(seconds=60)

HERE = "/city/?lat=36.9083&lon=-116.7596"  # the demo city's central air-quality station


@pytest.fixture(scope="module")
def server(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedServer]:
    """`make run`'s server on each back-end (a SQLite file, a PostgreSQL schema), as it starts: Open311
    requires keys, and the page reports with the key the demo city made for it (citizen/page_key.py)."""
    folder = tmp_path_factory.mktemp("city")
    city = LoggedServer(
        folder / "serve.log", "--demo-on-empty", "--database", module_db_url,
        "--open311-media-dir", str(folder / "media"),
    )  # fmt: skip
    city.start()
    try:
        yield city
    finally:
        city.stop()


@pytest.fixture(scope="module")
def browser(server: LoggedServer) -> Iterator[Any]:
    """Chromium after the server: launched again for each back-end, once its database is made (the
    PostgreSQL schema's set-up runs an event loop, which Playwright's running one would refuse)."""
    yield from chromium()


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_page_on_a_phone(server: LoggedServer, browser: Any, language: str) -> None:
    tab = open_tab(browser, viewport=PHONE, language=language)
    tab.goto(server.base + HERE + f"&lang={language}")
    assert tab.page.locator("html").get_attribute("lang") == ("zh-Hans" if language == "zh" else "en")
    tab.until("document.querySelectorAll('#air .aqi').length >= 2")
    for section in ("parking", "stops", "places"):
        tab.until(f"document.querySelectorAll('#{section} li').length >= 1")
    expected = httpx.get(server.base + "/city/api/air", params={"lat": 36.9083, "lon": -116.7596}).json()
    station = expected["stations"][0]
    badges = tab.page.locator("#air li").first.locator(".aqi").all_inner_texts()
    assert str(station["usAqi"]["value"]) in badges[0] and str(station["cnAqi"]["value"]) in badges[1]
    assert ("美国 AQI" if language == "zh" else "US AQI") in badges[0]
    parking = httpx.get(server.base + "/city/api/parking", params={"lat": 36.9083, "lon": -116.7596}).json()
    assert str(parking["parking"][0]["free"]) in tab.page.locator("#parking li").first.inner_text()
    tab.page.locator("#stops button").first.click()
    tab.until("document.querySelector('#stops .departures[data-loaded]')")
    # the demo's timetable is moved to run today (ingest/demo.py): the nearest stop has departures now
    tab.until("document.querySelectorAll('#stops .departures li p').length >= 1")  # a departure's state line
    tab.clean()
    assert tab.axe() == [], language
    tab.shot(f"city-{language}")
    tab.page.context.close()


def test_report_a_problem_with_a_photo_and_follow_it(server: LoggedServer, browser: Any) -> None:
    tab = open_tab(browser, viewport=PHONE)
    tab.goto(server.base + HERE)
    tab.until("document.querySelectorAll('#service option').length > 0")
    photo = io.BytesIO()
    Image.new("RGB", (64, 48), "#c33").save(photo, "JPEG")
    tab.page.select_option("#service", index=0)
    # the service's own questions come by a fetch of its definition (the demo's first service asks one,
    # required): sent before they are there, the report is refused for lacking the answer
    tab.until("document.querySelectorAll('#questions [name^=\"attribute[\"]').length > 0")
    tab.page.fill("#description", "Lamp out <script>alert(1)</script>")
    tab.page.set_input_files(
        "#photo", files=[{"name": "lamp.jpg", "mimeType": "image/jpeg", "buffer": photo.getvalue()}]
    )
    tab.page.locator("#report button[type=submit]").click()
    status = tab.until("document.querySelector('#report-status').textContent")
    assert "Thank you" in status, status
    kept = tab.page.evaluate("JSON.parse(localStorage.getItem('cityos.city.reports'))")
    tab.until("document.querySelectorAll('#mine li strong').length === 1")
    tab.until("/open/.test(document.querySelector('#mine').innerText)")
    found = httpx.get(server.base + f"/open311/v2/requests/{kept[0]['id']}.json").json()[0]
    assert found["description"] == "Lamp out <script>alert(1)</script>" and found["media_url"]
    assert found["status"] in tab.page.locator("#mine li").first.inner_text()
    tab.goto(server.base + "/city/")  # followed across visits: kept in the browser
    tab.until("document.querySelectorAll('#mine li').length === 1")
    tab.clean()
    tab.page.context.close()


def test_installable_with_the_shell_cached(server: LoggedServer, browser: Any) -> None:
    tab = open_tab(browser, viewport=PHONE)
    tab.goto(server.base + HERE)
    cached = tab.until(
        "caches.open('cityos-city-v1').then(c => c.keys()).then(k => k.map(r => new URL(r.url).pathname))"
        ".then(p => p.includes('/city/') && p.includes('/city/static/city.js') ? p : null)",
        15,
    )
    assert "/city/static/icon-512.png" in cached
    manifest = tab.page.evaluate("fetch(document.querySelector('link[rel=manifest]').href).then(r => r.json())")
    assert manifest["display"] == "standalone" and {i["sizes"] for i in manifest["icons"]} == {"192x192", "512x512"}
    tab.page.reload(wait_until="load")  # now under the worker's control
    tab.until("navigator.serviceWorker.controller !== null")
    tab.until("document.querySelectorAll('#air .aqi').length >= 2")
    tab.page.context.set_offline(True)
    tab.page.reload(wait_until="load")  # the shell and the last answers, from the cache
    assert tab.page.locator("h1").inner_text() == "My city"
    # the last answers too (from the worker's cache, or the HTTP cache within their max-age)
    tab.until("document.querySelectorAll('#air .aqi').length >= 2")
    tab.page.context.set_offline(False)
    assert all("ERR_INTERNET_DISCONNECTED" in e for e in tab.errors)  # what was not kept: the service list
    tab.errors.clear()
    tab.clean()
    tab.page.context.close()
