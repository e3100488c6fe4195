"""Alert rules declared as data: one TOML file per rule, checked whole at load (docs/indicators.md,
"Alert rules").

A rule watches the entities of one type. Its `[when]` table is one condition, or `all`/`any` of a
list of them: a threshold (`above`/`below`, with a `clear` level for hysteresis), a rate of change
(`rate_above`/`rate_below` per `per`), a polygon the entity's Point location lies `inside`, or the
`absent`ce of readings of an attribute (alone: it is decided by a timer, not by a change). `for`
asks that the condition has held that long before the rule fires. Evaluation here is pure (an
entity in, a verdict out) so that the change listener stays fast and is testable without a store.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cityos.insight.model import IndicatorFileError

SEVERITIES = ("informational", "low", "medium", "high", "critical")  # Smart Data Models Alert
CATEGORIES = ("traffic", "naturalDisaster", "weather", "environment", "health", "security", "agriculture")
RULE_FIELDS: dict[str, type] = {
    "id": str,
    "name": str,
    "description": str,
    "type": str,
    "severity": str,
    "category": str,
    "subCategory": str,
    "version": int,
    "for": str,
    "when": dict,
}
REQUIRED = ("id", "name", "type", "severity", "category", "when")
CONDITION_FIELDS: dict[str, type] = {
    "attribute": str,
    "above": float,
    "below": float,
    "clear": float,
    "rate_above": float,
    "rate_below": float,
    "per": str,
    "absent": str,
    "inside": list,
}
DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
MAX_CONDITIONS = 16  # a rule is evaluated inside every write of its type: kept small
MAX_VERTICES = 1000


class RuleFileError(IndicatorFileError):
    """A refused rule file: where and why (the same shape as a refused indicator file)."""


Expand = Callable[[str], str]
Memo = dict[str, Any]
MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Condition:
    """One test on an entity. kind: threshold, rate, inside or absent."""

    kind: str
    attribute: str  # the term, as written
    iri: str  # expanded
    above: float | None = None
    below: float | None = None
    clear: float | None = None  # threshold: while the alert is open, it holds until the value passes this
    per: float = 3600.0  # rate: the change per this many seconds
    absent: float = 0.0  # seconds without a reading
    polygon: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    name: str
    type: str  # the term
    type_iri: str
    severity: str
    category: str
    conditions: tuple[Condition, ...]
    mode: str  # "all" or "any"
    source: str
    digest: str
    hold: float = 0.0  # `for`, in seconds
    description: str = ""
    sub_category: str = ""
    version: int = 1

    @property
    def absence(self) -> Condition | None:
        first = self.conditions[0]
        return first if first.kind == "absent" else None

    @property
    def simple(self) -> Condition | None:
        """The rule's one condition when it is a plain threshold (indexed by level: alerts.py)."""
        first = self.conditions[0]
        return first if len(self.conditions) == 1 and first.kind == "threshold" else None

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.iri for c in self.conditions))

    def alert_id(self, entity_id: str) -> str:
        """One alert per rule and entity: the same id each time it fires (de-duplication)."""
        return f"urn:ngsi-ld:Alert:{self.id}:{entity_id}"


def seconds_of(text: str) -> float | None:
    found = DURATION.match(text.strip())
    return float(found.group(1)) * UNIT_SECONDS[found.group(2)] if found else None


def _line_of(text: str, key: str) -> int | None:
    """The first line writing `key =` (inline tables included), after [when] for a condition key."""
    lines = text.splitlines()
    pattern = re.compile(rf"(^|[\s{{,]){re.escape(key)}\s*=")
    start = next((i for i, line in enumerate(lines) if re.match(r"^\s*\[+\s*when", line)), 0)
    if key in RULE_FIELDS:
        start = 0
    found = next((i + 1 for i in range(start, len(lines)) if pattern.search(lines[i])), None)
    return found or next((i + 1 for i in range(len(lines)) if pattern.search(lines[i])), None)


