"""GET /info/sourceIdentity: who this broker is (spec 5.15.2), per tenant."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos import __version__
from cityos.entities.values import now
from cityos.ngsild.common import accept, check_params, json_response, services, tenant
from cityos.ops.declare import api

STARTED = time.monotonic()


def iso_duration(seconds: float) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = "P" + (f"{int(days)}D" if days else "") + "T"
    if hours:
        out += f"{int(hours)}H"
    if minutes:
        out += f"{int(minutes)}M"
    return out + f"{secs:.3f}S"


def broker_id(database: str) -> uuid.UUID:
    """Stable across restarts of the same database: derived from where the data lives."""
    location = database if "://" in database else str(Path(database).resolve())
    return uuid.uuid5(uuid.NAMESPACE_URL, "cityos:" + location)


@api("This context source's identity (NGSI-LD 1.8)", returns="Object")
async def source_identity(request: Request) -> Response:
    check_params(request, ())
    accept(request)
    identity = broker_id(services(request).settings.database)
    tenant_name = tenant(request)
    alias = f"cityos-{identity.hex[:12]}" + (f"-{uuid.uuid5(identity, tenant_name).hex[:12]}" if tenant_name else "")
    body = {
        "id": f"urn:ngsi-ld:ContextSource:{identity}",
        "type": "ContextSourceIdentity",
        "contextSourceAlias": alias,
        "contextSourceUptime": iso_duration(time.monotonic() - STARTED),
        "contextSourceTimeAt": now(),
        "contextSourceExtras": {"product": "CityOS", "version": __version__},
    }
    return json_response(body)


def routes() -> list[Route]:
    return [Route("/ngsi-ld/v1/info/sourceIdentity", source_identity, methods=["GET"])]
