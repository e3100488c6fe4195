"""The public view of a dataset: what an anonymous caller may read under the access policies, less
every attribute marked personal (by the policies' markers or the dataset's declaration), read page
by page so an export of any size holds one page in memory.

Everything published (the catalogue's statistics, the exports, the counts) goes through here, so
what the catalogue says and what a download holds are the same data.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cityos.auth.principal import ANONYMOUS
from cityos.catalog.model import Catalog, Dataset, from_offer
from cityos.entities.model import Entity
from cityos.errors import BadRequestData, ResourceNotFound, TooManyResults
from cityos.jsonld.termmap import TermMap
from cityos.policy.decision import Authorizer, OpenAuthorizer, ReadView, Target
from cityos.policy.enforce import restrict
from cityos.query.entity_query import QuerySpec, build_entity_query
from cityos.store.base import EntityQuery, EntityStore
from cityos.store.temporal_base import AggregationSpec, TemporalQuery, TemporalWindow

LOCATION = "https://uri.etsi.org/ngsi-ld/location"
PAGE = 1000  # entities read at once
STATS_SECONDS = 60.0  # a dataset's statistics are recomputed at most this often


class ExportTooLarge(TooManyResults):
    """A download above --export-max-rows: refused before anything is read, never cut short."""

    title = "Export too large"


@dataclass(frozen=True, slots=True)
class Stats:
    """What the live data says about a dataset (None: no data to say it)."""

    count: int
    bbox: tuple[float, float, float, float] | None  # min lon, min lat, max lon, max lat
    first: int | None  # earliest and latest instance time in the history (microseconds)
    last: int | None
    instances: int  # history instances
    interval: float | None  # median seconds between two updates of one attribute


class PublicData:
    """The anonymous view over one tenant of the store, for the datasets of one catalogue."""

    def __init__(
        self,
        store: EntityStore,
        terms: TermMap,
        catalog: Catalog,
        *,
        authorizer: Callable[[], Authorizer] = OpenAuthorizer,
        k: int = 5,
        max_rows: int = 1_000_000,
        tenant: str = "",
        offers: Callable[[], Mapping[str, Mapping[str, Any]]] = dict,
    ) -> None:
        self.store = store
        self.terms = terms
        self.catalog = catalog
        self.authorizer = authorizer  # a callable: the policies are replaced while the server runs
        self.k = k
        self.max_rows = max_rows
        self.tenant = tenant
        self.offers = offers  # the dataspace offers this city publishes, by id (a callable: they change)
        self._stats: dict[str, tuple[float, Stats]] = {}

    # -- what is public --
    def view(self) -> ReadView:
        return self.authorizer().read_view(ANONYMOUS, self.tenant)

    def personal(self, dataset: Dataset) -> frozenset[str]:
        """Expanded attribute names never published for this dataset."""
        marked = getattr(self.authorizer(), "personal", None)
        policy_attrs = marked.attrs if marked is not None else frozenset()
        return frozenset(self.terms.expand(a) for a in dataset.personal) | policy_attrs

    def published(self, dataset: Dataset) -> bool:
        """A dataset is listed when the public may read its types and none is personal data."""
        marked = getattr(self.authorizer(), "personal", None)
        for kind in dataset.types:
            expanded = self.terms.expand(kind)
            if marked is not None and expanded in marked.types:
                return False
            if not self.authorizer().allows(ANONYMOUS, "read", Target(self.tenant, None, (expanded,))):
                return False
        return bool(dataset.type)

    def resolved(self, dataset: Dataset) -> Dataset | None:
        """A declared dataset as served: one of an offer while the offer is published (model.from_offer)."""
        if dataset.offer is None:
            return dataset
        return from_offer(dataset, self.offers().get(dataset.offer))

    def datasets(self) -> list[Dataset]:
        found = (self.resolved(d) for d in self.catalog.datasets)
        return [d for d in found if d is not None and self.published(d)]

    def dataset(self, dataset_id: str) -> Dataset:
        declared = self.catalog.find(dataset_id)
        found = None if declared is None else self.resolved(declared)
        if found is None or not self.published(found):
            raise ResourceNotFound(f"no public dataset {dataset_id}")
        return found

    def shown(self, dataset: Dataset) -> Callable[[str], bool]:
        """Whether an expanded attribute name is published for the dataset (an offer's attributes
        only; personal ones never)."""
        hidden = self.personal(dataset)
        allowed = None if dataset.attrs is None else frozenset(self.terms.expand(a) for a in dataset.attrs)
        return lambda attr: attr not in hidden and (allowed is None or attr in allowed)

    def query(self, dataset: Dataset) -> EntityQuery:
        geo = None
        if dataset.area is not None or dataset.shape is not None:
            import orjson

            from cityos.query.geo import parse_geo_query

            if dataset.shape is not None:
                shape = orjson.loads(dataset.shape)
                geo = parse_geo_query("intersects", shape["type"], orjson.dumps(shape["coordinates"]).decode(), None)
            else:
                assert dataset.area is not None
                x0, y0, x1, y1 = dataset.area
                ring = f"[[[{x0},{y0}],[{x1},{y0}],[{x1},{y1}],[{x0},{y1}],[{x0},{y0}]]]"
                geo = parse_geo_query("intersects", "Polygon", ring, None)
        spec = QuerySpec(type_expr=dataset.type, q=dataset.q, geo=geo)
        return restrict(build_entity_query(spec, self.terms.expand), self.view())

    # -- reading --
    async def count(self, dataset: Dataset) -> int:
        query = self.query(dataset)
        query.limit, query.count = 0, True
        result = await self.store.query_entities(self.tenant, query)
        return result.total or 0

    async def check_size(self, dataset: Dataset) -> int:
        """The number of entities, or ExportTooLarge (said before the first byte is sent)."""
        total = await self.count(dataset)
        if total > self.max_rows:
            raise ExportTooLarge(
                f"dataset {dataset.id} has {total} entities, above the export limit of {self.max_rows}"
                " (--export-max-rows); narrow it with a dataset declaration (q or area)"
            )
        return total

    async def entities(self, dataset: Dataset, page: int = PAGE) -> AsyncIterator[Entity]:
        """Every public entity of the dataset, personal attributes (and those an offer leaves out)
        removed, one page in memory."""
        view, shown = self.view(), self.shown(dataset)
        offset = 0
        while True:
            query = self.query(dataset)
            query.limit, query.offset = page, offset
            result = await self.store.query_entities(self.tenant, query)
            for entity in result.entities:
                if not view.unrestricted:
                    entity = view.project(entity)
                yield keep(entity, shown)
            if not result.has_more:
                return
            offset += page

    async def history(
        self, dataset: Dataset, page: int = PAGE, chunk: int = 5000
    ) -> AsyncIterator[tuple[Entity, str, dict[str, Any]]]:
        """(entity id and types, attribute, instance) of every public entity's history, oldest first
        per entity (by modifiedAt), read `chunk` instances at a time: each read starts at the last
        time seen, leaving out the instances of that time already given (a read whose every
        instance has that time reads twice as many)."""
        view, published = self.view(), self.shown(dataset)
        async for entity in self.entities(dataset, page):
            start: int | None = None
            seen: set[str] = set()
            size = chunk
            while True:
                query = TemporalQuery(
                    window=TemporalWindow(column="modifiedAt", start=start), ids=[entity["id"]], max_instances=size
                )
                found = await self.store.temporal_query(self.tenant, query)
                if not found.entities:
                    break
                temporal = found.entities[0]
                rows = sorted(
                    ((_time(i), attr, i) for attr, instances in temporal["attrs"].items() for i in instances),
                    key=lambda row: row[0],
                )
                fresh = [r for r in rows if not (r[0] == start and str(r[2].get("instanceId")) in seen)]
                if found.cut is not None and not fresh:
                    size *= 2  # more instances of one time than a read holds
                    continue
                shown = temporal["attrs"].keys() if view.unrestricted else self._readable(view, entity, temporal)
                for _, attr, instance in fresh:
                    if attr in shown and published(attr):
                        yield entity, attr, instance
                if found.cut is None or not rows:
                    break
                last = rows[-1][0]
                at_last = {str(r[2].get("instanceId")) for r in rows if r[0] == last}
                seen = seen | at_last if last == start else at_last
                start = last

    @staticmethod
    def _readable(view: ReadView, entity: Entity, temporal: Entity) -> set[str]:
        probe: Entity = {"id": entity["id"], "type": entity["type"], "attrs": dict(temporal["attrs"])}
        return set(view.project(probe)["attrs"])

    # -- statistics (cached: a harvester asks often) --
    async def stats(self, dataset: Dataset) -> Stats:
        cached = self._stats.get(dataset.id)
        if cached is not None and time.monotonic() - cached[0] < STATS_SECONDS:
            return cached[1]
        count, box = 0, None
        ids: list[str] = []
        async for entity in self.entities(dataset):
            count += 1
            ids.append(entity["id"])
            bounds = _bounds(entity)
            if bounds is not None:
                box = (
                    bounds
                    if box is None
                    else (
                        min(box[0], bounds[0]),
                        min(box[1], bounds[1]),
                        max(box[2], bounds[2]),
                        max(box[3], bounds[3]),
                    )
                )
        shown = self.shown(dataset)
        # the time the city observed, else the time the platform was told (readings without observedAt)
        first, last, instances, interval = await self._history_stats(ids, "observedAt", shown)
        if not instances:
            first, last, instances, interval = await self._history_stats(ids, "modifiedAt", shown)
        stats = Stats(count, box, first, last, instances, interval)
        self._stats[dataset.id] = (time.monotonic(), stats)
        return stats

    async def _history_stats(
        self, ids: list[str], column: str, shown: Callable[[str], bool]
    ) -> tuple[int | None, int | None, int, float | None]:
        """(first, last, instances, median seconds between updates) of the entities' history,
        computed by the back-end (one period per attribute series)."""
        first = last = None
        instances = 0
        gaps: list[float] = []
        for start in range(0, len(ids), PAGE):
            query = TemporalQuery(window=TemporalWindow(column=column), ids=ids[start : start + PAGE], limit=PAGE)
            page = await self.store.temporal_aggregate(self.tenant, query, AggregationSpec(stats=frozenset({"count"})))
            for aggregated in page.entities:
                for attr, series_list in aggregated.attrs.items():
                    if not shown(attr):
                        continue
                    for series in series_list:
                        for period in series.periods:
                            instances += period.count
                            first = period.first if first is None else min(first, period.first)
                            last = period.last if last is None else max(last, period.last)
                            if period.count > 1 and period.last > period.first:
                                gaps.append((period.last - period.first) / 1e6 / (period.count - 1))
        gaps.sort()
        return first, last, instances, gaps[len(gaps) // 2] if gaps else None

    async def counts(self, dataset: Dataset, attr: str) -> dict[str, Any]:
        """How many entities have each value of `attr` (a declared group_by attribute): groups of
        fewer than k entities are hidden (their number said, not their counts), so a small group
        never singles anyone out."""
        if attr not in dataset.group_by:
            raise BadRequestData(f"dataset {dataset.id} publishes counts by {', '.join(dataset.group_by) or 'nothing'}")
        iri = self.terms.expand(attr)
        if iri in self.personal(dataset):
            raise BadRequestData(f"{attr} is personal data")
        if not self.shown(dataset)(iri):
            raise BadRequestData(f"{attr} is not published in dataset {dataset.id}")
        await self.check_size(dataset)  # counting reads every entity: the downloads' limit holds
        groups: dict[str, int] = {}
        async for entity in self.entities(dataset):
            instances = entity["attrs"].get(iri)
            value = _plain(instances[0]) if instances else None
            key = value if isinstance(value, str) else "null" if value is None else _json_text(value)
            groups[key] = groups.get(key, 0) + 1
        shown = {key: n for key, n in sorted(groups.items()) if n >= self.k}
        return {
            "dataset": dataset.id,
            "by": attr,
            "k": self.k,
            "groups": shown,
            "hiddenGroups": len(groups) - len(shown),
        }


def keep(entity: Entity, shown: Callable[[str], bool]) -> Entity:
    """The entity with only its published attributes."""
    if all(shown(k) for k in entity["attrs"]):
        return entity
    return {**entity, "attrs": {k: v for k, v in entity["attrs"].items() if shown(k)}}


def _time(instance: dict[str, Any]) -> int:
    from cityos.temporal.query import text_micros

    stamp = instance.get("modifiedAt") or instance.get("observedAt") or instance.get("createdAt")
    return text_micros(stamp) if isinstance(stamp, str) else 0


def _plain(instance: dict[str, Any]) -> Any:
    for key in ("value", "object", "vocab", "json", "valueList", "objectList", "languageMap"):
        if key in instance:
            return instance[key]
    return None


def _json_text(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _bounds(entity: Entity) -> tuple[float, float, float, float] | None:
    instances = entity["attrs"].get(LOCATION)
    if not instances:
        return None
    points = list(_coordinates(instances[0].get("value", {}).get("coordinates")))
    if not points:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if not all(math.isfinite(v) for v in (*xs, *ys)):
        return None
    return (min(xs), min(ys), max(xs), max(ys))


def _coordinates(value: Any) -> Any:
    if isinstance(value, list) and len(value) >= 2 and all(isinstance(v, int | float) for v in value[:2]):
        yield (float(value[0]), float(value[1]))
    elif isinstance(value, list):
        for item in value:
            yield from _coordinates(item)
