"""The access policies at the NGSI-LD handlers: one call per enforcement point, over the request's
principal and the Services' Authorizer and audit sink (policy/enforce.py does the work). With auth
off each returns at its first test."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from starlette.requests import Request

from cityos.entities.model import Entity
from cityos.entities.update import Mutator
from cityos.errors import NgsiLdError
from cityos.ngsild.common import principal, services
from cityos.policy.compiled import AccessDenied, HiddenEntity
from cityos.policy.decision import Action, ReadView, Target
from cityos.policy.enforce import (
    DENIED,
    WriteCheck,
    guarded,
    record_denied,
    record_personal_reads,
    renders_cached,
    restrict,
    shown,
    write_check,
)
from cityos.snapshots.scope import MARK, owner_of
from cityos.store.base import EntityQuery
from cityos.store.temporal_base import AggregatedEntity, TemporalQuery

__all__ = ["DENIED", "HiddenEntity", "guarded", "renders_cached", "restrict", "shown"]


def view(request: Request, tenant: str, action: Action = "read") -> ReadView:
    if MARK in tenant:  # a snapshot's hidden tenant is read under the policies of the tenant it was made in
        tenant = owner_of(tenant)
    return services(request).authorizer.read_view(principal(request), tenant, action)


def writes(request: Request, tenant: str) -> WriteCheck | None:
    """The check of this request's writes (None with auth off)."""
    return write_check(services(request).authorizer, principal(request), tenant)


def guard_all(request: Request, tenant: str, planned: Sequence[tuple[str, Mutator]]) -> list[tuple[str, Mutator]]:
    check = writes(request, tenant)
    return [(entity_id, guarded(entity_id, mutator, check)) for entity_id, mutator in planned]


async def denied(request: Request, tenant: str, targets: Sequence[str], error: NgsiLdError) -> None:
    """Audit a refusal ("request.denied"); only policy refusals are recorded, so pass any error."""
    if isinstance(error, DENIED):
        operation = f"{request.method} {request.url.path}"
        await record_denied(services(request).audit, principal(request), tenant, targets, error, operation)


async def visible_or_404(request: Request, tenant: str, read: ReadView, entity: Entity) -> Entity:
    """The entity as the caller may see it, or HiddenEntity (404, audited) if it may not see it."""
    if read.unrestricted:
        return entity
    if not read.visible(entity):
        await hidden(request, tenant, entity["id"])
    return read.project(entity)


async def hidden(request: Request, tenant: str, entity_id: str) -> NoReturn:
    """HiddenEntity (404, as for a missing entity), the refusal audited."""
    error = HiddenEntity(f"entity {entity_id} does not exist")
    await denied(request, tenant, [entity_id], error)
    raise error


async def personal_reads(request: Request, tenant: str, read: ReadView, entities: Iterable[Entity]) -> None:
    # a view knowing that no policy marks personal data (audits_reads False) has nothing to record
    if not read.unrestricted and getattr(read, "audits_reads", True):
        await record_personal_reads(services(request).audit, principal(request), tenant, read, entities)


def restricted(request: Request, tenant: str, query: EntityQuery, action: Action = "read") -> EntityQuery:
    return restrict(query, view(request, tenant, action))


async def catalog(request: Request, tenant: str) -> Any:
    """What discovery aggregates over: the store, or for a restricted caller what it can see."""
    read = view(request, tenant)
    store = services(request).store
    if read.unrestricted or (getattr(read, "everything", False) and not getattr(read, "projects", True)):
        return store
    from cityos.policy.discovery import VisibleCatalog

    result = await store.query_entities(tenant, restrict(EntityQuery(), read))
    return VisibleCatalog(read.project(e) for e in result.entities)


def temporal_read(request: Request, tenant: str, query: TemporalQuery) -> ReadView:
    """Narrow a temporal query to what the caller may see (in place) and return the view, whose
    project() the handler applies to each entity it answers with. visible() judges the entity made
    of its windowed instances (an area policy: every location in the window inside the area)."""
    read = view(request, tenant)
    if read.unrestricted:
        return read
    access = read.prefilter()
    if access is not None and access.types is not None:
        allowed = list(access.types)
        query.types = allowed if query.types is None else [t for t in query.types if t in allowed]
    predicate, visible, project = query.predicate, read.visible, read.project

    def check(entity: Entity) -> bool:
        if not visible(entity):
            return False
        seen = project(entity)
        if entity["attrs"] and not seen["attrs"]:
            return False  # nothing readable in the window
        return predicate is None or predicate(seen)

    query.predicate = check
    return read


async def temporal_write(
    request: Request, tenant: str, entity_id: str, action: Action, types: Sequence[str] = (), attrs: Sequence[str] = ()
) -> None:
    """Refuse a write to an entity's history the caller may not make: 404 (HiddenEntity) when it
    cannot read the entity, 403 when it can but the write policies do not allow this one."""
    caller = principal(request)
    if caller.unrestricted:
        return
    authorizer = services(request).authorizer
    read = authorizer.read_view(caller, tenant)
    if read.unrestricted:
        return
    store = services(request).store
    info = await store.temporal_entity(tenant, entity_id)
    known = list(info.types) if info is not None else []
    # visibility is judged on the current entity where there is one (an area policy needs its location)
    current = await store.get_entity(tenant, entity_id)
    probe: Entity = current or {"id": entity_id, "type": known or list(types), "attrs": {a: [] for a in attrs}}
    error: NgsiLdError | None = None
    if (info is not None or current is not None) and not read.visible(probe):
        error = HiddenEntity(f"entity {entity_id} has no temporal evolution")
    else:
        all_types = tuple(dict.fromkeys([*known, *types]))
        if not authorizer.allows(caller, action, Target(tenant, entity_id, all_types, tuple(attrs))):
            error = AccessDenied(f"not allowed to {action} the history of entity {entity_id}")
    if error is not None:
        await denied(request, tenant, [entity_id], error)
        raise error


def project_aggregated(read: ReadView, entity: AggregatedEntity) -> AggregatedEntity:
    """An aggregated temporal entity without the attributes the caller may not read."""
    if read.unrestricted:
        return entity
    probe: Entity = {"id": entity.id, "type": entity.types, "attrs": {attr: [] for attr in entity.attrs}}
    keep = read.project(probe)["attrs"]
    if len(keep) == len(entity.attrs):
        return entity
    return AggregatedEntity(entity.id, entity.types, {k: v for k, v in entity.attrs.items() if k in keep})
