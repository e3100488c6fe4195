"""The ContextSourceRegistration resource (spec 5.2.9): validate a request body, expand its entity
types, attribute names and extra (context source) property names with the request's @context,
merge a PATCH, and render it back compacted with the @context of the request that reads it.

The mode rules of clause 4.3.6 that a registration carries on its own (exclusive needs entity ids
and attributes, auxiliary never takes writes) are checked here; the conflicts with other
registrations and local entities are in registrations/conflicts.py.
"""

from __future__ import annotations

import copy
import functools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cityos.entities.values import check_datetime, check_geometry, check_name, parse_datetime, require_uri
from cityos.errors import BadRequestData
from cityos.jsonld.termmap import TermMap
from cityos.query.patterns import DEFAULT_MAX_LENGTH
from cityos.redact import redact_registration, restore_registration
from cityos.subscriptions.model import Doc, _entities, _expires_at, _names, _string, map_type_names
from cityos.temporal.query import DURATION_RE

TYPE = "ContextSourceRegistration"
NAME_LISTS = ("propertyNames", "relationshipNames")
MODES = ("inclusive", "exclusive", "redirect", "auxiliary")
GEO_MEMBERS = ("location", "observationSpace", "operationSpace")
# spec 4.20 (Table 4.20-1 and the groups of 4.20-2): the operations a registration may name;
# the reads beyond entities (temporal, discovery), which federation/planning.py groups too
OTHER_READ_OPERATIONS = frozenset(
    (
        "retrieveTemporal",
        "queryTemporal",
        "retrieveEntityTypes",
        "retrieveEntityTypeDetails",
        "retrieveEntityTypeInfo",
        "retrieveAttrTypes",
        "retrieveAttrTypeDetails",
        "retrieveAttrTypeInfo",
    )
)
SUBSCRIPTION_OPERATIONS = frozenset(
    ("createSubscription", "updateSubscription", "retrieveSubscription", "querySubscription", "deleteSubscription")
)
READ_OPERATIONS = (
    frozenset(("retrieveEntity", "queryEntity", "queryBatch"))
    | OTHER_READ_OPERATIONS
    | SUBSCRIPTION_OPERATIONS
    | frozenset(
        (
            "createEntityMap",
            "updateEntityMap",
            "retrieveEntityMap",
            "queryEntityMap",
            "deleteEntityMap",
            "retrieveOps",
            "federationOps",
        )
    )
)
WRITE_OPERATIONS = frozenset(
    (
        "createEntity",
        "updateEntity",
        "appendAttrs",
        "updateAttrs",
        "deleteAttrs",
        "deleteEntity",
        "mergeEntity",
        "replaceEntity",
        "replaceAttrs",
        "createBatch",
        "upsertBatch",
        "updateBatch",
        "deleteBatch",
        "mergeBatch",
        "upsertTemporal",
        "appendAttrsTemporal",
        "deleteAttrsTemporal",
        "updateAttrsTemporal",
        "deleteAttrInstanceTemporal",
        "deleteTemporal",
        "updateOps",
        "redirectionOps",
    )
)
# the members 5.2.9 defines, stored under their own names; any other member is a context source
# property ("extra properties", 5.2.9 last row), stored under its expanded name
KNOWN = frozenset(
    (
        "id",
        "type",
        "registrationName",
        "description",
        "information",
        "tenant",
        "observationInterval",
        "managementInterval",
        "location",
        "observationSpace",
        "operationSpace",
        "expiresAt",
        "endpoint",
        "contextSourceInfo",
        "scope",
        "mode",
        "operations",
        "refreshRate",
        "management",
    )
)
READ_ONLY = frozenset(("@context", "createdAt", "modifiedAt", "status"))


def _information(value: Any, terms: TermMap, max_pattern_length: int = DEFAULT_MAX_LENGTH) -> list[Doc]:
    if not isinstance(value, list) or not value:
        raise BadRequestData("information must be a non-empty array of RegistrationInfo")
    out: list[Doc] = []
    for item in value:
        if not isinstance(item, dict):
            raise BadRequestData("each item of information must be an object")
        entry: Doc = {}
        if item.get("entities") is not None:
            entry["entities"] = _entities(item["entities"], terms, max_pattern_length)
        for name in NAME_LISTS:
            if item.get(name) is not None:
                entry[name] = _names(f"information.{name}", item[name], terms)
        if not entry:
            raise BadRequestData("each item of information needs entities, propertyNames or relationshipNames")
        out.append(entry)
    return out


