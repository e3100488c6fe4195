"""Retrieving an entity that lives in a registered context source (spec 4.3.6, 4.14).

Only the simplest distributed operation exists so far: when GET /entities/{id} finds nothing
locally, a registration of the tenant whose information covers the id and whose operations include
retrieval is asked for the entity, under the outgoing-request policy. The NGSILD-Tenant sent is the
registration's own `tenant` member, never the requester's (4.14). Queries, merging of local and
remote attributes and the other operations are not forwarded yet (docs/conformance.md).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import orjson
from starlette.requests import Request

from cityos.net import OutboundPolicy, OutboundRefused
from cityos.ngsild.common import TENANT_HEADER, services
from cityos.registrations import expired, matches

log = logging.getLogger("cityos.forwarding")
RETRIEVE_OPERATIONS = frozenset({"retrieveEntity", "retrieveOps", "redirectionOps", "federationOps"})


async def forward_retrieve(request: Request, tenant_name: str, entity_id: str) -> dict[str, Any] | None:
    """The entity as a registered context source returns it, or None if none has it."""
    svc = services(request)
    settings = svc.settings
    policy = OutboundPolicy(
        allow_private_networks=settings.allow_private_networks,
        timeout=settings.notification_timeout,
        max_bytes=settings.notification_max_bytes,
    )
    for row in await svc.store.list_registrations(tenant_name):
        doc = row.document
        operations = set(doc.get("operations") or ["federationOps"])
        if expired(doc) or not operations & RETRIEVE_OPERATIONS or not matches(doc, ids=[entity_id]):
            continue
        headers = {TENANT_HEADER: doc["tenant"]} if isinstance(doc.get("tenant"), str) else {}
        url = f"{str(doc['endpoint']).rstrip('/')}/ngsi-ld/v1/entities/{quote(entity_id, safe=':')}"
        try:
            body = orjson.loads(await policy.get(url, "application/json", headers))
        except (OutboundRefused, orjson.JSONDecodeError):
            continue
        except Exception as exc:
            log.warning("context source %s skipped: %s: %s", doc.get("id"), type(exc).__name__, exc)
            continue
        if isinstance(body, dict) and body.get("id") == entity_id:
            body.pop("@context", None)
            return body
    return None