def parse_rule(text: str, path: str, expand: Expand = str) -> Rule:
    """The rule a file declares, or RuleFileError with the line and the reason."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        raise RuleFileError(path, int(found.group(1)) if found else None, f"syntax error: {exc}") from exc

    def refuse(key: str, reason: str) -> RuleFileError:
        return RuleFileError(path, _line_of(text, key), reason)

    _check(data, RULE_FIELDS, refuse)
    for key in REQUIRED:
        if key not in data:
            raise RuleFileError(path, None, f"missing field {key!r}")
    if not ID.match(data["id"]):
        raise refuse("id", "id must be lower-case letters, digits and dashes")
    if data["severity"] not in SEVERITIES:
        raise refuse("severity", f"severity must be one of {', '.join(SEVERITIES)}")
    if data["category"] not in CATEGORIES:
        raise refuse("category", f"category must be one of {', '.join(CATEGORIES)}")
    hold = 0.0
    if "for" in data:
        held = seconds_of(data["for"])
        if held is None or held <= 0:
            raise refuse("for", "for is a duration such as 30s, 15m, 2h or 1d")
        hold = held
    mode, bodies = _combination(data["when"], refuse)
    conditions = tuple(_condition(body, refuse, expand) for body in bodies)
    if any(c.kind == "absent" for c in conditions) and len(conditions) > 1:
        raise refuse("absent", "an absent condition stands alone (a timer decides it, not a change)")
    if conditions[0].kind == "absent" and hold:
        raise refuse("for", "an absent condition has its own duration: no for")
    return Rule(
        id=data["id"],
        name=data["name"],
        type=data["type"],
        type_iri=expand(data["type"]),
        severity=data["severity"],
        category=data["category"],
        conditions=conditions,
        mode=mode,
        source=path,
        digest=hashlib.sha256(text.encode()).hexdigest(),
        hold=hold,
        description=data.get("description", ""),
        sub_category=data.get("subCategory", ""),
        version=data.get("version", 1),
    )


def _check(data: dict[str, Any], known: dict[str, type], refuse: Callable[[str, str], RuleFileError]) -> None:
    for key, value in data.items():
        expected = known.get(key)
        if expected is None:
            raise refuse(key, f"unknown field {key!r}")
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or isinstance(value, bool):
            raise refuse(key, f"{key} must be a {expected.__name__}")


def _combination(when: dict[str, Any], refuse: Callable[[str, str], RuleFileError]) -> tuple[str, list[Any]]:
    modes = [key for key in ("all", "any") if key in when]
    if not modes:
        return "all", [when]
    if len(modes) > 1 or len(when) > 1:
        raise refuse(modes[0], "when is one condition, or only all = [...] or any = [...]")
    bodies = when[modes[0]]
    if not isinstance(bodies, list) or not bodies:
        raise refuse(modes[0], f"{modes[0]} is a non-empty list of conditions")
    if len(bodies) > MAX_CONDITIONS:
        raise refuse(modes[0], f"at most {MAX_CONDITIONS} conditions")
    return modes[0], bodies


def _condition(body: Any, refuse: Callable[[str, str], RuleFileError], expand: Expand) -> Condition:
    if not isinstance(body, dict):
        raise refuse("when", "a condition is a table")
    _check(body, CONDITION_FIELDS, refuse)
    kinds = [
        kind
        for kind, keys in (
            ("threshold", ("above", "below")),
            ("rate", ("rate_above", "rate_below")),
            ("absent", ("absent",)),
            ("inside", ("inside",)),
        )
        if any(key in body for key in keys)
    ]
    if len(kinds) != 1:
        raise refuse("attribute", "a condition is one of above/below, rate_above/rate_below, absent or inside")
    kind = kinds[0]
    attribute = body.get("attribute", "location" if kind == "inside" else "")
    if not attribute:
        raise refuse(next(iter(body)), f"a {kind} condition needs an attribute")
    if "clear" in body and kind != "threshold":
        raise refuse("clear", "clear (hysteresis) belongs to a threshold")
    if "per" in body and kind != "rate":
        raise refuse("per", "per belongs to a rate")
    made: dict[str, Any] = {"kind": kind, "attribute": attribute, "iri": expand(attribute)}
    if kind == "threshold":
        above, below, clear = body.get("above"), body.get("below"), body.get("clear")
        if above is not None and below is not None:
            raise refuse("below", "above or below, not both (use any = [...])")
        if clear is not None and above is not None and clear > above:
            raise refuse("clear", "the clear level of an above threshold is at or below it")
        if clear is not None and below is not None and clear < below:
            raise refuse("clear", "the clear level of a below threshold is at or above it")
        made.update(above=above, below=below, clear=clear)
    elif kind == "rate":
        if "rate_above" in body and "rate_below" in body:
            raise refuse("rate_below", "rate_above or rate_below, not both")
        per = seconds_of(body.get("per", "1h"))
        if per is None or per <= 0:
            raise refuse("per", "per is a duration such as 1m or 1h")
        made.update(above=body.get("rate_above"), below=body.get("rate_below"), per=per)
    elif kind == "absent":
        absent = seconds_of(body["absent"])
        if absent is None or absent <= 0:
            raise refuse("absent", "absent is a duration such as 30m")
        made.update(absent=absent)
    else:
        made.update(polygon=_polygon(body["inside"], refuse))
    return Condition(**made)


def _polygon(ring: list[Any], refuse: Callable[[str, str], RuleFileError]) -> tuple[tuple[float, float], ...]:
    try:
        points = tuple((float(p[0]), float(p[1])) for p in ring if len(p) == 2)
    except (TypeError, ValueError, IndexError):
        points = ()
    if len(points) != len(ring) or not 3 <= len(points) <= MAX_VERTICES:
        raise refuse("inside", f"inside is a ring of 3 to {MAX_VERTICES} [longitude, latitude] pairs")
    return points


def load_rules(directory: str, expand: Expand = str) -> dict[str, Rule]:
    """Every *.toml of `directory`; the first refused file raises RuleFileError."""
    if not directory:
        return {}
    folder = Path(directory)
    if not folder.is_dir():
        raise RuleFileError(directory, None, "not a directory")
    rules = [parse_rule(p.read_text(encoding="utf-8"), str(p), expand) for p in sorted(folder.glob("*.toml"))]
    return index(rules)


def index(rules: Iterable[Rule]) -> dict[str, Rule]:
    return {rule.id: rule for rule in rules}


# -- evaluation (on the writer's thread: no I/O, no allocation beyond the verdict) ----------------


def reading(entity: dict[str, Any] | None, iri: str) -> dict[str, Any] | None:
    """The attribute's default instance (the one without datasetId), else its first."""
    if entity is None:
        return None
    instances = entity.get("attrs", {}).get(iri)
    if not instances:
        return None
    for instance in instances:
        if "datasetId" not in instance:
            return instance  # type: ignore[no-any-return]
    return instances[0]  # type: ignore[no-any-return]


