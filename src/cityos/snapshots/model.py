"""The Snapshot data type (spec 5.2.41) as CityOS keeps it: validation of the create, update and
clone bodies, the status a fill ends in (5.16.1.4), the purge filter (5.16.7) and the rendering.
Framework-free: plain dicts in, plain dicts out, BadRequestData for what a client got wrong."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from cityos.entities.values import require_uri
from cityos.errors import BadRequestData, OperationNotSupported
from cityos.query.q import compile_q, parse_q, q_attribute_names

DEFAULT_PRIORITY = 5
PRIORITIES = range(1, 11)  # snapshotPriority: 1 (evict first) to 10
PREPARING, SUCCESS, PARTIAL, EMPTY, FAILURE = "preparing", "success", "partial", "empty", "failure"
# what a client may give when it creates, updates or clones a snapshot (5.2.41)
LIFETIME_MEMBERS = frozenset({"snapshotLifetime", "expiresAt"})  # lifecycle.py
CREATE_MEMBERS = (
    frozenset({"id", "type", "snapshotQueries", "snapshotTemporalQueries", "snapshotPriority", "@context"})
    | LIFETIME_MEMBERS
)
UPDATE_MEMBERS = frozenset({"snapshotPriority", "@context"}) | LIFETIME_MEMBERS
CLONE_MEMBERS = frozenset({"id", "type", "snapshotPriority", "@context"}) | LIFETIME_MEMBERS
READ_ONLY = frozenset(
    {
        "snapshotQueries",
        "snapshotTemporalQueries",
        "snapshotStatus",
        "snapshotQueriesDetails",
        "snapshotTemporalQueriesDetails",
        "createdAt",
        "modifiedAt",
        "lastUsedAt",
        "id",
        "type",
    }
)
# members of 5.2.41 that CityOS does not serve yet: a request using them is told so, not ignored
NOT_SUPPORTED = frozenset({"endpoint", "receiverInfo"})
PUBLIC = (
    "id",
    "type",
    "snapshotQueries",
    "snapshotTemporalQueries",
    "snapshotStatus",
    "snapshotQueriesDetails",
    "snapshotTemporalQueriesDetails",
    "snapshotPriority",
    "createdAt",
    "modifiedAt",
    "lastUsedAt",
    "snapshotLifetime",
    "expiresAt",  # computed (lifecycle.expires_at), never stored as given
)
# the members of a Query (5.2.23) a snapshot query may use: temporalQ belongs to snapshotTemporalQueries
QUERY_MEMBERS = frozenset({"type", "entities", "attrs", "q", "geoQ", "scopeQ", "csf", "lang", "@context"})
# the members a purge's q may read (5.16.7.4): the Snapshot's own, as a pseudo-entity (`as_entity`)
PURGE_MEMBERS = frozenset({"snapshotPriority", "snapshotStatus", "createdAt", "modifiedAt", "lastUsedAt"})
HIDDEN = "cityos:hiddenTenant"  # stored, never rendered: the tenant holding the frozen entities
OWNER = "cityos:owner"  # stored, never rendered: the principal that made it (None with auth off)
UNTIL = "cityos:expiresAt"  # stored, never rendered as is: the expiresAt a client gave (lifecycle.py)
BEAT = "cityos:fillBeat"  # stored, never rendered: epoch seconds of a running fill's last heartbeat


class TooLarge(Exception):
    """The snapshot would hold more than its limits allow (snapshot_max_entities, history.MAX_INSTANCES)."""


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequestData(f"{what} must be a JSON object")
    return body


def _check_members(body: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    unsupported = sorted(set(body) & NOT_SUPPORTED)
    if unsupported:
        raise OperationNotSupported(
            f"{', '.join(unsupported)} {'is' if len(unsupported) == 1 else 'are'} not supported"
        )
    refused = sorted(set(body) - allowed)
    if refused:
        kind = "read-only or unknown" if set(refused) & READ_ONLY else "unknown"
        raise BadRequestData(f"{what}: {kind} members {', '.join(refused)}")


def _type(body: dict[str, Any], *, required: bool) -> None:
    if body.get("type", None if required else "Snapshot") != "Snapshot":
        raise BadRequestData('a snapshot needs "type": "Snapshot"')


def priority(body: dict[str, Any], default: int = DEFAULT_PRIORITY) -> int:
    value = body.get("snapshotPriority", default)
    if isinstance(value, bool) or not isinstance(value, int) or value not in PRIORITIES:
        raise BadRequestData("snapshotPriority must be an integer from 1 to 10")
    return value


def snapshot_id(body: dict[str, Any]) -> str:
    given = body.get("id")
    if given is None:
        return f"urn:ngsi-ld:Snapshot:{uuid.uuid4().hex}"
    if not isinstance(given, str):
        raise BadRequestData("id must be a URI")
    return require_uri(given, "snapshot id")


def check_query(raw: Any, number: int, *, temporal: bool = False) -> dict[str, Any]:
    """One member of snapshotQueries: a Query (5.2.23) without temporalQ that selects something;
    of snapshotTemporalQueries (`temporal`): one with a temporalQ object (its window is checked
    when the query is compiled: snapshots/history.py)."""
    where = f"{'snapshotTemporalQueries' if temporal else 'snapshotQueries'}[{number}]"
    query = _object(raw, where)
    if query.get("type") != "Query":
        raise BadRequestData(f'{where} needs "type": "Query"')
    if temporal and not isinstance(query.get("temporalQ"), dict):
        raise BadRequestData(f"{where} needs a temporalQ object")
    if not temporal and "temporalQ" in query:
        raise BadRequestData(f"{where}: temporalQ belongs in snapshotTemporalQueries")
    unknown = sorted(set(query) - QUERY_MEMBERS - ({"temporalQ"} if temporal else set()))
    if unknown:
        raise BadRequestData(f"{where}: members not allowed: {', '.join(unknown)}")
    entities = query.get("entities")
    if entities is not None and (not isinstance(entities, list) or not entities):
        raise BadRequestData(f"{where}: entities must be a non-empty array")
    attrs = query.get("attrs")
    if attrs is not None and (not isinstance(attrs, list) or not attrs or not all(isinstance(a, str) for a in attrs)):
        raise BadRequestData(f"{where}: attrs must be a non-empty array of strings")
    for member in ("q", "scopeQ", "csf", "lang"):
        if query.get(member) is not None and not isinstance(query[member], str):
            raise BadRequestData(f"{where}: {member} must be a string")
    if not any(query.get(m) is not None for m in ("entities", "attrs", "q", "geoQ")):
        raise BadRequestData(f"{where} needs entities, attrs, q or geoQ")
    return query


def parse_create(body: Any) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], int]:
    """(id, snapshotQueries, snapshotTemporalQueries, snapshotPriority) of a create body (5.16.1):
    one of the two lists at least, each non-empty when given."""
    body = _object(body, "a snapshot")
    _check_members(body, CREATE_MEMBERS, "a snapshot")
    _type(body, required=True)
    lists: dict[str, list[dict[str, Any]]] = {}
    for member in ("snapshotQueries", "snapshotTemporalQueries"):
        given = body.get(member)
        if given is None:
            continue
        if not isinstance(given, list) or not given:
            raise BadRequestData(f"{member} must be a non-empty array of Query")
        temporal = member == "snapshotTemporalQueries"
        lists[member] = [check_query(q, n, temporal=temporal) for n, q in enumerate(given)]
    if not lists:
        raise BadRequestData("a snapshot needs snapshotQueries or snapshotTemporalQueries")
    queries, temporal_queries = lists.get("snapshotQueries", []), lists.get("snapshotTemporalQueries", [])
    return snapshot_id(body), queries, temporal_queries, priority(body)


def parse_update(body: Any) -> int | None:
    """The new snapshotPriority of an update body (5.16.4), None if it keeps its own; the lifetime
    members (lifecycle.lifetime_members) are the others a client may change."""
    body = _object(body, "a snapshot fragment")
    _check_members(body, UPDATE_MEMBERS, "a snapshot update")
    if not set(body) & (UPDATE_MEMBERS - {"@context"}):
        raise BadRequestData("a snapshot update needs snapshotPriority, snapshotLifetime or expiresAt")
    return priority(body) if "snapshotPriority" in body else None


def parse_clone(body: Any, original: dict[str, Any]) -> tuple[str, int]:
    """(id, snapshotPriority) of a clone (5.16.2): what the body gives, else the original's priority."""
    body = _object(body, "a snapshot clone")
    _check_members(body, CLONE_MEMBERS, "a snapshot clone")
    _type(body, required=False)
    return snapshot_id(body), priority(body, original.get("snapshotPriority", DEFAULT_PRIORITY))