def _endpoint(value: Any, terms: TermMap) -> str:
    """An http(s) URL with a host and a valid port: requests are forwarded to it (spec 5.2.9 says
    only "URI"; one that cannot be connected to is refused here, not at every forwarded read)."""
    uri = require_uri(value, "endpoint")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:  # a port out of 0-65535, a broken [IPv6] host
        raise BadRequestData(f"endpoint {uri!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequestData("endpoint must be an http or https URL with a host")
    if port == 0:
        raise BadRequestData("endpoint port must be between 1 and 65535")
    return uri


def _pairs(value: Any, terms: TermMap) -> list[Doc]:
    """contextSourceInfo: an array of KeyValuePair (5.2.22), both members strings."""
    if not isinstance(value, list):
        raise BadRequestData("contextSourceInfo must be an array of {key, value} pairs")
    for pair in value:
        if not isinstance(pair, dict) or not isinstance(pair.get("key"), str) or not isinstance(pair.get("value"), str):
            raise BadRequestData('each item of contextSourceInfo must be {"key": string, "value": string}')
    return copy.deepcopy(value)


def _duration(name: str, value: Any) -> str:
    if not isinstance(value, str) or value == "P" or DURATION_RE.match(value) is None:
        raise BadRequestData(f"{name} must be an ISO 8601 duration such as PT5M, got {value!r}")
    return value


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BadRequestData(f"{name} must be a number greater than 0, got {value!r}")
    return value


def _management(value: Any, terms: TermMap) -> Doc:
    """RegistrationManagementInfo (5.2.34)."""
    if not isinstance(value, dict):
        raise BadRequestData("management must be a RegistrationManagementInfo object")
    if "localOnly" in value and not isinstance(value["localOnly"], bool):
        raise BadRequestData("management.localOnly must be true or false")
    if "cacheDuration" in value:
        _duration("management.cacheDuration", value["cacheDuration"])
    for name in ("timeout", "cooldown"):
        if name in value:
            _positive(f"management.{name}", value[name])
    return copy.deepcopy(value)


def _interval(name: str) -> Callable[[Any, TermMap], Any]:
    """TimeInterval (5.2.11): startAt, and an endAt after it."""

    def parse(value: Any, terms: TermMap) -> Doc:
        if not isinstance(value, dict) or "startAt" not in value:
            raise BadRequestData(f"{name} must be a TimeInterval with startAt")
        start = parse_datetime(check_datetime(value["startAt"], f"{name}.startAt"), f"{name}.startAt")
        if value.get("endAt") is not None:
            end = parse_datetime(check_datetime(value["endAt"], f"{name}.endAt"), f"{name}.endAt")
            if end < start:
                raise BadRequestData(f"{name}.endAt must not be before startAt")
        return {k: value[k] for k in ("startAt", "endAt") if value.get(k) is not None}

    return parse


def _geometry(name: str) -> Callable[[Any, TermMap], Any]:
    def parse(value: Any, terms: TermMap) -> Doc:
        return copy.deepcopy(check_geometry(value, name))

    return parse


def _scope(value: Any, terms: TermMap) -> Any:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(s, str) and s.startswith("/") for s in items):
        raise BadRequestData("scope must be a scope string (starting with /) or an array of them")
    return copy.deepcopy(value)


def _mode(value: Any, terms: TermMap) -> str:
    if value not in MODES:
        raise BadRequestData(f"mode must be one of {', '.join(MODES)}, got {value!r}")
    return str(value)


def _operations(value: Any, terms: TermMap) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise BadRequestData("operations must be a non-empty array of operation names")
    unknown = [v for v in value if v not in READ_OPERATIONS and v not in WRITE_OPERATIONS]
    if unknown:
        raise BadRequestData(f"unknown operations: {', '.join(unknown)} (spec 4.20)")
    return list(value)


def _as_given(value: Any, terms: TermMap) -> Any:
    return copy.deepcopy(value)


MEMBERS: dict[str, Callable[[Any, TermMap], Any]] = {
    "registrationName": _string("registrationName"),
    "description": _string("description"),
    "information": _information,
    "endpoint": _endpoint,
    "expiresAt": _expires_at,
    "contextSourceInfo": _pairs,
    "management": _management,
    "observationInterval": _interval("observationInterval"),
    "managementInterval": _interval("managementInterval"),
    **{name: _geometry(name) for name in GEO_MEMBERS},
    "scope": _scope,
    "mode": _mode,
    "operations": _operations,
    "tenant": _string("tenant"),
    "refreshRate": _as_given,
}


