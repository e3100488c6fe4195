"""The context sources' part of a snapshot query (5.16.1.4 executes each query "following the
behaviour described in clause 5.7.2.4"): every registration of the tenant that can answer a query
of the selected entities is asked with GET /entities, under the outgoing-request policy, and the
entities it returns join the local ones.

Deliberately small: one request per EntitySelector, no paging of the answer, the registration's
`tenant` member as NGSILD-Tenant (4.14). When the broker gains distributed queries of its own
(issue 16's distributed-operations work), the snapshot fill should call them instead of this."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import orjson

from cityos.net import OutboundPolicy, OutboundRefused
from cityos.registrations import expired, matches
from cityos.store.base import RegistrationRow

log = logging.getLogger("cityos.snapshots")
QUERY_OPERATIONS = frozenset({"queryEntity", "retrieveOps", "redirectionOps", "federationOps"})
TENANT_HEADER = "NGSILD-Tenant"


def _selectors(query: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in query.get("entities") or [{}] if isinstance(s, dict)]


def _params(query: dict[str, Any], selector: dict[str, Any]) -> dict[str, str]:
    params: dict[str, str] = {}
    for member, name in (("type", "type"), ("idPattern", "idPattern")):
        if isinstance(selector.get(member), str):
            params[name] = selector[member]
    ids = selector.get("id")
    if ids is not None:
        params["id"] = ",".join(ids) if isinstance(ids, list) else str(ids)
    if query.get("attrs"):
        params["attrs"] = ",".join(query["attrs"])
    for member in ("q", "scopeQ", "lang"):
        if query.get(member) is not None:
            params[member] = query[member]
    geo = query.get("geoQ")
    if isinstance(geo, dict):
        for member in ("georel", "geometry", "geoproperty"):
            if isinstance(geo.get(member), str):
                params[member] = geo[member]
        if geo.get("coordinates") is not None:
            params["coordinates"] = orjson.dumps(geo["coordinates"]).decode()
    return params


def _covers(doc: dict[str, Any], selector: dict[str, Any], query: dict[str, Any], expand: Callable[[str], str]) -> bool:
    operations = set(doc.get("operations") or ["federationOps"])
    if expired(doc) or not operations & QUERY_OPERATIONS:
        return False
    raw_type = selector.get("type")
    types = (
        [expand(t.strip()) for t in raw_type.replace("|", ",").split(",") if t.strip()]
        if isinstance(raw_type, str)
        else None
    )
    raw_ids = selector.get("id")
    ids = None if raw_ids is None else raw_ids if isinstance(raw_ids, list) else [raw_ids]
    attrs = [expand(a) for a in query["attrs"]] if query.get("attrs") else None
    return matches(doc, types=types, ids=ids, attrs=attrs)


async def ask_sources(
    registrations: list[RegistrationRow],
    query: dict[str, Any],
    expand: Callable[[str], str],
    policy: OutboundPolicy,
    link: str | None,
) -> list[dict[str, Any]]:
    """The entities (as the sources render them, @context removed) the matching registrations return
    for one snapshot query. A source that cannot be reached or answers badly is skipped (logged)."""
    found: list[dict[str, Any]] = []
    for selector in _selectors(query):
        for row in registrations:
            doc = row.document
            if not _covers(doc, selector, query, expand):
                continue
            headers = {TENANT_HEADER: doc["tenant"]} if isinstance(doc.get("tenant"), str) else {}
            if link is not None:
                headers["Link"] = link
            url = f"{str(doc['endpoint']).rstrip('/')}/ngsi-ld/v1/entities?{urlencode(_params(query, selector))}"
            try:
                body = orjson.loads(await policy.get(url, "application/json", headers))
            except (OutboundRefused, orjson.JSONDecodeError) as exc:
                log.info("context source %s skipped for a snapshot: %s", doc.get("id"), exc)
                continue
            except Exception as exc:  # a source is never a reason to fail the fill
                log.warning("context source %s skipped for a snapshot: %s: %s", doc.get("id"), type(exc).__name__, exc)
                continue
            for item in body if isinstance(body, list) else []:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    item.pop("@context", None)
                    found.append(item)
    return found
