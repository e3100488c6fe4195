"""Context source registration subscriptions (spec 5.11) and their notifications (5.3.2,
5.11.7): a Subscription (5.2.12, parsed and rendered by subscriptions/model.py, plus `temporalQ`)
whose entities, watchedAttributes, q, csf, geoQ, scopeQ and temporalQ select registrations.

They are stored with the entity subscriptions (kind CSOURCE) and delivered with the same Sender
(HTTP and MQTT endpoints, receiverInfo, notifierInfo) and the same delivery bookkeeping; they are
read from the store on every use, so every worker sees the same ones. A registration change
notifies each subscription whose match changed: newlyMatching, updated, noLongerMatching.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import Any

from cityos.entities.values import now
from cityos.errors import BadRequestData, NgsiLdError, log_failure
from cityos.jsonld.registry import ContextRegistry
from cityos.jsonld.termmap import TermMap
from cityos.query.geo import parse_geoq
from cityos.query.patterns import DEFAULT_MAX_LENGTH
from cityos.registrations.matching import RegistrationFilter, matching_items, type_names
from cityos.registrations.model import expired, render_registration
from cityos.store.base import EntityStore, SubscriptionRow
from cityos.subscriptions.delivery import DeliveryFailed, Outgoing, Sender
from cityos.subscriptions.dispatcher import CONTEXT_REL
from cityos.subscriptions.model import (
    Doc,
    Subscription,
    merge_subscription,
    parse_subscription,
    render_subscription,
    status_of,
)
from cityos.tasks import stop_tasks
from cityos.temporal.query import Window, parse_window

log = logging.getLogger("cityos.registrations")
CSOURCE = "csource"
NOTIFICATION_TYPE = "ContextSourceNotification"
Key = tuple[str, str]
# what an internal subscription (one with `forwarded`, made by federation/subscriptions.py) is
# told instead of a notification: the subscription, the registrations, the trigger reason
Internal = Callable[[Subscription, list[Doc], str], Awaitable[None]]


def _temporal_q(value: Any) -> Doc:
    if not isinstance(value, dict):
        raise BadRequestData("temporalQ must be a TemporalQuery object")
    window = _window_of(value)
    if window.timerel is None:
        raise BadRequestData("temporalQ needs timerel")
    return {k: value[k] for k in ("timerel", "timeAt", "endTimeAt", "timeproperty") if value.get(k) is not None}


def _window_of(value: Doc) -> Window:
    return parse_window(value.get("timerel"), value.get("timeAt"), value.get("endTimeAt"), value.get("timeproperty"))


def parse_csource_subscription(body: Any, terms: TermMap, *, max_pattern_length: int = DEFAULT_MAX_LENGTH) -> Doc:
    """A create body -> the stored form (a Subscription, and its temporalQ)."""
    doc = parse_subscription(body, terms, max_pattern_length=max_pattern_length)
    if body.get("temporalQ") is not None:
        doc["temporalQ"] = _temporal_q(body["temporalQ"])
    return doc


def merge_csource_subscription(
    doc: Doc, fragment: Any, terms: TermMap, *, max_pattern_length: int = DEFAULT_MAX_LENGTH
) -> Doc:
    merged = merge_subscription(doc, fragment, terms, max_pattern_length=max_pattern_length)
    if "temporalQ" in fragment:
        merged.pop("temporalQ", None)
        if fragment["temporalQ"] is not None:
            merged["temporalQ"] = _temporal_q(fragment["temporalQ"])
    return merged


def render_csource_subscription(subscription: Subscription, terms: TermMap, at: datetime) -> Doc:
    out = render_subscription(subscription, terms, at)
    if "notificationTrigger" not in subscription.doc:
        out.pop("notificationTrigger", None)  # entity triggers do not apply to registrations
    return out


def registration_filter(doc: Doc) -> RegistrationFilter:
    """The filters of a csource subscription beyond entities and watchedAttributes."""
    return RegistrationFilter(
        q=doc.get("q"),
        csf=doc.get("csf"),
        geo=parse_geoq(doc["geoQ"]) if "geoQ" in doc else None,
        scope_q=doc.get("scopeQ"),
        window=_window_of(doc["temporalQ"]) if "temporalQ" in doc else None,
    )


def _items(doc: Doc, registration: Doc) -> list[Doc]:
    """The RegistrationInfo items of `registration` the subscription's entities and
    watchedAttributes select."""
    watched = doc.get("watchedAttributes")
    selectors = doc.get("entities")
    if not selectors:
        return matching_items(registration, attrs=watched)
    found: list[Doc] = []
    for s in selectors:
        for item in matching_items(
            registration,
            types=sorted(type_names(s["type"])),
            ids=[s["id"]] if "id" in s else None,
            id_pattern=s.get("idPattern"),
            attrs=watched,
        ):
            if item not in found:
                found.append(item)
    return found


def selects(doc: Doc, registration: Doc, terms: TermMap) -> bool:
    """Whether the subscription `doc` (its own @context `terms`) selects the registration."""
    return bool(_items(doc, registration)) and registration_filter(doc).compile(terms, None)(registration)


def relevant(doc: Doc, registration: Doc) -> Doc:
    """The registration as notified (5.11.7 "relevant information"): only the information items
    the subscription selects; all of them when it no longer selects any (noLongerMatching)."""
    items = _items(doc, registration)
    return {**registration, "information": items} if items else registration


def trigger_reason(before: bool, after: bool) -> str | None:
    """5.11.7: the reason a registration change is notified, None when it is not."""
    if after:
        return "updated" if before else "newlyMatching"
    return "noLongerMatching" if before else None


class CSourceSubscriptions:
    """Run-time side: notifications on registration changes, on creation and every timeInterval."""

    def __init__(self, store: EntityStore, contexts: ContextRegistry, sender: Sender | None) -> None:
        self.store = store
        self.contexts = contexts
        self.sender = sender
        self._locks: dict[Key, asyncio.Lock] = {}
        self._timers: dict[Key, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.internal: Internal | None = None  # set by the app: forwarded entity subscriptions

    # -- store ---------------------------------------------------------------------------------------
    async def listing(self, tenant: str) -> list[Subscription]:
        rows = await self.store.load_subscriptions()
        return [Subscription.from_row(r) for r in rows if r.tenant == tenant and r.document.get("kind") == CSOURCE]

    async def get(self, tenant: str, subscription_id: str) -> Subscription | None:
        row = await self.store.get_subscription(tenant, subscription_id)
        if row is None or row.document.get("kind") != CSOURCE:
            return None
        return Subscription.from_row(row)

    async def terms_of(self, subscription: Subscription) -> TermMap:
        try:
            return (await self.contexts.resolve(subscription.tenant, subscription.context)).terms
        except NgsiLdError:
            return self.contexts.core_terms()

    async def save(self, subscription: Subscription, *, before: Subscription | None = None) -> None:
        """Create (`before` None) or replace a subscription. Without a timeInterval, the
        registrations it selects now and did not select before are notified (newlyMatching)."""
        await self.store.save_subscription(subscription.to_row(), create=before is None)
        self._schedule(subscription)
        if "timeInterval" not in subscription.doc:
            # the registrations are read before the answer: one made after it is a change, not initial
            await self._logged(self._initial(subscription.tenant, subscription.id, before=before))

    async def delete(self, tenant: str, subscription_id: str) -> bool:
        self._cancel((tenant, subscription_id))
        return await self.store.delete_subscription(tenant, subscription_id)

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the periodic notifications of the stored subscriptions."""
        for row in await self.store.load_subscriptions():
            if row.document.get("kind") == CSOURCE:
                self._schedule(Subscription.from_row(row))

    async def stop(self) -> None:
        tasks = [*self._timers.values(), *self._background]
        self._timers.clear()
        await stop_tasks(tasks)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._logged(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, None]) -> None:
        """Background work: a failure (the database gone, ...) is one log line, not a lost task."""
        try:
            await work
        except Exception:
            log_failure(log, "a context source notification failed")

    def _cancel(self, key: Key) -> None:
        task = self._timers.pop(key, None)
        if task is not None:
            task.cancel()

    def _schedule(self, subscription: Subscription) -> None:
        key = (subscription.tenant, subscription.id)
        self._cancel(key)
        interval = subscription.doc.get("timeInterval")
        if interval:
            self._timers[key] = asyncio.create_task(self._every(key, float(interval)))

    async def _every(self, key: Key, interval: float) -> None:
        """Every registration the subscription selects, every `interval` seconds from now; with
        several workers, the one that claims the period sends it."""
        while True:
            try:
                if await self.store.claim_periodic(*key, interval):
                    await self._initial(*key, periodic=True)
            except Exception:
                log_failure(log, f"the periodic notification of {key[1]} failed")
            await asyncio.sleep(interval)

    # -- notifying -----------------------------------------------------------------------------------
    async def _registrations(self, tenant: str) -> list[Doc]:
        rows = await self.store.list_registrations(tenant)
        return [r.document for r in rows if not expired(r.document)]

    async def _initial(
        self, tenant: str, subscription_id: str, *, periodic: bool = False, before: Subscription | None = None
    ) -> None:
        """Every registration the subscription selects now (on creation, and every timeInterval);
        after an update, those its earlier version (`before`) did not select."""
        subscription = await self.get(tenant, subscription_id)
        if subscription is None or status_of(subscription.doc, datetime.now(UTC)) != "active":
            return
        terms = await self.terms_of(subscription)
        found = [d for d in await self._registrations(tenant) if selects(subscription.doc, d, terms)]
        if before is not None:
            old_terms = await self.terms_of(before)
            found = [d for d in found if not selects(before.doc, d, old_terms)]
        if found and periodic:
            await self._notify(subscription, found, "newlyMatching")
        elif found:  # sent in the background: the answer to the request does not wait for it
            self._spawn(self._notify(subscription, found, "newlyMatching"))

    async def changed(self, tenant: str, before: Doc | None, after: Doc | None) -> None:
        """A registration was created (before None), updated, or deleted (after None). The
        subscriptions are read now, before the answer (one made after the change does not hear of
        it); the notifications go out in the background."""
        await self._logged(self._changed(tenant, before, after))

    async def _changed(self, tenant: str, before: Doc | None, after: Doc | None) -> None:
        moment = datetime.now(UTC)
        latest = after if after is not None else before
        assert latest is not None
        for subscription in await self.listing(tenant):
            if status_of(subscription.doc, moment) != "active" or "timeInterval" in subscription.doc:
                continue
            try:
                terms = await self.terms_of(subscription)
                was = before is not None and selects(subscription.doc, before, terms)
                is_ = after is not None and selects(subscription.doc, after, terms)
            except NgsiLdError:
                continue
            reason = trigger_reason(was, is_)
            if reason is not None:
                self._spawn(self._notify(subscription, [latest], reason))

    async def _notify(self, subscription: Subscription, registrations: Iterable[Doc], reason: str) -> None:
        key = (subscription.tenant, subscription.id)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one subscription's notifications go out in order
            current = await self.get(*key)
            if current is None:
                return
            if current.forwarded is not None:  # the broker's own: acted on here, nothing is sent
                if self.internal is not None:
                    await self.internal(current, list(registrations), reason)
                return
            if self.sender is None:
                return
            delivery = current.delivery
            delivery.times_sent += 1
            delivery.last_notification = now()
            try:
                await self.sender.send(await self._render(current, registrations, reason))
            except (DeliveryFailed, NgsiLdError) as exc:
                log.debug("context source notification for %s failed: %s", current.id, exc)
                delivery.times_failed += 1
                delivery.last_failure = now()
                delivery.status = "failed"
            else:
                delivery.last_success = now()
                delivery.status = "ok"
            await self.store.save_subscription_status(
                SubscriptionRow(current.tenant, current.id, current.to_row().document, delivery.to_dict())
            )

    async def _render(self, subscription: Subscription, registrations: Iterable[Doc], reason: str) -> Outgoing:
        endpoint = subscription.notification["endpoint"]
        context = await self.contexts.resolve(subscription.tenant, subscription.notification_context())
        accept = endpoint.get("accept", "application/json")
        data = [render_registration(relevant(subscription.doc, d), context.terms) for d in registrations]
        link = None
        if accept == "application/ld+json":
            data = [{**item, "@context": context.value} for item in data]
        else:
            link = f'<{context.link_url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
        body = {
            "id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}",
            "type": NOTIFICATION_TYPE,
            "subscriptionId": subscription.id,
            "notifiedAt": now(),
            "data": data,
            "triggerReason": reason,
        }
        return Outgoing(
            uri=endpoint["uri"],
            notification=body,
            content_type="application/json" if accept == "application/geo+json" else accept,
            link=link,
            receiver_info=[(i["key"], i["value"]) for i in endpoint.get("receiverInfo", [])],
            notifier_info={i["key"]: i["value"] for i in endpoint.get("notifierInfo", [])},
        )
