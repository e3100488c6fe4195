"""The map page's layers (each type with entities located, and how many), kept between page loads
and kept up to date from the changes committed since they were read.

Asking the API for them scans every entity twice (`/types`, then a located count per type): 0.5-1 s
at 100,000 entities on each load of /console/map. They are kept per tenant and policy view (`key`):
callers who read every entity and attribute share one answer; a restricted caller's answer is kept
under its view's fingerprint (policy/compiled.py: the policy set's version and the rules that
apply), so it serves only callers the same rules apply to, never one who may see less; a policy
change makes new fingerprints.

A change that can change the counts (a create, a delete, a move, a new type or scope,
mapdata/changes.py) is followed once committed (mapdata/layout.py): each kept answer of its tenant
counts the entity out under the types it was counted under before and in under those it is
counted under after, as the API would (visible to the view, its expired parts removed, a
`location` among the attributes the view shows). Exact, so the page shows what a new read would;
the answer is read again when a change cannot be followed: a type the answer did not list (its
name is the API's to give), another worker's change, a change committed unseen. A new value of an
attribute leaves the counts as they were, except under a rule with a time window on `modifiedAt`
(such a view is read each time). The one lag is an entity whose `expiresAt` passes, counted until
the store's sweep deletes it (a change) or --tile-cache-seconds pass (the tile cache's own bound
on a missed change, which kept layers share).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from cityos.auth.principal import Principal
from cityos.entities.expiry import now_key, visible
from cityos.entities.model import Entity
from cityos.mapdata.changes import GEO, ChangeHub
from cityos.mapdata.layout import Committed, LayoutWatch
from cityos.policy.decision import Authorizer, ReadView
from cityos.snapshots.scope import MARK

MAX_KEPT = 256  # answers kept (per tenant and policy view), least recently used dropped
EVERYTHING = "*"  # the key part of a view that reads every entity and attribute
Key = tuple[str, Hashable]  # (tenant, EVERYTHING or the view's fingerprint)
NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Answer:
    """A read of the layers: the located count per type name, each type's IRI -> name, and
    whether every request it was made of succeeded (else it is not kept)."""

    counts: dict[str, int]
    names: dict[str, str]
    complete: bool


def key(authorizer: Authorizer, principal: Principal | None, tenant: str) -> tuple[Key, ReadView | None] | None:
    """Whose answer a caller may share (every caller whose policy view is the same), and the view
    (None: everything) that decides what of a change it counts; None: keep nothing."""
    if principal is None or MARK in tenant or not (principal.unrestricted or principal.may_use_tenant(tenant)):
        return None
    view = authorizer.read_view(principal, tenant)
    # whoever reads every entity and attribute (as ngsild/access.catalog decides) sees the same counts
    if view.unrestricted or (getattr(view, "everything", False) and not getattr(view, "projects", True)):
        return (tenant, EVERYTHING), None
    fingerprint = getattr(view, "fingerprint", None)
    if fingerprint is None or getattr(view, "windowed", True):
        return None
    return (tenant, fingerprint), view


def located(view: ReadView | None, entity: Entity | None, now: str) -> frozenset[str]:
    """The types (IRIs) under which a located count of the API counts `entity` for `view` at `now`."""
    entity = visible(entity, now)
    if entity is None:
        return NOTHING
    if view is not None:
        if not view.visible(entity):
            return NOTHING
        entity = view.project(entity)
    return frozenset(entity["type"]) if GEO in entity["attrs"] else NOTHING


@dataclass
class Kept:
    counts: dict[str, int]
    names: dict[str, str]  # type IRI -> the name the API gave it
    view: ReadView | None
    epoch: int  # the layout watch's epoch when the read began
    read_at: float  # time.monotonic() when the read began

    def follow(self, before: Entity | None, after: Entity | None, now: str) -> bool:
        """Count a committed change in; False when it cannot be (a type the read did not list)."""
        old, new = located(self.view, before, now), located(self.view, after, now)
        for iri in old ^ new:
            name = self.names.get(iri)
            if name is None or name not in self.counts:
                return False
            self.counts[name] += 1 if iri in new else -1
            if self.counts[name] < 0:
                return False
        return True


class LayerCache:
    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._kept: OrderedDict[Key, Kept] = OrderedDict()
        self._tenants: frozenset[str] = frozenset()  # of the kept answers (read by the store's thread)
        self._watch: LayoutWatch | None = None
        self.hits = 0
        self.misses = 0
        self.followed = 0  # committed changes counted into kept answers

    def _attach(self, watch: LayoutWatch) -> None:
        """Follow the hub's committed changes (the first read that may be kept)."""
        if self._watch is not watch:
            self._watch = watch
            watch.tracks = self._tenants.__contains__
            watch.follower = self._follow
            self._kept.clear()

    async def counts(
        self,
        hub: ChangeHub | None,
        found: tuple[Key, ReadView | None] | None,
        read: Callable[[], Awaitable[Answer]],
        again: Callable[[], Key | None],
    ) -> dict[str, int]:
        """The located count per type, kept or read (`read`) again; `hub` or `found` None: not kept.
        `again`: the caller's key once more after a read; another (a time condition of a policy
        came into force meanwhile) and the answer is not kept, it may be another view's."""
        if hub is None or not hub.listening or found is None:
            return (await read()).counts
        watch = hub.layout
        self._attach(watch)
        settled = watch.settled()
        where, view = found
        kept = self._kept.get(where)
        if kept is not None and kept.epoch == watch.epoch and time.monotonic() - kept.read_at <= self.max_age:
            self._kept.move_to_end(where)
            self.hits += 1
            return dict(kept.counts)
        self.misses += 1
        seen, epoch, started = watch.seen, watch.epoch, time.monotonic()
        answer = await read()
        if settled and answer.complete and again() == where:
            entry = Kept(dict(answer.counts), dict(answer.names), view, epoch, started)
            watch.keep_if_quiet(seen, epoch, started, lambda: self._keep(where, entry))
        return answer.counts

    def _keep(self, where: Key, entry: Kept) -> None:
        self._kept[where] = entry
        self._kept.move_to_end(where)
        while len(self._kept) > MAX_KEPT:
            self._kept.popitem(last=False)
        self._tenants = frozenset(k[0] for k in self._kept)
        if self._watch is not None:
            self._watch.tracks = self._tenants.__contains__

    def _follow(self, changes: Committed) -> None:
        """On the loop: committed changes, counted into each kept answer of their tenant."""
        now = now_key()
        for tenant, before, after in changes:
            for where in [k for k in self._kept if k[0] == tenant]:
                if self._kept[where].follow(before, after, now):
                    self.followed += 1
                else:
                    del self._kept[where]
        self._tenants = frozenset(k[0] for k in self._kept)
        if self._watch is not None:
            self._watch.tracks = self._tenants.__contains__
