"""Computing an indicator: its inputs from the store, its formula, its provenance.

Temporal inputs are aggregated inside the database (the store's temporal_aggregate, the same SQL
the temporal API's aggregation uses): Python combines one row of statistics per entity, never the
instances. Counts are the store's query count. Everything a value was made from (the window, the
entities, the instance counts, the file's digest) is kept with it, so `verify` can make it again.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cityos.insight.formula import FormulaError
from cityos.insight.model import CALENDAR, PER, District, Indicator, Input
from cityos.jsonld.termmap import TermMap
from cityos.query.entity_query import QuerySpec, build_entity_query
from cityos.query.geo import GeoQuery
from cityos.store.base import EntityStore
from cityos.store.temporal_base import AggregationSpec, TemporalQuery, TemporalWindow, stats_for

SECOND = 1_000_000  # the store's times are microseconds
LISTED_ENTITIES = 100  # entities named in a provenance record; more are counted only
MAX_NEAR = 10_000  # entities a `within` input measures from (one geo-query each)
COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


@dataclass(slots=True)
class InputValue:
    name: str
    value: float | None  # None: no data
    entities: list[str] = field(default_factory=list)
    entity_count: int = 0
    instances: int = 0
    expected: int = 0  # instances the window should hold (temporal inputs)

    @property
    def coverage(self) -> float:
        if self.value is None:
            return 0.0
        if self.expected <= 0:
            return 1.0
        return min(1.0, self.instances / self.expected)


@dataclass(slots=True)
class Result:
    indicator: Indicator
    value: float | None
    status: str  # complete, incomplete, error
    reason: str
    window: tuple[int, int]  # [start, end) in microseconds
    inputs: list[InputValue]
    computed_at: str
    district: District | None = None  # None: the whole city

    @property
    def coverage(self) -> float:
        return min((item.coverage for item in self.inputs), default=0.0)


def iso(micros: int) -> str:
    moment = datetime.fromtimestamp(micros // SECOND, UTC).replace(microsecond=micros % SECOND)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micros % SECOND else "%Y-%m-%dT%H:%M:%SZ")


def micros_of(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(moment.timestamp() * SECOND)


def _now() -> int:
    return round(datetime.now(UTC).timestamp() * SECOND)


async def latest_time(store: EntityStore, tenant: str, terms: TermMap, indicator: Indicator) -> int | None:
    """The latest instance time of the indicator's temporal inputs (in SQL, per entity)."""
    latest: int | None = None
    for item in indicator.inputs.values():
        if item.kind != "temporal":
            continue
        query = _temporal_query(terms, item, TemporalWindow())
        page = await store.temporal_aggregate(tenant, query, AggregationSpec(stats=frozenset({"count"})))
        for entity in page.entities:
            for series in entity.attrs.values():
                for stats in (p for s in series for p in s.periods):
                    latest = stats.last if latest is None else max(latest, stats.last)
    return latest


def _temporal_query(terms: TermMap, item: Input, window: TemporalWindow, ids: list[str] | None = None) -> TemporalQuery:
    assert item.attribute is not None
    return TemporalQuery(
        window=window, ids=ids, types=[terms.expand(item.type)], attrs=[terms.expand(item.attribute)], max_instances=0
    )


async def window_of(
    store: EntityStore, tenant: str, terms: TermMap, indicator: Indicator, at: int | None = None
) -> tuple[int, int]:
    """[start, end): the period before `at` (default now), or before the inputs' latest instance
    for anchor = "latest" (history loaded after the fact, as the demo city's)."""
    end = at if at is not None else _now()
    latest: int | None = None
    if indicator.anchor == "latest" and at is None:
        latest = await latest_time(store, tenant, terms, indicator)
        if latest is not None:
            end = latest + SECOND  # the window [start, end) holds the latest instance
    if indicator.period in CALENDAR:
        # the UTC calendar month or year holding the latest instance; anchored now: the last whole one
        return calendar_window(latest if latest is not None else end - 1, CALENDAR[indicator.period], latest is None)
    return end - indicator.seconds * SECOND, end


