"""Vector tiles of the entities: which entities a tile holds, drawn one by one or as clusters.

A tile (z, x, y) of the Web Mercator grid selects the entities whose GeoProperty (`location`)
meets its box, through the same EntityQuery a GET /entities builds (type, q, the caller's access
policy), so a tile never shows what the caller could not query. When the tile holds more than
`max_features` of them, it gets the `clusters` layer: the store counts them per cell of a grid in
SQL (EntityStore.geo_grid), never reading their documents; a query the store cannot answer
exactly in SQL (a policy judged in Python, a q that follows relationships) is counted here from the
documents, within the query timeout."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cityos.entities.model import Entity
from cityos.errors import BadRequestData
from cityos.mapdata import mvt
from cityos.store import cell_key
from cityos.store.base import EntityQuery, EntityStore, GeoGrid, GridCell

MAX_ZOOM = 22
MAX_LAT = 85.0511287798066  # Web Mercator's edge: atan(sinh(pi))
MAX_STRING = 64  # a display attribute's string value longer than this is left out (a status, not a text)
MAX_TYPES = 8  # types named in a cluster's `types`


@dataclass(frozen=True, slots=True)
class Tile:
    z: int
    x: int
    y: int

    @staticmethod
    def parse(z: str, x: str, y: str) -> Tile:
        """The tile of a URL's parts, or BadRequestData (z 0..22, x and y 0..2^z-1)."""
        try:
            tile = Tile(int(z), int(x), int(y))
        except ValueError as exc:
            raise BadRequestData("z, x and y must be integers") from exc
        if not 0 <= tile.z <= MAX_ZOOM:
            raise BadRequestData(f"z must be 0-{MAX_ZOOM}, got {tile.z}")
        side = 1 << tile.z
        if not (0 <= tile.x < side and 0 <= tile.y < side):
            raise BadRequestData(f"x and y must be 0-{side - 1} at zoom {tile.z}")
        return tile

    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in degrees."""
        side = 1 << self.z
        west = self.x / side * 360.0 - 180.0
        east = (self.x + 1) / side * 360.0 - 180.0
        north = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * self.y / side))))
        south = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * (self.y + 1) / side))))
        return west, south, east, north

    def projector(self, extent: int = mvt.EXTENT) -> Callable[[float, float], tuple[int, int]]:
        """lon/lat -> this tile's integer coordinates (0..extent, y down)."""
        scale = (1 << self.z) * extent
        x0, y0 = self.x * extent, self.y * extent

        def project(lon: float, lat: float) -> tuple[int, int]:
            lat = max(-MAX_LAT, min(MAX_LAT, lat))
            px = (lon + 180.0) / 360.0 * scale - x0
            sin = math.sin(math.radians(lat))
            py = (0.5 - math.log((1 + sin) / (1 - sin)) / (4 * math.pi)) * scale - y0
            return round(px), round(py)

        return project


@dataclass(frozen=True, slots=True)
class TileLimits:
    max_features: int
    cluster_cells: int
    query_limit: int | None = None  # most documents counted in Python for clusters (None: the query timeout bounds it)


def _geometry(entity: Entity, geo_attr: str) -> dict[str, Any] | None:
    for instance in entity["attrs"].get(geo_attr, ()):
        value = instance.get("value")
        if instance.get("type") == "GeoProperty" and isinstance(value, dict):
            return value
    return None


def _shown(value: Any) -> bool:
    """A value a tile carries: a finite number, a boolean or a short string."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= MAX_STRING
    return isinstance(value, bool | int)


def _display(entity: Entity, display: Mapping[str, str]) -> dict[str, mvt.Value]:
    """The display attributes' plain values (the first instance that has one), under their short names."""
    found: dict[str, mvt.Value] = {}
    attrs = entity["attrs"]
    for iri, short in display.items():
        value = next((i["value"] for i in attrs.get(iri, ()) if _shown(i.get("value"))), None)
        if value is not None:
            found[short] = value
    return found


def _draw(
    layer: mvt.Layer,
    geometry: dict[str, Any],
    project: Callable[[float, float], tuple[int, int]],
    properties: dict[str, mvt.Value],
    feature_id: int,
) -> None:
    kind = geometry.get("type")
    coords: Any = geometry.get("coordinates")
    try:
        if kind == "Point":
            layer.add(mvt.POINT, mvt.point_geometry([project(coords[0], coords[1])]), properties, feature_id)
        elif kind == "MultiPoint":
            points = [project(p[0], p[1]) for p in coords]
            layer.add(mvt.POINT, mvt.point_geometry(points) if points else [], properties, feature_id)
        elif kind in ("LineString", "MultiLineString"):
            lines = [coords] if kind == "LineString" else coords
            drawn = [[project(p[0], p[1]) for p in line] for line in lines]
            layer.add(mvt.LINESTRING, mvt.line_geometry(drawn), properties, feature_id)
        elif kind in ("Polygon", "MultiPolygon"):
            polygons = [coords] if kind == "Polygon" else coords
            drawn_polygons = [[[project(p[0], p[1]) for p in ring] for ring in rings] for rings in polygons]
            layer.add(mvt.POLYGON, mvt.polygon_geometry(drawn_polygons), properties, feature_id)
    except (TypeError, IndexError, KeyError):  # a stored geometry is valid GeoJSON; this is belt and braces
        return


