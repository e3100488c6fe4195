"""Thin handlers of /openapi.json, /docs and /health/*: public, cheap, no store access but the
readiness checks (ops/health.py)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.errors import ResourceNotFound
from cityos.ops import health
from cityos.ops.declare import api
from cityos.ops.openapi import describe

# the files /docs serves, by name: Swagger UI from npm (frontend/), and the page's own script
ASSETS = {
    "swagger-ui-bundle.js": ("swagger-ui/swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui.css": ("swagger-ui/swagger-ui.css", "text/css; charset=utf-8"),
    "docs.js": ("docs.js", "text/javascript; charset=utf-8"),
}
PUBLIC = frozenset({"/openapi.json", "/docs", "/health/live", "/health/ready", *(f"/docs/{a}" for a in ASSETS)})
PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>CityOS API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script><script src="/docs/docs.js"></script></body></html>
"""
# nothing leaves the server: the page loads its own assets only (Swagger UI sets inline styles)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}
DESCRIPTION = "cityos.openapi"  # app.state's key of the description, made at the first request
JSON_MEDIA = ("application/json",)


@api("The OpenAPI 3.1 description of every route of this server", errors=(), media=JSON_MEDIA)
async def openapi_json(request: Request) -> Response:
    body: bytes | None = getattr(request.app.state, DESCRIPTION, None)
    if body is None:  # the route table is fixed once the app is made: one description per app
        body = orjson.dumps(describe(request.app.router.routes))
        setattr(request.app.state, DESCRIPTION, body)
    return Response(body, media_type="application/json")


@api(
    "The API documentation page (Swagger UI, served from the package)", returns="Text", errors=(), media=("text/html",)
)
async def docs_page(request: Request) -> Response:
    return Response(PAGE, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@api("A file of the documentation page", returns="Text", errors=(404,), media=("text/javascript", "text/css"))
async def docs_asset(request: Request) -> Response:
    found = ASSETS.get(request.path_params["asset"])
    if found is None:
        raise ResourceNotFound(f"no asset {request.path_params['asset']!r}")
    name, media = found
    body = resources.files("cityos.ops").joinpath("static", *name.split("/")).read_bytes()
    return Response(body, media_type=media, headers={"Cache-Control": "public, max-age=86400", **PAGE_HEADERS})


@api("Liveness: the process answers (no check of anything else)", returns="Health", errors=(), media=JSON_MEDIA)
async def live(request: Request) -> Response:
    return Response(b'{"status":"ok","checks":{}}', media_type="application/json")


@api(
    "Readiness: database reachable and migrated, writer alive, MQTT connected (when configured), outbox followed",
    returns="Health",
    errors=(),
    more={503: "Health"},
    media=JSON_MEDIA,
)
async def ready(request: Request) -> Response:
    state: Any = request.app.state
    settings = state.services.settings
    checks = await health.readiness(
        state.services.store,
        state.subscriptions,
        state.ingest.mqtt,
        timeout=settings.health_timeout,
        stuck_after=settings.health_outbox_stuck,
    )
    status, body = health.verdict(checks)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def routes() -> list[Route]:
    return [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        Route("/docs/{asset}", docs_asset, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
    ]
