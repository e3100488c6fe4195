"""Which subscriptions an entity change triggers, and what their notifications carry.

`ChangeMatcher` is the store's change listener: it runs inside the write transaction, on the
writer thread, so it only does dict lookups and predicate calls on the in-memory index of
compiled subscriptions, and returns outbox rows (plain data: the triggers and the entity before
and after). The notification body is rendered later, at delivery, by `notification_entity`.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from cityos.auth.principal import current_request_id
from cityos.entities.model import NULL_URI, VALUE_MEMBER, Entity, Instance
from cityos.entities.render import RenderOptions, render_entity
from cityos.entities.values import now, parse_datetime
from cityos.errors import FailureLog
from cityos.jsonld.termmap import TermMap
from cityos.query.entity_query import QuerySpec, build_entity_query, scope_predicate, selector_predicate
from cityos.query.geo import compile_geo, parse_geoq
from cityos.query.q import compile_q
from cityos.store.base import EntityChange, EntityLookup, EntityQuery, OutboxRow
from cityos.subscriptions.model import DEFAULT_TRIGGERS, PROJECTION_KEYS, Doc, Subscription

log = logging.getLogger("cityos.subscriptions")
Predicate = Callable[[Entity], bool]
PREVIOUS = {
    "value": "previousValue",
    "object": "previousObject",
    "languageMap": "previousLanguageMap",
    "json": "previousJson",
    "vocab": "previousVocab",
    "valueList": "previousValueList",
    "objectList": "previousObjectList",
}


# -- what changed -------------------------------------------------------------------------------------
@dataclass
class Changes:
    """Attribute instances (keyed by datasetId) that appeared, changed or disappeared."""

    created: dict[str, list[Instance]] = field(default_factory=dict)
    updated: dict[str, list[tuple[Instance, Instance]]] = field(default_factory=dict)  # (before, after)
    deleted: dict[str, list[Instance]] = field(default_factory=dict)


def attribute_changes(before: Entity | None, after: Entity | None) -> Changes:
    old = before["attrs"] if before else {}
    new = after["attrs"] if after else {}
    changes = Changes()
    for iri in old.keys() | new.keys():
        was = {i.get("datasetId"): i for i in old.get(iri, [])}
        now_ = {i.get("datasetId"): i for i in new.get(iri, [])}
        created = [i for d, i in now_.items() if d not in was]
        updated = [(was[d], i) for d, i in now_.items() if d in was and was[d] != i]
        deleted = [i for d, i in was.items() if d not in now_]
        if created:
            changes.created[iri] = created
        if updated:
            changes.updated[iri] = updated
        if deleted:
            changes.deleted[iri] = deleted
    return changes


def fired_triggers(
    before: Entity | None,
    after: Entity | None,
    changes: Changes,
    wanted: frozenset[str],
    watched: frozenset[str] | None,
) -> list[str]:
    """The notificationTrigger values this change sets off, among `wanted`; watchedAttributes
    restrict every trigger to changes of (or entities with) those attributes."""

    def touches(names: Iterable[str]) -> bool:
        return watched is None or not watched.isdisjoint(names)

    fired = []
    if before is None and after is not None:
        if "entityCreated" in wanted and touches(after["attrs"]):
            fired.append("entityCreated")
    elif before is not None and after is None:
        if "entityDeleted" in wanted and touches(before["attrs"]):
            fired.append("entityDeleted")
    elif before is not None and after is not None and before != after:
        changed = changes.created.keys() | changes.updated.keys() | changes.deleted.keys()
        if "entityUpdated" in wanted and (touches(changed) or (watched is None and not changed)):
            fired.append("entityUpdated")
    for trigger, names in (
        ("attributeCreated", changes.created),
        ("attributeUpdated", changes.updated),
        ("attributeDeleted", changes.deleted),
    ):
        if trigger in wanted and names and touches(names):
            fired.append(trigger)
    return fired


# -- compiled subscriptions and the index the listener looks them up in -------------------------------
@dataclass(frozen=True)
class Matcher:
    """A subscription compiled for matching: everything checked per change is precomputed."""

    tenant: str
    id: str
    triggers: frozenset[str]
    watched: frozenset[str] | None
    types: tuple[str, ...] | None  # the expanded types it can match (index keys); None: any type
    select: Predicate | None  # the `entities` selectors
    filters: tuple[Predicate, ...]  # q, geoQ, scopeQ
    throttling: float
    periodic: bool
    active: bool
    expires_at: datetime | None
    keep_before: bool  # the notification needs the entity as it was (showChanges, deletions)

    @property
    def lane(self) -> str:
        return lane_of(self.tenant, self.id)

    def live(self, moment: datetime) -> bool:
        return self.active and (self.expires_at is None or self.expires_at > moment)

    def selects(self, entity: Entity) -> bool:
        if self.select is not None and not self.select(entity):
            return False
        return all(test(entity) for test in self.filters)


def lane_of(tenant: str, subscription_id: str) -> str:
    """Notifications of one subscription are delivered in order, one after another."""
    return f"{tenant}\n{subscription_id}"


def filters_of(
    doc: Doc, terms: TermMap, lookup: EntityLookup, max_pattern_length: int | None = None
) -> tuple[Predicate, ...]:
    """q (percent-decoded; `rel{attr}` paths follow relationships through `lookup`), geoQ, scopeQ.
    `max_pattern_length`: the setting, for a subscription being made; None for a stored one (its
    patterns were checked when it came in; a setting lowered since does not disable it)."""
    filters: list[Predicate] = []
    if "q" in doc:
        filters.append(compile_q(unquote(doc["q"]), terms.expand, lookup=lookup, max_pattern_length=max_pattern_length))
    if "geoQ" in doc:
        filters.append(compile_geo(parse_geoq(doc["geoQ"]), terms.expand))
    if "scopeQ" in doc:
        filters.append(scope_predicate(doc["scopeQ"]))
    return tuple(filters)


def compile_matcher(
    subscription: Subscription, terms: TermMap, lookup: EntityLookup, max_pattern_length: int | None = None
) -> Matcher:
    """`terms`: the subscription's own @context, for the names inside q and geoQ;
    `max_pattern_length` as for filters_of."""
    doc = subscription.doc
    types: tuple[str, ...] | None = None
    select = None
    if "entities" in doc:
        union, select = selector_predicate(doc["entities"], lambda name: name, max_pattern_length)  # stored expanded
        types = tuple(union or ())
    watched = frozenset(doc["watchedAttributes"]) if "watchedAttributes" in doc else None
    triggers = frozenset(doc.get("notificationTrigger", DEFAULT_TRIGGERS))
    expires = doc.get("expiresAt")
    notification = doc["notification"]
    return Matcher(
        tenant=subscription.tenant,
        id=subscription.id,
        triggers=triggers,
        watched=watched,
        types=types,
        select=select,
        filters=filters_of(doc, terms, lookup, max_pattern_length),
        throttling=float(doc.get("throttling", 0)),
        periodic="timeInterval" in doc,
        active=doc.get("isActive", True) is not False,
        expires_at=parse_datetime(expires, "expiresAt") if expires else None,
        # with an owner, the notification is screened at delivery against the entity before too
        keep_before=bool(notification.get("showChanges"))
        or bool(triggers & {"attributeDeleted", "entityDeleted"})
        or subscription.owner is not None,
    )


def periodic_query(subscription: Subscription, terms: TermMap, lookup: EntityLookup, limit: int) -> EntityQuery:
    """The entities a timeInterval subscription reports: its selectors, q, geoQ and scopeQ."""
    doc = subscription.doc
    query = build_entity_query(QuerySpec(selectors=doc.get("entities"), max_pattern_length=None), lambda name: name)
    own = filters_of(doc, terms, lookup)
    filters = (query.predicate, *own) if query.predicate else own
    if filters:
        query.predicate = lambda entity: all(test(entity) for test in filters)
    query.limit = limit
    return query


@dataclass
class TenantIndex:
    by_type: dict[str, list[Matcher]] = field(default_factory=dict)
    any_type: list[Matcher] = field(default_factory=list)


class ChangeMatcher:
    """The store's change listener. The index is replaced whole (never mutated) on each
    subscription write, so the writer thread always reads a consistent snapshot."""

    def __init__(self) -> None:
        self._index: dict[str, TenantIndex] = {}
        self._throttled: dict[tuple[str, str], float] = {}  # last notification time (monotonic)
        self.throttle_in_store = False  # set when the store decides throttling (several workers)
        self._lock = threading.Lock()
        self._lookup: EntityLookup | None = None  # the running transaction's, during a call
        # a faulty subscription fails on every change it is matched against: one line per kind
        # of failure and subscription, then a count at most once a minute
        self.failures = FailureLog(log)

    def linked(self, entity_id: str) -> Entity | None:
        """The lookup compiled into q predicates: entities as the current write transaction sees them."""
        return self._lookup(entity_id) if self._lookup is not None else None

    def rebuild(self, matchers: Iterable[Matcher]) -> None:
        index: dict[str, TenantIndex] = {}
        for matcher in matchers:
            if matcher.periodic:
                continue  # timeInterval subscriptions notify on their timer, not on changes
            tenant = index.setdefault(matcher.tenant, TenantIndex())
            if matcher.types is None:
                tenant.any_type.append(matcher)
            for entity_type in matcher.types or ():
                tenant.by_type.setdefault(entity_type, []).append(matcher)
        self._index = index

    def candidates(self, tenant: str, types: Iterable[str]) -> list[Matcher]:
        index = self._index.get(tenant)
        if index is None:
            return []
        found = {id(m): m for t in types for m in index.by_type.get(t, ())}
        found.update({id(m): m for m in index.any_type})
        return list(found.values())

    def __call__(self, change: EntityChange, lookup: EntityLookup) -> Sequence[OutboxRow]:
        if change.tenant not in self._index:  # no subscription of the tenant: no set of types to build
            return []
        before, after = change.before, change.after
        types = set(before["type"] if before else ()) | set(after["type"] if after else ())
        matchers = self.candidates(change.tenant, types)
        if not matchers:
            return []
        moment = datetime.now(UTC)
        changes = attribute_changes(before, after)
        rows = []
        self._lookup = lookup
        try:
            for matcher in matchers:
                try:
                    row = self._match(matcher, change, changes, moment)
                except Exception:  # a faulty subscription must never fail the write that triggered it
                    self.failures.failed((matcher.tenant, matcher.id), "matching subscription %s failed", matcher.id)
                    continue
                if row is not None:
                    rows.append(row)
        finally:
            self._lookup = None
        return rows

    def _match(self, matcher: Matcher, change: EntityChange, changes: Changes, moment: datetime) -> OutboxRow | None:
        if not matcher.live(moment):
            return None
        before, after = change.before, change.after
        fired = fired_triggers(before, after, changes, matcher.triggers, matcher.watched)
        subject = after if after is not None else before
        if not fired or subject is None or not matcher.selects(subject):
            return None
        if matcher.throttling and not self.throttle_in_store and not self._pass_throttle(matcher):
            return None
        payload = {
            "triggers": fired,
            "at": now(),
            "before": before if matcher.keep_before else None,
            "after": after,
            "request_id": current_request_id.get(),  # the write's: delivery logs name it
        }
        return OutboxRow(matcher.tenant, matcher.id, matcher.lane, payload, throttling=matcher.throttling)

    def _pass_throttle(self, matcher: Matcher) -> bool:
        """throttling: at most one notification per period; the ones in between are dropped."""
        key = (matcher.tenant, matcher.id)
        clock = time.monotonic()
        with self._lock:
            last = self._throttled.get(key)
            if last is not None and clock - last < matcher.throttling:
                return False
            self._throttled[key] = clock
        return True

    def forget(self, tenant: str, subscription_id: str) -> None:
        with self._lock:
            self._throttled.pop((tenant, subscription_id), None)


# -- notification data ----------------------------------------------------------------------------------
def _previous(member: str, value: Any, kind: str, terms: TermMap) -> tuple[str, Any]:
    if kind == "VocabProperty":
        value = [terms.compact(v) for v in value] if isinstance(value, list) else terms.compact(value)
    return PREVIOUS[member], value


def _null_marker(old: Instance, at: str, show_changes: bool, terms: TermMap, *, keep_dataset: bool) -> Instance:
    """An attribute instance that was deleted, as notifications report it (spec 5.8.x): its value
    member is NGSI-LD Null, with deletedAt and, with showChanges, its previous value."""
    kind = old["type"]
    member = VALUE_MEMBER[kind]
    null: Any = NULL_URI
    if kind == "LanguageProperty":
        null = {"@none": NULL_URI}
    elif kind in ("ListProperty", "ListRelationship"):
        null = [NULL_URI]
    marker: Instance = {"type": kind, member: null}
    if keep_dataset and "datasetId" in old:
        marker["datasetId"] = old["datasetId"]
    for key in ("createdAt", "modifiedAt"):
        if key in old:
            marker[key] = old[key]
    marker["deletedAt"] = at
    if show_changes and member in old:
        name, value = _previous(member, old[member], kind, terms)
        marker[name] = value
    return marker


def notified_entity(payload: dict[str, Any], doc: Doc, terms: TermMap) -> Entity:
    """The entity a change notification reports, in the internal form: the entity after the
    change (or its id and type if it was deleted), with NGSI-LD Null markers for deleted
    attributes and, with showChanges, the previous values of changed ones."""
    before: Entity | None = payload.get("before")
    after: Entity | None = payload.get("after")
    triggers = set(payload["triggers"])
    at = payload["at"]
    show = bool(doc["notification"].get("showChanges"))
    watched = set(doc.get("watchedAttributes") or ()) or None
    changes = attribute_changes(before, after)
    if after is not None:
        entity = copy.deepcopy(after)
    else:
        assert before is not None
        entity = {k: v for k, v in before.items() if k != "attrs"}
        entity["attrs"] = {}
        entity["deletedAt"] = at
    if "attributeDeleted" in triggers or ("entityDeleted" in triggers and show):
        for iri, instances in changes.deleted.items():
            if watched is not None and iri not in watched:
                continue
            remaining = entity["attrs"].setdefault(iri, [])
            if remaining:  # some instances (datasetIds) are left: one marker per deleted instance
                remaining.extend(_null_marker(i, at, show, terms, keep_dataset=True) for i in instances)
            else:  # the whole attribute went: one marker
                default = next((i for i in instances if "datasetId" not in i), instances[0])
                remaining.append(_null_marker(default, at, show, terms, keep_dataset=False))
    if show:
        for iri, pairs in changes.updated.items():
            for old, new in pairs:
                member = VALUE_MEMBER.get(old.get("type", ""))
                if member is None or member not in old or old.get(member) == new.get(member):
                    continue
                for instance in entity["attrs"].get(iri, []):
                    if instance.get("datasetId") == new.get("datasetId"):
                        name, value = _previous(member, old[member], old["type"], terms)
                        instance[name] = value
    return entity


def render_options(doc: Doc, terms: TermMap) -> RenderOptions:
    """How a subscription's notifications render entities (format, attributes, pick/omit,
    sysAttrs, lang, datasetId)."""
    notification = doc["notification"]
    fmt = notification.get("format", "normalized")
    attrs = omit = None
    pick_id = pick_type = True
    if "attributes" in notification:
        attrs = frozenset(notification["attributes"])
    if "pick" in notification:
        names = notification["pick"]
        pick_id, pick_type = "id" in names, "type" in names
        attrs = frozenset(n for n in names if n not in PROJECTION_KEYS)
    if "omit" in notification:
        names = notification["omit"]
        pick_id, pick_type = "id" not in names, "type" not in names
        omit = frozenset(n for n in names if n not in PROJECTION_KEYS)
    datasets = None
    if "datasetId" in doc:
        datasets = frozenset(None if d == "@none" else d for d in doc["datasetId"])
    return RenderOptions(
        terms=terms,
        format="keyValues" if fmt == "simplified" else fmt,
        sys_attrs=bool(notification.get("sysAttrs")),
        attrs=attrs,
        omit=omit,
        pick_id=pick_id,
        pick_type=pick_type,
        lang=doc.get("lang"),
        datasets=datasets,
    )


def notification_entity(entity: Entity, options: RenderOptions) -> dict[str, Any]:
    """One item of a notification's `data`. A deleted entity always carries deletedAt; keyValues
    with sysAttrs keeps the entity's createdAt and modifiedAt."""
    out = render_entity(entity, options)
    if options.sys_attrs and options.format == "keyValues":
        for key in ("createdAt", "modifiedAt"):
            if key in entity:
                out[key] = entity[key]
    if "deletedAt" in entity:
        out["deletedAt"] = entity["deletedAt"]
    return out
