"""Distributed subscriptions (spec 5.8.1.4, 5.8.5.4, 5.8.6): an entity subscription forwarded to
the context sources registered for what it watches.

An entity subscription that is not `localOnly` gets an internal context source registration
subscription (5.11.2; stored with the others, visible at /csourceSubscriptions, marked by its
`forwarded` member): its entities, watchedAttributes and csf select the registrations. Each
registration it selects that supports createSubscription gets a reduced copy of the subscription
(no q with splitEntities) whose notification endpoint is this broker's inbox, INBOX_PATH, and
whose id is random (128 bits): the inbox takes a notification only for an id it made, so the id
is the credential. A registration made later is told to the internal subscription like any
registration change (newlyMatching), and gets its copy then; one deleted or no longer matching
(noLongerMatching) has its copy deleted. Updating the entity subscription updates the copies;
deleting it deletes them.

An inbound notification is merged with the local entity (the notified attributes over the
stored ones, unless the stored instance was observed later), filtered again by the
subscription's selectors, q, geoQ and scopeQ, and handed to the subscription's lane
(SubscriptionService.notify_entities): the same screening, rendering and delivery as every
notification. Every call to a source goes through the Forwarder (bounded, timed out) in the
background: no request waits for a source.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlsplit

from cityos.entities.model import Entity, parse_entity
from cityos.entities.values import now
from cityos.errors import NgsiLdError, log_failure
from cityos.federation import loops
from cityos.federation.client import Answer, Call, Forwarder, source_headers
from cityos.federation.planning import Doc, Target, mode, operations
from cityos.jsonld.registry import ContextRegistry
from cityos.jsonld.termmap import TermMap
from cityos.registrations import expired, matches
from cityos.registrations.matching import type_names
from cityos.registrations.subscriptions import CSOURCE, CSourceSubscriptions, selects
from cityos.store.base import EntityStore
from cityos.subscriptions.model import Subscription, map_type_names
from cityos.subscriptions.service import SubscriptionService
from cityos.tasks import stop_tasks

log = logging.getLogger("cityos.federation")
INBOX_PATH = "/ngsi-ld/ex/remote-notify"
Key = tuple[str, str]  # (tenant, internal subscription id)
RELOAD_SECONDS = 5.0  # an unknown id reloads the index from the store at most this often
MAX_ITEMS = 1000  # entities taken from one inbound notification
# members of the subscription the copy carries as they are stored (q is the text as written)
COPIED = ("notificationTrigger", "q", "scopeQ", "expiresAt", "throttling", "timeInterval", "lang", "splitEntities")
SYSTEM = frozenset({"@context", "createdAt", "modifiedAt", "deletedAt"})


@dataclass(frozen=True)
class Remote:
    """One copy of a subscription at one source."""

    tenant: str
    internal_id: str
    subscription_id: str
    registration: Doc
    remote_id: str
    via: str | None = None  # the Via the subscription came with, and this broker's name in it
    me: str | None = None


def internal_id(subscription_id: str) -> str:
    """The internal registration subscription of an entity subscription (one per subscription)."""
    return f"urn:ngsi-ld:Subscription:forwarding:{uuid.uuid5(uuid.NAMESPACE_URL, subscription_id)}"


def forwards(subscription: Subscription) -> bool:
    """Whether a subscription is forwarded: an entity subscription that is not localOnly."""
    return subscription.kind == "entity" and subscription.doc.get("localOnly") is not True


def merge_notified(local: Entity | None, notified: Entity) -> Entity:
    """The local entity with the notified attributes over it: an instance (per datasetId) is
    replaced unless the stored one carries a later observedAt; types are united."""
    if local is None:
        return notified
    out = copy.deepcopy(local)
    for kind in notified.get("type") or ():
        if kind not in out["type"]:
            out["type"].append(kind)
    for iri, instances in notified["attrs"].items():
        held = out["attrs"].setdefault(iri, [])
        for instance in instances:
            dataset = instance.get("datasetId")
            at = next((i for i, h in enumerate(held) if h.get("datasetId") == dataset), None)
            if at is None:
                held.append(instance)
                continue
            mine, theirs = held[at].get("observedAt"), instance.get("observedAt")
            if not (mine and theirs and str(mine) > str(theirs)):
                held[at] = instance
    return out


class FederatedSubscriptions:
    """The forwarded copies of this broker's subscriptions and the inbox for their notifications."""

    def __init__(
        self,
        store: EntityStore,
        contexts: ContextRegistry,
        forwarder: Forwarder,
        csource: CSourceSubscriptions,
        subscriptions: SubscriptionService,
        base_url: Callable[[], str],
    ) -> None:
        self.store = store
        self.contexts = contexts
        self.forwarder = forwarder
        self.csource = csource
        self.subscriptions = subscriptions
        self.base_url = base_url
        self._index: dict[str, Remote] = {}  # remote id -> its copy
        self._locks: dict[Key, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._loaded_at = 0.0

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        self.csource.internal = self.registrations_changed
        await self._reload()

    async def stop(self) -> None:
        self.csource.internal = None
        await stop_tasks(list(self._background))

    async def _reload(self) -> None:
        """The index from the store: every worker knows the copies every other one made."""
        self._loaded_at = time.monotonic()
        index: dict[str, Remote] = {}
        for row in await self.store.load_subscriptions():
            state = row.document.get("forwarded")
            if row.document.get("kind") != CSOURCE or not isinstance(state, dict):
                continue
            for held in state.get("remotes", {}).values():
                index[held["id"]] = Remote(
                    row.tenant,
                    row.id,
                    state["subscription"],
                    held["registration"],
                    held["id"],
                    state.get("via"),
                    state.get("me"),
                )
        self._index = index

    def _remotes(self, internal: Subscription) -> list[Remote]:
        """The copies of an internal subscription: as stored (another worker may have made some),
        and those this process made since it read it."""
        state = internal.forwarded or {}
        found = {
            held["id"]: Remote(
                internal.tenant,
                internal.id,
                str(state.get("subscription")),
                held["registration"],
                held["id"],
                state.get("via"),
                state.get("me"),
            )
            for held in state.get("remotes", {}).values()
        }
        key = (internal.tenant, internal.id)
        found.update({r.remote_id: r for r in self._index.values() if (r.tenant, r.internal_id) == key})
        return list(found.values())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        async def logged() -> None:
            try:
                await work
            except Exception:
                log_failure(log, "forwarding a subscription to a context source failed")

        task = asyncio.create_task(logged())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # -- the entity subscription's life (called by the handlers after the local write) ---------------
    async def created(self, subscription: Subscription, *, via: str | None = None, me: str | None = None) -> None:
        """Make the internal registration subscription; the registrations it selects now are told
        to registrations_changed in the background (CSourceSubscriptions.save). `via`: the Via of
        the creating request, `me`: this broker as that request named it (its Host); the copies
        carry both, so a cycle of registrations ends at the first broker it comes back to (508)."""
        if not forwards(subscription):
            return
        doc = subscription.doc
        internal: Doc = {
            "id": internal_id(subscription.id),
            "type": "Subscription",
            "description": f"forwards subscription {subscription.id} to context sources (5.8.1.4)",
            "notification": {"endpoint": {"uri": self.base_url() + INBOX_PATH, "accept": "application/json"}},
        }
        for name in ("entities", "watchedAttributes", "csf"):
            if name in doc:
                internal[name] = copy.deepcopy(doc[name])
        state: Doc = {"subscription": subscription.id, "remotes": {}, "via": via, "me": me}
        made = Subscription(
            subscription.tenant, internal, subscription.context, owner=subscription.owner, kind=CSOURCE, forwarded=state
        )
        existing = await self.csource.get(subscription.tenant, internal["id"])
        await self.csource.save(made, before=existing)

    async def updated(self, before: Subscription, after: Subscription) -> None:
        """Follow an update: the copies are updated, those whose registration no longer matches
        deleted, and the registrations newly selected get one."""
        if not forwards(after):
            await self.deleted(before)
            return
        current = await self.csource.get(after.tenant, internal_id(after.id))
        if current is None:
            await self.created(after)
            return
        doc = {k: v for k, v in current.doc.items() if k not in ("entities", "watchedAttributes", "csf")}
        for name in ("entities", "watchedAttributes", "csf"):
            if name in after.doc:
                doc[name] = copy.deepcopy(after.doc[name])
        renewed = replace(current, doc=doc, context=after.context)
        await self.csource.save(renewed, before=current)
        self._spawn(self._refresh(renewed, after))

    async def _refresh(self, internal: Subscription, subscription: Subscription) -> None:
        key = (internal.tenant, internal.id)
        async with self._lock(key):
            internal = await self.csource.get(*key) or internal
            terms = await self.csource.terms_of(internal)
            for remote in self._remotes(internal):
                if selects(internal.doc, remote.registration, terms):
                    body = await self._copy(subscription, remote.registration, remote.remote_id)
                    body.pop("id", None)
                    body.pop("type", None)
                    await self._call(remote, "PATCH", body)
                else:
                    await self._forget(remote)
                    await self._call(remote, "DELETE")

    async def deleted(self, subscription: Subscription) -> None:
        """Delete the internal registration subscription now; its copies in the background."""
        key = (subscription.tenant, internal_id(subscription.id))
        internal = await self.csource.get(*key)
        if internal is None:
            return
        await self.csource.delete(*key)
        self._spawn(self._delete_all(internal))

    async def _delete_all(self, internal: Subscription) -> None:
        async with self._lock((internal.tenant, internal.id)):  # after a copy being made: indexed by then
            for remote in self._remotes(internal):
                self._index.pop(remote.remote_id, None)
                await self._call(remote, "DELETE")

    # -- registrations appearing, changing, going (CSourceSubscriptions.internal) --------------------
    async def registrations_changed(self, internal: Subscription, registrations: list[Doc], reason: str) -> None:
        key = (internal.tenant, internal.id)
        async with self._lock(key):
            fresh = await self.csource.get(*key)
            state = (fresh.forwarded if fresh is not None else None) or {}
            subscription = self.subscriptions.get(internal.tenant, str(state.get("subscription")))
            if fresh is None or subscription is None:
                return
            for registration in registrations:
                held = self._held(fresh, registration)
                usable = (
                    isinstance(registration.get("endpoint"), str)
                    and "createSubscription" in operations(registration)
                    and not expired(registration)
                )
                if held is not None and (reason == "noLongerMatching" or not usable or _moved(held, registration)):
                    await self._forget(held)
                    await self._call(held, "DELETE")
                    held = None
                if held is None and usable and reason != "noLongerMatching":
                    await self._make(fresh, subscription, registration)

    def _held(self, internal: Subscription, registration: Doc) -> Remote | None:
        wanted = registration.get("id")
        return next((r for r in self._remotes(internal) if r.registration.get("id") == wanted), None)

    async def _make(self, internal: Subscription, subscription: Subscription, registration: Doc) -> None:
        """Record the copy first (its notifications may come before the source answers), then ask
        the source to make it; a refusal or no answer forgets it again."""
        remote = Remote(
            internal.tenant,
            internal.id,
            subscription.id,
            registration,
            f"urn:ngsi-ld:Subscription:{secrets.token_hex(16)}",
            (internal.forwarded or {}).get("via"),
            (internal.forwarded or {}).get("me"),
        )
        await self._record(remote)
        answer = await self._call(remote, "POST", await self._copy(subscription, registration, remote.remote_id))
        if not answer.ok:
            log.warning(
                "context source %s did not take subscription %s: %s",
                registration.get("id"),
                subscription.id,
                answer.problem or f"HTTP {answer.status}",
            )
            await self._forget(remote)

    async def _record(self, remote: Remote) -> None:
        self._index[remote.remote_id] = remote
        await self._save_state(remote, keep=True)

    async def _forget(self, remote: Remote) -> None:
        self._index.pop(remote.remote_id, None)
        await self._save_state(remote, keep=False)

    async def _save_state(self, remote: Remote, *, keep: bool) -> None:
        current = await self.csource.get(remote.tenant, remote.internal_id)
        if current is None:
            return
        state = copy.deepcopy(current.forwarded or {"subscription": remote.subscription_id})
        remotes = state.setdefault("remotes", {})
        registration_id = str(remote.registration.get("id"))
        if keep:
            remotes[registration_id] = {"id": remote.remote_id, "registration": remote.registration}
        else:
            remotes.pop(registration_id, None)
        await self.store.save_subscription(replace(current, forwarded=state).to_row(), create=False)

    # -- the calls -----------------------------------------------------------------------------------
    async def _copy(self, subscription: Subscription, registration: Doc, remote_id: str) -> Doc:
        """The reduced copy a source gets (5.8.1.4): what it can evaluate, in the subscription's
        own terms, notifying this broker's inbox; no q with splitEntities (5.8.6)."""
        doc = subscription.doc
        terms = await self._terms(subscription)
        body: Doc = {"id": remote_id, "type": "Subscription"}
        if "entities" in doc:
            chosen = [s for s in doc["entities"] if matches(registration, types=sorted(type_names(s["type"])))]
            body["entities"] = [
                {**s, "type": map_type_names(s["type"], terms.compact)} for s in chosen or doc["entities"]
            ]
        if "watchedAttributes" in doc:
            body["watchedAttributes"] = [terms.compact(a) for a in doc["watchedAttributes"]]
        for name in COPIED:
            if name in doc and not (name in ("q", "scopeQ") and doc.get("splitEntities")):
                body[name] = doc[name]
        if doc.get("isActive") is False:
            body["isActive"] = False
        if Target(registration, mode(registration), None).local_only:
            body["localOnly"] = True  # the source answers from its own data only (4.3.6.4)
        body["notification"] = {
            "format": "normalized",
            "endpoint": {"uri": self.base_url() + INBOX_PATH, "accept": "application/json"},
        }
        return body

    async def _terms(self, subscription: Subscription) -> TermMap:
        try:
            return (await self.contexts.resolve(subscription.tenant, subscription.context)).terms
        except NgsiLdError:
            return self.contexts.core_terms()

    async def _call(self, remote: Remote, method: str, body: Doc | None = None) -> Answer:
        registration = remote.registration
        target = Target(registration, mode(registration), None)
        me = remote.me or urlsplit(self.base_url()).netloc
        headers = source_headers(registration, {})
        headers["Via"] = loops.extend(remote.via, me)
        headers["Accept"] = "application/json"
        subscription = self.subscriptions.get(remote.tenant, remote.subscription_id)
        if subscription is not None and body is not None:
            try:
                link = (await self.contexts.resolve(remote.tenant, subscription.context)).link_url
                headers["Link"] = f'<{link}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
            except NgsiLdError:
                pass
        path = "/subscriptions" if method == "POST" else "/subscriptions/" + quote(remote.remote_id, safe=":")
        answer = await self.forwarder.send(Call(target, method, path, body=body, headers=headers))
        if not answer.ok and method != "POST":
            log.info("context source %s: %s %s: %s", target.id, method, path, answer.problem or answer.status)
        return answer

    # -- the inbox -----------------------------------------------------------------------------------
    async def lookup(self, remote_id: str) -> Remote | None:
        """The copy a notification names; an unknown id reloads the index (another worker may have
        made it), at most every RELOAD_SECONDS."""
        found = self._index.get(remote_id)
        if found is None and time.monotonic() - self._loaded_at > RELOAD_SECONDS:
            await self._reload()
            found = self._index.get(remote_id)
        return found

    async def inbound(self, remote: Remote, items: list[Any], context: Any | None) -> int:
        """Merge the notified entities with the local ones and notify the subscription of those its
        filters pass; returns how many. `context`: the notification's @context (None: the
        subscription's own, which its copy was sent with)."""
        subscription = self.subscriptions.get(remote.tenant, remote.subscription_id)
        if subscription is None:
            return 0
        value = context if context is not None else subscription.context
        terms = (await self.contexts.resolve(remote.tenant, value)).terms
        stamp = now()
        merged: list[Entity] = []
        for item in items[:MAX_ITEMS]:
            if not isinstance(item, dict):
                continue
            plain = {k: v for k, v in item.items() if k not in SYSTEM}
            try:
                if "@context" in item:
                    own = (await self.contexts.resolve(remote.tenant, item["@context"])).terms
                    notified = parse_entity(plain, own, require_type=False, stamp=stamp)
                else:
                    notified = parse_entity(plain, terms, require_type=False, stamp=stamp)
            except NgsiLdError as exc:
                log.info("a notified entity of %s is skipped: %s", remote.subscription_id, exc.detail)
                continue
            local = await self.store.get_entity(remote.tenant, notified["id"])
            merged.append(merge_notified(local, notified))
        return self.subscriptions.notify_entities(remote.tenant, remote.subscription_id, merged)


def _moved(held: Remote, registration: Doc) -> bool:
    """A registration updated to another endpoint or tenant: its copy is made again there."""
    return any(held.registration.get(k) != registration.get(k) for k in ("endpoint", "tenant"))