def epoch(stamp: Any) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def when_of(instance: dict[str, Any]) -> float | None:
    """A reading's time: observedAt, else when it was stored."""
    return epoch(instance.get("observedAt") or instance.get("modifiedAt"))


def number(instance: dict[str, Any] | None) -> float | None:
    if instance is None:
        return None
    value = instance.get("value")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def inside(point: tuple[float, float], ring: tuple[tuple[float, float], ...]) -> bool:
    """Ray casting: the point strictly inside the ring (planar, in degrees: districts are small)."""
    x, y = point
    found = False
    j = len(ring) - 1
    for i in range(len(ring)):
        xi, yi = ring[i]
        xj, yj = ring[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            found = not found
        j = i
    return found


def rate_per_second(instance: dict[str, Any] | None, previous: dict[str, Any] | None) -> float | None:
    """The change per second between two readings of an attribute (None: not two timed numbers)."""
    value, earlier = number(instance), number(previous)
    if value is None or earlier is None or instance is None or previous is None:
        return None
    now, then = when_of(instance), when_of(previous)
    if now is None or then is None or now <= then:
        return None
    return (value - earlier) / (now - then)


def test(
    condition: Condition, after: dict[str, Any], before: dict[str, Any] | None, open_: bool, memo: Memo | None = None
) -> Any:
    """The value that meets the condition (the triggering value), or None. While the alert is open
    (`open_`), a threshold holds until its `clear` level is passed: hysteresis. `memo` keeps what
    several rules of one change read alike (a rate's two readings and their parsed times)."""
    instance = reading(after, condition.iri)
    kind = condition.kind
    if kind == "threshold":
        value = number(instance)
        if value is None:
            return None
        if condition.above is not None:
            level = condition.clear if open_ and condition.clear is not None else condition.above
            return value if value > level else None
        assert condition.below is not None
        level = condition.clear if open_ and condition.clear is not None else condition.below
        return value if value < level else None
    if kind == "rate":
        per_second = memo.get(condition.iri, MISSING) if memo is not None else MISSING
        if per_second is MISSING:
            per_second = rate_per_second(instance, reading(before, condition.iri))
            if memo is not None:
                memo[condition.iri] = per_second
        if per_second is None:
            return None
        rate = per_second * condition.per
        if condition.above is not None:
            return round(rate, 9) if rate > condition.above else None
        assert condition.below is not None
        return round(rate, 9) if rate < condition.below else None
    if kind == "inside":
        if instance is None:
            return None
        geometry = instance.get("value")
        if not isinstance(geometry, dict) or geometry.get("type") != "Point":
            return None
        coordinates = geometry.get("coordinates")
        try:
            point = (float(coordinates[0]), float(coordinates[1]))  # type: ignore[index]
        except (TypeError, ValueError, IndexError):
            return None
        return geometry if inside(point, condition.polygon) else None
    return None  # absent: decided by the timer


def touched(rule: Rule, after: dict[str, Any], before: dict[str, Any] | None) -> bool:
    """Whether the change wrote one of the rule's attributes (else its verdict cannot have moved)."""
    if before is None:
        return True
    new, old = after.get("attrs", {}), before.get("attrs", {})
    return any(new.get(iri) != old.get(iri) for iri in rule.attributes)


def evaluate(
    rule: Rule, after: dict[str, Any], before: dict[str, Any] | None, open_: bool, memo: Memo | None = None
) -> dict[str, Any] | None:
    """The triggering values ({attribute: value}) if the rule's `when` holds, else None."""
    found: dict[str, Any] = {}
    for condition in rule.conditions:
        value = test(condition, after, before, open_, memo)
        if value is None:
            if rule.mode == "all":
                return None
        else:
            found[condition.attribute if condition.kind != "rate" else f"{condition.attribute}Rate"] = value
            if rule.mode == "any":
                return found
    return found or None
