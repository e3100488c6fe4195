"""The outbox worker: delivers the notifications the store wrote next to each change.

Delivery is at-least-once. Each subscription has its own lane (an in-memory queue with one task),
so notifications of a subscription go out in the order of their changes, and a slow or dead
receiver only ever delays its own lane. A failed delivery is retried in place (the lane waits)
with exponential backoff up to a cap, for at most `notification_max_attempts` attempts; the row
leaves the outbox only once it was delivered or given up, so a crash at any point means it is
sent again after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cityos.auth.principal import current_request_id
from cityos.entities.model import Entity
from cityos.entities.render import to_geojson_feature
from cityos.entities.values import now
from cityos.errors import FailureLog, NgsiLdError, log_failure
from cityos.jsonld.registry import ContextRegistry
from cityos.jsonld.termmap import TermMap
from cityos.ngsild.join import fetch_linked, join_plan, render_joined
from cityos.policy.decision import EVERYTHING, ReadView
from cityos.redact import redact_uri
from cityos.settings import Settings
from cityos.store.base import EntityStore, OutboxRow
from cityos.subscriptions.access import (
    AccessSource,
    OwnerGone,
    OwnerSelection,
    owner_principal,
    visible_change,
    visible_entities,
)
from cityos.subscriptions.delivery import DeliveryFailed, Outgoing, Sender
from cityos.subscriptions.matching import (
    lane_of,
    notification_entity,
    notified_entity,
    render_options,
)
from cityos.subscriptions.model import Delivery, Subscription
from cityos.tasks import stop_tasks

log = logging.getLogger("cityos.subscriptions")
OUTBOX_POLL_SECONDS = 2.0
CLAIM_BATCH = 500
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"


@dataclass
class Job:
    """One notification to send: an outbox row (a change), or a periodic report (not durable)."""

    tenant: str
    subscription_id: str
    row: OutboxRow | None = None
    entities: list[Entity] | None = None
    payload: dict[str, Any] | None = None  # the row's payload as the owner may see it (None: the row's own)
    view: ReadView | None = None  # the owner's read view, when it is restricted (linked entities of a join)
    queued: float = field(default_factory=time.monotonic)  # when it was queued here (the metrics' age)


@dataclass
class Lane:
    jobs: deque[Job] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    inflight: asyncio.Future[None] | None = None  # set while a request is out


Lookup = Callable[[str, str], Subscription | None]


class Owners(Protocol):
    """What delivery needs to act for a subscription's owner (SubscriptionService)."""

    @property
    def access(self) -> AccessSource: ...

    def terms_of(self, subscription: Subscription) -> TermMap: ...

    async def owner_gone(self, subscription: Subscription) -> None: ...


