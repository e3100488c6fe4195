"""SQLiteStore.geo_grid: entities counted per cell of a box, for map clusters (mapdata/tiles.py).

The cells are counted over entity_geo_walk (one row per entity and GeoProperty, its box) joined to
the query's own selection (sqlite_query._selection), so the filters are the query's, exactly; no
document is read or decoded. A map tile's grid (GeoGrid.key_level) is counted over the rows' cell
keys (store/cell_key.py): the tile is one range of the index entity_geo_walk_cell and a cell is a
shift of the key. A query with no filter but its tenant, on a file where that tenant is the only
one with entities and nothing has expired, reads that index alone (no probe of `entities` per row:
a grid over 100,000 entities costs one pass over 100,000 index entries, about 40 ms)."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from cityos.entities.expiry import now_key
from cityos.store.base import EntityQuery, GeoGrid, GridCell
from cityos.store.cell_key import KEY_ZOOM, cell_of, tile_range
from cityos.store.paging import exact_in_sql, unfiltered
from cityos.store.sqlite_layout import NAME_ID
from cityos.store.sqlite_query import _selection, _stale

T = TypeVar("T")


def cell_sql(grid: GeoGrid, alias: str) -> tuple[str, str, list[Any]]:
    """(column, row) expressions of a box row's centre cell, clamped to the grid, and their parameters."""
    width = (grid.max_x - grid.min_x) / grid.cols
    height = (grid.max_y - grid.min_y) / grid.rows
    col = f"min(max(CAST((({alias}.min_x + {alias}.max_x) * 0.5 - ?) / ? AS INTEGER), 0), ?)"
    row = f"min(max(CAST((({alias}.min_y + {alias}.max_y) * 0.5 - ?) / ? AS INTEGER), 0), ?)"
    return col, row, [grid.min_x, width, grid.cols - 1, grid.min_y, height, grid.rows - 1]


def _alone(connection: sqlite3.Connection, tenant: str, now: str) -> bool:
    """Every entity of the file is the tenant's and visible (three index probes), so a row of
    entity_geo_walk needs no look at its entity."""
    other = connection.execute(
        "SELECT 1 FROM entities WHERE tenant < ?1 UNION ALL SELECT 1 FROM entities WHERE tenant > ?1 LIMIT 1",
        (tenant,),
    ).fetchone()
    if other is not None:
        return False
    expired = connection.execute(
        "SELECT 1 FROM entities WHERE next_expiry IS NOT NULL AND next_expiry <= ? LIMIT 1", (now,)
    ).fetchone()
    return expired is None


def _first_type(connection: sqlite3.Connection) -> int | None:
    """The one type every entity of the file has, when there is one (the file's only type)."""
    low = connection.execute("SELECT min(type) FROM entity_types").fetchone()[0]  # two index probes
    high = connection.execute("SELECT max(type) FROM entity_types").fetchone()[0]
    return int(low) if low is not None and low == high else None