def _check(doc: Doc) -> None:
    for name in ("information", "endpoint"):
        if name not in doc:
            raise BadRequestData(f"a context source registration needs {name}")
    check_mode(doc)


def check_mode(doc: Doc) -> None:
    """The rules of 4.3.6.3 a registration carries on its own: an exclusive one names single
    entities (by id) and their attributes; an auxiliary one never receives writes (5.9.2)."""
    mode = doc.get("mode", "inclusive")
    if mode == "exclusive":
        for item in doc["information"]:
            entities = item.get("entities")
            if not entities or any("id" not in e for e in entities):
                raise BadRequestData(
                    "an exclusive registration must name each entity by id (no idPattern, no type only)"
                )
            if not any(name in item for name in NAME_LISTS):
                raise BadRequestData("an exclusive registration must name the attributes it provides")
    if mode == "auxiliary":
        writes = [op for op in doc.get("operations", ()) if op in WRITE_OPERATIONS]
        if writes:
            raise BadRequestData(f"an auxiliary registration cannot take write operations: {', '.join(writes)}")


def _check_type(body: Doc) -> None:
    if "type" in body and body["type"] != TYPE:
        raise BadRequestData(f'the type of a context source registration must be "{TYPE}"')


def _set_members(doc: Doc, body: Doc, terms: TermMap, max_pattern_length: int) -> None:
    members = MEMBERS
    if max_pattern_length != DEFAULT_MAX_LENGTH:  # idPatterns held to the max_pattern_length setting
        members = {**MEMBERS, "information": functools.partial(_information, max_pattern_length=max_pattern_length)}
    for name, value in body.items():
        if name in ("id", "type") or name in READ_ONLY:
            continue
        key = name if name in KNOWN else terms.expand(check_name(name, "context source property"))
        if value is None:
            doc.pop(key, None)
        elif name in members:
            doc[key] = members[name](value, terms)
        else:
            doc[key] = copy.deepcopy(value)


def parse_registration(body: Any, terms: TermMap, *, max_pattern_length: int = DEFAULT_MAX_LENGTH) -> Doc:
    """A create body -> the stored form (read-only members dropped, an id generated)."""
    if not isinstance(body, dict):
        raise BadRequestData("the context source registration must be a JSON object")
    if body.get("type") is None:
        raise BadRequestData(f'a context source registration needs type "{TYPE}"')
    _check_type(body)
    if "id" in body:
        registration_id = require_uri(body["id"], "registration id")
    else:
        registration_id = f"urn:ngsi-ld:{TYPE}:{uuid.uuid4()}"
    doc: Doc = {"id": registration_id, "type": TYPE}
    _set_members(doc, {k: v for k, v in body.items() if v is not None}, terms, max_pattern_length)
    _check(doc)
    return doc


def merge_registration(doc: Doc, fragment: Any, terms: TermMap, *, max_pattern_length: int = DEFAULT_MAX_LENGTH) -> Doc:
    """PATCH /csourceRegistrations/{id}: each given top-level member replaces the stored one; null
    removes an optional member."""
    if not isinstance(fragment, dict):
        raise BadRequestData("the registration fragment must be a JSON object")
    _check_type(fragment)
    if "id" in fragment and fragment["id"] != doc["id"]:
        raise BadRequestData("the id of a context source registration cannot be changed")
    merged = copy.deepcopy(doc)
    _set_members(merged, fragment, terms, max_pattern_length)
    restore_registration(merged, doc)  # a redacted secret sent back keeps the stored one
    _check(merged)
    return merged


def expired(doc: Doc, now: datetime | None = None) -> bool:
    expires = doc.get("expiresAt")
    return expires is not None and parse_datetime(expires, "expiresAt") <= (now or datetime.now(UTC))


def render_registration(doc: Doc, terms: TermMap) -> Doc:
    """The registration as a client sees it, compacted with the reading request's @context."""
    out: Doc = {}
    for key, value in copy.deepcopy(doc).items():
        out[key if key in KNOWN else terms.compact(key)] = value
    for item in out["information"]:
        if "entities" in item:
            item["entities"] = [{**e, "type": map_type_names(e["type"], terms.compact)} for e in item["entities"]]
        for name in NAME_LISTS:
            if name in item:
                item[name] = [terms.compact(iri) for iri in item[name]]
    redact_registration(out)  # credentials are used, never shown (docs/security.md)
    return out


def extra_properties(doc: Doc) -> dict[str, Any]:
    """The context source properties of a registration (expanded names -> values)."""
    return {k: v for k, v in doc.items() if k not in KNOWN}