class Dispatcher:
    def __init__(
        self,
        store: EntityStore,
        contexts: ContextRegistry,
        sender: Sender,
        settings: Settings,
        lookup: Lookup,
        owners: Owners,
    ) -> None:
        self.store = store
        self.contexts = contexts
        self.sender = sender
        self.settings = settings
        self.lookup = lookup
        self.owners = owners
        self.wake = asyncio.Event()
        self._lanes: dict[str, Lane] = {}
        self._pump: asyncio.Task[None] | None = None
        self._claimed: set[int] = set()  # outbox rows claimed here and not yet finished
        self._following = True  # the pump runs until drain() ends it
        self.followed_at = 0.0  # loop time the pump last looked at the outbox (ops/health.py)
        self.failures = FailureLog(log)  # a job failing again every second: one line a minute
        # attempts by (subscription id, outcome: sent, failed), read by the metrics
        self.counts: dict[tuple[str, str], int] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, *, release: bool = True) -> None:
        """Deliver what the outbox still holds (the crash guarantee), then follow new rows.
        release: first make every claimed row claimable again (a server starting: their claimant
        has gone); a command writing into a database that a server may be delivering does not."""
        if release:
            await self.store.release_outbox()
        self._following = True
        self.wake.set()
        self._pump = asyncio.create_task(self._follow_outbox())

    def stuck(self, after: float) -> str | None:
        """Why the outbox is not being followed (None: it is): the pump has ended, or has not
        claimed for `after` seconds (it looks every OUTBOX_POLL_SECONDS)."""
        if self._pump is None or self._pump.done():
            return "the outbox follower is not running"
        if self.followed_at and asyncio.get_running_loop().time() - self.followed_at > after:
            return f"the outbox was not read for over {after:g} s"
        return None

    async def stop(self) -> int:
        """Stop delivering; the rows claimed here and not finished are made claimable again, for
        whoever delivers next. Returns how many those are."""
        self._following = False  # the pump ends by itself too, should it miss its cancellation
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if self._pump is not None:
            tasks.append(self._pump)
            self._pump = None
        await stop_tasks(tasks)
        self._lanes.clear()
        left = sorted(self._claimed)
        self._claimed.clear()
        try:
            await self.store.release_claims(left)
        except Exception as exc:  # a server releases every claim when it starts
            log.warning("releasing %d undelivered notifications failed: %s", len(left), exc)
        return len(left)

    async def _follow_outbox(self) -> None:
        while self._following:
            # woken by this worker's commits; the timeout also picks up rows another worker left
            # behind (claimed by a worker that died, or a lane another worker released)
            # (asyncio.timeout, not wait_for: a wait_for cancelled as its inner wait ends can stay
            # "cancelling" for good on Python 3.11, and stop() or drain() would wait for it forever)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OUTBOX_POLL_SECONDS):
                    await self.wake.wait()
            self.wake.clear()
            if not self._following:
                return
            try:
                await self._claim_all()
                self.followed_at = asyncio.get_running_loop().time()
            except Exception:  # keep following; the rows stay in the outbox
                log_failure(log, "reading the notification outbox failed")
                await asyncio.sleep(1.0)
                self.wake.set()

    async def _claim_all(self) -> int:
        """Claim every claimable outbox row and queue it on its lane; returns how many."""
        count = 0
        while True:
            rows = await self.store.claim_outbox(CLAIM_BATCH)
            for row in rows:
                self._claimed.add(row.id)
                self.enqueue(row.lane, Job(row.tenant, row.subscription_id, row=row))
            count += len(rows)
            if len(rows) < CLAIM_BATCH:
                return count

    async def drain(self, timeout: float) -> int:
        """Deliver what the outbox holds, then stop: for a command that wrote into the database and
        exits. Rows another process has claimed are left to it. Past `timeout` seconds the lanes
        stop and the rows claimed here but not finished are released for a server to deliver;
        returns how many those are."""
        if self._pump is not None:  # from here on, claimed below; a claim under way is finished
            self._following = False
            self.wake.set()
            await self._pump
            self._pump = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            claimed = await self._claim_all()
            tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
            if not claimed and not tasks:
                break
            if tasks:
                await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        return await self.stop()

    def backlog(self) -> dict[str, tuple[int, float]]:
        """Per subscription: notifications queued here and not done with, and the age in seconds
        of the oldest (the metrics' backlog and retry age)."""
        found: dict[str, tuple[int, float]] = {}
        clock = time.monotonic()
        for lane in list(self._lanes.values()):
            for job in list(lane.jobs):
                count, age = found.get(job.subscription_id, (0, 0.0))
                found[job.subscription_id] = (count + 1, max(age, clock - job.queued))
        return found

    # -- lanes -----------------------------------------------------------------------------------
    def enqueue(self, lane_key: str, job: Job) -> None:
        lane = self._lanes.setdefault(lane_key, Lane())
        lane.jobs.append(job)
        if lane.task is None:
            lane.task = asyncio.create_task(self._run_lane(lane_key, lane))

    async def settle(self, tenant: str, subscription_id: str, timeout: float) -> None:
        """Wait (briefly) for a request that is out for this subscription, so a read right after
        the receiver answered sees the bookkeeping of that answer."""
        lane = self._lanes.get(lane_of(tenant, subscription_id))
        if lane is not None and lane.inflight is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(lane.inflight), timeout)

    async def _run_lane(self, key: str, lane: Lane) -> None:
        try:
            await self._catch_up(lane.jobs[0])
            while lane.jobs:
                job = lane.jobs[0]
                try:
                    await self._process(job, lane)
                except asyncio.CancelledError:
                    raise
                except Exception:  # never let one job stop the lane; the row stays in the outbox
                    self.failures.failed(
                        ("job", job.tenant, job.subscription_id),
                        "notification for subscription %s failed unexpectedly",
                        job.subscription_id,
                    )
                    await asyncio.sleep(1.0)
                    continue
                lane.jobs.popleft()
        finally:
            lane.task = None
            if not lane.jobs and self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _catch_up(self, job: Job) -> None:
        """A lane starting here may have been delivered by another worker since (several workers on
        one database): take the stored delivery bookkeeping, so counts carry on from there."""
        subscription = self.lookup(job.tenant, job.subscription_id)
        if subscription is None:
            return
        try:
            row = await self.store.get_subscription(job.tenant, job.subscription_id)
        except Exception:  # keep delivering; the counts may lag
            self.failures.failed(
                ("status", job.tenant, job.subscription_id),
                "reading the delivery status of subscription %s failed",
                job.subscription_id,
            )
            return
        if row is not None:
            subscription.delivery = Delivery.from_dict(row.status)

    async def _process(self, job: Job, lane: Lane) -> None:
        """Deliver one job, retrying in place; returns once it is done with (sent or given up).
        Its log lines (and audit records) carry the request id of the write that caused it."""
        request_id = job.row.payload.get("request_id") if job.row is not None else None
        if not request_id:
            await self._deliver(job, lane)
            return
        token = current_request_id.set(request_id)
        try:
            await self._deliver(job, lane)
        finally:
            current_request_id.reset(token)

    async def _deliver(self, job: Job, lane: Lane) -> None:
        row = job.row
        while True:
            subscription = self.lookup(job.tenant, job.subscription_id)
            if subscription is None:  # deleted meanwhile: its rows went with it
                if row is not None:
                    await self.store.finish_outbox(row, done=True)
                    self._claimed.discard(row.id)
                return
            screened = await self._screen(subscription, job)
            if screened is None:  # nothing the owner may read (or the owner is gone): not sent
                if row is not None:
                    await self.store.finish_outbox(row, done=True)
                    self._claimed.discard(row.id)
                return
            error = await self._attempt(subscription, screened, lane)
            status = subscription.to_row()
            if row is None:  # a periodic report is not retried: the next period reports again
                await self.store.save_subscription_status(status)
                return
            if error is None or error.permanent or row.attempts + 1 >= self.settings.notification_max_attempts:
                if error is not None:
                    log.warning(
                        "giving up notification %s of %s (request %s): %s",
                        row.id,
                        subscription.id,
                        current_request_id.get() or "-",
                        error,
                    )
                await self.store.finish_outbox(row, done=True, status=status)
                self._claimed.discard(row.id)
                return
            row.attempts += 1
            await self.store.finish_outbox(row, done=False, status=status)
            await asyncio.sleep(self.backoff(row.attempts))

    async def _screen(self, subscription: Subscription, job: Job) -> Job | None:
        """The job cut down to what the subscription's owner may read now (docs/security.md);
        None: nothing to send. With auth off the view is unrestricted and the job is returned as is."""
        access = self.owners.access
        try:
            principal = await owner_principal(access.principals, subscription.owner)
        except OwnerGone:
            await self.owners.owner_gone(subscription)
            return None
        if not principal.may_use_tenant(subscription.tenant):
            return None
        view = access.authorizer.read_view(principal, subscription.tenant, "read")
        if view.unrestricted:
            return job
        fetch = functools.partial(fetch_linked, self.store, subscription.tenant, view=view)
        selection = OwnerSelection(subscription.doc, self.owners.terms_of(subscription), fetch)
        if job.row is not None:
            payload = await visible_change(view, job.row.payload, subscription.doc, selection)
            return None if payload is None else replace(job, payload=payload, view=view)
        entities = await visible_entities(view, job.entities or [], selection)
        return replace(job, entities=entities, view=view) if entities else None

    def backoff(self, attempts: int) -> float:
        """Seconds to wait before attempt `attempts + 1`: doubling from the first delay, capped."""
        first = self.settings.notification_retry_delay
        return float(min(self.settings.notification_retry_max_delay, first * 2 ** (attempts - 1)))

    async def _attempt(self, subscription: Subscription, job: Job, lane: Lane) -> DeliveryFailed | None:
        delivery = subscription.delivery
        lane.inflight = asyncio.get_running_loop().create_future()
        try:
            failure = await self._send(subscription, job)
            key = (subscription.id, "sent" if failure is None else "failed")
            self.counts[key] = self.counts.get(key, 0) + 1
            if failure is None:
                delivery.last_success = now()
                delivery.status = "ok"
            else:
                # per attempt, so DEBUG: the subscription's status counts failures, giving up is a WARNING
                log.debug(
                    "notification to %s failed: %s", redact_uri(subscription.notification["endpoint"]["uri"]), failure
                )
                delivery.times_failed += 1
                delivery.last_failure = now()
                delivery.status = "failed"
            return failure
        finally:
            lane.inflight.set_result(None)
            lane.inflight = None

    async def _send(self, subscription: Subscription, job: Job) -> DeliveryFailed | None:
        try:
            outgoing = await self._render(subscription, job)
        except NgsiLdError as exc:  # e.g. the @context cannot be fetched right now
            return DeliveryFailed(f"cannot render the notification: {exc.detail}")
        subscription.delivery.times_sent += 1
        subscription.delivery.last_notification = now()
        try:
            await self.sender.send(outgoing)
        except DeliveryFailed as exc:
            return exc
        return None

    # -- rendering ---------------------------------------------------------------------------------
    async def _render(self, subscription: Subscription, job: Job) -> Outgoing:
        doc = subscription.doc
        notification = subscription.notification
        endpoint = notification["endpoint"]
        context = await self.contexts.resolve(subscription.tenant, subscription.notification_context())
        options = render_options(doc, context.terms)
        accept = endpoint.get("accept", "application/json")
        trigger = None
        if job.row is not None:
            payload = job.payload if job.payload is not None else job.row.payload
            entities = [notified_entity(payload, doc, context.terms)]
            trigger = payload["triggers"][0]
        else:
            entities = job.entities or []
        data: Any
        plan = join_plan(notification.get("join"), _text(notification.get("joinLevel")), None, None)
        if accept == "application/geo+json":
            features = [to_geojson_feature(e, options, None) for e in entities]
            data = {"type": "FeatureCollection", "features": features}
        elif plan is not None:
            data = await render_joined(entities, options, plan, self.store, subscription.tenant, job.view or EVERYTHING)
        else:
            data = [notification_entity(e, options) for e in entities]
        link = None
        if accept == "application/ld+json" and isinstance(data, list):
            data = [{**item, "@context": context.value} for item in data]
        else:
            link = f'<{context.link_url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
        body: dict[str, Any] = {
            "id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}",
            "type": "Notification",
            "subscriptionId": subscription.id,
            "notifiedAt": now(),
            "data": data,
        }
        if trigger is not None:
            body["triggerReason"] = trigger
        return Outgoing(
            uri=endpoint["uri"],
            notification=body,
            content_type=accept,
            link=link,
            receiver_info=[(i["key"], i["value"]) for i in endpoint.get("receiverInfo", [])],
            notifier_info={i["key"]: i["value"] for i in endpoint.get("notifierInfo", [])},
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
