"""PostgresStore.geo_grid: entities counted per cell of a box, for map clusters (mapdata/tiles.py).

One statement over entity_geo's GiST index joined to the query's own WHERE (sql.where), grouped
in the server: no document is sent or decoded, so a grid over 100,000 entities is one index scan.
A map tile's grid (GeoGrid.key_level) is one range of the index entity_geo_cells (the rows' cell
keys, store/cell_key.py, migration 16), a cell a shift of the key. Each row carries its entity's
first type (migration 17), so a tile filtered by type at most (its `type`, the caller's policy's
types) in a database of one tenant with nothing expired is read from entity_geo_typed alone: a
range per type (allowed, or present) and cell; a type filter so only while no entity of the
database has several types. Such a tile with q comparisons as well (no existence) keeps the rows
of its range whose pk is among those meeting them, read from attr_values' value indexes (the
numeric one alone: it includes the pk, migration 20): no look at `entities` (_valued)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

import asyncpg

from cityos.entities.expiry import now_key
from cityos.errors import QueryTimeout
from cityos.query.patterns import id_pattern_in_python
from cityos.store.base import SNAPSHOT_PAUSE, SNAPSHOT_TRIES, EntityQuery, GeoGrid, GridCell, SnapshotHook
from cityos.store.cell_key import KEY_ZOOM, cell_of, tile_range
from cityos.store.paging import allowed_types, exact_in_sql, unfiltered, untyped
from cityos.store.postgres.sql import Params, access_in_python, matches_in_python, value_clause, where

if TYPE_CHECKING:
    from cityos.store.fair import FairShare
    from cityos.store.postgres.lane import Lane


ALONE = (
    "SELECT (SELECT version FROM listing_version WHERE id = 0),"
    " EXISTS (SELECT 1 FROM entities WHERE tenant < $1) OR EXISTS (SELECT 1 FROM entities WHERE tenant > $1)"
    " OR EXISTS (SELECT 1 FROM entities WHERE next_expiry IS NOT NULL AND next_expiry <= $2)"
)
SEVERAL = "SELECT EXISTS (SELECT 1 FROM entities WHERE cardinality(types) > 1)"
# the types of an attribute's rows: one probe of entity_geo_typed per type
PRESENT = (
    "WITH RECURSIVE t(type) AS (SELECT min(type) FROM entity_geo WHERE attr = $1 UNION ALL"
    " SELECT (SELECT min(g.type) FROM entity_geo g WHERE g.attr = $1 AND g.type > t.type) FROM t"
    " WHERE t.type IS NOT NULL) SELECT type FROM t WHERE type IS NOT NULL"
)
# a range per allowed type and cell of the tile, each an aggregate along the index (no sort of the tile's rows)
TYPED = (
    "SELECT s.k, t.t, a.n, a.x, a.y FROM unnest($4::text[]) t(t)"
    " CROSS JOIN generate_series($2::bigint, $3::bigint) s(k) CROSS JOIN LATERAL"
    " (SELECT count(*) AS n, sum(g.min_x + g.max_x) AS x, sum(g.min_y + g.max_y) AS y"
    " FROM entity_geo g WHERE g.attr = $1 AND g.type = t.t AND g.cell >= s.k << {shift}"
    " AND g.cell < (s.k + 1) << {shift}) a WHERE a.n > 0"
)
# the tile's rows (of the allowed types) whose entity meets the q comparisons, per cell and type:
# the comparisons' pks read once each from attr_values' value index (the numeric one includes them), hashed;
# grouped by type too, not array_agg(DISTINCT type) per cell, which forbids a hashed aggregate (a
# sort of the tile's rows instead, spilling to disk at zoom 10: 30 of 150 ms)
VALUED = (
    "SELECT g.cell >> {shift}, g.type, count(*), sum(g.min_x + g.max_x), sum(g.min_y + g.max_y)"
    " FROM entity_geo g WHERE g.attr = $1 AND g.cell >= $2 AND g.cell < $3{typed} AND {values} GROUP BY 1, 2"
)

CROWDED = 2000  # a tile of at most this many rows probes attr_values for each row (_valued)
# whether the tile holds more than CROWDED rows (entity_geo_cells, index only)
MORE_THAN = f"SELECT 1 FROM entity_geo WHERE attr = $1 AND cell >= $2 AND cell < $3 OFFSET {CROWDED} LIMIT 1"


def _merged(rows: list[Any]) -> list[tuple[Any, ...]]:
    """geo_grid's rows (not stale, cell, 0, count, mean x, mean y, types) of (cell, type, count,
    sum of 2x, sum of 2y) rows."""
    cells: dict[int, list[Any]] = {}
    for k, kind, n, sum_x, sum_y in rows:
        cell = cells.setdefault(k, [0, 0.0, 0.0, []])
        cell[0] += n
        cell[1] += sum_x
        cell[2] += sum_y
        cell[3].append(kind)
    return [(False, k, 0, n, sx / n * 0.5, sy / n * 0.5, names) for k, (n, sx, sy, names) in cells.items()]


async def _fixed_snapshot(connection: Any, stack: contextlib.AsyncExitStack, fixed: SnapshotHook) -> None:
    """Open a REPEATABLE READ transaction on `connection` (closed by `stack`) whose snapshot
    `fixed` can tell, trying a few times while writes are committing; the last try's stands."""
    for attempt in range(1, SNAPSHOT_TRIES + 1):
        mark = fixed.before()
        transaction = connection.transaction(isolation="repeatable_read", readonly=True)
        await transaction.start()
        await connection.fetchval("SELECT 1")
        if fixed.after(mark) or attempt == SNAPSHOT_TRIES:
            stack.push_async_callback(transaction.rollback)  # read only: nothing to keep
            return
        await transaction.rollback()
        await asyncio.sleep(SNAPSHOT_PAUSE * attempt)


