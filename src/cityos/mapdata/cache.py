"""A cache of rendered tiles, invalidated by the entity changes that touch them.

Why: a map asks the same tiles again and again (pans, other viewers, a reload), and a crowded tile
costs tens of milliseconds to count or draw; a cached one costs a dictionary lookup. Only tiles of
callers who may read everything are kept (auth off, or an unrestricted principal): a restricted
caller's tile depends on its policy, which may change at any time, so it is always drawn afresh.

Invalidation: the change stream's listener (changes.py) hands every change, of this worker or, with
several workers, of the others, to `touched` with the boxes of the entity's geometry before and
after; each zoom's tiles meeting a box get a new generation (past TILES_PER_CHANGE tiles at one
zoom, the whole zoom of the tenant does). A cached tile is served only while the generations it
was drawn under are unchanged and it is younger than --tile-cache-seconds, which also bounds what a
missed change (a write that rolled back after its listener ran) can leave on the map.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from cityos.mapdata.tiles import MAX_LAT, MAX_ZOOM

TILES_PER_CHANGE = 16  # tiles of one zoom a change invalidates one by one; past it, the whole zoom
MAX_GENERATIONS = 1_000_000  # tile generations remembered; past it, everything is invalidated at once
Box = tuple[float, float, float, float]  # min_x, min_y, max_x, max_y
_ZOOMS = range(MAX_ZOOM + 1)
_SIZES = tuple(1 << z for z in _ZOOMS)  # tiles across at each zoom
Targets = tuple[list[int], list[tuple[int, int, int]]]  # zooms invalidated wholly, (z, x, y) tiles
_K = TypeVar("_K", tuple[str, int], tuple[str, int, int, int])


@dataclass(frozen=True, slots=True)
class Cached:
    body: bytes
    layer: str
    etag: str
    stamp: tuple[int, int, int]  # (everything, zoom, tile) generations when drawn
    made: float
    layout_only: bool = False  # clusters without q: only creates, deletes and moves change them


def _fraction(v: float, lat: bool) -> float:
    """Where a longitude or latitude falls across the world's width (Web Mercator), 0 to 1: the same
    at every zoom, so a change computes it once per coordinate, not once per zoom."""
    if lat:
        v = max(-MAX_LAT, min(MAX_LAT, v))
        s = math.sin(math.radians(v))
        return 0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)
    return (v + 180.0) / 360.0


def _indexes(f: float) -> list[int]:
    """The tile index of a fraction at each zoom, 0 to MAX_ZOOM."""
    if 0.0 <= f < 1.0:  # int(f * n) < n: no clamp (min and max cost more than the rest)
        return [int(f * n) for n in _SIZES]
    return [min(n - 1, max(0, int(f * n))) for n in _SIZES]


def targets(boxes: Iterable[Box]) -> list[Targets]:
    """The _targets of each box, once a box (a change that did not move its entity gives the same
    box before and after)."""
    return [_targets(box) for box in dict.fromkeys(boxes)]


def _targets(box: Box) -> Targets:
    """What a change of a box invalidates: the zooms where it meets more than TILES_PER_CHANGE
    tiles (wholly), and the (z, x, y) of the tiles it meets at the others."""
    min_x, min_y, max_x, max_y = box
    xa = _indexes(_fraction(min_x, False))
    xb = xa if max_x == min_x else _indexes(_fraction(max_x, False))
    ya = _indexes(_fraction(max_y, True))
    yb = ya if max_y == min_y else _indexes(_fraction(min_y, True))
    if xa is xb and ya is yb:  # a point: one tile at each zoom
        return [], list(zip(_ZOOMS, xa, ya, strict=True))
    whole: list[int] = []
    each: list[tuple[int, int, int]] = []
    for z, x0, x1, y0, y1 in zip(_ZOOMS, xa, xb, ya, yb, strict=True):
        if x0 > x1:
            x0, x1 = x1, x0
        if y0 > y1:
            y0, y1 = y1, y0
        if (x1 - x0 + 1) * (y1 - y0 + 1) > TILES_PER_CHANGE:
            whole.append(z)
        else:
            each.extend((z, x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1))
    return whole, each


class TileCache:
    def __init__(self, max_bytes: int, max_age: float) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._entries: OrderedDict[tuple[object, ...], Cached] = OrderedDict()
        self._size = 0
        self._everything = 0
        # [generation of every change, of layout changes] per (tenant, zoom) and per tile
        self._zooms: dict[tuple[str, int], list[int]] = {}
        self._tiles: dict[tuple[str, int, int, int], list[int]] = {}
        self.hits = 0
        self.misses = 0
        self.drawing = 0  # tiles being drawn, their stamps taken (mapdata/http.py)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def idle(self) -> bool:
        """No tile kept and none being drawn: no stamp exists that a change could make stale, so a
        change need not bump any generation (a tile drawn later takes the generations then)."""
        return not self._entries and not self.drawing

    def stamp(self, tenant: str, z: int, x: int, y: int, layout_only: bool = False) -> tuple[int, int, int]:
        """The generations a tile is drawn under: of every change, or (`layout_only`) of the changes
        that create, delete or move an entity or change its types."""
        which = 1 if layout_only else 0
        zoom = self._zooms.get((tenant, z))
        tile = self._tiles.get((tenant, z, x, y))
        return self._everything, zoom[which] if zoom else 0, tile[which] if tile else 0

    def get(self, key: tuple[object, ...], tenant: str, z: int, x: int, y: int) -> Cached | None:
        found = self._entries.get(key)
        if (
            found is None
            or found.stamp != self.stamp(tenant, z, x, y, found.layout_only)
            or time.monotonic() - found.made > self.max_age
        ):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: tuple[object, ...], entry: Cached) -> None:
        if not self.enabled or len(entry.body) > self.max_bytes // 8:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._size -= len(old.body)
        self._entries[key] = entry
        self._size += len(entry.body)
        while self._size > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._size -= len(dropped.body)

    def touched(self, tenant: str, boxes: Iterable[Box], layout: bool = True) -> list[Targets] | None:
        """A change of an entity whose geometry had or has these boxes: its tiles are stale (`layout`:
        it was created, deleted, moved or retyped, so the clusters there are stale too). The boxes'
        targets, for a second touch to reuse, or None when there was nothing to touch (`idle`)."""
        if not self.enabled or self.idle:
            return None
        found = targets(boxes)
        self.bump(tenant, found, layout)
        return found

    def bump(self, tenant: str, found: list[Targets], layout: bool) -> None:
        """`touched`, given the boxes' `targets` (a change's second touch reuses its first's)."""
        if not self.enabled or self.idle:
            return
        if len(self._tiles) > MAX_GENERATIONS:
            self._tiles.clear()
            self._everything += 1
        zooms, tiles = self._zooms, self._tiles
        for whole, each in found:
            for z in whole:
                _bump(zooms, (tenant, z), layout)
            for z, x, y in each:  # _bump, inlined: 23 tiles a point
                generations = tiles.get((tenant, z, x, y))
                if generations is None:
                    tiles[(tenant, z, x, y)] = [1, 1 if layout else 0]
                else:
                    generations[0] += 1
                    if layout:
                        generations[1] += 1

    def everything_changed(self) -> None:
        """A change whose geometry is not known (another worker's, read again): drop every tile."""
        self._everything += 1


def _bump(generations: dict[_K, list[int]], key: _K, layout: bool) -> None:
    found = generations.get(key)
    if found is None:
        generations[key] = [1, 1 if layout else 0]
    else:
        found[0] += 1
        if layout:
            found[1] += 1
