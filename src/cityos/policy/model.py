"""Access policies as data: who may do what on which data under which conditions, allow or deny.

A policy document (JSON or YAML, through the admin API or a --policy-file) is parsed here into a
frozen Policy; every member is checked, so a bad document is a 400 (or a refused file), never a
policy that silently means something else. Entity types and attribute names are written as in
NGSI-LD requests: a short name is expanded with the core @context (`Vehicle`,
`licensePlate`), a name with a colon is taken as the IRI itself.

    {"id": "police-plates", "effect": "allow",
     "principals": {"roles": ["police"]},          # who: ids, roles, groups, clients, tenants,
                                                    #      anonymous, authenticated (any of them)
     "actions": ["read"],                           # read create update delete subscribe administer
     "resources": {"tenants": ["city"], "types": ["Vehicle"], "idPattern": "^urn:ngsi-ld:Vehicle:",
                   "attrs": ["licensePlate", "location"]   # or "exceptAttrs": [...]
                   "scopes": ["/Madrid/#"], "area": {GeoJSON Polygon}, "window": {"from": .., "until": ..}},
     "conditions": {"purpose": ["enforcement"], "hours": "07:00-19:00", "expires": "2027-01-01T00:00:00Z"}}

A document with `personal` instead of an effect marks types or attributes as personal data
(their reads are audited): {"id": "plates-are-personal", "personal": {"attrs": ["licensePlate"]}}.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

from cityos.errors import BadRequestData
from cityos.policy.decision import ACTIONS, Action
from cityos.query.patterns import compile_pattern

POLICY_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
HOURS_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")
SCOPE_PATTERN_RE = re.compile(r"^(/[\w\-]+)*(/#)?$|^/#$")
TOP = frozenset({"id", "description", "effect", "principals", "actions", "resources", "conditions", "personal"})
WHO = frozenset({"ids", "roles", "groups", "clients", "tenants", "anonymous", "authenticated"})
WHAT = frozenset({"tenants", "types", "idPattern", "attrs", "exceptAttrs", "scopes", "area", "window"})
WHEN = frozenset({"purpose", "hours", "expires"})
MAX_LIST = 1000


@dataclass(frozen=True, slots=True)
class Who:
    """Any listed criterion matches (an empty Who matches nobody)."""

    ids: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    clients: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()  # principals whose own tenants include one of these
    anonymous: bool = False
    authenticated: bool = False  # any principal that is not anonymous


@dataclass(frozen=True, slots=True)
class Resources:
    """Which data; None = no restriction. Types and attribute names are expanded IRIs."""

    tenants: frozenset[str] | None = None
    types: frozenset[str] | None = None
    id_pattern: str | None = None
    attrs: frozenset[str] | None = None  # allow-list
    except_attrs: frozenset[str] = frozenset()  # deny-list
    scopes: tuple[str, ...] | None = None  # /A/B matches exactly, /A/# the subtree
    area: dict[str, Any] | None = None  # GeoJSON Polygon or MultiPolygon: the entity's location inside
    window: tuple[str | None, str | None] | None = None  # the entity's modifiedAt in [from, until)

    @property
    def attribute_limited(self) -> bool:
        return self.attrs is not None or bool(self.except_attrs)

    def attr_allowed(self, attr: str) -> bool:
        return (self.attrs is None or attr in self.attrs) and attr not in self.except_attrs


@dataclass(frozen=True, slots=True)
class Conditions:
    purpose: frozenset[str] | None = None  # the request's Purpose header must be one of these
    hours: tuple[time, time] | None = None  # UTC time of day, [start, end); wraps past midnight
    expires: datetime | None = None  # the policy no longer applies from then on

    @property
    def any(self) -> bool:
        return self.purpose is not None or self.hours is not None or self.expires is not None

    def hold(self, now: datetime, purpose: str | None) -> bool:
        if self.expires is not None and now >= self.expires:
            return False
        if self.purpose is not None and purpose not in self.purpose:
            return False
        if self.hours is not None:
            start, end = self.hours
            clock = now.time().replace(tzinfo=None)
            inside = start <= clock < end if start <= end else (clock >= start or clock < end)
            if not inside:
                return False
        return True


@dataclass(frozen=True, slots=True, eq=False)
class Policy:
    """Compared and hashed by identity: compiled views are cached by the policies they come from."""

    id: str
    effect: str  # "allow", "deny", or "personal" (a personal-data marker)
    who: Who
    actions: frozenset[Action]
    resources: Resources
    conditions: Conditions
    document: dict[str, Any]  # as submitted (what the admin API shows)
    personal_types: frozenset[str] = frozenset()
    personal_attrs: frozenset[str] = frozenset()


def _strings(value: Any, where: str, *, allow_empty: bool = False) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadRequestData(f"{where} must be a string or an array of non-empty strings")
    if (not value and not allow_empty) or len(value) > MAX_LIST:
        raise BadRequestData(f"{where} must have 1 to {MAX_LIST} items")
    return value


def _object(value: Any, where: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequestData(f"{where} must be an object")
    unknown = set(value) - allowed
    if unknown:
        raise BadRequestData(f"{where}: unknown members {', '.join(sorted(unknown))}")
    return value


def _instant(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise BadRequestData(f"{where} must be a date-time string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequestData(f"{where} is not an ISO 8601 date-time") from exc
    if parsed.tzinfo is None:
        raise BadRequestData(f"{where} needs a time zone (e.g. Z)")
    return parsed.astimezone(UTC)


def _stamp(value: Any, where: str) -> str | None:
    """A date-time as the normalized text entities carry (comparable as strings)."""
    if value is None:
        return None
    return _instant(value, where).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _area(value: Any) -> dict[str, Any]:
    from cityos.policy.geo import check_area

    return check_area(value)


def expander(expand: Callable[[str], str]) -> Callable[[str], str]:
    """Short names through the core @context, IRIs (with a colon) as written."""
    return lambda name: name if ":" in name else expand(name)


def parse_policy(document: Any, expand: Callable[[str], str]) -> Policy:
    """A checked Policy from a document, or BadRequestData naming the first problem."""
    if not isinstance(document, dict):
        raise BadRequestData("a policy must be a JSON object")
    unknown = set(document) - TOP
    if unknown:
        raise BadRequestData(f"policy: unknown members {', '.join(sorted(unknown))}")
    policy_id = document.get("id")
    if not isinstance(policy_id, str) or not POLICY_ID_RE.match(policy_id):
        raise BadRequestData("policy id must be 1-128 letters, digits or _ . : -")
    if "description" in document and not isinstance(document["description"], str):
        raise BadRequestData("description must be a string")
    full = expander(expand)
    if "personal" in document:
        extra = set(document) & {"effect", "principals", "actions", "resources", "conditions"}
        if extra:
            raise BadRequestData(f"a personal-data marker has no {', '.join(sorted(extra))}")
        marker = _object(document["personal"], "personal", frozenset({"types", "attrs"}))
        if not marker:
            raise BadRequestData("personal needs types or attrs")
        return Policy(
            policy_id,
            "personal",
            Who(),
            frozenset(),
            Resources(),
            Conditions(),
            document,
            frozenset(full(t) for t in _strings(marker.get("types", []), "personal.types", allow_empty=True)),
            frozenset(full(a) for a in _strings(marker.get("attrs", []), "personal.attrs", allow_empty=True)),
        )
    effect = document.get("effect")
    if effect not in ("allow", "deny"):
        raise BadRequestData("effect must be allow or deny")
    who = _who(_object(document.get("principals"), "principals", WHO))
    actions = _strings(document.get("actions"), "actions")
    bad = [a for a in actions if a not in ACTIONS and a != "*"]
    if bad:
        raise BadRequestData(f"unknown actions {', '.join(bad)} (use {', '.join(ACTIONS)} or *)")
    chosen: frozenset[Action] = frozenset(ACTIONS) if "*" in actions else frozenset(actions)  # type: ignore[arg-type]
    resources = _resources(_object(document.get("resources"), "resources", WHAT), full)
    conditions = _conditions(_object(document.get("conditions"), "conditions", WHEN))
    return Policy(policy_id, effect, who, chosen, resources, conditions, document)


def _who(raw: Mapping[str, Any]) -> Who:
    flags = {}
    for name in ("anonymous", "authenticated"):
        if name in raw and not isinstance(raw[name], bool):
            raise BadRequestData(f"principals.{name} must be true or false")
        flags[name] = bool(raw.get(name, False))
    lists = {
        name: frozenset(_strings(raw[name], f"principals.{name}")) if name in raw else frozenset()
        for name in ("ids", "roles", "groups", "clients", "tenants")
    }
    who = Who(
        ids=lists["ids"],
        roles=lists["roles"],
        groups=lists["groups"],
        clients=lists["clients"],
        tenants=lists["tenants"],
        anonymous=flags["anonymous"],
        authenticated=flags["authenticated"],
    )
    if not (any(lists.values()) or who.anonymous or who.authenticated):
        raise BadRequestData("principals must name someone (ids, roles, groups, clients, tenants, anonymous, ...)")
    return who


def _resources(raw: Mapping[str, Any], full: Callable[[str], str]) -> Resources:
    pattern = raw.get("idPattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise BadRequestData("resources.idPattern must be a string")
        compile_pattern(pattern, "resources.idPattern: invalid regular expression")
    if "attrs" in raw and "exceptAttrs" in raw:
        raise BadRequestData("resources: attrs and exceptAttrs cannot be used together")
    scopes = None
    if "scopes" in raw:
        scopes = tuple(_strings(raw["scopes"], "resources.scopes"))
        for scope in scopes:
            if not SCOPE_PATTERN_RE.match(scope):
                raise BadRequestData(f"resources.scopes: {scope!r} is not a scope (/A/B) or subtree (/A/#)")
    window = None
    if "window" in raw:
        span = _object(raw["window"], "resources.window", frozenset({"from", "until"}))
        window = (_stamp(span.get("from"), "window.from"), _stamp(span.get("until"), "window.until"))
        if window == (None, None):
            raise BadRequestData("resources.window needs from or until")
    return Resources(
        tenants=frozenset(_strings(raw["tenants"], "resources.tenants")) if "tenants" in raw else None,
        types=frozenset(full(t) for t in _strings(raw["types"], "resources.types")) if "types" in raw else None,
        id_pattern=pattern,
        attrs=frozenset(full(a) for a in _strings(raw["attrs"], "resources.attrs")) if "attrs" in raw else None,
        except_attrs=frozenset(full(a) for a in _strings(raw.get("exceptAttrs", []), "exceptAttrs", allow_empty=True)),
        scopes=scopes,
        area=_area(raw["area"]) if "area" in raw else None,
        window=window,
    )


def _conditions(raw: Mapping[str, Any]) -> Conditions:
    hours = None
    if "hours" in raw:
        match = HOURS_RE.match(raw["hours"]) if isinstance(raw["hours"], str) else None
        if match is None:
            raise BadRequestData("conditions.hours must look like 07:00-19:00 (UTC)")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        end = time(23, 59, 59, 999999) if (h2, m2) >= (24, 0) else time(h2, m2)
        hours = (time(h1, m1), end)
    return Conditions(
        purpose=frozenset(_strings(raw["purpose"], "conditions.purpose")) if "purpose" in raw else None,
        hours=hours,
        expires=_instant(raw["expires"], "conditions.expires") if "expires" in raw else None,
    )


def scope_matches(pattern: str, scope: str) -> bool:
    """/A/# matches /A and everything under it; anything else matches exactly."""
    if pattern == "/#":
        return True
    if pattern.endswith("/#"):
        base = pattern[:-2]
        return scope == base or scope.startswith(base + "/")
    return scope == pattern
