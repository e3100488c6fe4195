"""Turn NGSI-LD query parameters (from a URL or a POST /entityOperations/query body) into an
EntityQuery for the store: the indexable parts pushed down, the rest as one predicate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cityos.entities.model import Entity
from cityos.entities.values import check_name, require_uri
from cityos.errors import BadRequestData
from cityos.query import selectors
from cityos.query.patterns import DEFAULT_MAX_LENGTH, compile_pattern
from cityos.query.pushdown import ValueFilter, pushdown
from cityos.query.q import compile_q, linked_depth, parse_q
from cityos.store.base import EntityQuery

Predicate = Callable[[Entity], bool]
IDPATTERN = "idPattern: invalid regular expression"
DEEPER = "q follows relationships (attr{...}) deeper than joinLevel (or without join)"


@dataclass
class QuerySpec:
    """The selection part of a query, as plain data."""

    ids: list[str] | None = None
    id_pattern: str | None = None
    type_expr: str | None = None
    attrs: list[str] | None = None
    q: str | None = None
    scope_q: str | None = None
    geo: Any = None  # a query.geo.GeoQuery
    selectors: list[dict[str, Any]] | None = None  # `entities` of a Query body: any of them matches
    expand_values: frozenset[str] = frozenset()  # attributes whose q literals are vocabulary terms
    lookup: Callable[[str], Entity | None] | None = None  # follows relationships for q `rel{attr}`
    join_level: int = 0  # how deep q may follow relationships (the request's joinLevel)
    max_pattern_length: int | None = DEFAULT_MAX_LENGTH  # the setting; None: checked when stored

    def is_empty(self) -> bool:
        fields = (self.ids, self.id_pattern, self.type_expr, self.attrs, self.q, self.scope_q, self.geo)
        return not any(fields) and not self.selectors


def check_pattern(pattern: str, max_length: int | None = DEFAULT_MAX_LENGTH) -> str:
    """An idPattern RE2 can evaluate (query/patterns.py), or BadRequestData."""
    compile_pattern(pattern, IDPATTERN, max_length)
    return pattern


def type_predicate(expression: str, expand: Callable[[str], str]) -> tuple[list[str], Predicate | None]:
    """(types for an SQL IN prefilter, predicate for the rest) of a type expression."""
    selector = selectors.parse_selector(expression, "type")
    for name in selectors.names(selector):
        check_name(name, "entity type")
    union = list(dict.fromkeys(expand(name) for name in selectors.names(selector)))
    if selectors.is_simple_union(selector):
        return union, None
    expanded = {name: expand(name) for name in selectors.names(selector)}
    return union, lambda entity: selectors.evaluate(selector, lambda name: expanded[name] in entity["type"])


def scope_predicate(expression: str) -> Predicate:
    selector = selectors.parse_selector(expression, "scopeQ")
    selectors.check_scope_query(selector)

    def matches(entity: Entity) -> bool:
        scopes = entity.get("scope") or []
        return selectors.evaluate(selector, lambda pattern: any(selectors.scope_matches(pattern, s) for s in scopes))

    return matches


def selector_predicate(
    entries: list[dict[str, Any]],
    expand: Callable[[str], str],
    max_pattern_length: int | None = DEFAULT_MAX_LENGTH,
) -> tuple[list[str] | None, Predicate]:
    """EntitySelectors ({id, idPattern, type}) of a Query or Subscription: any of them matches."""
    tests: list[Predicate] = []
    union: list[str] | None = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise BadRequestData("each item of entities must be an object")
        entity_id, pattern, type_expr = entry.get("id"), entry.get("idPattern"), entry.get("type")
        if type_expr is None:
            raise BadRequestData("each item of entities needs a type")
        if not isinstance(type_expr, str):
            raise BadRequestData("entities: type must be a string")
        if entity_id is not None:
            ids = entity_id if isinstance(entity_id, list) else [entity_id]
            for item in ids:
                require_uri(item, "entities: id")
            entity_id = frozenset(ids)
            pattern = None  # an explicit id takes precedence over idPattern
        types, type_test = type_predicate(type_expr, expand)
        if union is not None:
            union.extend(t for t in types if t not in union)
        if pattern is not None and not isinstance(pattern, str):
            raise BadRequestData("entities: idPattern must be a string")
        compiled = compile_pattern(pattern, IDPATTERN, max_pattern_length) if pattern is not None else None

        def test(
            entity: Entity,
            entity_id: Any = entity_id,
            compiled: Any = compiled,
            types: list[str] = types,
            type_test: Predicate | None = type_test,
        ) -> bool:
            if entity_id is not None and entity["id"] not in entity_id:
                return False
            if compiled is not None and not compiled.search(entity["id"]):
                return False
            if type_test is not None:
                return type_test(entity)
            return any(t in entity["type"] for t in types)

        tests.append(test)
    return union or None, lambda entity: any(test(entity) for test in tests)


@dataclass(frozen=True, slots=True)
class CompiledQ:
    """What a query takes of its q: the SQL prefilters, whether they are all of q, how deep q
    follows relationships, and the predicate."""

    value_filters: tuple[ValueFilter, ...]
    in_sql: bool
    depth: int
    predicate: Predicate


COMPILED_KEPT = 256  # (q, context) pairs whose compiled form is remembered (all forgotten past it)
# (q, max pattern length, expandValues, id(TermMap), its generation) -> (the TermMap, the compiled q)
_compiled: dict[tuple[Any, ...], tuple[object, CompiledQ]] = {}


def _compiled_q(spec: QuerySpec, expand: Callable[[str], str]) -> CompiledQ:
    """q compiled for `expand`: kept per (text, context) when `expand` is a TermMap's and q follows
    no relationships through a caller's lookup. A TermMap expands the same way while its
    generation is unchanged (define_terms bumps it; the render cache relies on the same rule), and
    the predicate is a pure function of the entity, so a kept one is the one compile_q would make."""
    assert spec.q is not None
    terms = getattr(expand, "__self__", None)
    generation = getattr(terms, "generation", None)
    key = None
    if spec.lookup is None and isinstance(generation, int):
        key = (spec.q, spec.max_pattern_length, spec.expand_values, id(terms), generation)
        found = _compiled.get(key)
        if found is not None and found[0] is terms:
            return found[1]
    parsed = parse_q(spec.q, spec.max_pattern_length)
    filters, exact = pushdown(parsed, expand, spec.expand_values)
    depth = linked_depth(parsed)
    if depth > spec.join_level:
        raise BadRequestData(DEEPER)
    predicate = compile_q(spec.q, expand, spec.expand_values, spec.lookup, spec.max_pattern_length)
    compiled = CompiledQ(tuple(filters), exact, depth, predicate)
    if key is not None:
        if len(_compiled) >= COMPILED_KEPT:
            _compiled.clear()
        _compiled[key] = (terms, compiled)
    return compiled


def build_entity_query(spec: QuerySpec, expand: Callable[[str], str]) -> EntityQuery:
    query = EntityQuery()
    predicates: list[Predicate] = []
    in_sql = 0  # how many of the predicates the store can evaluate exactly in SQL (q's filters, geo)
    if spec.ids is not None:
        query.ids = spec.ids
    if spec.id_pattern is not None:
        query.id_pattern = check_pattern(spec.id_pattern, spec.max_pattern_length)
    if spec.type_expr is not None:
        query.types, predicate = type_predicate(spec.type_expr, expand)
        if predicate is not None:
            predicates.append(predicate)
    if spec.selectors:
        union, predicate = selector_predicate(spec.selectors, expand, spec.max_pattern_length)
        if union is not None:
            query.types = union
        predicates.append(predicate)
    if spec.attrs is not None:
        if any("{" in a for a in spec.attrs):
            raise BadRequestData("linked-entity projections (attr{...}) are not supported in attrs")
        query.attrs = [expand(check_name(a, "attribute name")) for a in spec.attrs]
    if spec.q is not None:
        compiled = _compiled_q(spec, expand)
        query.value_filters = compiled.value_filters
        in_sql += compiled.in_sql
        if compiled.depth > spec.join_level:
            raise BadRequestData(DEEPER)
        predicates.append(compiled.predicate)
    if spec.scope_q is not None:
        predicates.append(scope_predicate(spec.scope_q))
    if spec.geo is not None:
        from cityos.query.geo import compile_geo

        attr = expand(spec.geo.geoproperty or "location")
        box = spec.geo.bbox_prefilter()
        if box is not None:  # without one (disjoint, near;minDistance) every entity is a candidate
            query.geo_box, query.geo = (attr, box), spec.geo
            in_sql += 1
        predicates.append(compile_geo(spec.geo, expand))
    if len(predicates) == 1:
        query.predicate = predicates[0]
    elif predicates:
        query.predicate = lambda entity: all(p(entity) for p in predicates)
    if predicates and in_sql == len(predicates):
        query.predicate_in_sql = query.predicate
    return query


def ordering(
    order_by: Any, expand: Callable[[str], str], *, collation: Any = None, origin: Any = None, geometry: Any = "Point"
) -> Callable[[list[Entity]], list[Entity]]:
    """The sort function for orderBy (a string or a list of items) with its collation and the
    reference geometry of distance ordering."""
    from cityos.query.ordering import check_collation, parse_order_by, sorter

    if isinstance(order_by, list):
        if not order_by or not all(isinstance(item, str) for item in order_by):
            raise BadRequestData("orderBy must be a non-empty array of strings")
        order_by = ",".join(order_by)
    if not isinstance(order_by, str):
        raise BadRequestData("orderBy must be a string")
    if collation is not None and not isinstance(collation, str):
        raise BadRequestData("collation must be a BCP 47 language tag")
    items = parse_order_by(order_by)
    distance = None
    if not isinstance(geometry, str):
        raise BadRequestData("the ordering geometry must be a geometry type name")
    if origin is not None:
        from cityos.query.geo import parse_geo_query

        reference = parse_geo_query("near;minDistance==0", geometry, origin, None)
        assert reference is not None

        def distance(entity: Entity, attr: str) -> float | None:
            instances = [i for i in entity["attrs"].get(attr, []) if i.get("type") == "GeoProperty"]
            return reference.distance(instances[0]["value"]) if instances else None

    return sorter(items, expand, collation=check_collation(collation), distance=distance)
