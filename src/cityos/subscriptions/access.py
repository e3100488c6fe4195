"""Subscriptions under access control: who owns one, who may manage it, and what its notifications
may carry.

A subscription belongs to the principal that created it (its `Owner`, kept in the stored row, never
in the NGSI-LD representation). Each notification is cut down, at delivery time, to what the owner
may read then: the owner is looked up again (a revoked key or a deleted user stops the subscription),
the Authorizer compiles the owner's read view, entities it cannot see are dropped and attributes it
cannot read are removed before anything is rendered (so neither values nor showChanges' previous
values nor deleted-attribute markers of such attributes leave the broker), and q is judged again on
what the owner may see, including the entities its `rel{attr}` paths follow.

With auth off every owner is the unrestricted principal and every view is unrestricted: the checks
are one lookup and one attribute test per notification, and the notification is untouched.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from cityos.auth.principal import ANONYMOUS, OpenDirectory, Principal, PrincipalDirectory
from cityos.entities.model import Entity
from cityos.jsonld.termmap import TermMap
from cityos.policy.decision import Authorizer, OpenAuthorizer, ReadView
from cityos.policy.enforce import seen
from cityos.query.q import linked_depth, parse_q
from cityos.subscriptions.matching import attribute_changes, filters_of, fired_triggers
from cityos.subscriptions.owner import Owner

log = logging.getLogger("cityos.subscriptions")


class AccessSource(Protocol):
    """Where the current Authorizer and PrincipalDirectory are found (ngsild.common.Services): read
    at each use, so what the server installs at start-up is what deliveries use."""

    authorizer: Authorizer
    principals: PrincipalDirectory


@dataclass
class OpenAccess:
    """Auth off: no policy, every owner is the unrestricted principal."""

    authorizer: Authorizer
    principals: PrincipalDirectory

    @classmethod
    def create(cls) -> OpenAccess:
        return cls(OpenAuthorizer(), OpenDirectory())


class OwnerGone(Exception):
    """The owner no longer exists (revoked key, deleted user): the subscription must stop."""


async def owner_principal(directory: PrincipalDirectory, owner: Owner | None) -> Principal:
    """The owner as it is now. A subscription without owner (made while auth was off) acts with
    what the public may read (ANONYMOUS); with auth off the directory answers OPEN for any id.

    An owner whose proof was a token (OpenID Connect) cannot be found again by id, and a worker
    that saw a newer token of theirs would judge them on other roles than the rest: every worker
    judges them on the attributes stored with the subscription (tenants, roles, groups, client;
    renewed when they update it), under the policies in force at delivery."""
    if owner is None:
        found = await directory.lookup(ANONYMOUS.id)
        return found if found is not None and found.unrestricted else ANONYMOUS
    if owner.snapshot is not None:
        return owner.snapshot
    found = await directory.lookup(owner.id)
    if found is not None:
        return found
    raise OwnerGone(owner.id)


Fetch = Callable[[set[str]], Awaitable[dict[str, Entity]]]


class OwnerSelection:
    """A subscription's q, geoQ and scopeQ as they are judged at delivery, on what the owner may
    see: on the entity as projected for the owner and, for q paths that follow relationships
    (`rel{attr}`), on the linked entities as the owner may see them, read from the store then
    (`fetch`: ngsild.join.fetch_linked under the owner's view). Compiled on first use."""

    def __init__(self, doc: dict[str, Any], terms: TermMap, fetch: Fetch) -> None:
        self._doc, self._terms, self._fetch = doc, terms, fetch
        self._filters: tuple[Callable[[Entity], bool], ...] | None = None
        self._known: dict[str, Entity | None] = {}  # linked entities read so far (None: not visible)
        self._missing: set[str] = set()

    @functools.cached_property
    def follows_links(self) -> bool:
        """Whether q reads linked entities: then it is judged again even if the notified entity
        itself lost nothing to the projection."""
        q = self._doc.get("q")
        return q is not None and linked_depth(parse_q(unquote(q), None)) > 0

    def _lookup(self, entity_id: str) -> Entity | None:
        if entity_id in self._known:
            return self._known[entity_id]
        self._missing.add(entity_id)
        return None

    async def holds(self, entity: Entity) -> bool:
        """q, geoQ and scopeQ hold on `entity` (already projected). A linked entity not read yet
        ends the evaluation's first pass; the ones it asked for are fetched and it runs again, so
        each relationship level costs one store query."""
        if self._filters is None:
            self._filters = filters_of(self._doc, self._terms, self._lookup)
        while True:
            self._missing.clear()
            result = all(test(entity) for test in self._filters)
            if not self._missing:
                return result
            wanted = set(self._missing)
            found = await self._fetch(wanted)
            self._known.update({entity_id: found.get(entity_id) for entity_id in wanted})


async def visible_change(
    view: ReadView, payload: dict[str, Any], doc: dict[str, Any], selection: OwnerSelection
) -> dict[str, Any] | None:
    """An outbox payload as the owner may see it, or None when nothing of it may be notified.

    The entity before and after the change are projected (an invisible one counts as absent), the
    triggers are worked out again on what is left and kept only if they had fired (an entity that
    merely left or entered the view is not reported as deleted or created), and, when the projection
    removed anything or q follows relationships, the subscription's q, geoQ and scopeQ must still
    hold on what the owner may see (a q on an attribute the owner may not read never selects)."""
    before, after = payload.get("before"), payload.get("after")
    seen_before, seen_after = seen(view, before), seen(view, after)
    if seen_before is None and seen_after is None:
        return None
    if before is None and after is not None and "entityCreated" not in payload["triggers"]:
        # the entity before was not kept (a subscription without owner): the triggers stand as fired
        fired = list(payload["triggers"])
    else:
        fired = _refire(payload, doc, before, after, seen_before, seen_after)
    if not fired:
        return None
    subject = seen_after if seen_after is not None else seen_before
    original = after if after is not None else before
    assert subject is not None and original is not None
    if _judged_again(subject, original, selection) and not await selection.holds(subject):
        return None
    return {**payload, "triggers": fired, "before": seen_before if before is not None else None, "after": seen_after}


def _judged_again(projected: Entity, entity: Entity, selection: OwnerSelection) -> bool:
    """The entity was selected on everything; what the owner sees of it (or of the entities q
    follows) may not be selected."""
    return selection.follows_links or (projected is not entity and projected != entity)


def _refire(
    payload: dict[str, Any],
    doc: dict[str, Any],
    before: Entity | None,
    after: Entity | None,
    seen_before: Entity | None,
    seen_after: Entity | None,
) -> list[str]:
    """The triggers that fired and still fire on the projected entities."""
    watched = frozenset(doc["watchedAttributes"]) if "watchedAttributes" in doc else None
    changes = attribute_changes(seen_before, seen_after)
    fired = fired_triggers(seen_before, seen_after, changes, frozenset(payload["triggers"]), watched)
    if "entityUpdated" in fired and not (changes.created or changes.updated or changes.deleted):
        everything = attribute_changes(before, after)  # only attributes the owner may not read changed
        if everything.created or everything.updated or everything.deleted:
            fired.remove("entityUpdated")
    return fired


async def visible_entities(view: ReadView, entities: Iterable[Entity], selection: OwnerSelection) -> list[Entity]:
    """A periodic report's entities as the owner may see them (the same rules as visible_change)."""
    out = []
    for entity in entities:
        projected = seen(view, entity)
        if projected is None or (_judged_again(projected, entity, selection) and not await selection.holds(projected)):
            continue
        out.append(projected)
    return out
