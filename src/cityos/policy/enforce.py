"""What the entity handlers call to enforce the access policies: framework-free helpers over the
Authorizer contract (policy/decision.py), so a handler adds a line, never a policy decision.

With auth off every helper returns at its first test (the principal or the view is unrestricted).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from cityos.audit.events import AuditEvent, AuditSink
from cityos.auth.principal import Principal, current_request_id
from cityos.entities.model import Entity
from cityos.entities.update import Mutator, Outcome
from cityos.errors import NgsiLdError
from cityos.policy.compiled import AccessDenied, HiddenEntity, current_purpose
from cityos.policy.decision import AccessPrefilter, Action, Authorizer, ReadView, Target
from cityos.store.base import EntityQuery

DENIED = (AccessDenied, HiddenEntity)


class WriteCheck(Protocol):
    def reveal(self, entity_id: str, before: Entity) -> None:
        """HiddenEntity unless the caller can see the entity."""

    def check(self, entity_id: str, before: Entity | None, after: Entity | None, *, revealed: bool = False) -> None:
        """HiddenEntity or AccessDenied unless the caller may change `before` into `after`
        (`revealed`: reveal(before) was called already)."""


def renders_cached(view: ReadView) -> bool:
    """May reads under `view` render through the render cache (entities/render_cache.py), which
    keeps each outcome by the entity's stored bytes? Only when visible() and project() depend on
    the entity alone (the view says so: CompiledView.cacheable) and no read must be audited (the
    audit of personal reads needs the entity each response carries)."""
    if view.unrestricted:
        return True
    return bool(getattr(view, "cacheable", False)) and not getattr(view, "audits_reads", True)


def restrict(query: EntityQuery, view: ReadView) -> EntityQuery:
    """`query` narrowed to what `view` may see: the prefilter goes into the store's SQL (so counts
    and paging are right), visible() into the predicate unless the prefilter is exact, and, when
    the view hides attributes, the query's own filters (attrs, q, geo, orderBy) judge the entity as
    the caller will see it, so a filter on a hidden attribute reveals nothing."""
    if view.unrestricted:
        return query
    query.access = _narrowed(view.prefilter(), query)
    exact = bool(getattr(view, "prefilter_exact", False))
    predicate, attrs, sort = query.predicate, query.attrs, query.sort
    visible, project = view.visible, view.project
    if not getattr(view, "projects", True) or (predicate is None and attrs is None and sort is None):
        if not exact:
            query.predicate = visible if predicate is None else (lambda e: visible(e) and predicate(e))
        return query
    if exact and sort is None and (predicate is None or predicate is query.predicate_in_sql):
        # the query's filters are all in SQL (q's value filters, attrs, the geo box): when the view
        # never hides the attributes they read, they judge the stored entity as they would judge
        # the projected one, and the store can page and count in SQL as with auth off
        shows_always = getattr(view, "shows_always", None)
        read = {f.attr for f in query.value_filters} | set(attrs or ())
        if query.geo_box is not None:
            read.add(query.geo_box[0])
        if shows_always is not None and shows_always(read):
            return query
    wanted = frozenset(attrs) if attrs is not None else None

    def check(entity: Entity) -> bool:
        if not visible(entity):
            return False
        seen = project(entity)
        if wanted is not None and wanted.isdisjoint(seen["attrs"]):
            return False
        return predicate is None or predicate(seen)

    query.predicate = check
    if sort is not None:
        query.sort = lambda entities: sort([project(e) for e in entities])
    return query


def _narrowed(access: AccessPrefilter | None, query: EntityQuery) -> AccessPrefilter | None:
    """The prefilter without what the query already implies (its types all allowed: no second
    type filter in SQL), so an allowed query costs what it costs with auth off."""
    if access is None or access.types is None or query.types is None:
        return access
    if not set(query.types) <= set(access.types):
        return access
    return None if access.id_patterns is None else AccessPrefilter(id_patterns=access.id_patterns)


def seen(view: ReadView, entity: Entity | None) -> Entity | None:
    """`entity` as the view shows it; None when it may not be seen at all (or is None). Also what a
    q path that follows a relationship (`rel{attr}`) reads on the linked entity, so a q cannot
    tell what the caller may not read."""
    if entity is None or not view.visible(entity):
        return None
    return view.project(entity)


def shown(view: ReadView, entities: Iterable[Entity]) -> list[Entity]:
    """The entities as the view shows them (each projected; invisible ones dropped)."""
    if view.unrestricted:
        return list(entities)
    return [view.project(e) for e in entities if view.visible(e)]


class _Fallback:
    """The write check for an Authorizer that only implements the contract (no write_guard)."""

    def __init__(self, authorizer: Authorizer, principal: Principal, tenant: str, view: ReadView) -> None:
        self.authorizer, self.principal, self.tenant, self.view = authorizer, principal, tenant, view

    def reveal(self, entity_id: str, before: Entity) -> None:
        if not self.view.visible(before):
            raise HiddenEntity(f"entity {entity_id} does not exist")

    def check(self, entity_id: str, before: Entity | None, after: Entity | None, *, revealed: bool = False) -> None:
        if before is not None and not revealed:
            self.reveal(entity_id, before)
        action: Action = "create" if before is None else "delete" if after is None else "update"
        state = after if after is not None else before
        if state is None:
            return
        target = Target(self.tenant, entity_id, tuple(state["type"]), tuple(state["attrs"]))
        if not self.authorizer.allows(self.principal, action, target):
            raise AccessDenied(f"not allowed to {action} entity {entity_id}")


def write_check(authorizer: Authorizer, principal: Principal, tenant: str) -> WriteCheck | None:
    """The check of the writes of one request, or None when nothing is checked (auth off)."""
    if principal.unrestricted:
        return None
    write_guard = getattr(authorizer, "write_guard", None)
    if write_guard is not None:
        guard: WriteCheck = write_guard(principal, tenant)
        return guard
    view = authorizer.read_view(principal, tenant)
    return None if view.unrestricted else _Fallback(authorizer, principal, tenant, view)


def guarded(entity_id: str, mutator: Mutator, check: WriteCheck | None) -> Mutator:
    """`mutator` that refuses (in the store's transaction, so nothing is written) what `check`
    refuses: an invisible entity is not found before the change is even tried."""
    if check is None:
        return mutator

    def run(current: Entity | None) -> Outcome:
        if current is not None:
            check.reveal(entity_id, current)  # first: no other error may tell that the entity exists
        outcome = mutator(current)
        check.check(entity_id, current, outcome.entity, revealed=True)
        return outcome

    return run


async def record_denied(
    audit: AuditSink, principal: Principal, tenant: str, targets: Sequence[str], error: NgsiLdError, operation: str
) -> None:
    """One "request.denied" record (the denial is never an error of its own if the sink fails)."""
    await audit.record(
        [
            AuditEvent(
                principal=principal.id,
                operation="request.denied",
                tenant=tenant,
                targets=list(targets),
                outcome="denied",
                request_id=current_request_id.get(),
                detail={"operation": operation, "status": error.status},
            )
        ]
    )


async def record_personal_reads(
    audit: AuditSink, principal: Principal, tenant: str, view: ReadView, entities: Iterable[Entity]
) -> None:
    """One "entity.read-personal" record for the personal data a response carries (entities as
    returned, after projection), or nothing if it carries none."""
    if view.unrestricted:
        return
    personal = getattr(view, "personal_attrs", None)
    if personal is None:
        return
    targets: list[str] = []
    attrs: set[str] = set()
    for entity in entities:
        found = personal(entity)
        if found:
            targets.append(entity["id"])
            attrs.update(found)
    if targets:
        detail: dict[str, object] = {"attrs": sorted(attrs)}
        if purpose := current_purpose.get():  # the access report shows why the data was read
            detail["purpose"] = purpose
        await audit.record(
            [
                AuditEvent(
                    principal=principal.id,
                    operation="entity.read-personal",
                    tenant=tenant,
                    targets=targets,
                    request_id=current_request_id.get(),
                    detail=detail,
                )
            ]
        )
