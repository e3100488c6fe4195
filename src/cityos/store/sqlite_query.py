"""The read half of SQLiteStore's entity queries: which rows a query selects, and how it pages.

A query whose every filter is exact in SQL (query/pushdown.py) is paged there in two steps: the
page's primary keys are chosen over covering indexes (entity_types' (type, pk), entities_listing's
(pk, tenant, expires_at), attr_values' B-trees), then only those documents are read and decoded.
Anything else (a geo-query's distance, scopeQ, an orderBy, q terms the side rows cannot answer)
reads the candidate documents in primary key order and filters them in Python (store/paging.py),
stopping once the page and one more match are found.

Offsets: SQLite's OFFSET still steps over every skipped index entry. For a listing of one type
(the common dashboard query) the store keeps, per tenant and type, the primary key at every
ANCHOR_STEP-th position, so an offset costs a seek and at most ANCHOR_STEP steps. The anchors are
valid while listing_version (bumped by triggers whenever an entity gains or loses a type, i.e. on
every create and delete) is unchanged and no expired entity is waiting for the sweeper.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from cityos.entities.expiry import now_key, visible_at
from cityos.entities.model import Entity
from cityos.query import budget
from cityos.query.pushdown import ValueFilter
from cityos.store.base import EntityQuery, QueryResult
from cityos.store.cell_key import cell_key
from cityos.store.paging import Pager, bounded, exact_in_sql
from cityos.store.paging import listed_type as _listed_type
from cityos.store.side_rows import geo_keys, instance_boxes
from cityos.store.sqlite_history import Names
from cityos.store.sqlite_layout import NAME_ID, inflate, name_ids

if TYPE_CHECKING:
    from cityos.query.geo import GeoQuery

T = TypeVar("T")
R = TypeVar("R")  # what a read on the loop answers (_on_loop)

QUERY_SCHEMA = """
CREATE INDEX IF NOT EXISTS entities_listing ON entities (pk, tenant, expires_at);
CREATE TABLE IF NOT EXISTS listing_version (id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS listing_type_added AFTER INSERT ON entity_types
BEGIN UPDATE listing_version SET version = version + 1; END;
CREATE TRIGGER IF NOT EXISTS listing_type_removed AFTER DELETE ON entity_types
BEGIN UPDATE listing_version SET version = version + 1; END;
"""
GEO_SCHEMA = """
CREATE TABLE IF NOT EXISTS entity_geo_walk (
    attr INTEGER NOT NULL, pk INTEGER NOT NULL,  -- attr: the interned IRI (temporal_names)
    min_x REAL NOT NULL, max_x REAL NOT NULL, min_y REAL NOT NULL, max_y REAL NOT NULL,
    shapes TEXT,
    cell INTEGER,  -- the box centre's cell key (store/cell_key.py), for map clusters (sqlite_grid.py)
    type INTEGER,  -- the entity's first type (its smallest interned id), for map clusters by type
    PRIMARY KEY (attr, pk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_geo_walk_typed ON entity_geo_walk (attr, type, cell, min_x, max_x, min_y, max_y);
"""
"""One row per entity and GeoProperty attribute (side_rows.py geo_keys), in key order: a broad
geo-query walks it in entity key order testing the box on the row alone, so a page stops at its
21st match however many entities the box holds. The exact test reads the row alone too: a Point's
coordinates are its box (shapes NULL), any other attribute keeps its geometries in `shapes`."""
WALK_INSERT = (
    "INSERT INTO entity_geo_walk (attr, pk, min_x, max_x, min_y, max_y, shapes, cell, type)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def walk_row(
    attr: int, pk: int, key: tuple[str, float, float, float, float, str | None], first_type: int
) -> tuple[Any, ...]:
    """WALK_INSERT's parameters for one geo_keys row, its cell key computed; `first_type` the
    entity's smallest interned type id (first_type_id)."""
    _, min_x, max_x, min_y, max_y, shapes = key
    return (attr, pk, min_x, max_x, min_y, max_y, shapes, cell_key(min_x, max_x, min_y, max_y), first_type)


def first_type_id(ids: Callable[[str], int], types: Sequence[str]) -> int:
    """The type an entity's geo walk rows carry: its smallest interned type id (the one its map
    clusters show it under, whatever the order of its types)."""
    return min(ids(t) for t in types)


ANCHOR_STEP = 64  # listing positions between two remembered primary keys
SELECTIVE = 2000  # a value filter with at most this many rows drives the query (IN); else each candidate probes it
DECISION_AGE = 1.0  # seconds a side filter's selectivity (_few) is reused by the queries that repeat it
DECISIONS = 1024  # side filters remembered (all forgotten past it)
# (id(connection), table, condition, *params) -> (when, few, the connection)
_decisions: dict[tuple[Any, ...], tuple[float, bool, sqlite3.Connection]] = {}
LOOP_STEPS = 1000  # SQLite VM steps between two looks of a page read on the event loop at its budget
LOOP_CHECKS = 100  # looks before it gives up (100,000 steps, about 2-4 ms here; a reader thread reads it)
LOOP_WALL = 0.05  # wall-clock seconds after which it gives up too (a cold disk: the steps do not count waits)
LOOP_PYTHON = 0.005  # wall-clock seconds of geo tests in Python (geo_point, geo_shapes) after which it gives up
LOOP_BACKOFF = 1.0  # seconds a query shape that gave up on the loop goes to the reader threads directly
LOOP_SHAPES = 1024  # shapes remembered (all forgotten past it)
GEO_SELECTIVE = 500  # a geo box with at most this many R*Tree entries drives the query; else entity_geo_walk


def create_query_schema(connection: sqlite3.Connection) -> None:
    """The listing index, version and triggers, and the geo walk table, for new and older files
    alike (an older file's walk rows are made from its documents, once); a file that has them is
    only read (a store can open a file another process holds locked)."""
    connection.executescript(QUERY_SCHEMA)
    if connection.execute("SELECT 1 FROM listing_version").fetchone() is None:
        connection.execute("INSERT INTO listing_version VALUES (0, 0)")
    if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'entity_geo_walk'").fetchone() is None:
        with connection:
            connection.executescript(GEO_SCHEMA)
            names = Names(writer=True)  # interned in this transaction
            docs = connection.execute(
                "SELECT pk, doc FROM entities WHERE pk IN (SELECT pk FROM entity_geo_attrs) ORDER BY pk"
            )

            def ids(name: str) -> int:
                return names.id(connection, name)

            connection.executemany(
                WALK_INSERT,
                (
                    walk_row(ids(key[0]), pk, key, first_type_id(ids, entity["type"]))
                    for pk, doc in docs.fetchall()
                    for entity in (orjson.loads(inflate(doc)),)
                    for key in geo_keys(instance_boxes(entity))
                ),
            )


def register_geo_functions(connection: sqlite3.Connection) -> None:
    """The SQL functions an exact geo-query calls (`geo_point`, `geo_shapes`), on a reader."""
    connection.create_function("geo_point", 3, _geo_point, deterministic=True)
    connection.create_function("geo_shapes", 2, _geo_shapes, deterministic=True)


_geo_queries = threading.local()  # per reader thread: GEOS prepared geometries are not shared between threads


def _geo_query(key: str) -> GeoQuery:
    """The GeoQuery a key (GeoQuery.key) names: parsed once per query text and thread, not per row."""
    cache: dict[str, GeoQuery] | None = getattr(_geo_queries, "cache", None)
    if cache is None:
        cache = _geo_queries.cache = {}
    query = cache.get(key)
    if query is None:
        from cityos.query.geo import GeoQuery  # shapely loads with the first geo-query

        if len(cache) >= 64:
            cache.clear()
        query = cache[key] = GeoQuery.from_key(key)
    return query


def _geo_point(key: str, lon: float, lat: float) -> bool:
    return not _interrupted() and _geo_query(key).point_matches(lon, lat)


def _interrupted() -> bool:
    """Whether the query's deadline has passed; then the statement is interrupted
    (_read_with_deadline answers QueryTimeout, as the Python half would; a page read on the event
    loop is read again on a reader thread)."""
    deadline: tuple[float, sqlite3.Connection] | None = getattr(_geo_queries, "deadline", None)
    if deadline is not None and time.monotonic() > deadline[0]:
        deadline[1].interrupt()
        return True
    return False


def _geo_shapes(key: str, shapes: str) -> bool:
    """Whether one of an attribute's geometries matches (as compile_geo tests the instances). A
    test can take long (large geometries), so past the query's deadline it interrupts the
    statement: _read_with_deadline answers QueryTimeout, as the Python half would."""
    return not _interrupted() and _geo_query(key).matches_any(shapes)


# query/geo.py `haversine` of (?, ?) and a Point row `{a}`, term by term in the same order, with
# the same libm functions (SQLite's sin, cos, pow, sqrt, asin and radians call them as Python does):
# the same doubles, checked for 500,000 pairs (tests/test_geo_query.py). Parameters: 2 * the
# radius, the query's latitude in radians, its cosine, its longitude.
HAVERSINE = (
    "(? * asin(sqrt(min(1.0, max(0.0, pow(sin((radians({a}.min_y) - ?) / 2), 2)"
    " + ? * cos(radians({a}.min_y)) * pow(sin(radians({a}.min_x - ?) / 2), 2))))))"
)


def _few_in_box(connection: sqlite3.Connection, rtree: str, box: list[float]) -> bool:
    """Whether at most GEO_SELECTIVE R*Tree entries meet the box (min_x, max_x, min_y, max_y): up
    to 501 entries read to choose the plan, a tenth of a geo page's instructions. Like _few, an
    answer picks the plan only (both plans are exact and give the same page), so it is reused for
    DECISION_AGE seconds by the boxes of the same size in the same cell of a grid of that size
    (neighbouring points of a near query: the density they meet is alike)."""
    width, height = box[1] - box[0], box[3] - box[2]
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        return _counted_in_box(connection, rtree, box)
    # sizes to two digits: a near box's width varies with its latitude's cosine
    width, height = float(f"{width:.2g}"), float(f"{height:.2g}")
    key = (id(connection), "geo", width, height, box[0] // width, box[2] // height)
    clock = time.monotonic()
    found = _decisions.get(key)
    if found is not None and found[2] is connection and clock - found[0] < DECISION_AGE:
        return found[1]
    few = _counted_in_box(connection, rtree, box)
    if len(_decisions) >= DECISIONS:
        _decisions.clear()
    _decisions[key] = (clock, few, connection)
    return few


def _counted_in_box(connection: sqlite3.Connection, rtree: str, box: list[float]) -> bool:
    limited = f"SELECT 1 FROM {rtree} LIMIT {GEO_SELECTIVE + 1}"
    few: bool = connection.execute(f"SELECT COUNT(*) FROM ({limited})", box).fetchone()[0] <= GEO_SELECTIVE
    return few


def _geo_exact(query: EntityQuery, alias: str) -> tuple[str, list[Any]]:
    """The exact test of one entity_geo_walk row `alias`. A Point row near a Point is tested in SQL
    (`point_matches`' distance, HAVERSINE), without a call into Python per candidate."""
    from cityos.query.geo import EARTH_RADIUS  # loaded with the geo-query itself

    geo = query.geo
    assert geo is not None
    key = geo.key
    if geo.georel == "near" and geo.geometry == "Point" and geo.max_distance is not None:
        lon, lat = float(geo.coordinates[0]), float(geo.coordinates[1])
        phi = math.radians(lat)
        low = -1.0 if geo.min_distance is None else geo.min_distance
        point = f"{HAVERSINE.format(a=alias)} BETWEEN ? AND ?"
        params: list[Any] = [2 * EARTH_RADIUS, phi, math.cos(phi), lon, low, geo.max_distance]
    else:
        point, params = f"geo_point(?, {alias}.min_x, {alias}.min_y)", [key]
    sql = f"(CASE WHEN {alias}.shapes IS NULL THEN {point} ELSE geo_shapes(?, {alias}.shapes) END)"
    return sql, [*params, key]


def _geo_side(
    connection: sqlite3.Connection, query: EntityQuery, walk: bool
) -> tuple[tuple[str, list[Any], bool] | None, tuple[str, list[Any]] | None]:
    """The geo-query as (a side filter, a walk): its R*Tree candidates drive when there are few
    (or `walk` is False: a count reads every match anyway), each then tested exactly on its walk
    row; else (None, (the walk rows' WHERE, parameters)) and entity_geo_walk drives in key order."""
    assert query.geo_box is not None
    attr, (min_x, max_x, min_y, max_y) = query.geo_box
    box = [min_x, max_x, min_y, max_y]
    rtree = "entity_geo r WHERE r.max_x >= ? AND r.min_x <= ? AND r.max_y >= ? AND r.min_y <= ?"
    few = not walk or query.geo is None
    if not few:
        few = _few_in_box(connection, rtree, box)
    if not few:
        exact, params = _geo_exact(query, "w")
        where = f"w.attr = {NAME_ID} AND w.max_x >= ? AND w.min_x <= ? AND w.max_y >= ? AND w.min_y <= ? AND " + exact
        return None, (where, [attr, *box, *params])
    candidates = (
        "e.pk IN (SELECT g.pk FROM entity_geo_attrs g JOIN entity_geo r ON r.gid = g.gid"
        f" WHERE g.attr = {NAME_ID} AND r.max_x >= ? AND r.min_x <= ? AND r.max_y >= ? AND r.min_y <= ?)"
    )
    if query.geo is None:
        return (candidates, [attr, *box], True), None
    exact, params = _geo_exact(query, "w")
    probe = f"EXISTS (SELECT 1 FROM entity_geo_walk w WHERE w.attr = {NAME_ID} AND w.pk = e.pk AND {exact})"
    return (f"{candidates} AND {probe}", [attr, *box, attr, *params], True), None


LISTING = "entity_types t JOIN entities e INDEXED BY entities_listing ON e.pk = t.pk"


@dataclass(frozen=True, slots=True)
class _Anchors:
    version: int
    pks: list[int]  # the primary key at positions 0, ANCHOR_STEP, 2 * ANCHOR_STEP, ...
    total: int
    alone: bool  # every entity of the type is in this tenant: entity_types alone answers the walk


def _stale(connection: sqlite3.Connection, tenant: str, now: str) -> bool:
    """Whether some entity of the tenant holds an expired part the sweeper has not removed yet:
    its side rows (types, attributes, values) still describe what readers no longer see."""
    row = connection.execute(
        "SELECT 1 FROM entities INDEXED BY entities_expiry"
        " WHERE next_expiry IS NOT NULL AND next_expiry <= ? AND tenant = ? LIMIT 1",
        (now, tenant),
    ).fetchone()
    return row is not None


def _value_condition(value_filter: ValueFilter, alias: str) -> tuple[str, list[Any]] | None:
    """The attr_values condition of one q prefilter; None for existence (entity_attrs answers it)."""
    op, values = value_filter.op, list(value_filter.values)
    if op == "exists":
        return None
    if op == "between":
        column = "num" if isinstance(values[0], float) else "txt"
        return f"{alias}.attr = {NAME_ID} AND {alias}.{column} BETWEEN ? AND ?", [value_filter.attr, *values]
    if op == "match":
        return f"{alias}.attr = {NAME_ID} AND regexp(?, {alias}.txt)", [value_filter.attr, *values]
    if op == "==":
        numbers, texts = value_filter.split()
        parts = [
            f"{alias}.{column} IN ({_in_list(len(vs))})" for column, vs in (("num", numbers), ("txt", texts)) if vs
        ]
        condition = f"{alias}.attr = {NAME_ID} AND (" + (" OR ".join(parts) or "0") + ")"
        return condition, [value_filter.attr, *numbers, *texts]
    return f"{alias}.attr = {NAME_ID} AND {alias}.num {op} ?", [value_filter.attr, *values]


def _in_list(count: int) -> str:
    return ",".join("?" * count)


def _few(connection: sqlite3.Connection, table: str, condition: str, params: list[Any]) -> bool:
    """Whether at most SELECTIVE rows of `table` meet `condition` (read from the table's index,
    stopping there). A broad filter's count reads 2,001 index entries, a third of a q page's
    instructions, so an answer is reused for DECISION_AGE seconds: it picks the plan only (both
    plans of _side are exact), never which entities match. Remembered per connection (each file,
    and each reader thread, decides for itself); the entry holds the connection, so its id() is
    not reused while the entry lives."""
    key = (id(connection), table, condition, *params)
    try:
        found = _decisions.get(key)
    except TypeError:  # an unhashable parameter: count every time
        return _counted_few(connection, table, condition, params)
    clock = time.monotonic()
    if found is not None and found[2] is connection and clock - found[0] < DECISION_AGE:
        return found[1]
    few = _counted_few(connection, table, condition, params)
    if len(_decisions) >= DECISIONS:
        _decisions.clear()
    _decisions[key] = (clock, few, connection)
    return few


def _counted_few(connection: sqlite3.Connection, table: str, condition: str, params: list[Any]) -> bool:
    limited = f"SELECT 1 FROM {table} x WHERE {condition} LIMIT {SELECTIVE + 1}"  # on the index alone
    few: bool = connection.execute(f"SELECT COUNT(*) FROM ({limited})", params).fetchone()[0] <= SELECTIVE
    return few


def _side(connection: sqlite3.Connection, table: str, condition: str, params: list[Any]) -> tuple[str, list[Any], bool]:
    """One side-table filter (rows `x` of `table` meeting `condition`) as (SQL, parameters, few):
    when at most SELECTIVE rows pass, the matching keys drive the walk (IN); otherwise each
    candidate probes the table by its key (EXISTS)."""
    if _few(connection, table, condition, params):
        return f"e.pk IN (SELECT x.pk FROM {table} x WHERE {condition})", params, True
    # attr_values by its primary key (pk, attr, seq), not by a value index the planner may prefer
    probed = "attr_values x INDEXED BY sqlite_autoindex_attr_values_1" if table == "attr_values" else f"{table} x"
    return f"EXISTS (SELECT 1 FROM {probed} WHERE x.pk = e.pk AND {condition})", params, False


def _side_filters(connection: sqlite3.Connection, query: EntityQuery) -> list[tuple[str, list[Any], bool]]:
    """The side-table filters of a query other than a listed type (types, attrs, q, access)."""
    found = []
    if query.types is not None and len(query.types) > 1:
        found.append(_side(connection, "entity_types", f"x.type IN {name_ids(len(query.types))}", [*query.types]))
    if query.attrs is not None:
        found.append(_side(connection, "entity_attrs", f"x.attr IN {name_ids(len(query.attrs))}", [*query.attrs]))
    for value_filter in query.value_filters:
        condition = _value_condition(value_filter, "x")
        if condition is None:
            found.append(_side(connection, "entity_attrs", f"x.attr = {NAME_ID}", [value_filter.attr]))
        else:
            found.append(_side(connection, "attr_values", *condition))
    access = query.access
    if access is not None and access.types is not None:
        found.append(_side(connection, "entity_types", f"x.type IN {name_ids(len(access.types))}", [*access.types]))
    return found


def _selection(
    connection: sqlite3.Connection, tenant: str, query: EntityQuery, now: str, walk: bool = True
) -> tuple[str, str, list[Any], str]:
    """(FROM, WHERE, parameters, ORDER BY) selecting the candidates of a query as `e`, walked in
    pk order: by id when it names ids; from entity_types when it lists one type and no other
    filter is selective; along entity_geo_walk for a broad geo-query (unless `walk` is False);
    else along entities_listing, driven by a selective filter if any."""
    sides = _side_filters(connection, query)
    geo_walk = None
    if query.geo_box is not None:
        geo, geo_walk = _geo_side(connection, query, walk and query.ids is None)
        if geo is not None:
            sides.append(geo)
    clauses: list[str] = []
    params: list[Any] = []
    single = query.types[0] if query.types is not None and len(query.types) == 1 else None
    if query.ids is not None:
        source = "entities e"
        clauses += ["e.tenant = ?", f"e.id IN ({_in_list(len(query.ids))})"]
        params += [tenant, *query.ids]
    elif geo_walk is not None and not any(few for _, _, few in sides):
        source = "entity_geo_walk w JOIN entities e ON e.pk = w.pk"
        clauses += [geo_walk[0], "e.tenant = ?"]
        params += [*geo_walk[1], tenant]
        geo_walk = None
    elif single is not None and not any(few for _, _, few in sides):
        source = LISTING
        clauses += [f"t.type = {NAME_ID}", "e.tenant = ?"]
        params += [single, tenant]
        single = None
    else:
        source = "entities e INDEXED BY entities_listing"
        clauses.append("e.tenant = ?")
        params.append(tenant)
    if single is not None:
        probe = f"EXISTS (SELECT 1 FROM entity_types x WHERE x.pk = e.pk AND x.type = {NAME_ID})"
        sides.insert(0, (probe, [single], False))
    clauses.append("(e.expires_at IS NULL OR e.expires_at > ?)")
    params.append(now)
    if query.id_pattern is not None:
        clauses.append("regexp(?, e.id)")
        params.append(query.id_pattern)
    for sql, values, _ in sides:
        clauses.append(sql)
        params += values
    if query.access is not None and query.access.id_patterns is not None:
        patterns = list(query.access.id_patterns)
        clauses.append("(" + (" OR ".join("regexp(?, e.id)" for _ in patterns) or "0") + ")")
        params += patterns
    if geo_walk is not None:  # broad, but another filter drives: each candidate probes its walk row
        clauses.append(f"EXISTS (SELECT 1 FROM entity_geo_walk w WHERE w.pk = e.pk AND {geo_walk[0]})")
        params += geo_walk[1]
    order = "t.pk" if source == LISTING else "w.pk" if source.startswith("entity_geo_walk") else "e.pk"
    return source, " AND ".join(clauses), params, order


Row = tuple[Any, str | None]  # (doc, next_expiry) of an entity


def _documents(rows: Sequence[Row], now: str) -> list[Entity]:
    """The visible documents of `rows`, in that order (expiry is checked only where there is one)."""
    entities = []
    for doc, expiry in rows:
        entity = visible_at(orjson.loads(inflate(doc)), expiry, now)
        if entity is not None:
            entities.append(entity)
    return entities


def _stored(rows: Sequence[Row], now: str) -> list[bytes | Entity]:
    """_documents for a caller that takes stored forms (EntityQuery.stored_form): a document with
    nothing expired in it stays in its stored bytes (QueryResult.decode reads it); only the others
    are decoded here, with their expired parts removed."""
    return [form for doc, expiry in rows if (form := stored_form(doc, expiry, now)) is not None]


def stored_form(doc: bytes, expiry: str | None, now: str) -> bytes | Entity | None:
    """One row's stored form (the rule of `_stored`), None when nothing of it is visible any more."""
    if isinstance(doc, bytes) and (expiry is None or expiry > now):
        return doc
    return visible_at(orjson.loads(inflate(doc)), expiry, now)


def decode(stored: bytes) -> Entity:
    """The entity of a document's stored bytes (QueryResult.decode)."""
    entity: Entity = orjson.loads(inflate(stored))
    return entity


def _rows(connection: sqlite3.Connection, keys: str, params: Sequence[Any]) -> list[Row]:
    """(doc, next_expiry) of the keys the statement `keys` selects, in key order: one statement
    for the page's keys and documents (every page is in primary key order, and SQLite walks an
    IN list in order, so the ORDER BY costs no sort)."""
    sql = f"SELECT doc, next_expiry FROM entities WHERE pk IN ({keys}) ORDER BY pk"
    return connection.execute(sql, params).fetchall()


def _page(query: EntityQuery, rows: Sequence[Row], now: str) -> QueryResult:
    """The page of `rows`, decoded or in stored form as the query asks."""
    if query.stored_form:
        return QueryResult([], stored=_stored(rows, now), decode=decode)
    return QueryResult(_documents(rows, now))


class SQLiteQueries:
    """query_entities and lookup_in_query, mixed into SQLiteStore."""

    query_timeout: float

    if TYPE_CHECKING:

        def _reader(self) -> sqlite3.Connection: ...

        def _read_with_deadline(self, fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]: ...

        def _loop_reader(self) -> sqlite3.Connection: ...

    _anchors: dict[tuple[str, str], _Anchors]
    _anchors_lock: threading.Lock

    def lookup_in_query(self, tenant: str, entity_id: str) -> Entity | None:
        row = (
            self._reader()
            .execute("SELECT doc, next_expiry FROM entities WHERE tenant = ? AND id = ?", (tenant, entity_id))
            .fetchone()
        )
        return visible_at(orjson.loads(inflate(row[0])), row[1]) if row else None

    async def query_entities(self, tenant: str, query: EntityQuery) -> QueryResult:
        exact = exact_in_sql(query)  # before bounded() wraps the predicate
        in_sql = dataclasses.replace(query, predicate=None) if exact and query.predicate is not None else query
        in_python = bounded(query, self.query_timeout)  # the Python half stops at the deadline too
        fresh_rows_needed = query.attrs is not None or bool(query.value_filters) or query.geo is not None
        now = now_key()
        request_end = budget.deadline()  # read here, on the request's task

        def run(connection: sqlite3.Connection, loop_end: float | None = None) -> QueryResult:
            if connection.in_transaction:  # left open by an interrupted read
                connection.execute("ROLLBACK")
            end = time.monotonic() + self.query_timeout if loop_end is None else loop_end
            _geo_queries.deadline = (end if request_end is None else min(end, request_end), connection)
            connection.execute("BEGIN")  # one snapshot for the freshness check, the page and the count
            try:
                if exact and not (fresh_rows_needed and _stale(connection, tenant, now)):
                    return self._page_in_sql(connection, tenant, in_sql, now)
                if loop_end is not None:  # documents judged in Python: not on the loop
                    raise _NotOnLoop
                return _filtered(connection, tenant, in_python, now)  # q judges the documents after all
            finally:
                _geo_queries.deadline = None
                if connection.in_transaction:
                    connection.execute("COMMIT")

        if exact and query.stored_form:  # a page decoded here would be decoded on the loop
            shape = _shape(tenant, query)
            if _slow_shapes.get(shape, 0.0) < time.monotonic():
                result = self._on_loop(run)
                if result is not None:
                    return result
                if len(_slow_shapes) >= LOOP_SHAPES:
                    _slow_shapes.clear()
                _slow_shapes[shape] = time.monotonic() + LOOP_BACKOFF
        return await self._read_with_deadline(run)

    def _on_loop(self, run: Callable[[sqlite3.Connection, float], R]) -> R | None:
        """A page whose every filter is exact in SQL, read on the event loop's own connection: most
        take tens of microseconds, less than the hand-off to a reader thread and back. None (the
        caller then reads it on a reader thread, from the start) past LOOP_CHECKS * LOOP_STEPS
        SQLite steps or LOOP_WALL seconds (a progress handler checks both every LOOP_STEPS steps;
        the geo tests in Python check LOOP_PYTHON before each call), or on a database error
        (busy: that connection never waits for a lock; the reader's answer carries any error as
        every read's does). So the loop is held for a bounded time, whatever the page."""
        connection = self._loop_reader()
        checks, wall = itertools.count(), time.monotonic() + LOOP_WALL
        connection.set_progress_handler(lambda: int(next(checks) >= LOOP_CHECKS or time.monotonic() > wall), LOOP_STEPS)
        try:
            return run(connection, min(wall, time.monotonic() + LOOP_PYTHON))
        except (sqlite3.Error, _NotOnLoop):
            pass
        finally:
            connection.set_progress_handler(None, 0)
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        return None

    def _page_in_sql(self, connection: sqlite3.Connection, tenant: str, query: EntityQuery, now: str) -> QueryResult:
        """Every filter is exact in SQL: choose the page's keys there, then decode only the page."""
        listed = _listed_type(query)
        anchors = self._anchored(connection, tenant, listed, now, query) if listed is not None else None
        if anchors is not None and listed is not None:
            keys = _anchored_page(tenant, listed, anchors, query)
            has_more = query.limit is not None and query.offset + query.limit < anchors.total
            result = _page(query, [] if keys is None else _rows(connection, *keys), now)
            result.total, result.has_more = anchors.total if query.count else None, has_more
            return result
        source, where, params, order = _selection(connection, tenant, query, now)
        paging, page_params = "", params
        if query.limit is not None:
            paging, page_params = " LIMIT ? OFFSET ?", [*params, query.limit + 1, query.offset]
        rows = _rows(connection, f"SELECT e.pk FROM {source} WHERE {where} ORDER BY {order}{paging}", page_params)
        has_more = query.limit is not None and len(rows) > query.limit
        if has_more:
            rows.pop()
        total = None
        if query.count:
            if source.startswith("entity_geo_walk"):  # a count reads every match: the R*Tree's, not the walk's
                source, where, params, _ = _selection(connection, tenant, query, now, walk=False)
            total = connection.execute(f"SELECT COUNT(*) FROM {source} WHERE {where}", params).fetchone()[0]
        result = _page(query, rows, now)
        result.total, result.has_more = total, has_more
        return result

    def _anchored(
        self, connection: sqlite3.Connection, tenant: str, listed: str, now: str, query: EntityQuery
    ) -> _Anchors | None:
        """The anchors of a listing, (re)built when it is stale and an offset or a count needs
        them; None when they cannot serve (an expired entity not swept yet) or are not worth it."""
        if query.offset < 2 * ANCHOR_STEP and not query.count:
            return None
        version: int = connection.execute("SELECT version FROM listing_version").fetchone()[0]
        if _stale(connection, tenant, now):
            return None
        key = (tenant, listed)
        anchors = self._anchors.get(key)
        if anchors is not None and anchors.version == version:
            return anchors
        pks = [
            pk
            for (pk,) in connection.execute(
                f"SELECT t.pk FROM {LISTING} WHERE t.type = {NAME_ID} AND e.tenant = ? ORDER BY t.pk", (listed, tenant)
            )
        ]
        everywhere = connection.execute(
            f"SELECT COUNT(*) FROM entity_types WHERE type = {NAME_ID}", (listed,)
        ).fetchone()[0]
        anchors = _Anchors(version, pks[::ANCHOR_STEP], len(pks), everywhere == len(pks))
        with self._anchors_lock:
            if len(self._anchors) > 256:  # tenants x types listed with offsets: keep it bounded
                self._anchors.clear()
            self._anchors[key] = anchors
        return anchors


class _NotOnLoop(Exception):
    """The page is not read on the event loop after all (SQLiteQueries._on_loop)."""


# a query's shape (_shape) -> until when its pages go to the reader threads directly (they gave up on the loop)
_slow_shapes: dict[tuple[Any, ...], float] = {}


def _shape(tenant: str, query: EntityQuery) -> tuple[Any, ...]:
    """What makes a page slow to read, roughly: its filters, the geo-query's presence, whether it
    needs the listing's anchors (an offset) and the count. A shape that once took longer than the
    loop's budget is read on the reader threads for LOOP_BACKOFF seconds (an anchors rebuild, a
    broad filter whose matches are rare)."""
    return (
        tenant,
        tuple(query.types or ()),
        tuple(query.attrs or ()),
        tuple(query.value_filters),
        query.id_pattern,
        query.geo_box is not None,
        query.offset >= 2 * ANCHOR_STEP,
        query.count,
    )


def _anchored_page(tenant: str, listed: str, anchors: _Anchors, query: EntityQuery) -> tuple[str, list[Any]] | None:
    """The statement of a listing page's keys (None: an empty page): a seek to the anchor before
    the offset, then a short walk."""
    if query.offset >= anchors.total or query.limit == 0:
        return None
    step = query.offset // ANCHOR_STEP
    limit = -1 if query.limit is None else query.limit
    source, tenant_clause, params = (
        ("entity_types t", "", [listed, anchors.pks[step]])
        if anchors.alone
        else (LISTING, " AND e.tenant = ?", [listed, anchors.pks[step], tenant])
    )
    where = f"t.type = {NAME_ID} AND t.pk >= ?{tenant_clause}"
    sql = f"SELECT t.pk FROM {source} WHERE {where} ORDER BY t.pk LIMIT ? OFFSET ?"
    return sql, [*params, limit, query.offset - step * ANCHOR_STEP]


def _filtered(connection: sqlite3.Connection, tenant: str, query: EntityQuery, now: str) -> QueryResult:
    """Part of the query runs in Python: read the candidates in pk order until the page is full."""
    every = query.count or query.sort is not None  # every match is read: the R*Tree's, not the walk's
    source, where, params, order = _selection(connection, tenant, query, now, walk=not every)
    pager = Pager(query, now)
    for (doc,) in connection.execute(f"SELECT e.doc FROM {source} WHERE {where} ORDER BY {order}", params):
        if not pager.offer(orjson.loads(inflate(doc))):
            break
    return pager.result()
