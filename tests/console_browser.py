"""What the console's browser tests share: Debian's chromium driven by Playwright for Python
(never a downloaded browser), console-error capture, axe-core injection and screenshots."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).parent / "data" / "axe.min.js"
SHOTS = Path(__file__).parent.parent / "docs" / "console"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}
# WCAG 2.2 AA and what it includes (axe-core's tags)
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


def chromium_or_skip() -> None:
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CITYOS_TEST_REQUIRE_CHROMIUM") == "1":  # set by .ci/run
            pytest.fail(f"no {CHROMIUM}")
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium; .ci/run installs it)")


@pytest.fixture(scope="module", name="browser")
def browser_fixture() -> Iterator[Any]:
    """One chromium per test file (WebGL through SwiftShader, for the map). Not per session:
    Playwright's sync API keeps its event loop running in the thread while it is open, and every
    later test of the same worker that runs an event loop (asyncio.run) would fail."""
    yield from chromium()


def chromium() -> Iterator[Any]:
    """A launched chromium until the generator ends (a fixture of a test file that needs it after
    another fixture, e.g. a database of each back-end, whose set-up runs an event loop)."""
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM, args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
        )
        yield launched
        launched.close()


@dataclass
class Tab:
    """A page with its console errors and failed requests recorded."""

    page: Any
    errors: list[str] = field(default_factory=list)

    def goto(self, url: str) -> None:
        self.page.goto(url, wait_until="load")

    def clean(self) -> None:
        assert not self.errors, self.errors

    def until(self, expression: str, timeout: float = 10.0) -> Any:
        """Until a JavaScript expression is truthy (polled through evaluate: the page's CSP forbids
        the eval that wait_for_function uses)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.page.evaluate(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"not true after {timeout}s: {expression}"
            self.page.wait_for_timeout(100)

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"))

    def axe(self) -> list[dict[str, Any]]:
        """axe-core's serious and critical violations of WCAG 2.2 AA on the current page."""
        if not self.page.evaluate("typeof axe !== 'undefined'"):
            self.page.evaluate(AXE.read_text() + ";0")  # through the devtools protocol: the page's CSP stays on
        found = self.page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", AXE_TAGS)
        return [
            {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"][:3]]}
            for v in found["violations"]
            if v["impact"] in ("serious", "critical")
        ]


def open_tab(browser: Any, *, viewport: dict[str, int] = DESKTOP, language: str = "en") -> Tab:
    context = browser.new_context(viewport=viewport, locale="zh-CN" if language == "zh" else "en-US")
    page = context.new_page()
    tab = Tab(page)
    page.on("console", lambda m: tab.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.errors.append(f"page error: {e}"))
    page.on("response", lambda r: tab.errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    return tab


# the policy of the console's sign-in tests: the role parking-viewer reads the car parks only
PARKING_VIEWERS = {
    "policies": [
        {
            "id": "parking-viewers-read-parking",
            "effect": "allow",
            "principals": {"roles": ["parking-viewer"]},
            "actions": ["read"],
            "resources": {"types": ["OffStreetParking"]},
        }
    ]
}