def new_document(
    sid: str,
    queries: list[dict[str, Any]],
    prio: int,
    stamp: str,
    hidden: str,
    owner: str | None,
    temporal: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    history = {"snapshotTemporalQueries": temporal, "snapshotTemporalQueriesDetails": []} if temporal else {}
    return {
        "id": sid,
        "type": "Snapshot",
        **({"snapshotQueries": queries} if queries or not temporal else {}),
        **history,
        "snapshotStatus": PREPARING,
        "snapshotQueriesDetails": [],
        "snapshotPriority": prio,
        "createdAt": stamp,
        "modifiedAt": stamp,
        "lastUsedAt": stamp,  # 5.2.41: initialized at creation
        HIDDEN: hidden,
        OWNER: owner,
        BEAT: time.time(),
    }


def overall_status(results: list[str]) -> str:
    """5.16.1.4: success if every query ran and found something, partial if at least one did,
    else failure if one failed, else empty."""
    if results and all(r == SUCCESS for r in results):
        return SUCCESS
    if SUCCESS in results:
        return PARTIAL
    return FAILURE if FAILURE in results else EMPTY


def render(document: dict[str, Any], expires: str | None = None) -> dict[str, Any]:
    """The public members; `expires` is the expiresAt lifecycle.expires_at computed."""
    shown = {name: document[name] for name in PUBLIC if name in document}
    if expires is not None:
        shown["expiresAt"] = expires
    return shown


def as_entity(document: dict[str, Any]) -> dict[str, Any]:
    """The snapshot as an internal entity, for q (query/q.py) to read its own members."""
    attrs = {
        name: [{"type": "Property", "value": document[name]}]
        for name in ("snapshotPriority", "snapshotStatus", "lastUsedAt")
        if name in document
    }
    return {
        "id": document["id"],
        "type": ["Snapshot"],
        "createdAt": document.get("createdAt"),
        "modifiedAt": document.get("modifiedAt"),
        "attrs": attrs,
    }


def purge_filter(q: str | None, max_pattern_length: int | None) -> Callable[[dict[str, Any]], bool]:
    """Which snapshots a purge (5.16.7) deletes: q is required and may read only Snapshot members
    (5.16.7.4: anything else is BadRequestData, and nothing is purged)."""
    if q is None or not q.strip():
        raise BadRequestData("a snapshot purge needs q")
    names = q_attribute_names(parse_q(q, max_pattern_length))
    outside = sorted(names - PURGE_MEMBERS)
    if outside:
        raise BadRequestData(
            f"a snapshot purge's q may read only {', '.join(sorted(PURGE_MEMBERS))}, not {', '.join(outside)}"
        )
    predicate = compile_q(q, lambda name: name, max_pattern_length=max_pattern_length)
    return lambda document: predicate(as_entity(document))
