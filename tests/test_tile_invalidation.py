"""The map's tile cache follows the store's changes (mapdata/changes.py, mapdata/cache.py): a change
drops the cached tiles it touches at once, and every change's tiles are dropped again RETOUCH
seconds later, so a tile drawn while the write was under way (stamped before the retouch) is not
served stale past it. The tile indexes computed once per box and shifted per zoom are the ones the
Web Mercator formula gives at each zoom."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from cityos.entities import update
from cityos.entities.values import now
from cityos.mapdata import changes
from cityos.mapdata.cache import Cached, TileCache
from cityos.mapdata.changes import ChangeHub
from cityos.mapdata.tiles import MAX_LAT, MAX_ZOOM
from cityos.store import open_store

SENSOR = "urn:ngsi-ld:Sensor:tile-1"
LOCATION = "https://uri.etsi.org/ngsi-ld/location"
LEVEL = "https://uri.etsi.org/ngsi-ld/default-context/level"
LON, LAT = 2.3522, 48.8566
ZOOM = 15


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    """The tile of a point at zoom z, by the Web Mercator formula (no shortcut)."""
    n = 1 << z
    lat = max(-MAX_LAT, min(MAX_LAT, lat))
    s = math.sin(math.radians(lat))
    y = 0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)
    x = (lon + 180.0) / 360.0
    return min(n - 1, max(0, int(x * n))), min(n - 1, max(0, int(y * n)))


def sensor(level: int) -> dict[str, Any]:
    stamp = now()
    return {
        "id": SENSOR,
        "type": ["https://uri.etsi.org/ngsi-ld/default-context/Sensor"],
        "createdAt": stamp,
        "modifiedAt": stamp,
        "attrs": {
            LOCATION: [
                {
                    "type": "GeoProperty",
                    "value": {"type": "Point", "coordinates": [LON, LAT]},
                    "createdAt": stamp,
                    "modifiedAt": stamp,
                }
            ],
            LEVEL: [{"type": "Property", "value": level, "createdAt": stamp, "modifiedAt": stamp}],
        },
    }


def test_every_zoom_of_a_point_is_the_formula_s_tile() -> None:
    cache = TileCache(1 << 20, 60.0)
    points = [(LON, LAT), (-180.0, -90.0), (180.0, 90.0), (-8.61, 41.15), (179.999999, -85.0511), (0.0, 0.0)]
    for lon, lat in points:
        cache.touched("t", [(lon, lat, lon, lat)], layout=False)
        for z in range(MAX_ZOOM + 1):
            x, y = tile_of(lon, lat, z)
            assert cache.stamp("t", z, x, y)[2] >= 1, (lon, lat, z)
    # a box wider than TILES_PER_CHANGE tiles at a zoom moves that zoom's generation instead
    cache.touched("w", [(-10.0, -10.0, 10.0, 10.0)], layout=False)
    assert cache.stamp("w", 10, 0, 0)[1] == 1 and cache.stamp("w", 0, 0, 0)[2] == 1


def test_a_change_drops_its_tiles_at_once_and_again_after_the_retouch(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changes, "RETOUCH", 0.05)
    x, y = tile_of(LON, LAT, ZOOM)

    def drawn(cache: TileCache, stamp: tuple[int, int, int]) -> None:
        cache.put(("k",), Cached(b"tile", "entities", "etag", stamp, asyncio.get_running_loop().time()))

    async def scenario() -> list[bool]:
        store = open_store(db_url)
        await store.open()
        cache = TileCache(1 << 20, 60.0)
        hub = ChangeHub(store, max_clients=0, queue_size=10, shared=False, cache=cache)
        await hub.start()
        seen = []
        try:
            # no tile cached: a tile stamped before the write and put after it is dropped by the retouch
            stamp = cache.stamp("", ZOOM, x, y)
            await store.mutate("", [(SENSOR, update.upsert(sensor(1), mode="update"))], atomic=True)
            drawn(cache, stamp)
            seen.append(cache.get(("k",), "", ZOOM, x, y) is not None)  # served until the retouch
            await asyncio.sleep(0.3)
            seen.append(cache.get(("k",), "", ZOOM, x, y) is None)
            # a tile cached: the next change drops it at once
            drawn(cache, cache.stamp("", ZOOM, x, y))
            seen.append(cache.get(("k",), "", ZOOM, x, y) is not None)
            await store.mutate("", [(SENSOR, update.upsert(sensor(2), mode="update"))], atomic=True)
            seen.append(cache.get(("k",), "", ZOOM, x, y) is None)
            # many changes at once: every one of them retouched, by one timer
            drawn(cache, cache.stamp("", ZOOM, x, y))
            operations = [(SENSOR, update.upsert(sensor(level), mode="update")) for level in range(3, 50)]
            await store.mutate("", operations, atomic=True)
            drawn(cache, cache.stamp("", ZOOM, x, y))  # drawn after the write, stamped before the retouch
            await asyncio.sleep(0.3)
            seen.append(cache.get(("k",), "", ZOOM, x, y) is None)
        finally:
            await hub.stop()
            await store.close()
        return seen

    assert asyncio.run(scenario()) == [True, True, True, True, True]