class PostgresGrid:
    """geo_grid, mixed into PostgresStore."""

    query_timeout: float
    pool: Any
    _fair: FairShare
    _lane: Lane

    async def geo_grid(
        self, tenant: str, query: EntityQuery, grid: GeoGrid, fixed: SnapshotHook | None = None
    ) -> list[GridCell] | None:
        query = access_in_python(matches_in_python(id_pattern_in_python(query)))
        if not exact_in_sql(query) or query.geo_box is not None:
            return None
        now = now_key()
        p = Params()
        condition = where(tenant, query, now, p)
        level = grid.key_level()
        cx, cy = "(g.min_x + g.max_x) * 0.5", "(g.min_y + g.max_y) * 0.5"
        if level is not None and grid.tile is not None:
            z, x, y = grid.tile
            shift = 2 * (KEY_ZOOM - z - level)
            low, high = tile_range(z, x, y)
            cells = f"g.cell >> {shift} AS col, 0 AS row"
            inside = f"g.cell >= {p(low)} AND g.cell < {p(high)}"
        else:
            width = (grid.max_x - grid.min_x) / grid.cols
            height = (grid.max_y - grid.min_y) / grid.rows
            col = f"least(greatest(floor(({cx} - {p(grid.min_x)}) / {p(width)})::int, 0), {p(grid.cols - 1)})"
            row = f"least(greatest(floor(({cy} - {p(grid.min_y)}) / {p(height)})::int, 0), {p(grid.rows - 1)})"
            lo_x, hi_x, lo_y, hi_y = p(grid.min_x), p(grid.max_x), p(grid.min_y), p(grid.max_y)
            cells = f"{col} AS col, {row} AS row"
            inside = (
                f"g.box && ST_MakeEnvelope({lo_x}, {lo_y}, {hi_x}, {hi_y}, 4326)"
                f" AND g.max_x >= {lo_x} AND g.min_x <= {hi_x} AND g.max_y >= {lo_y} AND g.min_y <= {hi_y}"
            )
        stale = "false"
        if query.attrs is not None or query.value_filters:  # side rows of an expired part still count
            stale = (
                f"EXISTS (SELECT 1 FROM entities WHERE next_expiry IS NOT NULL AND next_expiry <= {p(now)}"
                f" AND tenant = {p(tenant)})"
            )
        sql = (
            f"WITH sel AS MATERIALIZED (SELECT {cells}, {cx} AS x, {cy} AS y, g.type AS t"
            " FROM entity_geo g JOIN entities e ON e.pk = g.pk"
            f" WHERE g.attr = {p(grid.attr)} AND {inside} AND {condition})"
            f" SELECT {stale}, col, row, count(*), avg(x), avg(y), array_agg(DISTINCT t)"
            " FROM sel GROUP BY col, row"
        )
        # a tile of CROWDED rows or fewer probes attr_values per row for its q, as in _valued: the
        # planner would hash every match of the city (at zoom 16, 39.5 ms of CPU against 20); the
        # same parameters in the same order (where() comes first)
        valued = any(f.op != "exists" for f in query.value_filters)
        try:
            async with (
                self._fair.slot(),
                asyncio.timeout(self.query_timeout),
                self._lane.lease(self.pool) as connection,
                contextlib.AsyncExitStack() as stack,
            ):
                if fixed is not None:  # one snapshot for the counting statements, taken by a SELECT 1
                    await _fixed_snapshot(connection, stack, fixed)
                fast = None
                if level is not None and grid.tile is not None:
                    fast = await self._index_only(connection, tenant, query, grid.attr, now, grid.tile, level)
                    if fast is None and valued:
                        low, high = tile_range(*grid.tile)
                        if await connection.fetchval(MORE_THAN, grid.attr, low, high) is None:
                            sql = sql.replace(condition, where(tenant, query, now, Params(), probe=True), 1)
                rows = fast if fast is not None else await connection.fetch(sql, *p.values)
        except (TimeoutError, asyncpg.QueryCanceledError) as exc:
            raise QueryTimeout(f"the query took longer than {self.query_timeout} s") from exc
        if rows and rows[0][0]:
            return None
        # each entity's first type: an entity of several types shows under one of them
        if level is not None and grid.tile is not None:
            z, x, y = grid.tile
            shift = 2 * (KEY_ZOOM - z - level)
            return [
                GridCell(*cell_of(r[1] << shift, z, x, y, level), r[3], r[4], r[5], tuple(sorted(t for t in r[6] if t)))
                for r in rows
            ]
        return [GridCell(r[1], r[2], r[3], r[4], r[5], tuple(sorted(t for t in r[6] if t))) for r in rows]

    async def _index_only(
        self,
        connection: Any,
        tenant: str,
        query: EntityQuery,
        attr: str,
        now: str,
        tile: tuple[int, int, int],
        level: int,
    ) -> list[tuple[Any, ...]] | None:
        """The rows of a tile's grid from indexes alone (no look at `entities`), when the query
        filters by type and q comparisons at most and the database holds entities of this tenant
        only, none expired; None otherwise. A type filter is answered by the rows' first types when
        no entity has several types (a scan of `entities`, remembered until the listings' version,
        store/postgres/schema.py migration 9: a create, delete or change of types or expiry, moves);
        without one, the types present are found by a skip along entity_geo_typed (one probe per
        type). The q comparisons: _valued."""
        allowed = allowed_types(query)
        rest = query if allowed is None else untyped(query)
        valued = bool(rest.value_filters)
        if valued:
            bare = dataclasses.replace(rest, value_filters=(), predicate=None, predicate_in_sql=None)
            if any(f.op == "exists" for f in rest.value_filters) or not unfiltered(bare):
                return None
        elif not unfiltered(rest):
            return None
        version, other = await connection.fetchrow(ALONE, tenant, now)
        if other:
            return None
        if allowed is not None:
            # the listings' version -> whether some entity has several types then
            remembered: dict[int, bool] = self.__dict__.setdefault("_grid_several", {})
            several = remembered.get(version)
            if several is None:
                several = bool(await connection.fetchval(SEVERAL))
                remembered.clear()
                remembered[version] = several
            if several:
                return None
        z, x, y = tile
        shift = 2 * (KEY_ZOOM - z - level)
        low, high = tile_range(z, x, y)
        if valued:
            return await self._valued(connection, query, attr, allowed, (low, high, shift))
        first, last = low >> shift, (high >> shift) - 1
        # the allowed types, or every type of the attribute's rows (a skip along entity_geo_typed)
        kinds = list(allowed) if allowed is not None else [r[0] for r in await connection.fetch(PRESENT, attr)]
        if not kinds:
            return []
        return _merged(await connection.fetch(TYPED.format(shift=shift), attr, first, last, kinds))

    async def _valued(
        self, connection: Any, query: EntityQuery, attr: str, allowed: Any, span: tuple[int, int, int]
    ) -> list[tuple[Any, ...]]:
        """A tile's cells for a query of types and q comparisons (no existence): the tile's range of
        entity_geo_cells (which holds the pk and the first type), each row kept if its pk meets
        every comparison, a hashed semi-join to the pks of attr_values' value index (the numeric one
        read alone, migration 20; before it, from the heap: 255 of 470 ms at zoom 10), with no
        join to `entities` (the general statement reads its heap for each of the tile's rows).
        A tile of CROWDED rows or fewer probes attr_values by pk for each row instead: hashing
        every match of the city (58,000 for a broad q) would cost more, and the planner, which
        underestimates the matches, takes the hash even for a tile of 200 rows (5-19 ms against
        46-108 ms for the general statement at zoom 16 under load 5)."""
        low, high, shift = span
        crowded = await connection.fetchval(MORE_THAN, attr, low, high) is not None
        p = Params()
        p(attr), p(low), p(high)
        typed = "" if allowed is None else f" AND g.type = ANY({p(list(allowed))}::text[])"
        values = " AND ".join(value_clause(f, p, pk="g.pk", probe=not crowded) for f in query.value_filters)
        # a statement of its own, planned for this tile's range and these values: the cached one
        # turns to a generic plan after five runs (a nested loop probing attr_values per row of the
        # tile: 715 ms at zoom 10, against 100-150 ms hashed)
        statement = await connection.prepare(VALUED.format(shift=shift, typed=typed, values=values))
        return _merged(await statement.fetch(*p.values))