def calendar_window(moment: int, months: int, previous: bool) -> tuple[int, int]:
    """[start, end) of the UTC calendar month (months=1) or year (12) holding `moment`, or the one
    before it when `previous`."""
    day = datetime.fromtimestamp(moment // SECOND, UTC)
    index = day.year * 12 + (day.month - 1 if months == 1 else 0) - (months if previous else 0)

    def first(number: int) -> int:
        return round(datetime(number // 12, number % 12 + 1, 1, tzinfo=UTC).timestamp()) * SECOND

    return first(index), first(index + months)


async def compute(
    store: EntityStore,
    tenant: str,
    terms: TermMap,
    indicator: Indicator,
    *,
    at: int | None = None,
    window: tuple[int, int] | None = None,
    profile: Mapping[str, float] | None = None,
    district: District | None = None,
) -> Result:
    """The indicator's value now (or over `window`, as verify asks); never raises for its data.
    `profile` holds the city profile's figures (population, area) that profile inputs read; with
    a `district`, only the entities located inside its polygon count, and the city's figures do not
    apply (a profile input has no data there)."""
    start, end = window if window is not None else await window_of(store, tenant, terms, indicator, at)
    area = None if district is None else GeoQuery("within", "Polygon", (district.ring,), "location")
    figures = (profile or {}) if district is None else {}
    inputs = [
        await _input_value(store, tenant, terms, item, start, end, figures, area) for item in indicator.inputs.values()
    ]
    stamp = iso(_now())
    missing = [item.name for item in inputs if item.value is None]
    if missing:
        reason = f"no data for {', '.join(missing)}"
        return Result(indicator, None, "incomplete", reason, (start, end), inputs, stamp, district)
    try:
        value = indicator.formula.evaluate({item.name: float(item.value or 0) for item in inputs})
    except FormulaError as exc:
        return Result(indicator, None, "error", str(exc), (start, end), inputs, stamp, district)
    result = Result(indicator, value, "complete", "", (start, end), inputs, stamp, district)
    if result.coverage < indicator.coverage:
        result.status = "incomplete"
        result.reason = f"coverage {result.coverage:.3f} below the threshold {indicator.coverage}"
    return result


async def _input_value(
    store: EntityStore,
    tenant: str,
    terms: TermMap,
    item: Input,
    start: int,
    end: int,
    profile: Mapping[str, float],
    area: GeoQuery | None = None,
) -> InputValue:
    if item.kind == "temporal":
        ids = None if area is None else sorted(await _ids_in(store, tenant, terms, item.type, area))
        if ids is not None and not ids:
            return InputValue(item.name, None)  # no entity of the type in the district
        if item.per is not None:
            return await _threshold_count(store, tenant, terms, item, start, end, ids)
        return await _temporal(store, tenant, terms, item, start, end, ids)
    if item.kind == "profile":
        assert item.key is not None
        figure = profile.get(item.key)
        return InputValue(item.name, None if figure is None else float(figure))
    if item.kind == "within":
        return await _within(store, tenant, terms, item, area)
    spec = QuerySpec(type_expr=item.type, q=item.q, geo=area)
    query = build_entity_query(spec, terms.expand)
    if item.kind == "count":
        query.count, query.limit = True, LISTED_ENTITIES
        found = await store.query_entities(tenant, query)
        total = found.total if found.total is not None else len(found.entities)
        return InputValue(item.name, float(total), [e["id"] for e in found.entities], total)
    assert item.attribute is not None  # current-sum: the entities' current values (one per entity)
    attr = terms.expand(item.attribute)
    found = await store.query_entities(tenant, query)
    numbers = [(entity["id"], _number(entity, attr)) for entity in found.entities]
    counted = [(entity_id, number) for entity_id, number in numbers if number is not None]
    value = math.fsum(number for _, number in counted) if counted else None
    item_value = InputValue(item.name, value, [i for i, _ in counted][:LISTED_ENTITIES], len(counted))
    item_value.instances, item_value.expected = len(counted), len(numbers)
    return item_value


def _number(entity: dict[str, Any], attr: str) -> float | None:
    for instance in entity.get("attrs", {}).get(attr, []):
        value = instance.get("value")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


async def _temporal(
    store: EntityStore, tenant: str, terms: TermMap, item: Input, start: int, end: int, ids: list[str] | None = None
) -> InputValue:
    assert item.aggregation is not None
    query = _temporal_query(terms, item, TemporalWindow("observedAt", start, end), ids)
    spec = AggregationSpec(stats=stats_for([item.aggregation]) | {"count", "numbers"})
    page = await store.temporal_aggregate(tenant, query, spec)
    periods = [(e.id, p) for e in page.entities for series in e.attrs.values() for s in series for p in s.periods]
    numbers = sum(p.numbers for _, p in periods)
    entity_ids = sorted({entity_id for entity_id, p in periods if p.count})
    current = len(ids) if ids is not None else await _entity_count(store, tenant, terms, item.type)
    expected = max(current, len(entity_ids)) * ((end - start) // (item.sampling * SECOND))
    value: float | None = None
    if item.aggregation == "totalCount":
        value = float(sum(p.count for _, p in periods))
    elif numbers:
        with_numbers = [p for _, p in periods if p.numbers]
        if item.aggregation == "avg":
            value = math.fsum((p.avg or 0.0) * p.numbers for p in with_numbers) / numbers
        elif item.aggregation == "sum":
            value = math.fsum(p.sum or 0.0 for p in with_numbers)
        elif item.aggregation == "min":
            value = min(p.min for p in with_numbers if p.min is not None)
        elif item.aggregation == "max":
            value = max(p.max for p in with_numbers if p.max is not None)
    return InputValue(item.name, value, entity_ids[:LISTED_ENTITIES], len(entity_ids), numbers, expected)


async def _entity_count(store: EntityStore, tenant: str, terms: TermMap, entity_type: str) -> int:
    count_query = build_entity_query(QuerySpec(type_expr=entity_type), terms.expand)
    count_query.count, count_query.limit = True, 0
    return (await store.query_entities(tenant, count_query)).total or 0


async def _threshold_count(
    store: EntityStore, tenant: str, terms: TermMap, item: Input, start: int, end: int, ids: list[str] | None = None
) -> InputValue:
    """How many hours or days (UTC, counted from midnight) in the window have, at one entity or
    more, an aggregation comparing true with the threshold: one row of statistics per entity and
    period comes from the store's SQL aggregation; Python compares those rows."""
    assert item.aggregation is not None and item.per is not None and item.compare is not None
    length = PER[item.per] * SECOND
    origin = start - start % (86400 * SECOND)  # UTC midnight: hours and days of the clock
    query = _temporal_query(terms, item, TemporalWindow("observedAt", start, end), ids)
    spec = AggregationSpec(micros=length, origin=origin, stats=stats_for([item.aggregation]) | {"count", "numbers"})
    page = await store.temporal_aggregate(tenant, query, spec)
    periods = [(e.id, p) for e in page.entities for series in e.attrs.values() for s in series for p in s.periods]
    test, threshold = COMPARE[item.compare], float(item.threshold or 0.0)
    over: set[int] = set()
    counted: set[str] = set()
    numbers = 0
    for entity_id, stats in periods:
        if not stats.numbers:
            continue
        numbers += stats.numbers
        counted.add(entity_id)
        figure = getattr(stats, item.aggregation)
        if figure is not None and test(float(figure), threshold):
            over.add(stats.index)
    current = len(ids) if ids is not None else await _entity_count(store, tenant, terms, item.type)
    expected = max(current, len(counted)) * ((end - start) // (item.sampling * SECOND))
    value = float(len(over)) if numbers else None
    return InputValue(item.name, value, sorted(counted)[:LISTED_ENTITIES], len(counted), numbers, expected)


def _geometry(entity: dict[str, Any], attr: str) -> dict[str, Any] | None:
    for instance in entity.get("attrs", {}).get(attr, []):
        value = instance.get("value")
        if isinstance(value, dict) and isinstance(value.get("type"), str) and "coordinates" in value:
            return value
    return None


def _frozen(value: Any) -> Any:
    return tuple(_frozen(item) for item in value) if isinstance(value, list | tuple) else value


async def _ids_in(store: EntityStore, tenant: str, terms: TermMap, entity_type: str, area: GeoQuery) -> set[str]:
    """The entities of the type whose location lies within the district (the store's geo-query)."""
    query = build_entity_query(QuerySpec(type_expr=entity_type, geo=area), terms.expand)
    return {entity["id"] for entity in (await store.query_entities(tenant, query)).entities}


async def _within(
    store: EntityStore, tenant: str, terms: TermMap, item: Input, area: GeoQuery | None = None
) -> InputValue:
    """Entities of `type` (matching `q`) within `distance` metres of any entity of type `near`:
    one geo-query of the store per `near` entity (at most MAX_NEAR), the union of their answers."""
    assert item.near is not None and item.distance is not None
    near_query = build_entity_query(QuerySpec(type_expr=item.near), terms.expand)
    near_query.limit = MAX_NEAR
    anchors = (await store.query_entities(tenant, near_query)).entities
    location = terms.expand("location")
    found: set[str] = set()
    for anchor in anchors:
        geometry = _geometry(anchor, location)
        if geometry is None:
            continue
        geo = GeoQuery("near", geometry["type"], _frozen(geometry["coordinates"]), "location", item.distance)
        query = build_entity_query(QuerySpec(type_expr=item.type, q=item.q, geo=geo), terms.expand)
        found.update(entity["id"] for entity in (await store.query_entities(tenant, query)).entities)
    if area is not None:  # a district: only the entities inside it
        inside = await _ids_in(store, tenant, terms, item.type, area)
        found &= inside
        total = len(inside)
    else:
        total = await _entity_count(store, tenant, terms, item.type)
    value = float(len(found)) if anchors and total else None
    return InputValue(item.name, value, sorted(found)[:LISTED_ENTITIES], len(found))
