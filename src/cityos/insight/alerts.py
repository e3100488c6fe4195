"""Alert rules at work: evaluated on each change, firing and resolving Smart Data Models `Alert`s.

The rules listen to the store's changes as history, subscriptions and the audit trail do (a named
change listener, called inside each write transaction on the writer's side): only the rules of the
changed entity's type are looked at, only those whose attributes the change wrote are evaluated,
and the listener itself only updates small in-memory states and queues what must be written. The
`Alert` entities are written by one task through the ingest StoreSink (parse_entity, the upsert
mutator, store.mutate): the one write path, so subscriptions, history, the audit trail and
partners see an alert as any entity.

Lifecycle: one alert per rule and entity (its id says both), status open -> acknowledged (an
admin, who and when) -> resolved (when the condition no longer holds; a threshold's `clear` level
gives hysteresis), and open again, as the same entity, if it fires again: its history keeps each
episode. Nothing is written while the state does not move, so a sensor repeating a bad value
writes no alert after the first. `absent` rules and `for` durations are decided by one timer over
a heap holding at most one entry per tracked (rule, entity): a reading moves a deadline in a dict,
it does not touch the heap. Memory is bounded by `max_tracked` states.

Known limits: the states live in the worker's memory (several workers each judge the changes they
write, and share the alert entities, whose ids de-duplicate them); a change is judged when the
store hands it over, before its commit, so an alert may follow a write that was then rolled back;
after a restart the open alerts of the default tenant are read back (up to `max_tracked`), `for`
and `absent` clocks start again at the next reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cityos.audit.chain import AuditRow
from cityos.ingest.sink import StoreSink
from cityos.insight.rules import Rule, RuleFileError, evaluate, load_rules, parse_rule, reading, when_of
from cityos.jsonld.termmap import TermMap
from cityos.store.base import EntityChange, EntityLookup, EntityQuery, EntityStore, HistoryRow, OutboxRow
from cityos.tasks import stop_task

log = logging.getLogger("cityos.insight.alerts")

LISTENER = "alert-rules"
ALERT_TYPE = "Alert"
OPEN, ACKNOWLEDGED, RESOLVED = "open", "acknowledged", "resolved"
Key = tuple[str, str, str]  # (tenant, rule id, entity id)
RESTORE_PAGE = 500


class UnknownAlert(KeyError):
    """No alert has this id."""


@dataclass(slots=True)
class State:
    """What the listener remembers of one (rule, entity)."""

    open: bool = False  # an alert of it is open or acknowledged
    since: float | None = None  # the reading time since which `when` holds (for `for`)
    values: dict[str, Any] = field(default_factory=dict)  # the values that met it
    location: Any = None


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # "fire" or "resolve"
    tenant: str
    rule: Rule
    entity_id: str
    values: dict[str, Any]
    location: Any = None


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _date(stamp: str) -> dict[str, Any]:
    return {"type": "Property", "value": {"@type": "DateTime", "@value": stamp}}


def _prop(value: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value}


def fired_body(action: Action, stamp: str) -> dict[str, Any]:
    """The Alert a firing rule writes (replacing the previous episode's, whose history remains)."""
    rule = action.rule
    body: dict[str, Any] = {
        "id": rule.alert_id(action.entity_id),
        "type": ALERT_TYPE,
        "alertSource": _prop(action.entity_id),
        "category": _prop(rule.category),
        "severity": _prop(rule.severity),
        "description": _prop(rule.description or rule.name),
        "dateIssued": _date(stamp),
        "validFrom": _date(stamp),
        "status": _prop(OPEN),
        "rule": _prop(rule.id),
        "ruleDigest": _prop(rule.digest),
        "triggerValues": _prop(action.values or {"none": True}),
    }
    if rule.sub_category:
        body["subCategory"] = _prop(rule.sub_category)
    if isinstance(action.location, dict) and action.location.get("type") == "Point":
        body["location"] = {"type": "GeoProperty", "value": action.location}
    return body


class AlertRules:
    """The loaded rules, their change listener, the timer and the writer of the Alert entities."""

    def __init__(self, store: EntityStore, terms: TermMap, *, directory: str = "", max_tracked: int = 100_000) -> None:
        self.store = store
        self.terms = terms
        self.directory = directory
        self.max_tracked = max_tracked
        self.sink = StoreSink(store, terms)
        self.rules: dict[str, Rule] = {}
        self._by_type: dict[str, tuple[Rule, ...]] = {}
        self._lock = threading.Lock()  # the writer's thread and the event loop share the states
        self._states: dict[Key, State] = {}
        self._deadlines: dict[tuple[str, str, str, str], float] = {}  # (tenant, rule, entity, "absent"/"hold")
        self._heap: list[tuple[float, tuple[str, str, str, str]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Action] | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0  # states not tracked because max_tracked was reached
        self._location = terms.expand("location")

    # -- the rules -------------------------------------------------------------------------------
    def load(self) -> None:
        """The directory's rules (RuleFileError names a refused file, its line and why)."""
        self._install(load_rules(self.directory, self.terms.expand))

    def _install(self, rules: dict[str, Rule]) -> None:
        by_type: dict[str, list[Rule]] = {}
        for rule in rules.values():
            by_type.setdefault(rule.type_iri, []).append(rule)
        self.rules = rules
        self._by_type = {key: tuple(value) for key, value in by_type.items()}  # replaced whole: a snapshot

    def put(self, rule_id: str, text: str) -> tuple[Rule, bool]:
        """Add or replace a rule from its file's text, kept as {id}.toml in the directory; True if
        new. RuleFileError: refused; ValueError: no directory is set."""
        if not self.directory:
            raise ValueError("rules are added as files of --rules-dir, and none is set")
        target = Path(self.directory) / f"{rule_id}.toml"
        rule = parse_rule(text, str(target), self.terms.expand)
        if rule.id != rule_id:
            raise RuleFileError(str(target), None, f"the file's id is {rule.id}, the path's {rule_id}")
        partial = target.with_suffix(".toml.partial")
        partial.write_text(text, encoding="utf-8")
        partial.replace(target)
        created = rule_id not in self.rules
        self._install({**self.rules, rule_id: rule})
        return rule, created

    # -- the change listener (inside the write transaction: fast, no I/O) --------------------------
    def listener(self, change: EntityChange, lookup: EntityLookup) -> Sequence[OutboxRow | HistoryRow | AuditRow]:
        entity = change.after if change.after is not None else change.before
        if entity is None or not self._by_type:
            return ()
        rules: tuple[Rule, ...] = ()
        for kind in entity.get("type", ()):
            found = self._by_type.get(kind)
            if found:
                rules = found if not rules else rules + found
        if not rules:
            return ()
        after, before = change.after, change.before
        with self._lock:
            if after is None:
                self._forget(change.tenant, change.entity_id, rules)
                return ()
            written: dict[str, bool] = {}  # attribute -> whether this change wrote it
            for rule in rules:
                absence = rule.absence
                if absence is not None:
                    if reading(after, absence.iri) is not None and self._wrote(absence.iri, after, before, written):
                        self._heard(change.tenant, rule, change.entity_id, absence.absent)
                    continue
                if any(self._wrote(iri, after, before, written) for iri in rule.attributes):
                    self._judge(change.tenant, rule, change.entity_id, after, before)
        return ()

    @staticmethod
    def _wrote(iri: str, after: dict[str, Any], before: dict[str, Any] | None, written: dict[str, bool]) -> bool:
        known = written.get(iri)
        if known is None:
            known = written[iri] = before is None or after["attrs"].get(iri) != before["attrs"].get(iri)
        return known

    def _state(self, key: Key, create: bool) -> State | None:
        state = self._states.get(key)
        if state is None and create:
            if len(self._states) >= self.max_tracked:
                self.dropped += 1
                return None
            state = self._states[key] = State()
        return state

    def _judge(self, tenant: str, rule: Rule, entity_id: str, after: dict[str, Any], before: Any) -> None:
        key = (tenant, rule.id, entity_id)
        state = self._states.get(key)
        is_open = state is not None and state.open
        values = evaluate(rule, after, before, is_open)
        if values is None:
            if state is None:
                return
            if state.open:
                self._send(Action("resolve", tenant, rule, entity_id, {}))
            del self._states[key]
            self._deadlines.pop((*key, "hold"), None)
            return
        if is_open:
            return  # already open: nothing to write (de-duplication)
        state = self._state(key, create=True)
        if state is None:
            return
        location = reading(after, self._location)
        state.values, state.location = values, location.get("value") if location else None
        if rule.hold:
            stamp = max((when_of(reading(after, c.iri) or {}) or 0.0 for c in rule.conditions), default=0.0)
            if state.since is None:
                state.since = stamp or time.time()
                self._arm((*key, "hold"), time.monotonic() + rule.hold)
                return
            if stamp - state.since < rule.hold:
                return
        self._fire(key, rule, state)

    def _fire(self, key: Key, rule: Rule, state: State) -> None:
        state.open, state.since = True, None
        self._deadlines.pop((*key, "hold"), None)
        self._send(Action("fire", key[0], rule, key[2], dict(state.values), state.location))

    def _heard(self, tenant: str, rule: Rule, entity_id: str, seconds: float) -> None:
        """A reading of an `absent` rule's attribute: its deadline moves, an open alert resolves."""
        key = (tenant, rule.id, entity_id)
        state = self._states.get(key)
        if state is not None and state.open:
            state.open = False
            self._send(Action("resolve", tenant, rule, entity_id, {}))
        self._arm((*key, "absent"), time.monotonic() + seconds)

    def _arm(self, key: tuple[str, str, str, str], deadline: float) -> None:
        if key in self._deadlines:
            self._deadlines[key] = deadline  # the heap entry is moved when it comes up
            return
        if len(self._deadlines) >= self.max_tracked:
            self.dropped += 1
            return
        self._deadlines[key] = deadline
        earliest = not self._heap or deadline < self._heap[0][0]
        heapq.heappush(self._heap, (deadline, key))
        if earliest and self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _forget(self, tenant: str, entity_id: str, rules: tuple[Rule, ...]) -> None:
        """The entity was deleted: its states and deadlines go (an open alert stays, for a person)."""
        for rule in rules:
            key = (tenant, rule.id, entity_id)
            self._states.pop(key, None)
            self._deadlines.pop((*key, "hold"), None)
            self._deadlines.pop((*key, "absent"), None)

    def _send(self, action: Action) -> None:
        if self._loop is None or self._queue is None:
            return
        self._loop.call_soon_threadsafe(self._queue.put_nowait, action)

    # -- the timer -------------------------------------------------------------------------------
    def _due(self, now: float) -> float | None:
        """Handle the deadlines passed by `now`; the next one (None: none)."""
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                _, key = heapq.heappop(self._heap)
                deadline = self._deadlines.get(key)
                if deadline is None:
                    continue
                if deadline > now:  # moved by a later reading: back in, at its new place
                    heapq.heappush(self._heap, (deadline, key))
                    continue
                del self._deadlines[key]
                tenant, rule_id, entity_id, kind = key
                rule = self.rules.get(rule_id)
                if rule is None:
                    continue
                state_key = (tenant, rule_id, entity_id)
                if kind == "absent":
                    state = self._state(state_key, create=True)
                    if state is not None and not state.open:
                        absence = rule.absence
                        state.values = {"silentForSeconds": absence.absent if absence else 0}
                        self._fire(state_key, rule, state)
                else:
                    state = self._states.get(state_key)
                    if state is not None and not state.open and state.since is not None:
                        self._fire(state_key, rule, state)
            return self._heap[0][0] if self._heap else None

    async def _timer(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            upcoming = self._due(time.monotonic())
            timeout = None if upcoming is None else max(0.0, upcoming - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # -- the writer ------------------------------------------------------------------------------
    async def _writer(self) -> None:
        assert self._queue is not None
        while True:
            action = await self._queue.get()
            try:
                await self._write(action)
            except Exception:  # a refused write must not stop the next alerts
                log.exception("the alert of rule %s on %s was not written", action.rule.id, action.entity_id)
            finally:
                self._queue.task_done()

    async def _write(self, action: Action) -> None:
        stamp = iso_now()
        if action.kind == "fire":
            [outcome] = await self.sink.upsert(action.tenant, [fired_body(action, stamp)], replace=True)
        else:
            body = {
                "id": action.rule.alert_id(action.entity_id),
                "type": ALERT_TYPE,
                "status": _prop(RESOLVED),
                "resolvedAt": _date(stamp),
                "validTo": _date(stamp),
            }
            [outcome] = await self.sink.upsert(action.tenant, [body])
        if outcome.error:
            log.warning("the alert %s was not stored: %s", outcome.entity_id, outcome.error)

    async def settle(self) -> None:
        """Until every queued alert is written (tests, and a clean stop)."""
        if self._queue is not None:
            await self._queue.join()

    async def acknowledge(self, tenant: str, alert_id: str, who: str) -> dict[str, Any]:
        """An admin has seen the alert: status acknowledged, by whom and when (a resolved alert
        stays resolved). UnknownAlert if there is none."""
        entity = await self.store.get_entity(tenant, alert_id)
        types = entity.get("type", []) if entity is not None else []
        if entity is None or self.terms.expand(ALERT_TYPE) not in types:
            raise UnknownAlert(alert_id)
        status = (reading(entity, self.terms.expand("status")) or {}).get("value")
        stamp = iso_now()
        body: dict[str, Any] = {
            "id": alert_id,
            "type": ALERT_TYPE,
            "acknowledgedBy": _prop(who),
            "acknowledgedAt": _date(stamp),
        }
        if status == OPEN:
            body["status"] = _prop(ACKNOWLEDGED)
        [outcome] = await self.sink.upsert(tenant, [body])
        if outcome.error:
            raise ValueError(outcome.error)
        return {
            "id": alert_id,
            "status": ACKNOWLEDGED if status == OPEN else status,
            "acknowledgedBy": who,
            "acknowledgedAt": stamp,
        }

    # -- start and stop --------------------------------------------------------------------------
    async def restore(self, tenant: str = "") -> int:
        """The open alerts of `tenant` back into the states (bounded by max_tracked): they resolve
        when their condition clears, and are not opened twice."""
        entities: list[dict[str, Any]] = []
        while len(entities) < self.max_tracked:  # pages of RESTORE_PAGE: bounded reads
            query = EntityQuery(types=[self.terms.expand(ALERT_TYPE)], limit=RESTORE_PAGE, offset=len(entities))
            result = await self.store.query_entities(tenant, query)
            entities += result.entities
            if not result.has_more or not result.entities:
                break
        status_iri, rule_iri, source_iri = (self.terms.expand(k) for k in ("status", "rule", "alertSource"))
        restored = 0
        with self._lock:
            for entity in entities:
                status = (reading(entity, status_iri) or {}).get("value")
                rule_id = (reading(entity, rule_iri) or {}).get("value")
                source = (reading(entity, source_iri) or {}).get("value")
                if status in (OPEN, ACKNOWLEDGED) and rule_id in self.rules and isinstance(source, str):
                    state = self._state((tenant, str(rule_id), source), create=True)
                    if state is not None:
                        state.open = True
                        restored += 1
        return restored

    async def start(self) -> None:
        """Listen to every change from now on (install before the first write that should count)."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._wake = asyncio.Event()
        if self.rules:
            await self.restore()
        self.store.set_change_listener(self.listener, None, name=LISTENER)
        self._tasks = [asyncio.create_task(self._writer()), asyncio.create_task(self._timer())]

    async def stop(self) -> None:
        self.store.set_change_listener(None, None, name=LISTENER)
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []
