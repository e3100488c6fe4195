"""The pushed-down part of an entity query in PostgreSQL: the same filters as the SQLite
back-end's WHERE clause (tenant, visibility, ids, idPattern, types, attrs, q's value prefilters,
the geo-query box), over GIN-indexed arrays, the attr_values B-trees and a PostGIS GiST index."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from cityos.entities.model import Entity
from cityos.policy.decision import AccessPrefilter
from cityos.query.patterns import found, portable
from cityos.query.pushdown import ValueFilter
from cityos.store.base import EntityQuery

if TYPE_CHECKING:
    from cityos.query.geo import GeoQuery


def entity_lock(tenant: str, entity_id: str) -> str:
    """The two keys of an entity's advisory lock (one writer of an entity at a time), from SQL
    expressions of its tenant and id. Advisory locks are shared by the whole database, so the
    deployment's schema is part of the key: two deployments in one database (two cities, or
    parallel test runs, each in its own schema) never wait on each other's entities."""
    return f"hashtext(current_schema() || '/' || {tenant}), hashtext({entity_id})"


class Params:
    """Collects positional parameters ($1, $2, ...) while a statement is assembled."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def value_clause(value_filter: ValueFilter, p: Params, pk: str = "e.pk", probe: bool = False) -> str:
    """One q prefilter: some flattened value of the attribute satisfies it (an attr_values B-tree;
    `pk` the outer row's entity key: a map tile's geo rows use theirs, grid.py). `probe`: an EXISTS
    that stays a probe of attr_values by pk per outer row (OFFSET 0 keeps it from becoming a join,
    which the planner may answer by hashing every match of the city: a map tile of few rows)."""
    op, values = value_filter.op, value_filter.values
    if op == "exists":
        return f"e.attrs @> ARRAY[{p(value_filter.attr)}::text]"
    condition = f"v.attr = {p(value_filter.attr)} AND "
    if op == "between" and isinstance(values[0], str):  # code point order, as Python compares strings
        condition += f'v.txt COLLATE "C" BETWEEN {p(values[0])} AND {p(values[1])}'
    elif op == "between":
        condition += f"v.num BETWEEN {p(float(values[0]))} AND {p(float(values[1]))}"
    elif op == "match":  # only patterns PostgreSQL reads as RE2 does get here (matches_in_python)
        condition += f"v.txt ~ {p(values[0])}"
    elif op == "==":
        numbers, texts = value_filter.split()
        parts = [f"v.num = ANY({p(numbers)}::float8[])"] if numbers else []
        parts += [f"v.txt = ANY({p(texts)}::text[])"] if texts else []
        condition += "(" + " OR ".join(parts or ["false"]) + ")"
    elif op in ("<", "<=", ">", ">="):
        condition += f"v.num {op} {p(float(values[0]))}"
    else:
        raise ValueError(f"unknown value filter operator {op!r}")
    if probe:
        return f"EXISTS (SELECT FROM attr_values v WHERE v.pk = {pk} AND {condition} OFFSET 0)"
    return f"{pk} IN (SELECT v.pk FROM attr_values v WHERE {condition})"


def where(tenant: str, query: EntityQuery, now: str, p: Params, probe: bool = False) -> str:
    """The WHERE clause over `entities e`; idPattern uses PostgreSQL's regular expressions (`~`);
    `probe`: q's value clauses as probes per row (value_clause)."""
    clauses = [f"e.tenant = {p(tenant)}", f"(e.expires_at IS NULL OR e.expires_at > {p(now)})"]
    if query.ids is not None:
        clauses.append(f"e.id = ANY({p(list(query.ids))}::text[])")
    if query.id_pattern is not None:
        clauses.append(f"e.id ~ {p(query.id_pattern)}")
    if query.types is not None:
        clauses.append(f"e.types && {p(list(query.types))}::text[]")
    if query.attrs is not None:
        clauses.append(f"e.attrs && {p(list(query.attrs))}::text[]")
    clauses.extend(value_clause(value_filter, p, probe=probe) for value_filter in query.value_filters)
    if query.access is not None:
        if query.access.types is not None:
            clauses.append(f"e.types && {p(list(query.access.types))}::text[]")
        if query.access.id_patterns is not None:
            patterns = [f"e.id ~ {p(pattern)}" for pattern in query.access.id_patterns]
            clauses.append("(" + (" OR ".join(patterns) or "false") + ")")
    if query.geo_box is not None:
        clauses.append(f"e.pk IN (SELECT g.pk FROM entity_geo g WHERE {geo_rows(query, p)})")
    return " AND ".join(clauses)


