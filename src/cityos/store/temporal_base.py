"""The temporal half of the storage contract (spec 5.6.11-5.6.18, 5.7.3-5.7.4): attribute instances
kept over time, selected by a time window and aggregated per period inside the back-end.

Times cross this boundary as integer microseconds since the epoch (temporal/query.py converts).
EntityStore extends TemporalStore, so every back-end keeps history next to the current state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cityos.entities.model import Entity, Instance

TIME_COLUMNS = ("observedAt", "createdAt", "modifiedAt", "deletedAt")
SCOPE_ATTR = "https://uri.etsi.org/ngsi-ld/scope"  # the scope's history is kept as this attribute's


@dataclass(frozen=True, slots=True)
class TemporalWindow:
    """Instances whose `column` time lies in [start, end) (None: unbounded); instances without
    that time never match."""

    column: str = "observedAt"
    start: int | None = None
    end: int | None = None


@dataclass(slots=True)
class TemporalQuery:
    """Which temporal entities and which of their instances. `predicate` (q, geo-query, type
    expressions) runs on an entity made of all its windowed instances, after the SQL filters.
    `scope_test` keeps entities whose scope matched while in the window, and only their instances
    of those times (each scope instance is valid until the next)."""

    window: TemporalWindow = field(default_factory=TemporalWindow)
    ids: Sequence[str] | None = None
    id_pattern: str | None = None
    types: Sequence[str] | None = None  # any of these expanded types
    attrs: Sequence[str] | None = None  # instances of these attributes only
    datasets: Sequence[str | None] | None = None  # None in the list: the default instance
    last_n: int | None = None  # the last N instances of each attribute instance (datasetId)
    predicate: Callable[[Entity], bool] | None = None
    scope_test: Callable[[Sequence[str]], bool] | None = None  # scopeQ on one scope value, over time
    require_instances: bool = True  # leave out entities with no selected instance
    # keep only entities with an unexpired instance, at any time, of one of these attributes (the
    # 404 of a retrieval that names attributes, checked in the same read as the answer)
    any_of_attrs: Sequence[str] | None = None
    descending: bool = False  # entities are ordered by id
    limit: int | None = None
    offset: int = 0
    count: bool = False
    max_instances: int = 1000  # instances in one answer, more are cut (temporal pagination); 0: entities only


@dataclass(slots=True)
class TemporalPage:
    """Entities as {"id", "type", "attrs"}: every attribute with a selected instance, its kept
    instances oldest first, each with its instanceId (an attribute the cut emptied stays, empty)."""

    entities: list[Entity]
    total: int | None = None
    has_more: bool = False  # more entities follow this page
    cut: tuple[int, int] | None = None  # instance cap hit: times of the first and last kept, in cut order


# the statistics of PeriodStats a back-end may leave out when no method asks for them
STATS = ("count", "distinct", "numbers", "sum", "avg", "min", "max", "sumsq", "min_text", "max_text")
METHOD_STATS = {
    "totalCount": ("count",),  # first and last are always computed
    "distinctCount": ("distinct",),
    "sum": ("numbers", "sum"),
    "avg": ("numbers", "avg"),
    "min": ("numbers", "min", "min_text"),
    "max": ("numbers", "max", "max_text"),
    "stddev": ("numbers", "avg", "sumsq"),
    "sumsq": ("numbers", "sumsq"),
}


def stats_for(methods: Sequence[str]) -> frozenset[str]:
    """The statistics the aggregation methods need (each costs the back-end work per instance)."""
    return frozenset(stat for method in methods for stat in METHOD_STATS[method])


@dataclass(frozen=True, slots=True)
class AggregationSpec:
    """Periods of `months` calendar months or `micros` microseconds (both 0: one period) counted
    from `origin`, or from each attribute's first selected instance when origin is None. `stats`
    names the statistics to compute (None: all); the others are 0 or None, and so may be the
    periods' first and last times when `stats` is named and periods have a length (only the one
    period of no duration needs its last time: temporal.query.period_bounds)."""

    months: int = 0
    micros: int = 0
    origin: int | None = None
    stats: frozenset[str] | None = None

    def wants(self, stat: str) -> bool:
        return self.stats is None or stat in self.stats

    def wants_times(self) -> bool:
        """Whether each period's first and last instance times are asked for (see above)."""
        return self.stats is None or self.months == self.micros == 0


