"""The entity browser pages through 100,000 entities (issue 18) in a real browser (Debian's
chromium, Playwright for Python): 100,000 entities written through the store's batch write path
into a real SQLite file, a real `cityos serve` on it, and the console's pages deep in the listing
and at its end showing, row for row, the ids the NGSI-LD API answers for the same offset."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cityos.entities import update
from cityos.entities.model import Entity
from cityos.store.sqlite import SQLiteStore
from console_browser import browser_fixture, open_tab  # noqa: F401 (the `browser` fixture)
from server_process import LoggedServer

pytestmark = pytest.mark.slow(seconds=60)  # 54 s on the shared 2-core machine (32 s of it the load)

API = "/ngsi-ld/v1"
COUNT = 100_000
BATCH = 2_000
PAGE = 20  # the console's page size (console/http.py PAGE_SIZE)
DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"
STAMP = "2026-12-07T00:00:00.000Z"


def spot(i: int) -> Entity:
    """A parking spot in Porto, in the store's expanded form."""
    lon, lat = -8.69 + (i % 400) * 0.00035, 41.13 + (i // 400) * 0.00024

    def prop(value: Any, kind: str = "Property") -> list[dict[str, Any]]:
        return [{"type": kind, "value": value, "createdAt": STAMP, "modifiedAt": STAMP}]

    return {
        "id": f"urn:ngsi-ld:ParkingSpot:p{i:06d}",
        "type": [DEFAULT + "ParkingSpot"],
        "createdAt": STAMP,
        "modifiedAt": STAMP,
        "attrs": {
            DEFAULT + "status": prop("free" if i % 3 else "occupied"),
            "https://uri.etsi.org/ngsi-ld/location": prop(
                {"type": "Point", "coordinates": [round(lon, 6), round(lat, 6)]}, "GeoProperty"
            ),
        },
    }


async def load(path: Path) -> None:
    """COUNT entities through SQLiteStore.mutate, BATCH a transaction (the batch API's write path)."""
    store = SQLiteStore(str(path))
    await store.open()
    try:
        for first in range(0, COUNT, BATCH):
            operations = [(e["id"], update.create(e)) for e in map(spot, range(first, first + BATCH))]
            results = await store.mutate("", operations, atomic=False)
            assert all(r.error is None for r in results)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoggedServer]:
    folder = tmp_path_factory.mktemp("city100k")
    started = time.monotonic()
    asyncio.run(load(folder / "city.db"))
    print(f"{COUNT} entities loaded in {time.monotonic() - started:.1f} s")
    database = str(folder / "city.db")
    server = LoggedServer(folder / "serve.log", "--database", database, "--temporal-disabled-tenants", "*")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def api_ids(server: LoggedServer, offset: int) -> list[str]:
    response = httpx.get(
        f"{server.base}{API}/entities",
        params={"type": "ParkingSpot", "limit": PAGE, "offset": offset, "count": "true"},
        timeout=30,
    )
    response.raise_for_status()
    assert response.headers["NGSILD-Results-Count"] == str(COUNT)
    return [e["id"] for e in response.json()]


def shown_ids(tab: Any) -> list[str]:
    return [t.strip() for t in tab.page.locator("#results tbody tr td:first-child").all_inner_texts()]


def test_the_entity_browser_pages_through_100000_entities(city: LoggedServer, browser: Any) -> None:
    pages = COUNT // PAGE
    tab = open_tab(browser)
    tab.goto(f"{city.base}/console/entities?type=ParkingSpot")
    assert tab.page.locator("#page-of").inner_text() == f"Page 1 of {pages:,}"  # localised: 5,000
    assert shown_ids(tab) == api_ids(city, 0)
    for page in (4_000, pages - 1):  # deep in the listing, then the last page by the pager's Next link
        tab.goto(f"{city.base}/console/entities?type=ParkingSpot&page={page}")
        assert shown_ids(tab) == api_ids(city, (page - 1) * PAGE)
        assert tab.page.locator("#page-of").inner_text() == f"Page {page:,} of {pages:,}"
    tab.page.get_by_role("link", name="Next").click()
    tab.page.wait_for_load_state("load")
    last = shown_ids(tab)
    assert last == api_ids(city, (pages - 1) * PAGE)
    assert last[-1] == f"urn:ngsi-ld:ParkingSpot:p{COUNT - 1:06d}"  # the end of the listing: the last entity written
    assert tab.page.locator("#page-of").inner_text() == f"Page {pages:,} of {pages:,}"
    assert tab.page.get_by_role("link", name="Next").count() == 0
    tab.clean()
    tab.page.context.close()
