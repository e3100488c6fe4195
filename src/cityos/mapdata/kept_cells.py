"""A q-filtered map layer's cluster counts, kept per view and followed from committed changes.

Why: a tile of zooms 0-14 filtered by a q (`type=OffStreetParking&q=availableSpotNumber>100`)
counts, per cell, the matches among every located entity of its area: at 100,000 entities a
whole-city tile costs 60-100 ms of CPU in the store (the tile's 100,000 index entries tested
against the 58,000 matches; docs/performance.md), over the 50 ms a map tile may take. A map
asks the same view (type, q) for many tiles and zooms, so its counts are read once, for the whole
world, in the cells of the deepest kept zoom's grid (one EntityStore.geo_grid: the same statement
as a whole-city tile's), each coarser zoom's summed from them when first asked, and each tile takes
its cells from its zoom's: a dictionary walk of at most cells x cells entries.

Exact: the counts follow each committed change of this worker (mapdata/layout.py's LayoutWatch,
the hub's `values` watch, which sees every change, not only the layers'): an entity is counted out
of the cells of its rows before the change and into those after, each row as the store writes it
(side_rows.geo_keys: one per GeoProperty attribute, the union box of its instances, keyed by the
box's centre, cell_key.py), when it has the view's type and meets the q (the query's own Python
predicate, which is exactly its SQL filter) once its expired parts are removed (expiry.visible).
Kept only for callers who may read everything (a restricted caller's view depends on its policy,
as the tile cache's tiles do), for one type, where every counted entity has that one type (the
store counts an entity of several types under its first, which this module cannot tell), and
while nothing changed during the read (`LayoutWatch.keep_if_quiet`). Given up and read again: a
change of an entity of several types of the view's type, another worker's change (the watch's
epoch), and after --tile-cache-seconds, the bound the tile cache and the map's layers share on an
entity whose `expiresAt` passes before the store's sweep deletes it (a change).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cityos.entities.expiry import now_key, visible
from cityos.entities.model import Entity
from cityos.mapdata.layout import Committed, LayoutWatch
from cityos.store.base import GeoGrid, GridCell, SnapshotHook
from cityos.store.cell_key import KEY_ZOOM, cell_key, cell_of, key_of, tile_range
from cityos.store.side_rows import geo_keys, instance_boxes

KEPT_MAX_ZOOM = 14  # deeper tiles hold few enough rows to count in the store (15-25 ms at 100,000)
MAX_CELLS = 250_000  # cells kept per view and zoom at most (a grid of 256 cells a tile: deep levels)
MAX_TOTAL_CELLS = 500_000  # by all views (about 100 MB): past it the least recently used go
FIRST_WAIT = 2.0  # seconds before a view whose read could not be kept is read again, doubled each time
MAX_WAIT = 60.0  # up to this; and this long after a read the store could not count or of several types
Row = tuple[int, float, float]  # a geo row's cell key (KEY_ZOOM) and box centre
Cells = dict[int, list[float]]  # key >> shift -> [count, sum of x, sum of y]
Key = tuple[str, str, str, str | None]  # tenant, type, q, the request's Link (its @context)


@dataclass
class View:
    """One view's counts: per absolute zoom (tile zoom + grid level), its non-empty cells."""

    type_iri: str
    geo_attr: str
    matches: Callable[[Entity], bool]  # the query's q as a predicate
    epoch: int  # the watch's epoch when its first level was read
    read_at: float  # time.monotonic() then
    levels: dict[int, Cells] = field(default_factory=dict)

    def rows(self, entity: Entity | None, now: str) -> list[Row] | None:
        """The entity's rows the view counts; None: it cannot be followed (several types)."""
        entity = visible(entity, now)
        if entity is None or self.type_iri not in entity["type"]:
            return []
        if len(entity["type"]) > 1:
            return None
        if not self.matches(entity):
            return []
        return [
            (cell_key(min_x, max_x, min_y, max_y), (min_x + max_x) * 0.5, (min_y + max_y) * 0.5)
            for attr, min_x, max_x, min_y, max_y, _ in geo_keys(instance_boxes(entity))
            if attr == self.geo_attr
        ]

    def follow(self, before: Entity | None, after: Entity | None, now: str) -> bool:
        """Count a committed change in; False when it cannot be (the view is given up)."""
        old, new = self.rows(before, now), self.rows(after, now)
        if old is None or new is None:
            return False
        if old == new:
            return True
        for zoom, cells in self.levels.items():
            shift = 2 * (KEY_ZOOM - zoom)
            for key, x, y in old:
                cell = cells.get(key >> shift)
                if cell is None:
                    return False  # counted under another cell than its rows say: read again
                cell[0] -= 1
                if cell[0] <= 0:
                    del cells[key >> shift]
                else:
                    cell[1] -= x
                    cell[2] -= y
            for key, x, y in new:
                cell = cells.get(key >> shift)
                if cell is None:
                    cells[key >> shift] = [1, x, y]
                else:
                    cell[0] += 1
                    cell[1] += x
                    cell[2] += y
        return True


