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

Several workers (`cityos serve --workers N`): each judges the changes it writes, with the states in
its memory; a state that moves (an alert opened or resolved, a `for` started or stopped) is told to
the other workers through the store's events (EntityStore.publish; PostgreSQL NOTIFY), and the Alert
is written by a conditional mutator (no second fire of an open alert, no resolve of a closed one), so
two workers deciding the same thing at once write it once. An `absent` clock that runs out asks the
store whether another worker wrote a reading meanwhile.

Known limits: a change is judged when the store hands it over, before its commit, so an alert may
follow a write that was then rolled back; a state told by one worker reaches the others a few
milliseconds later (a reading judged by another worker in between is judged without it: a second
fire is then not written, a resolve may wait for the next reading); after a restart the open alerts
of the default tenant are read back (up to `max_tracked`), `for` and `absent` clocks start again at
the next reading.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from cityos.audit.chain import AuditRow
from cityos.entities import update
from cityos.entities.model import Entity, parse_entity
from cityos.entities.update import Mutator, Outcome
from cityos.errors import AlreadyExists, ResourceNotFound
from cityos.ingest.sink import StoreSink, error_text
from cityos.insight.rules import (
    Condition,
    Memo,
    Rule,
    RuleFileError,
    epoch,
    evaluate,
    load_rules,
    number,
    parse_rule,
    rate_per_second,
    reading,
    when_of,
)
from cityos.jsonld.termmap import TermMap
from cityos.store.base import (
    EntityChange,
    EntityLookup,
    EntityQuery,
    EntityStore,
    HistoryRow,
    OutboxRow,
    StoreEvent,
)
from cityos.tasks import stop_task

log = logging.getLogger("cityos.insight.alerts")

LISTENER = "alert-rules"
ALERT_TYPE = "Alert"
OPEN, ACKNOWLEDGED, RESOLVED = "open", "acknowledged", "resolved"
EVENT = "alert-state"  # a StoreEvent telling the other workers of a (rule, entity) state that moved
PENDING, CLEAR = "pending", "clear"  # the event states of a running `for`, and of one that stopped
RESTORE_PAGE = 500
DEMO_RULES = "demo-rules"  # in cityos/ingest/data/, beside the demo city's layout
ABSENT_SLACK = 0.5  # seconds: a reading this close to an absent rule's duration is not a reading within it
STOP_SECONDS = 5.0  # at most this long to write the queued alerts at a stop


TimerKey = tuple[str, ...]


Ladder = tuple[list[float], list[Rule]]  # levels ascending, and their rules
Levels = dict[str, Ladder]  # per attribute
RATE_SLACK = 1e-9  # a rate's gate lets through rules a rounding away from their level: evaluate decides


@dataclass(frozen=True, slots=True)
class TypeRules:
    """The rules of one entity type, indexed for the listener. A rule that needs a threshold (or,
    failing one, a rate) to hold is kept under that condition's level, per attribute, sorted: a
    new value passes a prefix or a suffix of them, found by one bisection instead of one test per
    rule. `absent` rules are kept per attribute sorted by duration; the others (`any` of several,
    only polygons), and gated rules for their other attributes, per attribute they read, judged at
    each write of it."""

    attrs: tuple[str, ...]
    above: Levels
    below: Levels
    rate_above: Levels  # levels per second
    rate_below: Levels
    absent: dict[str, list[tuple[float, Rule]]]
    general: dict[str, list[Rule]]

    @classmethod
    def of(cls, rules: list[Rule]) -> TypeRules:
        tables: dict[str, dict[str, list[tuple[float, Rule]]]] = {
            name: {} for name in ("above", "below", "rate_above", "rate_below", "absent")
        }
        general: dict[str, list[Rule]] = {}
        for rule in rules:
            absence = rule.absence
            if absence is not None:
                tables["absent"].setdefault(absence.iri, []).append((absence.absent, rule))
                continue
            gate = _gate(rule)
            if gate is None:
                for iri in rule.attributes:
                    general.setdefault(iri, []).append(rule)
                continue
            if gate.kind == "threshold":
                name, level = ("above", gate.above) if gate.above is not None else ("below", gate.below)
            else:
                name, level = ("rate_above", gate.above) if gate.above is not None else ("rate_below", gate.below)
                level = level / gate.per if level is not None else None
            assert level is not None
            tables[name].setdefault(gate.iri, []).append((level, rule))
            for iri in rule.attributes:  # a write of its other attributes: judged (the gate's value may pass)
                if iri != gate.iri:
                    general.setdefault(iri, []).append(rule)

        def levels(table: dict[str, list[tuple[float, Rule]]]) -> Levels:
            ordered = {iri: sorted(items, key=lambda item: item[0]) for iri, items in table.items()}
            return {iri: ([level for level, _ in items], [rule for _, rule in items]) for iri, items in ordered.items()}

        attrs = tuple(dict.fromkeys(iri for rule in rules for iri in rule.attributes))
        absent = {iri: sorted(items, key=lambda item: item[0]) for iri, items in tables["absent"].items()}
        return cls(
            attrs,
            levels(tables["above"]),
            levels(tables["below"]),
            levels(tables["rate_above"]),
            levels(tables["rate_below"]),
            absent,
            general,
        )


