"""Subscriptions at run time: the in-memory cache the HTTP handlers read, the compiled index the
store's change listener matches against, the periodic (timeInterval) timers, and the dispatcher.

Every subscription write goes to the store first and then to the caches, which are rebuilt whole,
so the writer thread never sees a half-updated index. Writes made by other workers arrive as
StoreEvents (on_event) and are applied the same way; a periodic notification is sent by the one
worker that claims its period.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import UTC, datetime

from cityos.entities.model import Entity
from cityos.entities.values import now
from cityos.errors import FailureLog, ResourceNotFound, log_failure
from cityos.jsonld.registry import ContextRegistry
from cityos.jsonld.termmap import TermMap
from cityos.net import OutboundPolicy
from cityos.settings import Settings
from cityos.store.base import EntityStore, StoreEvent, SubscriptionRow
from cityos.subscriptions.access import AccessSource, OpenAccess
from cityos.subscriptions.delivery import OutgoingSigner, Sender
from cityos.subscriptions.dispatcher import Dispatcher, Job
from cityos.subscriptions.matching import ChangeMatcher, Matcher, compile_matcher, lane_of, periodic_query
from cityos.subscriptions.model import Delivery, Subscription, is_entity_subscription, status_of
from cityos.tasks import stop_tasks

log = logging.getLogger("cityos.subscriptions")
Key = tuple[str, str]  # (tenant, subscription id)
SETTLE_SECONDS = 1.0


class SubscriptionService:
    def __init__(self, store: EntityStore, contexts: ContextRegistry, settings: Settings) -> None:
        self.store = store
        self.contexts = contexts
        self.settings = settings
        self.matcher = ChangeMatcher()
        self._subscriptions: dict[Key, Subscription] = {}
        self._terms: dict[Key, TermMap] = {}
        self._matchers: dict[Key, Matcher] = {}
        self._timers: dict[Key, asyncio.Task[None]] = {}
        self._dispatcher: Dispatcher | None = None
        self._sender: Sender | None = None
        self._refresh_lock = asyncio.Lock()
        self._tickets = 0  # reloads are numbered when they start reading
        self._applied_ticket = 0  # the newest whole reload applied
        self._background: set[asyncio.Task[None]] = set()
        # the policies notifications are screened with; a server sets its Services here
        self.access_source: AccessSource | None = None
        self.outgoing_signer: OutgoingSigner | None = None  # set before start (app.py: dataspace/)
        self._open = OpenAccess.create()
        self._held = False  # a command with auth required leaves the outbox to the server
        # per subscription: a reload (every change another worker makes) or a period may fail again
        self._failures = FailureLog(log)

    def backlog(self) -> dict[str, tuple[int, float]]:
        """Notifications waiting here, by subscription (Dispatcher.backlog; empty before start)."""
        return {} if self._dispatcher is None else self._dispatcher.backlog()

    def delivery_counts(self) -> dict[tuple[str, str], int]:
        """Delivery attempts by (subscription, outcome) (Dispatcher.counts)."""
        return {} if self._dispatcher is None else self._dispatcher.counts

    @property
    def sender(self) -> Sender | None:
        """The notification sender (after install), which context source subscriptions share."""
        return self._sender

    def outbox_stuck(self, after: float) -> str | None:
        """Why notifications are not being delivered (None: they are followed): ops/health.py."""
        if self._dispatcher is None:
            return "the notification dispatcher is not started"
        return self._dispatcher.stuck(after)

    # -- lifecycle -------------------------------------------------------------------------------
    async def install(self) -> None:
        """Load the subscriptions and match every change of the store from now on: the outbox rows
        are written in the change's transaction (delivered by start() or drain())."""
        if self._dispatcher is not None:
            return
        for row in await self.store.load_subscriptions():
            if is_entity_subscription(row):
                await self._load(row)
        self.matcher.rebuild(self._matchers.values())
        policy = OutboundPolicy(
            allow_private_networks=self.settings.allow_private_networks,
            timeout=self.settings.notification_timeout,
            max_bytes=self.settings.notification_max_bytes,
        )
        self._sender = Sender(
            policy, timeout=self.settings.notification_timeout, max_bytes=self.settings.notification_max_bytes
        )
        self._sender.sign = self.outgoing_signer
        self._dispatcher = Dispatcher(self.store, self.contexts, self._sender, self.settings, self.get, self)
        loop = asyncio.get_running_loop()
        dispatcher = self._dispatcher

        def wake() -> None:  # called on the writer thread after a commit that added outbox rows
            loop.call_soon_threadsafe(dispatcher.wake.set)

        self.matcher.throttle_in_store = self.store.throttles_in_store
        self.store.set_change_listener(self.matcher, wake)
        self.store.set_catalog_refresher(self.apply_rows)

    async def start(self) -> None:
        """Install, deliver what the outbox holds and follow it, run the periodic notifications."""
        await self.install()
        assert self._dispatcher is not None
        await self._dispatcher.start()
        for key, subscription in self._subscriptions.items():
            self._schedule(key, subscription)

    async def follow(self) -> None:
        """A command writing into a database: install, and deliver what its writes add to the
        outbox while it runs, leaving alone the rows a server on the same database holds (no
        periodic notifications: a server sends those)."""
        await self.install()
        assert self._dispatcher is not None
        if self.access_source is None and self.settings.auth != "off":
            # this command has no policies to screen notifications with: a server delivers them
            log.info("auth is required: notifications are left in the outbox for the server to deliver")
            self._held = True
            return
        await self._dispatcher.start(release=False)

    async def drain(self, timeout: float) -> int:
        """Deliver the outbox for at most `timeout` seconds, then stop (a command leaving); returns
        how many notifications are left in it for a server (see Dispatcher.drain)."""
        if self._dispatcher is None or timeout <= 0 or self._held:
            return 0
        return await self._dispatcher.drain(timeout)

    async def _load(self, row: SubscriptionRow) -> Subscription:
        """Put a stored subscription in the caches (the matcher index is rebuilt by the caller)."""
        subscription = Subscription.from_row(row)
        terms = await self._own_terms(subscription)
        key = (subscription.tenant, subscription.id)
        self._subscriptions[key] = subscription
        self._terms[key] = terms
        try:
            self._matchers[key] = compile_matcher(subscription, terms, self.matcher.linked)
        except Exception:
            self._matchers.pop(key, None)
            self._failures.failed(("load", *key), "subscription %s cannot be matched and is skipped", subscription.id)
        return subscription

    # -- other workers' writes ---------------------------------------------------------------------
    def on_event(self, event: StoreEvent) -> None:
        """A subscription changed in another worker: apply its delivery status at once, reload
        anything else from the store (in order, one reload at a time)."""
        if event.kind == "subscription-status" and event.data is not None:
            subscription = self._subscriptions.get((event.tenant, event.key))
            if subscription is not None:
                subscription.delivery = Delivery.from_dict(event.data)
            return
        if event.kind in ("subscription", "resync"):
            task = asyncio.create_task(self._refresh(None if event.kind == "resync" else (event.tenant, event.key)))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _refresh(self, key: Key | None) -> None:
        """Reload one subscription (None: all of them) from the store."""
        ticket = self._next_ticket()
        try:
            rows = await self.store.load_subscriptions()
        except Exception:
            log_failure(log, "reloading subscriptions failed")
            return
        await self.apply_rows(rows, key, ticket)

    def _next_ticket(self) -> int:
        self._tickets += 1
        return self._tickets

    async def apply_rows(self, rows: list[SubscriptionRow], key: Key | None = None, ticket: int | None = None) -> None:
        """Make the caches hold these stored rows (all of them, or only `key`'s). Rows read
        earlier than rows already applied are dropped, so a slow reload never undoes a newer one.
        The store calls this inside a write when another worker changed the subscriptions."""
        ticket = self._next_ticket() if ticket is None else ticket
        async with self._refresh_lock:
            if key is None:
                if ticket < self._applied_ticket:
                    return
                self._applied_ticket = ticket
            wanted = {
                (row.tenant, row.id): row
                for row in rows
                if (key is None or (row.tenant, row.id) == key) and is_entity_subscription(row)
            }
            gone = [k for k in self._subscriptions if (key is None or k == key) and k not in wanted]
            for k in gone:
                self._forget(*k)
            for k, row in wanted.items():
                self._schedule(k, await self._load(row))
            self.matcher.rebuild(self._matchers.values())

    async def stop(self) -> None:
        for background in list(self._background):
            background.cancel()
        self.store.set_change_listener(None, None)
        self.store.set_catalog_refresher(None)
        timers = list(self._timers.values())
        self._timers.clear()
        await stop_tasks(timers)
        if self._dispatcher is not None:
            await self._dispatcher.stop()
        if self._sender is not None:
            await self._sender.close()

    async def _own_terms(self, subscription: Subscription) -> TermMap:
        """The subscription's @context compiled; the core context if it cannot be had now."""
        try:
            return (await self.contexts.resolve(subscription.tenant, subscription.context)).terms
        except Exception as exc:
            log.warning(
                "the @context of subscription %s is not available (%s); using the core context", subscription.id, exc
            )
            return self.contexts.core_terms()

    # -- acting for the owners (Dispatcher.Owners) ---------------------------------------------------
    @property
    def access(self) -> AccessSource:
        return self.access_source if self.access_source is not None else self._open

    def terms_of(self, subscription: Subscription) -> TermMap:
        return self._terms.get((subscription.tenant, subscription.id)) or self.contexts.core_terms()

    async def owner_gone(self, subscription: Subscription) -> None:
        """The owner of a subscription no longer exists: it is paused (status "paused", its
        notification status "failed"), once, with one log line; it cannot send anything again."""
        current = self.get(subscription.tenant, subscription.id)
        if current is None or current.doc.get("isActive") is False:
            return
        owner = current.owner.id if current.owner is not None else "(none)"
        log.warning("subscription %s paused: its owner %s no longer exists", current.id, owner)
        delivery = current.delivery
        delivery.status = "failed"
        delivery.last_failure = now()
        doc = {**current.doc, "isActive": False}
        await self.update(Subscription(current.tenant, doc, current.context, delivery, current.owner))

    # -- reads -------------------------------------------------------------------------------------
    def get(self, tenant: str, subscription_id: str) -> Subscription | None:
        return self._subscriptions.get((tenant, subscription_id))

    def require(self, tenant: str, subscription_id: str) -> Subscription:
        subscription = self.get(tenant, subscription_id)
        if subscription is None:
            raise ResourceNotFound(f"subscription {subscription_id} does not exist")
        return subscription

    def listing(self, tenant: str) -> list[Subscription]:
        """A tenant's subscriptions in creation order."""
        return [s for (t, _), s in self._subscriptions.items() if t == tenant]

    def notify_entities(self, tenant: str, subscription_id: str, entities: list[Entity]) -> int:
        """Notify a subscription of entities a context source reported (5.8.6, a forwarded
        subscription): those its selectors, q, geoQ and scopeQ still pass go the way every
        notification goes (the owner's screening, rendering, the Sender, the bookkeeping), as a
        job on its lane; returns how many. Not durable: the source's notification is the record."""
        key = (tenant, subscription_id)
        matcher = self._matchers.get(key)
        if matcher is None or self._dispatcher is None or not matcher.live(datetime.now(UTC)):
            return 0
        kept = []
        for entity in entities:
            try:
                if matcher.selects(entity):
                    kept.append(entity)
            except Exception:  # a faulty filter drops the entity, never the request
                self._failures.failed(("remote", *key), "matching subscription %s failed", subscription_id)
        if kept:
            self._dispatcher.enqueue(lane_of(*key), Job(tenant, subscription_id, entities=kept))
        return len(kept)

    async def settle(self, tenant: str, subscription_id: str) -> None:
        if self._dispatcher is not None:
            await self._dispatcher.settle(tenant, subscription_id, SETTLE_SECONDS)

    # -- writes ------------------------------------------------------------------------------------
    async def create(self, subscription: Subscription, terms: TermMap) -> None:
        """`terms`: the creating request's @context, which q and geoQ are evaluated with."""
        # refuses what cannot be evaluated
        matcher = compile_matcher(subscription, terms, self.matcher.linked, self.settings.max_pattern_length)
        await self.store.save_subscription(subscription.to_row(), create=True)
        self._install((subscription.tenant, subscription.id), subscription, terms, matcher)

    async def update(self, subscription: Subscription) -> None:
        key = (subscription.tenant, subscription.id)
        terms = self._terms.get(key) or self.contexts.core_terms()
        matcher = compile_matcher(subscription, terms, self.matcher.linked, self.settings.max_pattern_length)
        await self.store.save_subscription(subscription.to_row(), create=False)
        self._install(key, subscription, terms, matcher)

    async def delete(self, tenant: str, subscription_id: str) -> None:
        if not await self.store.delete_subscription(tenant, subscription_id):
            raise ResourceNotFound(f"subscription {subscription_id} does not exist")
        self._forget(tenant, subscription_id)
        self.matcher.rebuild(self._matchers.values())

    def _forget(self, tenant: str, subscription_id: str) -> None:
        """Drop a deleted subscription from the caches (the caller rebuilds the matcher index)."""
        key = (tenant, subscription_id)
        self._subscriptions.pop(key, None)
        self._terms.pop(key, None)
        self._matchers.pop(key, None)
        self.matcher.forget(tenant, subscription_id)
        self._cancel_timer(key)

    def _install(self, key: Key, subscription: Subscription, terms: TermMap, matcher: Matcher) -> None:
        self._subscriptions[key] = subscription
        self._terms[key] = terms
        self._matchers[key] = matcher
        self.matcher.rebuild(self._matchers.values())
        self._schedule(key, subscription)

    # -- periodic notifications (timeInterval) ---------------------------------------------------------
    def _cancel_timer(self, key: Key) -> None:
        task = self._timers.pop(key, None)
        if task is not None:
            task.cancel()

    def _schedule(self, key: Key, subscription: Subscription) -> None:
        self._cancel_timer(key)
        if "timeInterval" in subscription.doc:
            self._timers[key] = asyncio.create_task(self._every(key, float(subscription.doc["timeInterval"])))

    async def _every(self, key: Key, interval: float) -> None:
        """Report the matching entities every `interval` seconds, the first time one interval
        after the subscription was made; nothing is sent while none matches."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += interval
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            subscription = self._subscriptions.get(key)
            if subscription is None or self._dispatcher is None:
                return
            if status_of(subscription.doc, datetime.now(UTC)) != "active":
                continue
            try:  # with several workers, one of them reports each period
                if not await self.store.claim_periodic(subscription.tenant, subscription.id, interval):
                    continue
            except Exception:
                self._failures.failed(("claim", *key), "claiming the period of subscription %s failed", subscription.id)
                continue
            try:
                # q paths that follow relationships read on the reader thread running the query
                lookup = functools.partial(self.store.lookup_in_query, subscription.tenant)
                query = periodic_query(subscription, self._terms[key], lookup, self.settings.max_page_size)
                result = await self.store.query_entities(subscription.tenant, query)
            except Exception:
                self._failures.failed(("periodic", *key), "periodic query of subscription %s failed", subscription.id)
                continue
            if result.entities:
                job = Job(subscription.tenant, subscription.id, entities=result.entities)
                self._dispatcher.enqueue(lane_of(*key), job)