def world_grid(attr: str, zoom: int) -> GeoGrid:
    """The grid of the whole world whose cells are the tiles of `zoom` (counted by cell keys)."""
    return GeoGrid(attr, -180.0, -90.0, 180.0, 90.0, 1 << zoom, 1 << zoom, (0, 0, 0))


def coarser(cells: Cells, steps: int) -> Cells:
    """The counts of a zoom `steps` above `cells`' (each of its cells four of the next)."""
    if not steps:
        return cells
    shift = 2 * steps
    summed: Cells = {}
    for k, (n, sx, sy) in cells.items():
        cell = summed.get(k >> shift)
        if cell is None:
            summed[k >> shift] = [n, sx, sy]
        else:
            cell[0] += n
            cell[1] += sx
            cell[2] += sy
    return summed


def tile_cells(cells: Cells, type_iri: str, tile: tuple[int, int, int], level: int) -> list[GridCell]:
    """A tile's GridCells (its 2^level grid) from the counts of zoom z + level."""
    z, x, y = tile
    shift = 2 * (KEY_ZOOM - z - level)
    low, high = tile_range(z, x, y)
    first, last = low >> shift, high >> shift
    types = (type_iri,)
    if last - first <= len(cells):
        found = [(k, cells[k]) for k in range(first, last) if k in cells]
    else:
        found = [(k, c) for k, c in cells.items() if first <= k < last]
    return [GridCell(*cell_of(k << shift, z, x, y, level), int(n), sx / n, sy / n, types) for k, (n, sx, sy) in found]


class Fixed:
    """The SnapshotHook of a view's read: which followed changes of its tenant its snapshot holds
    (`snapshot`: the number of the last and the watch's epoch; None: not known)."""

    def __init__(self, watch: LayoutWatch, tenant: str) -> None:
        self.watch, self.tenant = watch, tenant
        self.snapshot: tuple[int, int] | None = None

    def hold(self, establish: Callable[[], object]) -> bool:  # the store's reading thread
        self.snapshot = self.watch.fixed(self.tenant, establish)
        return self.snapshot is not None

    def before(self) -> object:  # on the loop, as every change's listener and commit (PostgreSQL)
        return self.watch.mark(self.tenant)

    def after(self, mark: object) -> bool:
        self.snapshot = self.watch.confirm(mark)
        return self.snapshot is not None