def _gate(rule: Rule) -> Condition | None:
    """The condition without which the rule cannot hold: its threshold, else its rate (all of
    them must hold, or there is only one); None: the rule is judged at each write."""
    if rule.mode != "all" and len(rule.conditions) > 1:
        return None
    for kind in ("threshold", "rate"):
        for condition in rule.conditions:
            if condition.kind == kind:
                return condition
    return None


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
    kind: str  # "fire", "resolve" (written, then told), or PENDING, CLEAR (only told to the other workers)
    tenant: str
    rule: Rule
    entity_id: str
    values: dict[str, Any]
    location: Any = None
    since: float | None = None  # PENDING: the reading time since which the condition holds
    silence: tuple[str, str, float] | None = None  # an absent rule's fire: (type, attribute, seconds)


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _date(stamp: str) -> dict[str, Any]:
    return {"type": "Property", "value": {"@type": "DateTime", "@value": stamp}}


def _prop(value: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value}


def _status(value: str, stamp: str) -> dict[str, Any]:
    """The lifecycle step, observed when it happened: the temporal API lists each step by it."""
    return {"type": "Property", "value": value, "observedAt": stamp}


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
        "status": _status(OPEN, stamp),
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

    def __init__(
        self,
        store: EntityStore,
        terms: TermMap,
        *,
        directory: str = "",
        max_tracked: int = 100_000,
        demo: bool = False,
    ) -> None:
        self.store = store
        self.terms = terms
        self.directory = directory
        self.demo = demo  # the demo city's rules too (--demo-on-empty), before the directory's
        self.max_tracked = max_tracked
        self.sink = StoreSink(store, terms)
        self.rules: dict[str, Rule] = {}
        self._by_type: dict[str, TypeRules] = {}
        self._lock = threading.Lock()  # the writer's thread and the event loop share the states
        self._states: dict[tuple[str, str], dict[str, State]] = {}  # (tenant, entity) -> rule id -> state
        self._tracked = 0  # states held, over every entity
        # timers: ("hold", tenant, entity, rule id) or ("absent", tenant, entity, type, attribute);
        # _due holds the deadline (an absent's: its last reading), the heap one entry per key
        self._due_at: dict[TimerKey, float] = {}
        self._heap: list[tuple[float, TimerKey]] = []
        self._in_heap: set[TimerKey] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Action] | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0  # states or timers not kept because max_tracked was reached
        self._location = terms.expand("location")
        self._status_iri = terms.expand("status")
        self._resyncs: list[asyncio.Task[int]] = []

    # -- the rules -------------------------------------------------------------------------------
    def load(self) -> None:
        """The directory's rules, after the demo city's with `demo` (a file of the directory with the
        id of a demo rule replaces it). RuleFileError names a refused file, its line and why."""
        rules: dict[str, Rule] = {}
        if self.demo:
            with resources.as_file(resources.files("cityos.ingest").joinpath("data", DEMO_RULES)) as folder:
                rules.update(load_rules(str(folder), self.terms.expand))
        rules.update(load_rules(self.directory, self.terms.expand))
        self._install(rules)

    def _install(self, rules: dict[str, Rule]) -> None:
        by_type: dict[str, list[Rule]] = {}
        for rule in rules.values():
            by_type.setdefault(rule.type_iri, []).append(rule)
        self.rules = rules
        self._by_type = {key: TypeRules.of(value) for key, value in by_type.items()}  # replaced whole: a snapshot

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
        by_type = self._by_type
        if not by_type:
            return ()
        entity = change.after if change.after is not None else change.before
        if entity is None:
            return ()
        for kind in entity.get("type", ()):
            group = by_type.get(kind)
            if group is not None:
                with self._lock:
                    self._changed(change, kind, group)
        return ()

    def _changed(self, change: EntityChange, kind: str, group: TypeRules) -> None:
        """Judge the rules of one type of the changed entity: only those whose attributes the
        change wrote, and of plain thresholds only those the new value passes (or with a state)."""
        tenant, entity_id, after, before = change.tenant, change.entity_id, change.after, change.before
        entity_key = (tenant, entity_id)
        states = self._states.get(entity_key)
        if after is None:  # deleted: its states and timers go (an open alert stays, for a person)
            if states is not None:
                self._tracked -= len(states)
                del self._states[entity_key]
            for iri in group.absent:
                self._due_at.pop(("absent", tenant, entity_id, kind, iri), None)
            return
        new = after.get("attrs", {})
        old = before.get("attrs", {}) if before is not None else None
        candidates: dict[str, Rule] = {}
        memo: Memo = {}  # what the rules of this change read alike (a rate per attribute)
        for iri in group.attrs:
            current = new.get(iri)
            if current is None or (old is not None and current == old.get(iri)):
                continue  # not written by this change
            if iri in group.absent:
                self._heard(tenant, entity_id, kind, iri, states, group.absent[iri][0][0])
            if iri in group.above or iri in group.below:
                value = number(reading(after, iri))
                if value is not None:
                    self._pass(group.above.get(iri), group.below.get(iri), value, 0.0, candidates)
            if iri in group.rate_above or iri in group.rate_below:
                per_second = memo[iri] = rate_per_second(reading(after, iri), reading(before, iri))
                if per_second is not None:
                    slack = abs(per_second) * RATE_SLACK + 1e-12
                    self._pass(group.rate_above.get(iri), group.rate_below.get(iri), per_second, slack, candidates)
            for rule in group.general.get(iri, ()):
                candidates[rule.id] = rule
            if states:  # an open alert or a running `for` is judged whatever the value
                for rule_id in states:
                    held = self.rules.get(rule_id)
                    if held is not None and held.type_iri == kind and iri in held.attributes and not held.absence:
                        candidates[rule_id] = held
        if candidates:
            for rule in candidates.values():
                self._judge(tenant, rule, entity_id, after, before, memo)

    @staticmethod
    def _pass(above: Ladder | None, below: Ladder | None, value: float, slack: float, into: dict[str, Rule]) -> None:
        """The rules whose level the value passes: above a level (a prefix), below one (a suffix)."""
        if above is not None:
            levels, rules = above
            for rule in rules[: bisect.bisect_left(levels, value + slack)]:
                into[rule.id] = rule
        if below is not None:
            levels, rules = below
            for rule in rules[bisect.bisect_right(levels, value - slack) :]:
                into[rule.id] = rule

    def _state(self, tenant: str, entity_id: str, rule_id: str) -> State | None:
        """The state of (rule, entity), made if need be (None: max_tracked reached)."""
        states = self._states.get((tenant, entity_id))
        state = states.get(rule_id) if states is not None else None
        if state is None:
            if self._tracked >= self.max_tracked:
                self.dropped += 1
                return None
            state = State()
            self._states.setdefault((tenant, entity_id), {})[rule_id] = state
            self._tracked += 1
        return state

    def _drop(self, tenant: str, entity_id: str, rule_id: str) -> None:
        states = self._states.get((tenant, entity_id))
        if states is not None and states.pop(rule_id, None) is not None:
            self._tracked -= 1
            if not states:
                del self._states[(tenant, entity_id)]

    def _judge(self, tenant: str, rule: Rule, entity_id: str, after: dict[str, Any], before: Any, memo: Memo) -> None:
        states = self._states.get((tenant, entity_id))
        state = states.get(rule.id) if states is not None else None
        is_open = state is not None and state.open
        values = evaluate(rule, after, before, is_open, memo)
        if values is None:
            if state is None:
                return
            if state.open:
                self._send(Action("resolve", tenant, rule, entity_id, {}))
            elif state.since is not None:  # a running `for` stops: in the other workers too
                self._send(Action(CLEAR, tenant, rule, entity_id, {}))
            self._drop(tenant, entity_id, rule.id)
            self._due_at.pop(("hold", tenant, entity_id, rule.id), None)
            return
        if is_open:
            return  # already open: nothing to write (de-duplication)
        state = self._state(tenant, entity_id, rule.id)
        if state is None:
            return
        location = reading(after, self._location)
        state.values, state.location = values, location.get("value") if location else None
        if rule.hold:
            stamp = max((when_of(reading(after, c.iri) or {}) or 0.0 for c in rule.conditions), default=0.0)
            if state.since is None:
                state.since = stamp or time.time()
                self._arm(("hold", tenant, entity_id, rule.id), time.monotonic() + rule.hold)
                self._send(Action(PENDING, tenant, rule, entity_id, {}, since=state.since))
                return
            if stamp - state.since < rule.hold:
                return
        self._fire(tenant, entity_id, rule, state)

    def _fire(
        self, tenant: str, entity_id: str, rule: Rule, state: State, silence: tuple[str, str, float] | None = None
    ) -> None:
        state.open, state.since = True, None
        self._due_at.pop(("hold", tenant, entity_id, rule.id), None)
        self._send(Action("fire", tenant, rule, entity_id, dict(state.values), state.location, silence=silence))

    def _heard(
        self, tenant: str, entity_id: str, kind: str, iri: str, states: dict[str, State] | None, first: float
    ) -> None:
        """A reading of an attribute `absent` rules watch: one clock moves whatever their number,
        and their open alerts resolve."""
        if states:
            for rule_id, state in list(states.items()):
                rule = self.rules.get(rule_id)
                absence = rule.absence if rule is not None else None
                if rule is not None and absence is not None and absence.iri == iri and rule.type_iri == kind:
                    if state.open:
                        self._send(Action("resolve", tenant, rule, entity_id, {}))
                    self._drop(tenant, entity_id, rule_id)
        self._arm(("absent", tenant, entity_id, kind, iri), time.monotonic(), first)

    def _arm(self, key: TimerKey, value: float, delay: float = 0.0) -> None:
        """Set the key's time (a deadline, or an absent's last reading) and, when the key has no
        heap entry yet, push one at value + delay."""
        if key in self._in_heap:
            self._due_at[key] = value  # its heap entry is moved when it comes up
            return
        if len(self._in_heap) >= self.max_tracked:
            self.dropped += 1
            return
        self._due_at[key] = value
        self._in_heap.add(key)
        deadline = value + delay
        earliest = not self._heap or deadline < self._heap[0][0]
        heapq.heappush(self._heap, (deadline, key))
        if earliest and self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _send(self, action: Action) -> None:
        if self._loop is None or self._queue is None:
            return
        self._loop.call_soon_threadsafe(self._queue.put_nowait, action)

    # -- the timer -------------------------------------------------------------------------------
    def _due(self, now: float) -> float | None:
        """Handle the timers passed by `now`; when the next one is (None: none)."""
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                _, key = heapq.heappop(self._heap)
                value = self._due_at.get(key)
                later = None
                if value is not None:
                    later = self._hold_due(key, value, now) if key[0] == "hold" else self._absent_due(key, value, now)
                if later is None:
                    self._in_heap.discard(key)
                    self._due_at.pop(key, None)
                else:
                    heapq.heappush(self._heap, (later, key))
            return self._heap[0][0] if self._heap else None

    def _hold_due(self, key: TimerKey, deadline: float, now: float) -> float | None:
        if deadline > now:
            return deadline  # moved: back in, at its new place
        _, tenant, entity_id, rule_id = key
        states = self._states.get((tenant, entity_id))
        state = states.get(rule_id) if states is not None else None
        rule = self.rules.get(rule_id)
        if rule is not None and state is not None and not state.open and state.since is not None:
            self._fire(tenant, entity_id, rule, state)
        return None

    def _absent_due(self, key: TimerKey, last: float, now: float) -> float | None:
        """Open the alerts of the absent rules whose silence has passed; the next such moment."""
        _, tenant, entity_id, kind, iri = key
        group = self._by_type.get(kind)
        watching = group.absent.get(iri, ()) if group is not None else ()
        later = None
        for seconds, rule in watching:
            if last + seconds > now:
                later = last + seconds
                break  # sorted by duration: the others are later still
            state = self._state(tenant, entity_id, rule.id)
            if state is not None and not state.open:
                state.values = {"silentForSeconds": seconds}
                self._fire(tenant, entity_id, rule, state, (kind, iri, seconds))
        return later

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
        """Write what a judgement decided, then tell the other workers. The Alert is written by a
        conditional mutator, in the entity's own write (its lock): a fire while an alert of that rule
        and entity is open or acknowledged, or a resolve of one that is not, writes nothing. So two
        workers that decide the same thing at once (each before hearing of the other) write it once."""
        tenant, rule, entity_id = action.tenant, action.rule, action.entity_id
        if action.kind in (PENDING, CLEAR):
            await self._tell(action, action.kind, action.since)
            return
        if action.silence is not None and not await self._silent(action):
            return
        stamp = iso_now()
        if action.kind == "fire":
            written = await self._conditional(tenant, fired_body(action, stamp), replace=True, when_open=False)
        else:
            body = {
                "id": rule.alert_id(entity_id),
                "type": ALERT_TYPE,
                "status": _status(RESOLVED, stamp),
                "resolvedAt": _date(stamp),
                "validTo": _date(stamp),
            }
            written = await self._conditional(tenant, body, replace=False, when_open=True)
        if written:
            await self._tell(action, OPEN if action.kind == "fire" else RESOLVED)

    async def _conditional(self, tenant: str, body: dict[str, Any], *, replace: bool, when_open: bool) -> bool:
        """Upsert the Alert if it is open (or acknowledged) as `when_open` asks; True if written."""
        entity = parse_entity(body, self.terms, stamp=iso_now())
        write = update.upsert(entity, mode="replace" if replace else "update")
        status_iri = self._status_iri

        def run(current: Entity | None) -> Outcome:
            is_open = (reading(current, status_iri) or {}).get("value") in (OPEN, ACKNOWLEDGED)
            if is_open and not when_open:
                raise AlreadyExists(f"{entity['id']} is open already")
            if when_open and not is_open:
                raise ResourceNotFound(f"{entity['id']} is not open")
            return write(current)

        operation: Mutator = run
        [result] = await self.store.mutate(tenant, [(entity["id"], operation)], atomic=False)
        if result.error is None:
            return True
        if not isinstance(result.error, AlreadyExists | ResourceNotFound):  # not merely decided elsewhere
            log.warning("the alert %s was not stored: %s", entity["id"], error_text(result.error))
        return False

    async def _silent(self, action: Action) -> bool:
        """An absent rule's clock ran out in this worker: True if the store agrees no reading came
        (another worker may have written them); else the clock is set from the stored reading."""
        assert action.silence is not None
        kind, iri, seconds = action.silence
        entity = await self.store.get_entity(action.tenant, action.entity_id)
        heard = epoch((reading(entity, iri) or {}).get("modifiedAt"))
        if heard is None:
            return entity is not None
        age = time.time() - heard
        if age >= seconds - ABSENT_SLACK:
            return True
        with self._lock:
            self._drop(action.tenant, action.entity_id, action.rule.id)
            group = self._by_type.get(kind)
            first = group.absent[iri][0][0] if group is not None and iri in group.absent else seconds
            self._arm(("absent", action.tenant, action.entity_id, kind, iri), time.monotonic() - age, first)
        return False

    async def _tell(self, action: Action, state: str, since: float | None = None) -> None:
        data: dict[str, Any] = {"state": state}
        if since is not None:
            data["since"] = since
        await self.store.publish(StoreEvent(EVENT, action.tenant, f"{action.rule.id} {action.entity_id}", data))

    def on_event(self, event: StoreEvent) -> None:
        """Another worker moved a (rule, entity) state (or the events were lost: read the open
        alerts again). On the event loop."""
        if event.kind == "resync" and self._loop is not None and self.rules:
            self._resyncs = [task for task in self._resyncs if not task.done()]
            self._resyncs.append(asyncio.create_task(self.restore()))
            return
        if event.kind != EVENT or not event.data or " " not in event.key:
            return
        rule_id, entity_id = event.key.split(" ", 1)
        state_name, since = event.data.get("state"), event.data.get("since")
        tenant = event.tenant
        with self._lock:
            if rule_id not in self.rules:
                return
            if state_name in (RESOLVED, CLEAR):
                self._drop(tenant, entity_id, rule_id)
                self._due_at.pop(("hold", tenant, entity_id, rule_id), None)
                return
            state = self._state(tenant, entity_id, rule_id)
            if state is None:
                return
            if state_name == OPEN:
                state.open, state.since = True, None
                self._due_at.pop(("hold", tenant, entity_id, rule_id), None)
            elif state_name == PENDING and not state.open and isinstance(since, int | float):
                state.since = float(since) if state.since is None else min(state.since, float(since))

    async def settle(self, timeout: float | None = None) -> None:
        """Until every queued alert is written (tests, the start after the demo city, a clean
        stop), or `timeout` seconds have passed."""
        if self._queue is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)

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
            body["status"] = _status(ACKNOWLEDGED, stamp)
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
                    state = self._state(tenant, source, str(rule_id))
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
        await self.settle(STOP_SECONDS)  # the alerts already decided, written while the store is open
        for task in [*self._tasks, *self._resyncs]:
            await stop_task(task)
        self._tasks, self._resyncs = [], []
