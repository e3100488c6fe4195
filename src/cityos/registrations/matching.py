"""Which registrations answer a request: `matches` (entity types, ids, id pattern, attributes:
what forwarding and discovery both ask), and the discovery filters of 5.10.2 (q and csf on the
context source properties, geoQ on location, scopeQ on scope, the temporal query on
observationInterval / managementInterval).

The filters reuse the entity query predicates: a registration is seen as an entity whose
attributes are its members (endpoint, mode, the extra properties ...) and whose GeoProperties are
location, observationSpace and operationSpace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cityos.entities.values import parse_datetime
from cityos.jsonld.termmap import TermMap
from cityos.query import selectors
from cityos.query.entity_query import scope_predicate
from cityos.query.geo import GeoQuery, compile_geo
from cityos.query.patterns import found
from cityos.query.q import compile_q
from cityos.registrations.model import GEO_MEMBERS, KNOWN, NAME_LISTS
from cityos.subscriptions.model import Doc
from cityos.temporal.query import Window, to_micros

Predicate = Callable[[Doc], bool]
# timeproperty -> the interval of the registration it is compared with (5.10.2: observedAt ->
# observationInterval, createdAt / modifiedAt -> managementInterval)
INTERVALS = {"observedAt": "observationInterval", "createdAt": "managementInterval", "modifiedAt": "managementInterval"}


def type_names(expression: str) -> set[str]:
    return {token for token in selectors.TOKEN_RE.findall(expression) if token not in "|,;()"}


def _entity_matches(
    selector: Doc, types: Sequence[str] | None, ids: Sequence[str] | None, id_pattern: str | None
) -> bool:
    if types is not None and not type_names(selector["type"]).intersection(types):
        return False
    if ids is not None:
        if "id" in selector:
            if selector["id"] not in ids:
                return False
        elif "idPattern" in selector and not any(found(selector["idPattern"], i) for i in ids):
            return False
    if id_pattern is None or "id" not in selector:
        return True
    return found(id_pattern, selector["id"])


def matches(
    doc: Doc,
    *,
    types: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    id_pattern: str | None = None,
    attrs: Sequence[str] | None = None,
) -> bool:
    """Whether some RegistrationInfo of the registration can provide what a query asks for
    (types and attrs expanded); an information item without entities (or attribute names)
    covers every entity (or attribute)."""
    return bool(matching_items(doc, types=types, ids=ids, id_pattern=id_pattern, attrs=attrs))


def matching_items(
    doc: Doc,
    *,
    types: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    id_pattern: str | None = None,
    attrs: Sequence[str] | None = None,
) -> list[Doc]:
    """The RegistrationInfo items of `doc` that match, as `matches` decides."""
    out = []
    for item in doc["information"]:
        selectors_ = item.get("entities")
        if selectors_ is not None and not any(_entity_matches(s, types, ids, id_pattern) for s in selectors_):
            continue
        names = [n for name in NAME_LISTS for n in item.get(name, [])]
        if attrs is not None and names and not set(names).intersection(attrs):
            continue
        out.append(item)
    return out


def as_entity(doc: Doc, terms: TermMap) -> dict[str, Any]:
    """The registration in the internal entity form the query predicates read: each member a
    Property (the 5.2.9 members named with `terms`, the extra ones already expanded), location,
    observationSpace and operationSpace GeoProperties, scope as the entity scope."""
    attrs: dict[str, list[Doc]] = {}
    for key, value in doc.items():
        if key in ("id", "type", "information"):
            continue
        name = terms.expand(key) if key in KNOWN else key
        kind = "GeoProperty" if key in GEO_MEMBERS else "Property"
        attrs[name] = [{"type": kind, "value": value}]
    scope = doc.get("scope")
    return {
        "id": doc["id"],
        "type": [doc["type"]],
        "scope": [] if scope is None else (scope if isinstance(scope, list) else [scope]),
        "attrs": attrs,
    }


def _overlaps(window: Window, interval: Doc) -> bool:
    start = to_micros(parse_datetime(interval["startAt"], "startAt"))
    end = to_micros(parse_datetime(interval["endAt"], "endAt")) if "endAt" in interval else None
    if window.start is not None and end is not None and end <= window.start:
        return False
    return not (window.end is not None and start >= window.end)


@dataclass(frozen=True)
class RegistrationFilter:
    """The discovery filters of one query (5.10.2) beyond types, ids and attrs; each None when
    the query does not use it. q and csf are evaluated with the query's @context."""

    q: str | None = None
    csf: str | None = None
    geo: GeoQuery | None = None
    scope_q: str | None = None
    window: Window | None = None

    def compile(self, terms: TermMap, max_pattern_length: int | None) -> Predicate:
        tests: list[Callable[[dict[str, Any]], bool]] = []
        for text in (self.q, self.csf):
            if text is not None:
                tests.append(compile_q(text, terms.expand, max_pattern_length=max_pattern_length))
        if self.geo is not None:
            tests.append(compile_geo(self.geo, terms.expand))
        if self.scope_q is not None:
            tests.append(scope_predicate(self.scope_q))
        window = self.window

        def predicate(doc: Doc) -> bool:
            if window is not None and window.timerel is not None:
                interval = doc.get(INTERVALS[window.timeproperty])
                if not isinstance(interval, dict) or not _overlaps(window, interval):
                    return False
            if not tests:
                return True
            entity = as_entity(doc, terms)
            return all(test(entity) for test in tests)

        return predicate
