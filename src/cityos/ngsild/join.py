"""Linked entities (join=inline|flat, joinLevel; spec 4.5.23): follow Relationships and embed the
entities they point to, inline under "entity" or as extra elements of a flat list."""

from __future__ import annotations

import dataclasses
from typing import Any

from cityos.entities.model import Entity
from cityos.entities.render import RenderOptions, render_entity
from cityos.errors import BadRequestData
from cityos.policy.decision import EVERYTHING, ReadView
from cityos.policy.enforce import restrict
from cityos.query import budget
from cityos.query.projection import Projected, depth
from cityos.store.base import EntityQuery, EntityStore

MAX_JOIN_LEVEL = 5


@dataclasses.dataclass(frozen=True)
class JoinPlan:
    mode: str  # "inline" or "flat"
    level: int
    pick: tuple[Projected, ...] | None = None
    omit: tuple[Projected, ...] | None = None


def join_plan(join: str | None, join_level: str | None, pick: Any, omit: Any) -> JoinPlan | None:
    if join is None:
        if join_level is not None:
            raise BadRequestData("joinLevel needs join")
        return None
    if join not in ("inline", "flat", "@none"):
        raise BadRequestData("join must be inline, flat or @none")
    try:
        level = int(join_level) if join_level is not None else 1
    except ValueError as exc:
        raise BadRequestData("joinLevel must be a positive integer") from exc
    if not 1 <= level <= MAX_JOIN_LEVEL:
        raise BadRequestData(f"joinLevel must be between 1 and {MAX_JOIN_LEVEL}")
    for projection in (pick, omit):
        if projection is not None and depth(projection) > level:
            raise BadRequestData(f"a projection nests deeper than joinLevel {level}")
    if join == "@none":
        return None
    return JoinPlan(join, level, pick, omit)


def _nested(items: tuple[Projected, ...] | None, name: str) -> tuple[Projected, ...] | None:
    if items is None:
        return None
    for item in items:
        if item.name == name and item.nested:
            return item.nested
    return None


def _options_for(
    base: RenderOptions,
    pick: tuple[Projected, ...] | None,
    omit: tuple[Projected, ...] | None,
    nested_pick: bool,
    nested_omit: bool,
) -> RenderOptions:
    """Render options for a linked entity, from the nested part of pick/omit (if any)."""
    expand = base.terms.expand
    keep = dropped = None
    pick_id = pick_type = True
    if nested_pick and pick is not None:
        names = [p.name for p in pick]
        pick_id, pick_type = "id" in names, "type" in names
        keep = frozenset(expand(n) for n in names if n not in ("id", "type"))
    if nested_omit and omit is not None:
        names = [p.name for p in omit if not p.nested]
        pick_id, pick_type = "id" not in names, "type" not in names
        dropped = frozenset(expand(n) for n in names if n not in ("id", "type"))
    return dataclasses.replace(base, attrs=keep, omit=dropped, pick_id=pick_id, pick_type=pick_type)


async def fetch_linked(
    store: EntityStore, tenant: str, ids: set[str], view: ReadView = EVERYTHING
) -> dict[str, Entity]:
    """The linked entities the caller may see, as it may see them (policy/decision.py ReadView); also
    what a subscription's q reads through relationships at delivery (subscriptions/access.py)."""
    if not ids:
        return {}
    result = await budget.within(store.query_entities(tenant, restrict(EntityQuery(ids=sorted(ids)), view)))
    return {entity["id"]: view.project(entity) for entity in result.entities}


def _targets(entity: Entity, keep: frozenset[str] | None) -> list[tuple[str, list[str]]]:
    out = []
    for iri, instances in entity["attrs"].items():
        if keep is not None and iri not in keep:
            continue
        objects: list[str] = []
        for instance in instances:
            if instance.get("type") == "Relationship":
                target = instance.get("object")
                objects.extend(target if isinstance(target, list) else [target])
            elif instance.get("type") == "ListRelationship":
                objects.extend(instance.get("objectList", []))
        if objects:
            out.append((iri, objects))
    return out


async def render_joined(
    entities: list[Entity],
    render: RenderOptions,
    plan: JoinPlan,
    store: EntityStore,
    tenant: str,
    view: ReadView = EVERYTHING,
) -> list[dict[str, Any]]:
    """The rendered entities with their linked entities, as one list (flat) or nested (inline)."""
    cache: dict[str, Entity] = {}

    async def linked(entity: Entity, keep: frozenset[str] | None) -> list[tuple[str, list[Entity]]]:
        budget.check()  # one store query per entity and level: the request's budget, not each query's
        wanted = {o for _, objects in _targets(entity, keep) for o in objects if o not in cache}
        cache.update(await fetch_linked(store, tenant, wanted, view))
        return [(iri, [cache[o] for o in objects if o in cache]) for iri, objects in _targets(entity, keep)]

    async def inline(entity: Entity, options: RenderOptions, pick: Any, omit: Any, depth: int) -> dict[str, Any]:
        budget.check()
        out = render_entity(entity, options)
        if depth >= plan.level:
            return out
        for iri, targets in await linked(entity, options.attrs):
            name = options.terms.compact(iri)
            if name not in out or not targets:
                continue
            nested_pick, nested_omit = _nested(pick, name), _nested(omit, name)
            child = _options_for(options, nested_pick, nested_omit, nested_pick is not None, nested_omit is not None)
            rendered = [await inline(t, child, nested_pick, nested_omit, depth + 1) for t in targets]
            embedded: Any = rendered[0] if len(rendered) == 1 else rendered
            if options.format == "keyValues":
                out[name] = embedded
            elif isinstance(out[name], dict):
                out[name]["entity"] = embedded
        return out

    if plan.mode == "inline":
        return [await inline(e, render, plan.pick, plan.omit, 0) for e in entities]

    results: list[dict[str, Any]] = []
    seen: set[str] = set()
    frontier = [(e, render, plan.pick, plan.omit) for e in entities]
    for level in range(plan.level + 1):
        following: list[tuple[Entity, RenderOptions, Any, Any]] = []
        for entity, options, pick, omit in frontier:
            if entity["id"] in seen:
                continue
            seen.add(entity["id"])
            budget.check()
            results.append(render_entity(entity, options))
            if level == plan.level:
                continue
            for iri, targets in await linked(entity, options.attrs):
                name = options.terms.compact(iri)
                nested_pick, nested_omit = _nested(pick, name), _nested(omit, name)
                child = _options_for(
                    options, nested_pick, nested_omit, nested_pick is not None, nested_omit is not None
                )
                following.extend((t, child, nested_pick, nested_omit) for t in targets)
        frontier = following
    return results
