"""SQLiteStore.geo_grid: entities counted per cell of a box, for map clusters (mapdata/tiles.py).

The cells are counted over entity_geo_walk (one row per entity and GeoProperty, its box) joined to
the query's own selection (sqlite_query._selection), so the filters are the query's, exactly; no
document is read or decoded, so a grid over 100,000 entities costs one pass over index rows."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from cityos.entities.expiry import now_key
from cityos.store.base import EntityQuery, GeoGrid, GridCell
from cityos.store.paging import exact_in_sql
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
        now = now_key()

        def run(connection: sqlite3.Connection) -> list[GridCell] | None:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            connection.execute("BEGIN")
            try:
                if needs_fresh and _stale(connection, tenant, now):
                    return None
                source, where, params, _ = _selection(connection, tenant, plain, now)
                col, row, cell_params = cell_sql(grid, "w")
                inner = (
                    f"SELECT w.pk AS pk, {col} AS col, {row} AS row,"
                    " (w.min_x + w.max_x) * 0.5 AS x, (w.min_y + w.max_y) * 0.5 AS y"
                    f" FROM (SELECT e.pk AS pk FROM {source} WHERE {where}) s"
                    f" JOIN entity_geo_walk w ON w.attr = {NAME_ID} AND w.pk = s.pk"
                )
                inner_params = [*cell_params, *params, grid.attr]
                # each entity's first type (the smallest interned id): one probe per entity; an entity
                # of several types shows under one of them
                counts = connection.execute(
                    "SELECT g.col, g.row, count(*), avg(g.x), avg(g.y), group_concat(DISTINCT"
                    " (SELECT min(t.type) FROM entity_types t WHERE t.pk = g.pk))"
                    f" FROM ({inner}) g GROUP BY g.col, g.row",
                    inner_params,
                ).fetchall()
                ids = {int(i) for *_, kinds in counts if kinds for i in str(kinds).split(",")}
                names = dict(
                    connection.execute(
                        f"SELECT id, name FROM temporal_names WHERE id IN ({','.join('?' * len(ids))})", list(ids)
                    ).fetchall()
                    if ids
                    else []
                )
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