@dataclass(frozen=True, slots=True)
class PeriodStats:
    """What the back-end computed for one period of one attribute instance series."""

    index: int  # period number from the origin
    origin: int
    first: int  # time of the first and last instance in the period
    last: int
    count: int  # instances
    distinct: int  # distinct values
    numbers: int  # numeric values
    sum: float | None
    avg: float | None
    min: float | None
    max: float | None
    sumsq: float | None
    min_text: str | None  # smallest and largest value as JSON text, for non-numeric min/max
    max_text: str | None


@dataclass(slots=True)
class AggregatedSeries:
    dataset: str | None
    kind: str  # attribute type of the series ("Property", ...)
    periods: list[PeriodStats]


@dataclass(slots=True)
class AggregatedEntity:
    id: str
    types: list[str]
    attrs: dict[str, list[AggregatedSeries]]


@dataclass(slots=True)
class AggregatePage:
    entities: list[AggregatedEntity]
    total: int | None = None
    has_more: bool = False


@dataclass(slots=True)
class TemporalEntityInfo:
    """A temporal entity's types and, per attribute and datasetId, the type of its latest instance."""

    id: str
    types: list[str]
    attrs: dict[str, dict[str | None, str]]


@dataclass(slots=True)
class Scoped:
    """Back-end internal: when an entity's scopes matched scopeQ, and those scope instances."""

    intervals: list[tuple[int, int]]  # [start, end) in which a scope matching scopeQ was valid
    instances: list[Instance]  # those scope instances, to show


@dataclass(slots=True)
class Selection:
    """Back-end internal: the temporal entities of one page, before their instances are read."""

    rows: list[tuple[int, str, list[str]]]  # (pk, id, types) of the page's entities
    total: int | None
    has_more: bool
    scoped: dict[int, Scoped]  # under a scopeQ: pk -> when its scopes matched


def assemble(selection: Selection, found: dict[int, dict[str, list[tuple[int, int, Instance]]]]) -> list[Entity]:
    """The page's temporal entities from their selected instances (per entity pk, per attribute:
    (time, insertion order, instance)), each attribute's instances oldest first, the scope's
    history first when a scopeQ selected it."""
    entities: list[Entity] = []
    for pk, entity_id, types in selection.rows:
        attrs = {
            attr: [instance for _, _, instance in sorted(items, key=lambda item: item[:2])]
            for attr, items in found.get(pk, {}).items()
        }
        if pk in selection.scoped:
            attrs = {SCOPE_ATTR: selection.scoped[pk].instances, **attrs}
        entities.append({"id": entity_id, "type": types, "attrs": attrs})
    return entities


class TemporalStore(Protocol):
    async def temporal_write(
        self, tenant: str, entity_id: str, types: Sequence[str], instances: Sequence[tuple[str, Instance]]
    ) -> bool:
        """Create or extend a temporal entity (types are unioned) with (attribute, instance) pairs in
        one transaction; an instance with the same attribute, datasetId and observedAt as a stored
        one replaces it. True if the entity was created."""

    async def temporal_entity(self, tenant: str, entity_id: str) -> TemporalEntityInfo | None: ...

    async def temporal_query(self, tenant: str, query: TemporalQuery) -> TemporalPage: ...

    async def temporal_aggregate(self, tenant: str, query: TemporalQuery, spec: AggregationSpec) -> AggregatePage:
        """Per entity of the page, per attribute and datasetId, per period: statistics computed by
        the back-end over the windowed instances (never loaded one by one)."""

    async def temporal_modify_instance(
        self, tenant: str, entity_id: str, attr: str, instance_id: str, instance: Instance
    ) -> bool:
        """Replace one instance (keeping its instanceId); False if there is no such instance."""

    async def temporal_delete_instance(self, tenant: str, entity_id: str, attr: str, instance_id: str) -> bool: ...

    async def temporal_delete_attribute(
        self, tenant: str, entity_id: str, attr: str, *, dataset: str | None, delete_all: bool
    ) -> bool:
        """Drop an attribute's history (all datasetIds, or one); False if there was none."""

    async def temporal_delete_entity(self, tenant: str, entity_id: str) -> bool: ...

    async def temporal_purge(self, before: int, types: Sequence[str] | None = None) -> int:
        """Retention: drop instances of every tenant whose time (observedAt, else their
        system times) is older than `before`, of the entities of these expanded types only when
        given (bounded chunks, the writers go between them); returns how many."""

    async def temporal_downsample(self, before: int, types: Sequence[str], after: int | None = None) -> int:
        """Downsampling: of the entities of these expanded types, every hour holding more than one
        numeric Property instance observed in [after, before) becomes one instance at the hour's
        start, the mean weighted by sample counts (store/temporal_downsample.py), in bounded
        chunks (the writers go between them); returns how many instances went."""
