"""SQLiteStore.geo_grid: entities counted per cell of a box, for map clusters (mapdata/tiles.py).

The cells are counted over entity_geo_walk (one row per entity and GeoProperty, its box) joined to
the query's own selection (sqlite_query._selection), so the filters are the query's, exactly; no
document is read or decoded. A map tile's grid (GeoGrid.key_level) is counted over the rows' cell
keys (store/cell_key.py): the tile is one key range and a cell a shift of the key. Each row
carries its entity's first type (schema step 8), indexed (attr, type, cell, box): a query whose
only filters are types (its `type`, its access policy's types; answered by the rows' types unless
some entity of the file has several) or none, on a file where the tenant is the only one with
entities and nothing has expired, reads that index alone, a range per type and cell (no probe of
`entities` per row: a grid over 100,000 entities costs one pass over 100,000 index entries, about
17 ms); with filters (q, an id pattern), the allowed types' rows of the tile are joined to their
entities for them, except one q comparison over a tile of many rows, matched to the pk list its
value index gives (_valued)."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from cityos.entities.expiry import now_key
from cityos.store.base import SNAPSHOT_PAUSE, SNAPSHOT_TRIES, EntityQuery, GeoGrid, GridCell, SnapshotHook
from cityos.store.cell_key import KEY_ZOOM, cell_of, tile_range
from cityos.store.paging import allowed_types, exact_in_sql, unfiltered, untyped
from cityos.store.sqlite_layout import NAME_ID
from cityos.store.sqlite_query import DECISION_AGE, DECISIONS, _selection, _side_filters, _stale, _value_condition

T = TypeVar("T")
MAX_LISTED = 1_000_000  # a q's matching values listed for a tile at most (_valued)
_counted: dict[tuple[Any, ...], tuple[float, int, sqlite3.Connection]] = {}  # _matches' answers


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


def _several_types(connection: sqlite3.Connection, remembered: dict[int, bool]) -> bool:
    """Whether some entity of the file has more than one type, remembered (in `remembered`) until
    the listings' version moves (a create, a delete or a change of types): a walk row carries its
    entity's first type only, so a type filter is answered from the rows' types when no entity
    has another."""
    version = connection.execute("SELECT version FROM listing_version").fetchone()[0]
    known = remembered.get(version)
    if known is None:
        known = (
            connection.execute(
                "SELECT 1 FROM entity_types INDEXED BY entity_types_pk GROUP BY pk HAVING count(*) > 1 LIMIT 1"
            ).fetchone()
            is not None
        )
        remembered.clear()
        remembered[version] = known
    return known


def _type_ids(connection: sqlite3.Connection, names: Sequence[str]) -> list[int]:
    """The interned ids of these types (a type never interned has no entity)."""
    if not names:
        return []
    rows = connection.execute(
        f"SELECT id FROM temporal_names WHERE name IN ({','.join('?' * len(names))})", list(names)
    ).fetchall()
    return sorted(int(r[0]) for r in rows)


def _names(connection: sqlite3.Connection, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = connection.execute(
        f"SELECT id, name FROM temporal_names WHERE id IN ({','.join('?' * len(ids))})", list(ids)
    )
    return dict(rows.fetchall())


SMALL_TYPE = 2000  # a type with fewer rows in the tile is grouped in one statement (a sort of that few)


def _index_only(
    connection: sqlite3.Connection, attr: str, low: int, high: int, shift: int, typed: list[int] | None
) -> list[tuple[int, int, float, float, str | None]]:
    """A tile's cells (key >> shift, count, mean x, mean y, types) from the index (attr, type, cell)
    alone, for the allowed types or (None) every type of the attribute (one probe each): a type of
    many rows in the tile a range per cell, each an aggregate along the index with no sort (GROUP BY
    on the shifted key sorts the tile's rows: 2.7 times the CPU over 100,000 rows); a type of fewer
    than SMALL_TYPE rows in the tile one GROUP BY (no 256 probes of empty cells)."""
    step = 1 << shift
    found_attr = connection.execute("SELECT id FROM temporal_names WHERE name = ?", (attr,)).fetchone()
    if found_attr is None:
        return []
    attr_id = found_attr[0]
    walk = "entity_geo_walk INDEXED BY entity_geo_walk_typed"
    if typed is None:
        typed = []
        following = f"SELECT min(type) FROM {walk} WHERE attr = ? AND type > ?"
        kind = connection.execute(f"SELECT min(type) FROM {walk} WHERE attr = ?", (attr_id,)).fetchone()[0]
        while kind is not None:
            typed.append(kind)
            kind = connection.execute(following, (attr_id, kind)).fetchone()[0]
    cells: dict[int, list[Any]] = {}

    def add(k: int, n: int, sum_x: float, sum_y: float, kind: int) -> None:
        cell = cells.setdefault(k, [0, 0.0, 0.0, []])
        cell[0] += n
        cell[1] += sum_x
        cell[2] += sum_y
        cell[3].append(str(kind))

    sums = "count(*), sum((min_x + max_x) * 0.5), sum((min_y + max_y) * 0.5)"
    one = f"SELECT {sums} FROM {walk} WHERE attr = ? AND type = ? AND cell >= ? AND cell < ?"
    grouped = (
        f"SELECT cell >> {shift}, {sums} FROM {walk} WHERE attr = ? AND type = ? AND cell >= ? AND cell < ? GROUP BY 1"
    )
    many = f"SELECT 1 FROM {walk} WHERE attr = ? AND type = ? AND cell >= ? AND cell < ? LIMIT 1 OFFSET {SMALL_TYPE}"
    for kind in typed:
        if connection.execute(many, (attr_id, kind, low, high)).fetchone() is None:
            for k, n, sum_x, sum_y in connection.execute(grouped, (attr_id, kind, low, high)):
                add(k, n, sum_x, sum_y, kind)
            continue
        for start in range(low, high, step):
            n, sum_x, sum_y = connection.execute(one, (attr_id, kind, start, start + step)).fetchone()
            if n:
                add(start >> shift, n, sum_x, sum_y, kind)
    return [(k, n, sx / n, sy / n, ",".join(kinds)) for k, (n, sx, sy, kinds) in cells.items()]


def _valued(
    connection: sqlite3.Connection,
    attr: str,
    typed: list[int],
    span: tuple[int, int, int],
    query: EntityQuery,
) -> list[tuple[int, int, float, float, str | None]] | None:
    """A tile's cells for a query whose only filter besides its types is one q comparison (a number
    or text compared, not an existence), when the tile holds many rows: the rows of the typed index
    whose pk is in the list of pks meeting the comparison, read once from its value index (SQLite
    builds the list once per statement), instead of probing `entities` and `attr_values` per row
    (5.7 times less CPU over 100,000 rows of which 58 % match). None: not such a query, or a tile of
    fewer rows than a third of the matches (a probe per row is then cheaper)."""
    low, high, shift = span
    if len(query.value_filters) != 1 or not unfiltered(dataclasses.replace(query, value_filters=())):
        return None
    condition = _value_condition(query.value_filters[0], "x")
    if condition is None:
        return None
    where, params = condition
    if "regexp" in where or ("x.num" in where) == ("x.txt" in where):  # the value index must answer it
        return None
    index = "attr_values_num" if "x.num" in where else "attr_values_txt"
    walk = "entity_geo_walk w INDEXED BY entity_geo_walk_typed"
    kinds = ",".join("?" * len(typed))
    ranged = f"w.attr = {NAME_ID} AND w.type IN ({kinds}) AND w.cell >= ? AND w.cell < ?"
    tile = [attr, *typed, low, high]

    def more_rows_than(n: int) -> bool:
        row = connection.execute(f"SELECT 1 FROM {walk} WHERE {ranged} LIMIT 1 OFFSET {n}", tile).fetchone()
        return row is not None

    if not more_rows_than(SMALL_TYPE):  # a small tile: probing its few rows costs less than any list
        return None
    matched = f"SELECT x.pk FROM attr_values x INDEXED BY {index} WHERE {where}"
    found = _matches(connection, matched, params)
    if found > MAX_LISTED or not more_rows_than(found // 3):
        return None
    rows: list[tuple[int, int, float, float, str | None]] = connection.execute(
        f"SELECT w.cell >> {shift} AS k, count(*), avg((w.min_x + w.max_x) * 0.5), avg((w.min_y + w.max_y) * 0.5),"
        f" group_concat(DISTINCT w.type) FROM {walk} WHERE {ranged} AND w.pk IN ({matched}) GROUP BY k",
        [*tile, *params],
    ).fetchall()
    return rows


def _matches(connection: sqlite3.Connection, matched: str, params: list[Any]) -> int:
    """How many values meet a q comparison (at most MAX_LISTED + 1), from its value index. It only
    picks a tile's plan (both are exact), so an answer is reused for DECISION_AGE seconds, as
    sqlite_query._few's: counting 58,000 index entries would cost a tile of zoom 14 more than the
    tile. Per connection; the entry holds it, so its id() is not reused while the entry lives."""
    key = (id(connection), matched, *params)
    clock = time.monotonic()
    try:
        found = _counted.get(key)
    except TypeError:  # an unhashable parameter
        key, found = (), None
    if found is not None and found[2] is connection and clock - found[0] < DECISION_AGE:
        return found[1]
    count: int = connection.execute(f"SELECT count(*) FROM ({matched} LIMIT {MAX_LISTED + 1})", params).fetchone()[0]
    if key:
        if len(_counted) >= DECISIONS:
            _counted.clear()
        _counted[key] = (clock, count, connection)
    return count


def _cells(
    connection: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], z: int, x: int, y: int, level: int
) -> list[GridCell]:
    """GridCells of (key >> shift, count, mean x, mean y, comma-separated type ids) rows."""
    shift = 2 * (KEY_ZOOM - z - level)
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


# each entity's first type (the smallest interned id): one probe per entity; an entity of several
# types shows under one of them
FIRST_TYPE = "(SELECT min(t.type) FROM entity_types t WHERE t.pk = {alias}.pk)"


class SQLiteGrid:
    """geo_grid, mixed into SQLiteStore."""

    if TYPE_CHECKING:

        def _read_with_deadline(self, fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]: ...

    async def geo_grid(
        self, tenant: str, query: EntityQuery, grid: GeoGrid, fixed: SnapshotHook | None = None
    ) -> list[GridCell] | None:
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
        now = now_key()

        def keyed(connection: sqlite3.Connection, level: int, z: int, x: int, y: int) -> list[GridCell]:
            low, high = tile_range(z, x, y)
            shift = 2 * (KEY_ZOOM - z - level)
            allowed = allowed_types(query)
            typed: list[int] | None = None
            rest = dataclasses.replace(plain, geo_box=None)
            if allowed is not None and not _several_types(connection, self.__dict__.setdefault("_grid_several", {})):
                typed, rest = _type_ids(connection, allowed), untyped(rest)
                if not typed:
                    return []
            if unfiltered(rest) and _alone(connection, tenant, now):  # every row is a visible entity of the tenant
                return _cells(connection, _index_only(connection, grid.attr, low, high, shift, typed), z, x, y, level)
            if typed is not None and rest.value_filters and _alone(connection, tenant, now):
                valued = _valued(connection, grid.attr, typed, (low, high, shift), rest)
                if valued is not None:
                    return _cells(connection, valued, z, x, y, level)
            source, where, params = "", "", list[Any]()
            # a selective filter (ids, a value filter of few rows) drives better than the tile's rows
            if typed is not None and rest.ids is None and not any(few for *_, few in _side_filters(connection, rest)):
                source, where, params, _ = _selection(connection, tenant, rest, now)
            if typed is not None and source == "entities e INDEXED BY entities_listing":
                # along the tile's rows of the allowed types, each joined to its entity for the filters
                statement = (
                    f"SELECT w.cell >> {shift} AS k, count(*), avg((w.min_x + w.max_x) * 0.5),"
                    " avg((w.min_y + w.max_y) * 0.5), group_concat(DISTINCT w.type)"
                    f" FROM entity_geo_walk w INDEXED BY entity_geo_walk_typed JOIN {source} ON e.pk = w.pk"
                    f" WHERE w.attr = {NAME_ID} AND w.type IN ({','.join('?' * len(typed))})"
                    f" AND w.cell >= ? AND w.cell < ? AND {where} GROUP BY k"
                )
                rows = connection.execute(statement, [grid.attr, *typed, low, high, *params]).fetchall()
            else:  # the selection drives: the tile's walk rows of its entities
                source, where, params, _ = _selection(connection, tenant, plain, now)
                rows = connection.execute(
                    f"SELECT w.cell >> {shift} AS k, count(*), avg((w.min_x + w.max_x) * 0.5),"
                    " avg((w.min_y + w.max_y) * 0.5), group_concat(DISTINCT w.type)"
                    f" FROM (SELECT e.pk AS pk FROM {source} WHERE {where}) s"
                    f" JOIN entity_geo_walk w ON w.attr = {NAME_ID} AND w.pk = s.pk"
                    " WHERE w.cell >= ? AND w.cell < ? GROUP BY k",
                    [*params, grid.attr, low, high],
                ).fetchall()
            return _cells(connection, rows, z, x, y, level)

        def run(connection: sqlite3.Connection) -> list[GridCell] | None:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            connection.execute("BEGIN")
            try:
                if fixed is not None:  # the read transaction's snapshot is taken by its first read
                    for attempt in range(1, SNAPSHOT_TRIES + 1):
                        if fixed.hold(lambda: connection.execute("SELECT version FROM listing_version").fetchone()):
                            break
                        if attempt < SNAPSHOT_TRIES:  # a write was committing: a new snapshot in a moment
                            connection.execute("ROLLBACK")
                            time.sleep(SNAPSHOT_PAUSE * attempt)
                            connection.execute("BEGIN")
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