def features_layer(
    tile: Tile,
    entities: Iterable[Entity],
    geo_attr: str,
    display: Mapping[str, str],
    short: Callable[[str], str],
) -> mvt.Layer:
    """Layer `entities`: one feature per entity, with `id`, `type` (short name) and its display values."""
    layer = mvt.Layer("entities")
    project = tile.projector(layer.extent)
    for index, entity in enumerate(entities, start=1):
        geometry = _geometry(entity, geo_attr)
        if geometry is None:
            continue
        properties: dict[str, mvt.Value] = {"id": entity["id"], "type": short(entity["type"][0])}
        properties.update(_display(entity, display))
        _draw(layer, geometry, project, properties, index)
    return layer


def grid_of(tile: Tile, geo_attr: str, cells: int) -> GeoGrid:
    west, south, east, north = tile.bounds()
    return GeoGrid(geo_attr, west, south, east, north, cells, cells, (tile.z, tile.x, tile.y))


def _positions(coords: Any) -> Iterable[tuple[float, float]]:
    """Every position of a GeoJSON coordinates array, whatever its nesting."""
    if isinstance(coords, list | tuple) and len(coords) >= 2 and all(isinstance(c, int | float) for c in coords[:2]):
        yield float(coords[0]), float(coords[1])
    elif isinstance(coords, list | tuple):
        for part in coords:
            yield from _positions(part)


def count_in_python(entities: Iterable[Entity], grid: GeoGrid) -> list[GridCell]:
    """EntityStore.geo_grid's answer computed from documents (a query the store cannot count in SQL)."""
    width = (grid.max_x - grid.min_x) / grid.cols
    height = (grid.max_y - grid.min_y) / grid.rows
    level = grid.key_level()
    cells: dict[tuple[int, int], list[Any]] = {}
    for entity in entities:
        geometry = _geometry(entity, grid.attr)
        if geometry is None:
            continue
        positions = list(_positions(geometry.get("coordinates")))
        if not positions:
            continue
        min_x, max_x = min(p[0] for p in positions), max(p[0] for p in positions)
        min_y, max_y = min(p[1] for p in positions), max(p[1] for p in positions)
        x, y = (min_x + max_x) * 0.5, (min_y + max_y) * 0.5
        if level is not None and grid.tile is not None:  # the store's cells (its rows' cell keys)
            low, high = cell_key.tile_range(*grid.tile)
            key = cell_key.cell_key(min_x, max_x, min_y, max_y)
            if not low <= key < high:
                continue
            col, row = cell_key.cell_of(key, *grid.tile, level)
        else:
            col = min(max(int((x - grid.min_x) / width), 0), grid.cols - 1)
            row = min(max(int((y - grid.min_y) / height), 0), grid.rows - 1)
        cell = cells.setdefault((col, row), [0, 0.0, 0.0, set()])
        cell[0] += 1
        cell[1] += x
        cell[2] += y
        cell[3].add(entity["type"][0])
    return [
        GridCell(col, row, n, sx / n, sy / n, tuple(sorted(types))) for (col, row), (n, sx, sy, types) in cells.items()
    ]


def clusters_layer(tile: Tile, cells: Sequence[GridCell], short: Callable[[str], str]) -> mvt.Layer:
    """Layer `clusters`: a point per non-empty cell at its entities' mean centre, with `count` and
    `types` (their short names, comma-separated, at most MAX_TYPES)."""
    layer = mvt.Layer("clusters")
    project = tile.projector(layer.extent)
    for index, cell in enumerate(sorted(cells, key=lambda c: (c.row, c.col)), start=1):
        names = sorted({short(t) for t in cell.types})
        properties: dict[str, mvt.Value] = {"count": cell.count, "types": ",".join(names[:MAX_TYPES])}
        layer.add(mvt.POINT, mvt.point_geometry([project(cell.x, cell.y)]), properties, index)
    return layer


async def render_tile(
    store: EntityStore,
    tenant: str,
    tile: Tile,
    plain: EntityQuery,
    boxed: Callable[[int | None], EntityQuery],
    geo_attr: str,
    display: Mapping[str, str],
    short: Callable[[str], str],
    limits: TileLimits,
    project: Callable[[Entity], Entity] | None = None,
    counted: Callable[[GeoGrid], Awaitable[list[GridCell] | None]] | None = None,
) -> tuple[bytes, str]:
    """(the tile's bytes, its layer). `plain` is the caller's query without the tile's box (what the
    store counts per cell), `boxed(limit)` the same query restricted to the tile (what is drawn);
    `project` removes from each drawn entity what the caller may not read (its policy); `counted`
    counts `plain` per cell instead of the store (kept_cells.py)."""
    grid = grid_of(tile, geo_attr, limits.cluster_cells)
    cells = await (store.geo_grid(tenant, plain, grid) if counted is None else counted(grid))
    if cells is not None and sum(c.count for c in cells) > limits.max_features:
        return mvt.encode([clusters_layer(tile, cells, short)]), "clusters"
    result = await store.query_entities(tenant, boxed(limits.max_features))
    if result.has_more:  # more than drawn one by one, and the store could not count them in SQL
        every = await store.query_entities(tenant, boxed(limits.query_limit))
        cells = count_in_python(every.entities, grid)
        return mvt.encode([clusters_layer(tile, cells, short)]), "clusters"
    drawn = result.entities if project is None else [project(e) for e in result.entities]
    return mvt.encode([features_layer(tile, drawn, geo_attr, display, short)]), "entities"
