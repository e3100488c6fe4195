"""The ContextSourceRegistration resource (spec 5.2.9): validate a request body, expand its entity
types and attribute names with the request's @context, merge a PATCH, match a query, and render it
back compacted with the @context of the request that reads it.

Only the registry exists: requests are NOT forwarded to registered context sources (distributed
operations, spec 4.3.6) and csourceSubscriptions cannot be created yet (docs/conformance.md).
"""

from __future__ import annotations

import copy
import functools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cityos.entities.values import parse_datetime, require_uri
from cityos.errors import BadRequestData
from cityos.jsonld.termmap import TermMap
from cityos.query import selectors
from cityos.query.patterns import DEFAULT_MAX_LENGTH, found
from cityos.redact import redact_registration, restore_registration
from cityos.subscriptions.model import Doc, _entities, _expires_at, _names, _string, map_type_names

TYPE = "ContextSourceRegistration"
NAME_LISTS = ("propertyNames", "relationshipNames")
# optional members stored exactly as given (nothing in them depends on the @context)
AS_GIVEN = (
    "observationInterval",
    "managementInterval",
    "location",
    "observationSpace",
    "operationSpace",
    "contextSourceInfo",
    "scope",
    "mode",
    "operations",
    "refreshRate",
    "tenant",
    "cacheDuration",
    "timeout",
    "cooldown",
)


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


MEMBERS = {
    "registrationName": _string("registrationName"),
    "description": _string("description"),
    "information": _information,
    "endpoint": _endpoint,
    "expiresAt": _expires_at,
}


def _check(doc: Doc) -> None:
    for name in ("information", "endpoint"):
        if name not in doc:
            raise BadRequestData(f"a context source registration needs {name}")


def _check_type(body: Doc) -> None:
    if "type" in body and body["type"] != TYPE:
        raise BadRequestData(f'the type of a context source registration must be "{TYPE}"')


def _set_members(doc: Doc, body: Doc, terms: TermMap, max_pattern_length: int) -> None:
    members = MEMBERS
    if max_pattern_length != DEFAULT_MAX_LENGTH:  # idPatterns held to the max_pattern_length setting
        members = {**MEMBERS, "information": functools.partial(_information, max_pattern_length=max_pattern_length)}
    for name, parse in members.items():
        if name in body:
            if body[name] is None:
                doc.pop(name, None)
            else:
                doc[name] = parse(body[name], terms)
    for name in AS_GIVEN:
        if name in body:
            if body[name] is None:
                doc.pop(name, None)
            else:
                doc[name] = copy.deepcopy(body[name])


def parse_registration(body: Any, terms: TermMap, *, max_pattern_length: int = DEFAULT_MAX_LENGTH) -> Doc:
    """A create body -> the stored form (unknown and read-only members dropped, an id generated)."""
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
    out = copy.deepcopy(doc)
    for item in out["information"]:
        if "entities" in item:
            item["entities"] = [{**e, "type": map_type_names(e["type"], terms.compact)} for e in item["entities"]]
        for name in NAME_LISTS:
            if name in item:
                item[name] = [terms.compact(iri) for iri in item[name]]
    redact_registration(out)  # credentials are used, never shown (docs/security.md)
    return out


def _type_names(expression: str) -> set[str]:
    return {token for token in selectors.TOKEN_RE.findall(expression) if token not in "|,;()"}


def _entity_matches(
    selector: Doc, types: Sequence[str] | None, ids: Sequence[str] | None, id_pattern: str | None
) -> bool:
    if types is not None and not _type_names(selector["type"]).intersection(types):
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
    for item in doc["information"]:
        selectors_ = item.get("entities")
        if selectors_ is not None and not any(_entity_matches(s, types, ids, id_pattern) for s in selectors_):
            continue
        if selectors_ is None and types is not None:
            continue
        names = [n for name in NAME_LISTS for n in item.get(name, [])]
        if attrs is not None and names and not set(names).intersection(attrs):
            continue
        return True
    return False
