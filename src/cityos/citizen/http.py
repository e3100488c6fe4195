"""The citizen services over HTTP: a JSON API under /city/api/ and the mobile page at /city/.

Thin handlers: parse the query, call the core (services.py) with an in-process client of the public
API carrying no credentials, so the anonymous caller's policies decide what is public, and answer
with an ETag and Cache-Control (a repeated question answers 304). The page is a browser page
(outside the API description); reports go to the Open311 API (/open311/v2/) from the browser.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from cityos.citizen import departures, services
from cityos.console import i18n
from cityos.console.client import ApiClient
from cityos.console.http import static_file
from cityos.errors import BadRequestData
from cityos.open311.http import BASE as OPEN311
from cityos.ops.declare import api, browser_page

PREFIX = "/city"
MAX_AGE = 15  # seconds a citizen's answer may be reused: readings change every few minutes
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml"}
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; worker-src 'self'; "
    "manifest-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
NEAR = ("lat", "lon", "radius")
Service = Callable[[services.Reader, services.Where], Awaitable[dict[str, Any]]]


def _dir(name: str) -> Path:
    return Path(str(resources.files("cityos.citizen").joinpath(name)))


@functools.cache
def catalogue(language: str) -> dict[str, str]:
    messages: dict[str, str] = orjson.loads(_dir("messages").joinpath(f"{language}.json").read_bytes())
    return messages


@functools.cache
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(_dir("templates"))),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def cached(request: Request, body: Any) -> Response:
    """JSON with a strong ETag of its bytes; If-None-Match that matches answers 304."""
    data = orjson.dumps(body)
    tag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    headers = {"ETag": tag, "Cache-Control": f"public, max-age={MAX_AGE}"}
    wanted = request.headers.get("if-none-match", "")
    if tag in [part.strip().removeprefix("W/") for part in wanted.split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="application/json", headers=headers)


async def _near(request: Request, service: Service) -> Response:
    try:
        at = services.where(request.query_params)
    except services.Invalid as bad:
        raise BadRequestData(str(bad)) from bad
    async with ApiClient(request.app) as reader:  # no credentials: the anonymous caller
        try:
            body = await service(reader, at)
        except services.Unavailable as failed:
            return _unavailable(failed)
    return cached(request, {"near": {"lat": at.lat, "lon": at.lon, "radius": at.radius}, **body})


@api("Citizens: air quality near a place, with the US EPA AQI and China's AQI (HJ 633-2012)", query=NEAR)
async def air(request: Request) -> Response:
    return await _near(request, services.air_quality)


@api("Citizens: car parks near a place with their free spaces", query=NEAR)
async def parking(request: Request) -> Response:
    return await _near(request, services.parking)


@api("Citizens: points of interest and tourist destinations near a place, with opening hours", query=NEAR)
async def places(request: Request) -> Response:
    return await _near(request, services.places)


@api("Citizens: transit stops near a place", query=NEAR)
async def stops(request: Request) -> Response:
    return await _near(request, departures.stops)


@api(
    "Citizens: the next departures at a stop, the GTFS timetable corrected by GTFS-Realtime delays",
    query=("stop", "at", "count"),
    errors=(400, 404),
)
async def next_departures(request: Request) -> Response:
    params = request.query_params
    count = params.get("count", "10")
    async with ApiClient(request.app) as reader:  # no credentials: the anonymous caller
        try:
            if not count.isdigit():
                raise services.Invalid("count must be a whole number")
            body = await departures.departures(reader, params.get("stop", ""), params.get("at"), int(count))
        except services.Invalid as bad:
            raise BadRequestData(str(bad)) from bad
        except services.Unavailable as failed:
            return _unavailable(failed)
    return cached(request, body)


def _unavailable(failed: services.Unavailable) -> Response:
    problem = {"type": "about:blank", "title": "Not available", "status": failed.status, "detail": failed.detail}
    return Response(orjson.dumps(problem), status_code=failed.status, media_type="application/problem+json")


FORM_SLACK = 65_536  # bytes a report's text fields may add to its photo


@api(
    "Citizens: report a problem (relayed to Open311 with the page's API key; multipart with a `media` photo)",
    body="Any",
    body_media=("multipart/form-data", "application/x-www-form-urlencoded"),
    errors=(400, 403, 413, 429),
    errors_schema="Open311Errors",
)
async def report(request: Request) -> Response:
    """The page's report, passed to the Open311 API in-process with the city's key for its page
    (`citizen_open311_key`, else the demo's): the answer is Open311's, so the page follows it by
    its id or token."""
    settings = request.app.state.services.settings
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > settings.open311_max_media_bytes + FORM_SLACK:
        error = [{"code": 413, "description": "a report is a form with a Content-Length, its photo within the limit"}]
        return Response(orjson.dumps(error), status_code=413, media_type="application/json")
    key = request.app.state.open311.page_key  # --citizen-open311-key, or the demo's (citizen/page_key.py)
    params = {"api_key": key} if key else {}
    headers = {"Content-Type": request.headers.get("content-type", "")}
    transport = httpx.ASGITransport(app=request.app, client=request.client or ("127.0.0.1", 0))
    async with httpx.AsyncClient(transport=transport, base_url=str(request.base_url)) as inner:
        answer = await inner.post(
            f"{OPEN311}/requests.json", params=params, content=await request.body(), headers=headers
        )
    kept = {k: v for k, v in answer.headers.items() if k in ("content-type", "retry-after")}
    return Response(answer.content, status_code=answer.status_code, headers=kept)


def language(request: Request) -> str:
    return i18n.choose(
        request.query_params.get("lang"), request.cookies.get(i18n.COOKIE), request.headers.get("accept-language")
    )


async def home(request: Request) -> Response:
    """The mobile page: its strings in the page's language, its data fetched by city.js."""
    lang = language(request)
    messages = {**catalogue(i18n.DEFAULT), **catalogue(lang)}
    html = (
        _environment()
        .get_template("city.html")
        .render(
            t=messages,
            lang=lang,
            locale=i18n.BCP47[lang],
            languages=i18n.LANGUAGES,
            messages=orjson.dumps(messages).decode().replace("</", "<\\/"),  # inside a <script> block
            static=f"{PREFIX}/static",
        )
    )
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
    headers["Cache-Control"] = "no-cache"  # the service worker revalidates the shell
    return HTMLResponse(html, headers=headers)


async def manifest(request: Request) -> Response:
    lang = language(request)
    t = {**catalogue(i18n.DEFAULT), **catalogue(lang)}
    body = {
        "name": t["app.name"],
        "short_name": t["app.short"],
        "lang": i18n.BCP47[lang],
        "start_url": f"{PREFIX}/",
        "scope": f"{PREFIX}/",
        "display": "standalone",
        "background_color": "#ffffff",
        "theme_color": "#0b5394",
        "icons": [
            {"src": f"{PREFIX}/static/icon-192.png", "sizes": "192x192", "type": "image/png"},
            {"src": f"{PREFIX}/static/icon-512.png", "sizes": "512x512", "type": "image/png"},
        ],
    }
    return Response(orjson.dumps(body), media_type="application/manifest+json", headers={"Cache-Control": "no-cache"})


async def worker(request: Request) -> Response:
    """The service worker, served from /city/ so that its scope is the whole page."""
    return FileResponse(
        _dir("static") / "sw.js",
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": f"{PREFIX}/"},
    )


async def static(request: Request) -> Response:
    return static_file(_dir("static"), request.path_params["path"], STATIC_TYPES)


def routes() -> list[Route]:
    """The JSON API (declared in the API description) and the page with its assets (browser pages)."""
    pages = [
        Route(f"{PREFIX}/", home, methods=["GET"]),
        Route(f"{PREFIX}/manifest.webmanifest", manifest, methods=["GET"]),
        Route(f"{PREFIX}/sw.js", worker, methods=["GET"]),
        Route(f"{PREFIX}/static/{{path:path}}", static, methods=["GET"]),
    ]
    for route in pages:
        browser_page(route.endpoint)
    return [
        Route(f"{PREFIX}/api/air", air, methods=["GET"]),
        Route(f"{PREFIX}/api/parking", parking, methods=["GET"]),
        Route(f"{PREFIX}/api/places", places, methods=["GET"]),
        Route(f"{PREFIX}/api/stops", stops, methods=["GET"]),
        Route(f"{PREFIX}/api/departures", next_departures, methods=["GET"]),
        Route(f"{PREFIX}/api/reports", report, methods=["POST"]),
        *pages,
    ]