class KeptCells:
    """The views kept by one worker (the change hub's), least recently used dropped."""

    def __init__(self, max_views: int) -> None:
        self.max_views = max_views
        self._views: OrderedDict[Key, View] = OrderedDict()
        self._tenants: frozenset[str] = frozenset()
        self._watch: LayoutWatch | None = None
        self.hits = 0
        self.reads = 0
        self.followed = 0  # committed changes counted into kept views
        self.caught_up = 0  # changes counted into a read that its snapshot did not hold
        self._backoff: dict[Key, tuple[float, float]] = {}  # no read before (time.monotonic()), the wait
        # views being read: the changes of their tenant delivered meanwhile, with their numbers
        self._reading: dict[Key, list[tuple[int, Entity | None, Entity | None]]] = {}

    def _attach(self, watch: LayoutWatch) -> None:
        if self._watch is not watch:
            self._watch = watch
            watch.tracks = self._tracks
            watch.follower = self._follow
            self._views.clear()

    def _tracks(self, tenant: str) -> bool:
        return tenant in self._tenants

    def _retrack(self) -> None:
        """The tenants whose changes are followed: of the kept views, those being read and those
        waiting to be read again (so no change of theirs goes unfollowed before the next read)."""
        self._tenants = frozenset(k[0] for k in (*self._views, *self._reading, *self._backoff))

    async def cells(
        self,
        watch: LayoutWatch,
        key: Key,
        view: View,
        tile: tuple[int, int, int],
        level: int,
        max_age: float,
        read: Callable[[GeoGrid, SnapshotHook], Awaitable[list[GridCell] | None]],
    ) -> list[GridCell] | None:
        """Tile `tile`'s cells for the view `key` (tenant first; `view` its fresh description), from
        its kept counts at zoom z + level, else summed from the deepest (zoom KEPT_MAX_ZOOM + level,
        which serves every kept zoom), else read for the whole world at that deepest zoom through
        `read` (EntityStore.geo_grid: one read for the view's tiles at every zoom). None when the
        store cannot count it in SQL, or counted an entity of other types in (the caller then has
        the store count the tile)."""
        zoom, deepest = tile[0] + level, KEPT_MAX_ZOOM + level
        self._attach(watch)
        settled = watch.settled()
        kept = self._views.get(key)
        if kept is not None and (kept.epoch != watch.epoch or time.monotonic() - kept.read_at > max_age):
            del self._views[key]
            kept = None
        if kept is not None and (zoom in kept.levels or deepest in kept.levels):
            if zoom not in kept.levels:  # followed from now on, as the deepest is
                kept.levels[zoom] = coarser(kept.levels[deepest], deepest - zoom)
            self._views.move_to_end(key)
            self.hits += 1
            return tile_cells(kept.levels[zoom], kept.type_iri, tile, level)
        now = time.monotonic()
        until, wait = self._backoff.get(key, (0.0, 0.0))
        if now < until:  # its last read could not be kept: the store counts the tile itself
            return None
        self.reads += 1
        # the tenant's changes are followed (buffered) from now on, so a read whose snapshot holds
        # a known number of them can be brought up to date (SQLite; see fixed)
        buffered: list[tuple[int, Entity | None, Entity | None]] = []
        self._reading[key] = buffered
        self._retrack()
        fixed = Fixed(watch, key[0])
        seen, epoch = watch.seen, watch.epoch
        try:
            world = await read(world_grid(view.geo_attr, deepest), fixed)
        finally:
            if self._reading.get(key) is buffered:
                del self._reading[key]
        if world is None or any(c.types != (view.type_iri,) for c in world):
            self._wait(key, MAX_WAIT)
            return None
        cells: Cells = {key_of(c.col, c.row, 0, 0, 0, deepest): [c.count, c.x * c.count, c.y * c.count] for c in world}
        answer = tile_cells(coarser(cells, deepest - zoom), view.type_iri, tile, level)
        if len(cells) <= MAX_CELLS and self._caught_up(watch, view, deepest, cells, fixed.snapshot, buffered):
            self._keep(key, view, deepest, cells, watch.epoch, now)
        elif len(cells) > MAX_CELLS or not (
            settled and watch.keep_if_quiet(seen, epoch, now, lambda: self._keep(key, view, deepest, cells, epoch, now))
        ):  # changed during a read whose snapshot is not known (or too many cells): read again later
            self._wait(key, min(MAX_WAIT, max(FIRST_WAIT, wait * 2)))
            return answer
        self._backoff.pop(key, None)
        return answer

    def _caught_up(
        self,
        watch: LayoutWatch,
        view: View,
        zoom: int,
        cells: Cells,
        snapshot: tuple[int, int] | None,
        buffered: list[tuple[int, Entity | None, Entity | None]],
    ) -> bool:
        """On the loop: bring counts read in a snapshot holding the followed changes numbered up to
        snapshot[0] up to date with those delivered since (`buffered`); the ones committed and not
        delivered yet come to the follower next. False: the snapshot is not known, the watch lost
        track meanwhile (epoch) or a change cannot be followed."""
        if snapshot is None or snapshot[1] != watch.epoch:
            return False
        last, _ = snapshot
        view.levels = {zoom: cells}
        now = now_key()
        for number, before, after in buffered:
            if number <= last:
                continue  # the snapshot holds it
            if not view.follow(before, after, now):
                return False
            self.caught_up += 1
        return True

    def _wait(self, key: Key, wait: float) -> None:
        """No world read of `key` for `wait` seconds (the tiles are counted by the store meanwhile)."""
        if len(self._backoff) >= 4 * self.max_views:
            self._backoff.clear()
        self._backoff[key] = (time.monotonic() + wait, wait)
        self._retrack()

    def _keep(self, key: Key, view: View, zoom: int, cells: Cells, epoch: int, started: float) -> None:
        """The view gains a zoom's counts (a new view starts with them): on the loop, or under the
        watch's lock (keep_if_quiet)."""
        if self._views.get(key) is not view:  # a new view
            view.epoch, view.read_at = epoch, started
        view.levels[zoom] = cells
        self._views[key] = view
        self._views.move_to_end(key)
        while len(self._views) > self.max_views or (len(self._views) > 1 and self.cells_kept() > MAX_TOTAL_CELLS):
            self._views.popitem(last=False)
        self._retrack()

    def cells_kept(self) -> int:
        """Cells kept by every view, every zoom (about 200 bytes each)."""
        return sum(len(cells) for view in self._views.values() for cells in view.levels.values())

    def _follow(self, changes: Committed) -> None:
        """On the loop: committed changes, counted into each kept view of their tenant (and kept
        for each view being read, with their numbers)."""
        now = now_key()
        first = self._watch.first if self._watch is not None else 0
        for number, (tenant, before, after) in enumerate(changes, start=first):
            for where, buffered in self._reading.items():
                if where[0] == tenant:
                    buffered.append((number, before, after))
            for where in [k for k in self._views if k[0] == tenant]:
                if self._views[where].follow(before, after, now):
                    self.followed += 1
                else:
                    del self._views[where]
        self._retrack()