def _names(connection: sqlite3.Connection, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = connection.execute(
        f"SELECT id, name FROM temporal_names WHERE id IN ({','.join('?' * len(ids))})", list(ids)
    )
    return dict(rows.fetchall())


# each entity's first type (the smallest interned id): one probe per entity; an entity of several
# types shows under one of them
FIRST_TYPE = "(SELECT min(t.type) FROM entity_types t WHERE t.pk = {alias}.pk)"


class SQLiteGrid:
    """geo_grid, mixed into SQLiteStore."""

    if TYPE_CHECKING:

        def _read_with_deadline(self, fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]: ...

    async def geo_grid(self, tenant: str, query: EntityQuery, grid: GeoGrid) -> list[GridCell] | None:
        if not exact_in_sql(query) or query.geo_box is not None:
            return None
        # the grid's box as the query's geo box (no exact test: a box that meets it counts), so the
        # selection is driven by the R*Tree or the walk as a geo-query's is, not by every entity
        box = (grid.attr, (grid.min_x, grid.max_x, grid.min_y, grid.max_y))
        plain = dataclasses.replace(
            query, predicate=None, predicate_in_sql=None, geo_box=box, geo=None, limit=None, offset=0, count=False
        )
        needs_fresh = query.attrs is not None or bool(query.value_filters)
        level = grid.key_level()
        bare = level is not None and unfiltered(query)
        now = now_key()

        def keyed(connection: sqlite3.Connection, level: int, z: int, x: int, y: int) -> list[GridCell]:
            low, high = tile_range(z, x, y)
            shift = 2 * (KEY_ZOOM - z - level)
            centre = "(w.min_x + w.max_x) * 0.5 AS x, (w.min_y + w.max_y) * 0.5 AS y"
            one = _first_type(connection) if bare and _alone(connection, tenant, now) else None
            if one is not None:  # the index alone: every row is a visible entity of the tenant's one type
                # a range per cell: each an aggregate along the index, no sort of the tile's rows
                # (GROUP BY on the shifted key sorts them: 2.7 times the CPU over 100,000 rows)
                step = 1 << shift
                statement = (
                    "SELECT count(*), avg((w.min_x + w.max_x) * 0.5), avg((w.min_y + w.max_y) * 0.5)"
                    " FROM entity_geo_walk w INDEXED BY entity_geo_walk_cell"
                    f" WHERE w.attr = {NAME_ID} AND w.cell >= ? AND w.cell < ?"
                )
                rows = []
                for start in range(low, high, step):
                    n, mean_x, mean_y = connection.execute(statement, (grid.attr, start, start + step)).fetchone()
                    if n:
                        rows.append((start >> shift, n, mean_x, mean_y, str(one)))
            else:
                source, where, params, _ = _selection(connection, tenant, plain, now)
                rows = connection.execute(
                    f"SELECT g.k, count(*), avg(g.x), avg(g.y), group_concat(DISTINCT g.t) FROM"
                    f" (SELECT w.cell >> {shift} AS k, {centre}, {FIRST_TYPE.format(alias='w')} AS t"
                    f" FROM (SELECT e.pk AS pk FROM {source} WHERE {where}) s"
                    f" JOIN entity_geo_walk w ON w.attr = {NAME_ID} AND w.pk = s.pk"
                    " WHERE w.cell >= ? AND w.cell < ?) g GROUP BY g.k",
                    [*params, grid.attr, low, high],
                ).fetchall()
            names = _names(connection, {int(i) for *_, kinds in rows if kinds for i in str(kinds).split(",")})
            return [
                GridCell(
                    *cell_of(k << shift, z, x, y, level),
                    n,
                    cx,
                    cy,
                    tuple(sorted(names[int(i)] for i in str(kinds).split(",")) if kinds else ()),
                )
                for k, n, cx, cy, kinds in rows
            ]

        def run(connection: sqlite3.Connection) -> list[GridCell] | None:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            connection.execute("BEGIN")
            try:
                if needs_fresh and _stale(connection, tenant, now):
                    return None
                if level is not None and grid.tile is not None:
                    return keyed(connection, level, *grid.tile)
                source, where, params, _ = _selection(connection, tenant, plain, now)
                col, row, cell_params = cell_sql(grid, "w")
                inner = (
                    f"SELECT w.pk AS pk, {col} AS col, {row} AS row,"
                    " (w.min_x + w.max_x) * 0.5 AS x, (w.min_y + w.max_y) * 0.5 AS y"
                    f" FROM (SELECT e.pk AS pk FROM {source} WHERE {where}) s"
                    f" JOIN entity_geo_walk w ON w.attr = {NAME_ID} AND w.pk = s.pk"
                )
                inner_params = [*cell_params, *params, grid.attr]
                counts = connection.execute(
                    "SELECT g.col, g.row, count(*), avg(g.x), avg(g.y), group_concat(DISTINCT"
                    f" {FIRST_TYPE.format(alias='g')}) FROM ({inner}) g GROUP BY g.col, g.row",
                    inner_params,
                ).fetchall()
                names = _names(connection, {int(i) for *_, kinds in counts if kinds for i in str(kinds).split(",")})
                return [
                    GridCell(
                        c, r, n, x, y, tuple(sorted(names[int(i)] for i in str(kinds).split(",")) if kinds else ())
                    )
                    for c, r, n, x, y, kinds in counts
                ]
            finally:
                if connection.in_transaction:
                    connection.execute("COMMIT")

        return await self._read_with_deadline(run)