def geo_rows(query: EntityQuery, p: Params, shapes: bool = False) -> str:
    """The entity_geo rows `g` a geo-query's box lets through (`shapes`: only those that are not
    one Point). `&&` uses the GiST index (float4 boxes, rounded outwards); the column tests make it
    exact, the same inclusive test as SQLite's R*Tree. A near query around a Point also tests the
    distance of point rows (`near_point`); other rows stay candidates for the Python predicate."""
    assert query.geo_box is not None
    attr, (min_x, max_x, min_y, max_y) = query.geo_box
    lo_x, hi_x, lo_y, hi_y = p(float(min_x)), p(float(max_x)), p(float(min_y)), p(float(max_y))
    rows = (
        f"g.attr = {p(attr)} AND g.box && ST_MakeEnvelope({lo_x}, {lo_y}, {hi_x}, {hi_y}, 4326)"
        f" AND g.max_x >= {lo_x} AND g.min_x <= {hi_x} AND g.max_y >= {lo_y} AND g.min_y <= {hi_y}"
    )
    if shapes:
        return rows + " AND NOT g.point"
    geo = query.geo
    if geo is not None and near_point(geo) and geo.max_distance is not None:
        rows += f" AND (NOT g.point OR {_haversine(geo, p)} <= {p(geo.max_distance)})"
    return rows


def near_point(geo: GeoQuery) -> bool:
    """Whether a geo-query is `near;maxDistance` around a Point: exact in SQL over point rows."""
    return geo.georel == "near" and geo.geometry == "Point" and geo.max_distance is not None


def _haversine(geo: GeoQuery, p: Params) -> str:
    """query/geo.py's haversine() from the query point to a point row, operation for operation
    (the same libm calls on the same operands, so the same float: the same matches as Python)."""
    from cityos.query.geo import EARTH_RADIUS  # loaded already: the query holds a GeoQuery

    lon1, lat1 = float(geo.coordinates[0]), float(geo.coordinates[1])
    phi1 = math.radians(lat1)
    per_degree = p(math.radians(1.0))  # math.radians multiplies by this constant
    h = (
        f"sin((g.min_y * {per_degree} - {p(phi1)}) / 2) ^ 2 + {p(math.cos(phi1))} * cos(g.min_y * {per_degree})"
        f" * sin((g.min_x - {p(lon1)}) * {per_degree} / 2) ^ 2"
    )
    return f"{p(2 * EARTH_RADIUS)} * asin(sqrt(least(1::float8, greatest(0::float8, {h}))))"


def matches_in_python(query: EntityQuery) -> EntityQuery:
    """`query` without the q `~=` prefilters whose pattern PostgreSQL would read differently from
    RE2 (query/patterns.py `portable`): the predicate alone judges those, so it must run."""
    kept = [f for f in query.value_filters if f.op != "match" or portable(str(f.values[0]))]
    if len(kept) == len(query.value_filters):
        return query
    return dataclasses.replace(query, value_filters=kept, predicate_in_sql=None)


def access_in_python(query: EntityQuery) -> EntityQuery:
    """`query` with its access id patterns tested in Python (RE2) when PostgreSQL would read one of
    them differently (query/patterns.py `portable`), as id_pattern_in_python does for idPattern."""
    access = query.access
    if access is None or access.id_patterns is None or all(portable(p) for p in access.id_patterns):
        return query
    patterns = tuple(access.id_patterns)
    previous = query.predicate

    def predicate(entity: Entity) -> bool:
        return any(found(p, entity["id"]) for p in patterns) and (previous is None or previous(entity))

    narrowed = AccessPrefilter(types=access.types, id_patterns=None)
    return dataclasses.replace(query, access=narrowed, predicate=predicate)
