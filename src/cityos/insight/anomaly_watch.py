"""The anomaly detector on live writes: a change listener of the store (as history, subscriptions
and the audit trail are) feeds each new numeric reading of the watched attributes to the detector
(insight/anomaly.py); an anomalous reading gets an `anomaly` sub-property, written afterwards through
the one write path (store.mutate), so history, subscriptions and the audit trail see the flag as
any other write.

Why afterwards: a listener runs inside the write's transaction and may only return rows, so the
flag is handed to a task on the event loop, which writes it in a transaction of its own with a
mutator that only adds the sub-property if the attribute still holds that very reading (else the
flag is stale: a later reading came first, or the write rolled back, and nothing is written).

Why it does not trigger itself: a reading is new when its observedAt (if it has one, else its
modifiedAt) changed; the flag write changes neither, so the listener passes over it. History
likewise records no new instance for it (temporal/history.py `restated`). A later reading that
keeps an old flag (a merge-patch keeps sub-attributes) has it cleared the same way.

Alerts: `on_flag` callbacks (the alert rules of issue 17 part 2 register one) are awaited after
each flag is stored; none is built here.

Limits: the baseline lives in the memory of the worker that took the writes (several workers each
see their share of a series); a write that rolls back after the listener saw it has still fed the
detector; the hand-off queue is bounded (flags beyond it are dropped and counted).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cityos.entities.model import Entity, Instance, parse_instance
from cityos.entities.update import Mutator, Outcome
from cityos.entities.values import now
from cityos.errors import ResourceNotFound, log_failure
from cityos.insight.anomaly import ANOMALY_IRI, DETECTOR, AnomalyDetector, DetectorSettings, Verdict
from cityos.jsonld.termmap import TermMap
from cityos.settings import Settings
from cityos.snapshots.scope import MARK
from cityos.store.base import EntityChange, EntityLookup, EntityStore, HistoryRow, OutboxRow
from cityos.tasks import stop_task

log = logging.getLogger("cityos.insight.anomaly")

ANOMALY = "anomaly"  # the sub-property's term (core @context: the default vocabulary, ANOMALY_IRI)
LISTENER = "anomaly"
QUEUE_SIZE = 10_000
BATCH = 200


@dataclass(frozen=True, slots=True)
class Flag:
    """A reading judged anomalous (verdict) or a stale flag to clear (verdict None)."""

    tenant: str
    entity_id: str
    attr: str  # expanded
    dataset: str | None
    at: str  # the reading's observedAt, else modifiedAt
    value: float
    verdict: Verdict | None


AlertHook = Callable[[Flag], Awaitable[None]]


def detector_settings(settings: Settings) -> DetectorSettings:
    """The detector's settings from the server's --anomaly-* settings."""
    return DetectorSettings(
        threshold=settings.anomaly_threshold,
        stuck_run=settings.anomaly_stuck_run,
        drift_threshold=settings.anomaly_drift_threshold,
        warmup=settings.anomaly_warmup,
        max_series=settings.anomaly_max_series,
    )


def parse_attrs(setting: str, terms: TermMap) -> frozenset[str] | None:
    """The --anomaly-attrs setting: None watches every numeric Property, empty: nothing."""
    names = [name.strip() for name in setting.split(",") if name.strip()]
    if "*" in names:
        return None
    return frozenset(terms.expand(name) for name in names)


def _seconds(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def _reading_time(instance: Instance) -> str | None:
    stamp = instance.get("observedAt") or instance.get("modifiedAt")
    return stamp if isinstance(stamp, str) else None


def _number(instance: Instance) -> float | None:
    if instance.get("type") != "Property":
        return None
    value = instance.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a double
        return None
    return number if math.isfinite(number) else None


def _same_dataset(instances: Sequence[Instance] | None, dataset: str | None) -> Instance | None:
    for instance in instances or ():
        if instance.get("datasetId") == dataset:
            return instance
    return None


def _new_reading(old: Instance | None, new: Instance) -> bool:
    if old is None:
        return True
    if old is new:
        return False
    if "observedAt" in new:
        return bool(old.get("observedAt") != new["observedAt"])
    return bool(old.get("modifiedAt") != new.get("modifiedAt"))


class AnomalyWatch:
    """The listener, the detector it feeds, and the task that writes the flags."""

    def __init__(
        self,
        store: EntityStore,
        terms: TermMap,
        *,
        attrs: str,
        settings: DetectorSettings | None = None,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.store = store
        self.terms = terms
        self.watched = parse_attrs(attrs, terms)
        self.detector = AnomalyDetector(settings)
        self.on_flag: list[AlertHook] = []  # awaited with each stored flag (the alert rules' hook)
        self.dropped = 0  # flags lost to a full queue
        self.written = 0  # flags and clearings stored
        self._queue_size = queue_size
        self._queue: asyncio.Queue[Flag] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.watched is None or bool(self.watched)

    async def start(self) -> None:
        """Install the listener and the writer (on this event loop); nothing when no attribute is watched."""
        if not self.enabled or self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self._queue_size)
        self._task = asyncio.create_task(self._write())
        self.store.set_change_listener(self.listener, None, name=LISTENER)

    async def stop(self) -> None:
        if self._task is None:
            return
        self.store.set_change_listener(None, None, name=LISTENER)
        task, self._task = self._task, None
        await stop_task(task)

    # -- in the write transaction, on the store's writer thread --------------------------------
    def listener(self, change: EntityChange, lookup: EntityLookup) -> Sequence[OutboxRow | HistoryRow]:
        if MARK in change.tenant:  # a snapshot's copy: not a reading
            return ()
        try:
            self._judge(change)
        except Exception:  # the detector must never fail the write it watches
            log.exception("the anomaly detector failed on a change of %s", change.entity_id)
        return ()

    def _judge(self, change: EntityChange) -> None:
        after = change.after
        if after is None:
            if change.before is not None:
                for attr, instances in change.before["attrs"].items():
                    for instance in instances:
                        self.detector.forget((change.tenant, change.entity_id, attr, instance.get("datasetId")))
            return
        old_attrs = change.before["attrs"] if change.before is not None else {}
        for attr, instances in after["attrs"].items():
            if self.watched is not None and attr not in self.watched:
                continue
            olds = old_attrs.get(attr)
            for instance in instances:
                dataset = instance.get("datasetId")
                old = instance if olds is instances else _same_dataset(olds, dataset)
                if not _new_reading(old, instance):
                    continue
                value = _number(instance)
                stamp = _reading_time(instance)
                seconds = _seconds(stamp) if stamp is not None else None
                if value is None or stamp is None or seconds is None:
                    continue
                key = (change.tenant, change.entity_id, attr, dataset)
                verdict = self.detector.observe(key, seconds, value)
                if verdict is not None or ANOMALY_IRI in instance:
                    self._hand_off(Flag(change.tenant, change.entity_id, attr, dataset, stamp, value, verdict))

    def _hand_off(self, flag: Flag) -> None:
        loop, queue = self._loop, self._queue
        if loop is None or queue is None or loop.is_closed():
            return

        def put() -> None:
            try:
                queue.put_nowait(flag)
            except asyncio.QueueFull:
                self.dropped += 1

        loop.call_soon_threadsafe(put)

    # -- on the event loop ------------------------------------------------------------------------
    async def _write(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self.write(batch)
            except Exception:  # a busy database, a bug: these flags are lost, the next go on
                log_failure(log, "anomaly flags were not written")

    async def write(self, flags: Sequence[Flag]) -> list[Flag]:
        """Store these flags (and clearings), each where its reading is still current; returns the
        flags stored, after awaiting the on_flag hooks for them."""
        by_tenant: dict[str, list[Flag]] = {}
        for flag in flags:
            by_tenant.setdefault(flag.tenant, []).append(flag)
        stored: list[Flag] = []
        stamp = now()
        for tenant, items in by_tenant.items():
            operations = [(f.entity_id, self._mutator(f, stamp)) for f in items]
            results = await self.store.mutate(tenant, operations, atomic=False)
            for flag, result in zip(items, results, strict=True):
                if result.error is None:
                    stored.append(flag)
                elif not isinstance(result.error, ResourceNotFound):  # not merely stale: say so
                    log.warning("an anomaly flag on %s was refused: %s", flag.entity_id, result.error)
        self.written += len(stored)
        for flag in stored:
            if flag.verdict is None:
                continue
            for hook in self.on_flag:
                try:
                    await hook(flag)
                except Exception:
                    log_failure(log, "an anomaly hook failed")
        return stored

    def sub_property(self, flag: Flag, stamp: str) -> Instance:
        """The `anomaly` sub-property of a flagged reading (its observedAt is the reading's)."""
        verdict = flag.verdict
        assert verdict is not None
        body: dict[str, Any] = {
            "type": "Property",
            "value": {
                "kind": verdict.kind,
                "score": round(verdict.score, 3),
                "expected": round(verdict.expected, 6),
                "reason": verdict.reason,
                "detector": DETECTOR,
            },
            "observedAt": flag.at,
        }
        return parse_instance(ANOMALY, body, self.terms, stamp=stamp, iri=ANOMALY_IRI)

    def _mutator(self, flag: Flag, stamp: str) -> Mutator:
        mark = self.sub_property(flag, stamp) if flag.verdict is not None else None

        def run(current: Entity | None) -> Outcome:
            instances = current["attrs"].get(flag.attr) if current is not None else None
            index = next((i for i, x in enumerate(instances or ()) if x.get("datasetId") == flag.dataset), -1)
            if current is None or instances is None or index < 0:
                raise ResourceNotFound(f"{flag.entity_id} no longer has the flagged attribute")
            instance = instances[index]
            if _reading_time(instance) != flag.at or _number(instance) != flag.value:
                raise ResourceNotFound(f"the flagged reading of {flag.entity_id} is no longer current")
            if mark is None and ANOMALY_IRI not in instance:
                raise ResourceNotFound("nothing to clear")
            changed = {k: v for k, v in instance.items() if k != ANOMALY_IRI}  # the reading's own modifiedAt stays
            if mark is not None:
                changed[ANOMALY_IRI] = mark
            entity: Entity = {**current, "attrs": {**current["attrs"], flag.attr: list(instances)}}
            entity["attrs"][flag.attr][index] = changed
            entity["modifiedAt"] = stamp
            return Outcome(entity, updated=[flag.attr], annotation=True)  # no new observation: no history

        return run
