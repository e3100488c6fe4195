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
missed change (a write that rolled back after its listener ran) can leave on the map. Each change is
invalidated again a second later (changes.RETOUCH: a tile drawn before its write committed); while
no tile is cached, only then (nothing cached to drop at once; a tile being drawn meanwhile was
stamped before the retouch).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from cityos.mapdata.tiles import MAX_LAT, MAX_ZOOM

TILES_PER_CHANGE = 16  # tiles of one zoom a change invalidates one by one; past it, the whole zoom
MAX_GENERATIONS = 1_000_000  # tile generations remembered; past it, everything is invalidated at once
Box = tuple[float, float, float, float]  # min_x, min_y, max_x, max_y


@dataclass(frozen=True, slots=True)
class Cached:
    body: bytes
    layer: str
    etag: str
    stamp: tuple[int, int, int]  # (everything, zoom, tile) generations when drawn
    made: float
    layout_only: bool = False  # clusters without q: only creates, deletes and moves change them


def _fraction(v: float, lat: bool) -> float:
    """Where a longitude (or latitude) falls across the Web Mercator square, 0 to 1."""
    if not lat:
        return (v + 180.0) / 360.0
    v = max(-MAX_LAT, min(MAX_LAT, v))
    s = math.sin(math.radians(v))
    return 0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)


def _deepest(v: float, lat: bool) -> int:
    """The tile index of a coordinate at MAX_ZOOM; at zoom z it is this shifted right by MAX_ZOOM - z
    (floor(f * 2**z) == floor(f * 2**MAX_ZOOM) >> (MAX_ZOOM - z): scaling by a power of two is exact)."""
    return min(TOP, max(0, int(_fraction(v, lat) * (TOP + 1))))


TOP = (1 << MAX_ZOOM) - 1  # the last tile index at MAX_ZOOM


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

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def holds_tiles(self) -> bool:
        return bool(self._entries)

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

    def touched(self, tenant: str, boxes: Iterable[Box], layout: bool = True) -> None:
        """A change of an entity whose geometry had or has these boxes: its tiles are stale (`layout`:
        it was created, deleted, moved or retyped, so the clusters there are stale too)."""
        if not self.enabled:
            return
        if len(self._tiles) > MAX_GENERATIONS:
            self._tiles.clear()
            self._everything += 1
        tiles, zooms = self._tiles, self._zooms
        layout_step = 1 if layout else 0
        # the tile indexes of each distinct box at the deepest zoom, computed once (a change's
        # boxes before and after are most often the same point); each zoom's are a shift of them
        for min_x, min_y, max_x, max_y in dict.fromkeys(boxes):
            deep_x0, deep_x1 = sorted((_deepest(min_x, False), _deepest(max_x, False)))
            deep_y0, deep_y1 = sorted((_deepest(max_y, True), _deepest(min_y, True)))  # y grows southwards
            for z in range(MAX_ZOOM + 1):
                shift = MAX_ZOOM - z
                x0, x1, y0, y1 = deep_x0 >> shift, deep_x1 >> shift, deep_y0 >> shift, deep_y1 >> shift
                if x0 == x1 and y0 == y1:  # a point's zoom (or a small box's): one tile
                    generations = tiles.get(key := (tenant, z, x0, y0))
                    if generations is None:
                        tiles[key] = [1, layout_step]
                    else:
                        generations[0] += 1
                        generations[1] += layout_step
                    continue
                if (x1 - x0 + 1) * (y1 - y0 + 1) > TILES_PER_CHANGE:
                    _bump(zooms.setdefault((tenant, z), [0, 0]), layout)
                    continue
                for x in range(x0, x1 + 1):
                    for y in range(y0, y1 + 1):
                        generations = tiles.get(key := (tenant, z, x, y))
                        if generations is None:
                            tiles[key] = [1, layout_step]
                        else:
                            generations[0] += 1
                            generations[1] += layout_step

    def everything_changed(self) -> None:
        """A change whose geometry is not known (another worker's, read again): drop every tile."""
        self._everything += 1


def _bump(generations: list[int], layout: bool) -> None:
    generations[0] += 1
    if layout:
        generations[1] += 1
