"""snapshotTemporalQueries: the history a snapshot freezes (5.2.41, 5.16.1).

Each temporal query is a Query with a temporalQ, compiled as POST /temporal/entityOperations/query
compiles one (the same window, lastN, selection and scopeQ rules), run under the maker's read view
over the tenant's temporal store, and every instance it selects is written, as it was (its times
kept, a new instanceId), into the temporal store of the snapshot's hidden tenant. A temporal query
with NGSILD-Snapshot then reads exactly that frozen history; the snapshot's own entity copy records
none (temporal/history.py skips hidden tenants), so what the temporal API shows of a snapshot is
only what its snapshotTemporalQueries froze. Local history only: the context sources are not asked
for theirs (docs/conformance.md). Limits: at most snapshot_max_entities temporal entities per
query, and at most MAX_INSTANCES instances; more fails the snapshot and keeps nothing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cityos.errors import NgsiLdError
from cityos.policy.decision import EVERYTHING, ReadView
from cityos.query.entity_query import QuerySpec, build_entity_query, scope_predicate
from cityos.query.geo import GeoQuery
from cityos.snapshots.model import EMPTY, FAILURE, SUCCESS, TooLarge
from cityos.store.base import EntityStore
from cityos.store.temporal_base import TemporalQuery, TemporalWindow
from cityos.temporal.query import parse_last_n, parse_window

MAX_INSTANCES = 100_000  # instances one temporal query may freeze
PAGE = 100  # temporal entities read and written per step


@dataclass(frozen=True, slots=True)
class TemporalPlan:
    """One snapshot temporal query, ready to run: its store query and what the maker may see."""

    query: TemporalQuery
    read: ReadView


def compile_query(
    raw: dict[str, Any],
    expand: Callable[[str], str],
    geo: GeoQuery | None,
    max_pattern_length: int | None,
) -> TemporalQuery:
    """The store query of one snapshotTemporalQueries member (invalid windows are 400 here)."""
    temporal = raw["temporalQ"]
    window = parse_window(
        temporal.get("timerel"), temporal.get("timeAt"), temporal.get("endTimeAt"), temporal.get("timeproperty")
    )
    scope_test: Callable[[Sequence[str]], bool] | None = None
    if raw.get("scopeQ") is not None:  # judged over time by the store, as the temporal API does
        matches = scope_predicate(raw["scopeQ"])

        def scope_test(scopes: Sequence[str]) -> bool:
            return matches({"scope": list(scopes)})

    spec = QuerySpec(
        attrs=raw.get("attrs"),
        q=raw.get("q"),
        geo=geo,
        selectors=raw.get("entities"),
        max_pattern_length=max_pattern_length,
    )
    selection = build_entity_query(spec, expand)
    return TemporalQuery(
        window=TemporalWindow(window.timeproperty, window.start, window.end),
        ids=selection.ids,
        id_pattern=selection.id_pattern,
        types=selection.types,
        attrs=selection.attrs,
        last_n=parse_last_n(temporal.get("lastN")),
        predicate=selection.predicate,
        scope_test=scope_test,
    )


def _instances(entity: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    pairs = []
    for attr, instances in entity.get("attrs", {}).items():
        for instance in instances:
            kept = {k: v for k, v in instance.items() if k != "instanceId"}  # the copy gets its own
            pairs.append((attr, kept))
    return pairs


async def _run(store: EntityStore, tenant: str, hidden: str, plan: TemporalPlan, max_entities: int) -> int:
    """Copy one query's history page by page; how many temporal entities it selected."""
    found = instances = offset = 0
    while True:
        page = await store.temporal_query(
            tenant, replace(plan.query, limit=PAGE, offset=offset, count=False, max_instances=MAX_INSTANCES + 1)
        )
        if page.cut is not None:
            raise TooLarge(f"a snapshot temporal query selects more than {MAX_INSTANCES} instances")
        for entity in page.entities:
            seen = entity if plan.read.unrestricted else plan.read.project(entity)
            pairs = _instances(seen)
            if not pairs:
                continue
            found += 1
            instances += len(pairs)
            if found > max_entities or instances > MAX_INSTANCES:
                raise TooLarge(
                    f"a snapshot temporal query selects more than {max_entities} entities (snapshot_max_entities)"
                    if found > max_entities
                    else f"a snapshot temporal query selects more than {MAX_INSTANCES} instances"
                )
            types = entity["type"] if isinstance(entity["type"], list) else [entity["type"]]
            await store.temporal_write(hidden, entity["id"], types, pairs)
        if not page.has_more:
            return found
        offset += PAGE


async def freeze(
    store: EntityStore, tenant: str, hidden: str, plans: list[TemporalPlan], max_entities: int
) -> list[dict[str, Any]]:
    """Run every temporal query into `hidden`: snapshotTemporalQueriesDetails. TooLarge propagates
    (the caller drops everything written)."""
    details: list[dict[str, Any]] = []
    for plan in plans:
        try:
            found = await _run(store, tenant, hidden, plan, max_entities)
        except NgsiLdError as exc:
            details.append({"resultStatus": FAILURE, "detail": exc.detail or exc.title})
            continue
        details.append({"resultStatus": SUCCESS if found else EMPTY})
    return details


async def frozen_ids(store: EntityStore, hidden: str) -> list[str]:
    """Every temporal entity of a hidden tenant (to drop or clone them)."""
    ids: list[str] = []
    offset = 0
    while True:
        page = await store.temporal_query(
            hidden, TemporalQuery(require_instances=False, max_instances=0, limit=1000, offset=offset)
        )
        ids.extend(e["id"] for e in page.entities)
        if not page.has_more:
            return ids
        offset += 1000


async def copy(store: EntityStore, source: str, target: str) -> None:
    """Clone (5.16.2): the frozen history of `source` written into `target`."""
    everything = TemporalPlan(TemporalQuery(), EVERYTHING)
    await _run(store, source, target, everything, 1 << 62)
