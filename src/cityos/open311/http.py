"""Open311 GeoReport v2 over HTTP: thin handlers over open311/service.py.

GET  /open311/v2/services.{format}                the service list (format: json or xml)
GET  /open311/v2/services/{service_code}.{format}  a service's definition (its attributes)
GET  /open311/v2/requests.{format}                 search: service_request_id, service_code,
                                                   start_date, end_date, status
POST /open311/v2/requests.{format}                 a report (form fields, or multipart with a
                                                   `media` photo); api_key: an API key of the trust
                                                   layer (cityos keys create), rate limited per key
GET  /open311/v2/requests/{id}.{format}            one request
GET  /open311/v2/tokens/{token}.{format}           the request id of a POST's token
GET  /open311/v2/media/{name}                      a report's photo (cleaned of its metadata)
POST /cityos/v1/open311/requests/{id}/status       operators: the lifecycle (behind the write policy)

The /open311/v2 routes are public (the spec's clients carry no Authorization header): a report
proves its api_key itself, and no answer carries contact details. Errors are the spec's: an array
of {code, description} in the requested format, with the HTTP status as the code.

Tenants: every route acts in the NGSILD-Tenant header's tenant (none: the default one), so a city
that runs tenants serves one Open311 per tenant; a key scoped to tenants reports only in those.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from cityos.auth.errors import Unauthorized
from cityos.auth.principal import Principal
from cityos.auth.ratelimit import RateLimiter, make_limiter, retry_after
from cityos.errors import BadRequestData, Conflict, NgsiLdError, ResourceNotFound
from cityos.ngsild import guard
from cityos.ngsild.common import TENANT_HEADER, TENANT_RE, principal, read_json
from cityos.ngsild.common import tenant as ngsild_tenant
from cityos.open311.media import MEDIA_TYPES, BadImage, MediaStore, clean_image, default_directory
from cityos.open311.model import ENTITY_TYPE, entity_id
from cityos.open311.render import FORMATS, definition_document, errors_document, render, service_document
from cityos.open311.service import Open311, Open311Error, Settings311, check_report, check_search
from cityos.open311.services import load_catalogue
from cityos.ops.declare import api
from cityos.policy.decision import Target
from cityos.settings import Settings

BASE = "/open311/v2"
OPERATOR = "/cityos/v1/open311/requests"
MAX_FIELDS = 100
Handler = Callable[[Request, str], Awaitable[Response]]


class Open311Http:
    """What the handlers share, made by create_app; the catalogue is loaded at start-up."""

    def __init__(self, settings: Settings, core: Open311, rate_table: str | None) -> None:
        self.settings = settings
        self.core = core
        self.page_key = settings.citizen_open311_key  # the citizens' page's (citizen/page_key.py for the demo)
        self.limiter: RateLimiter | None = (
            make_limiter(settings.open311_rate_limit, settings.open311_rate_limit_burst, rate_table)
            if settings.open311_rate_limit > 0
            else None
        )

    @classmethod
    def build(cls, settings: Settings, store: Any, terms: Any, rate_table: str | None) -> Open311Http:
        media = MediaStore(settings.open311_media_dir or default_directory(settings.database))
        core_settings = Settings311(
            duplicate_distance=settings.open311_duplicate_distance,
            duplicate_window=settings.open311_duplicate_window,
            asset_distance=settings.open311_asset_distance,
        )
        core = Open311(store, terms, None, media, core_settings)  # type: ignore[arg-type]  # load() sets it
        return cls(settings, core, rate_table)

    def load(self) -> None:
        """The services file (CatalogueError, OSError: said in one line by the start-up)."""
        self.core.catalogue = load_catalogue(self.settings.open311_services, self.settings.open311_bounds)


# the API description's view of these routes (ops/declare.py): answers in the path's format, errors
# in the spec's own shape
OPEN311: dict[str, Any] = {"media": ("application/json", "text/xml"), "errors_schema": "Open311Errors"}
SEARCH = ("jurisdiction_id", "service_request_id", "service_code", "start_date", "end_date", "status")
REPORT = (
    "jurisdiction_id",
    "api_key",
    "service_code",
    "lat",
    "long",
    "address_string",
    "address_id",
    "email",
    "device_id",
    "account_id",
    "first_name",
    "last_name",
    "phone",
    "description",
    "media_url",
)


def _state(request: Request) -> Open311Http:
    state: Open311Http = request.app.state.open311
    return state


def _answer(kind: str, fmt: str, content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(render(kind, fmt, content), status_code=status, media_type=FORMATS[fmt], headers=headers)


def _errors(fmt: str, error: Open311Error) -> Response:
    return _answer("errors", fmt, errors_document(error.status, error.descriptions), error.status, error.headers)


def open311_route(path: str, handler: Handler, methods: list[str]) -> Route:
    """A route whose last segment ends in .json or .xml; every error in the spec's shape."""

    @functools.wraps(handler)  # keeps the handler's API declaration (ops/declare.py)
    async def endpoint(request: Request) -> Response:
        fmt = request.path_params.get("format", "json")
        if fmt not in FORMATS:
            return _errors("json", Open311Error(400, f"response format {fmt[:16]} is not json or xml"))
        try:
            return await handler(request, fmt)
        except Open311Error as error:
            return _errors(fmt, error)
        except NgsiLdError as error:  # the store's (busy database, timeout): the same shape
            return _errors(fmt, Open311Error(error.status, error.detail or error.title, headers=error.headers()))

    return Route(path, endpoint, methods=methods)


def _tenant(request: Request) -> str:
    """The tenant the request acts in: NGSILD-Tenant's (absent or empty: the default tenant)."""
    value = request.headers.get(TENANT_HEADER, "")
    if value and not TENANT_RE.match(value):
        raise Open311Error(400, f"{TENANT_HEADER} {value[:64]!r} is not a tenant name")
    return value


def _jurisdiction(request: Request) -> None:
    given = request.query_params.get("jurisdiction_id")
    if given is not None and given != _state(request).core.catalogue.jurisdiction_id:
        raise Open311Error(404, f"jurisdiction_id {given[:64]} was not found")


@api("Open311: the service list", query=("jurisdiction_id",), **OPEN311)
async def list_services(request: Request, fmt: str) -> Response:
    _jurisdiction(request)
    catalogue = _state(request).core.catalogue
    return _answer("services", fmt, [service_document(s) for s in catalogue.services.values()])


@api("Open311: a service's definition", query=("jurisdiction_id",), errors=(400, 404), **OPEN311)
async def service_definition(request: Request, fmt: str) -> Response:
    _jurisdiction(request)
    code = request.path_params["service_code"]
    service = _state(request).core.catalogue.services.get(code)
    if service is None:
        raise Open311Error(404, f"service_code {code[:64]} was not found")
    return _answer("definition", fmt, definition_document(service))


@api("Open311: search service requests", query=SEARCH, **OPEN311)
async def get_requests(request: Request, fmt: str) -> Response:
    from datetime import UTC, datetime

    _jurisdiction(request)
    search = check_search(dict(request.query_params), datetime.now(UTC))
    found = await _state(request).core.search(_tenant(request), search)
    return _answer("requests", fmt, found)


@api("Open311: one service request", query=("jurisdiction_id",), errors=(400, 404), **OPEN311)
async def get_request(request: Request, fmt: str) -> Response:
    _jurisdiction(request)
    request_id = request.path_params["request_id"]
    found = await _state(request).core.request(_tenant(request), request_id)
    if found is None:
        raise Open311Error(404, f"service_request_id {request_id[:64]} was not found")
    return _answer("requests", fmt, [found])


@api("Open311: the request a token became", query=("jurisdiction_id",), errors=(400, 404), **OPEN311)
async def get_token(request: Request, fmt: str) -> Response:
    _jurisdiction(request)
    token = request.path_params["token"]
    found = await _state(request).core.token(_tenant(request), token)
    if found is None:
        raise Open311Error(404, "token was not found")
    return _answer("requests", fmt, [{"service_request_id": found, "token": token}])


@api(
    "Open311: report a problem (form fields, optional media file)",
    query=REPORT,
    body="Object",
    body_required=False,
    body_media=("application/x-www-form-urlencoded", "multipart/form-data"),
    errors=(400, 403, 404, 413, 429),
    **OPEN311,
)
async def post_request(request: Request, fmt: str) -> Response:
    state = _state(request)
    settings = state.settings
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.open311_max_media_bytes + 65536:
        raise Open311Error(413, f"the report is larger than a photo of {settings.open311_max_media_bytes} bytes allows")
    tenant = _tenant(request)
    fields, upload = await _fields(request)
    key = fields.get("api_key", [""])[-1]
    provider = await _check_key(request, key, state, tenant)
    report = check_report(state.core.catalogue, fields)
    if upload is not None:
        data = await upload.read(settings.open311_max_media_bytes + 1)
        await upload.close()
        if len(data) > settings.open311_max_media_bytes:
            raise Open311Error(413, f"the photo is larger than {settings.open311_max_media_bytes} bytes")
        if data:
            try:
                report.media = clean_image(data)
            except BadImage as exc:
                raise Open311Error(400, str(exc)) from None
    done = await state.core.submit(tenant, report, media_base=_base(request), provider=provider)
    answer: dict[str, Any] = {
        "service_request_id": done.request_id,
        "token": done.token,
        "service_notice": done.notice or None,
        "account_id": None,
    }
    if done.duplicate_of is not None:
        answer["duplicate_of"] = done.duplicate_of
        answer["duplicate_reports"] = done.duplicate_count
    # 200, as the spec's Swagger file says (its clients expect it), with where the request is
    return _answer("requests", fmt, [answer], 200, {"Location": f"{BASE}/requests/{done.request_id}.{fmt}"})


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _fields(request: Request) -> tuple[dict[str, list[str]], UploadFile | None]:
    """The query's and the body's fields (the body's win), and the `media` upload if any."""
    fields: dict[str, list[str]] = {}
    for name, value in request.query_params.multi_items():
        fields.setdefault(name, []).append(value)
    upload: UploadFile | None = None
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        try:
            form = await request.form(max_files=1, max_fields=MAX_FIELDS)
        except HTTPException as exc:
            raise Open311Error(400, f"the form could not be read: {exc.detail}") from None
        body: dict[str, list[str]] = {}
        for name, item in form.multi_items():
            if isinstance(item, UploadFile):
                if name != "media":
                    raise Open311Error(400, f"{name[:64]}: only `media` may be a file")
                upload = item
            else:
                body.setdefault(name, []).append(item)
        fields.update(body)
    elif content_type and await request.body():
        raise Open311Error(400, "send the report as application/x-www-form-urlencoded or multipart/form-data")
    return fields, upload


async def _check_key(request: Request, key: str, state: Open311Http, tenant: str) -> str:
    """The API key's principal id (its rate bucket and the report's dataProvider), or 403 (also
    for a key scoped to other tenants than the request's)."""
    if not key:
        if state.settings.open311_api_key == "optional":
            return "anonymous"
        raise Open311Error(403, "api_key was not provided -- can't proceed with create_request")
    who: Principal | None
    try:
        who = await request.app.state.identity.authenticator.authenticate(f"Bearer {key}")
    except Unauthorized:
        who = None
    if who is None or who.kind != "key" or not who.may_use_tenant(tenant):
        raise Open311Error(403, "Invalid api_key received -- can't proceed with create_request")
    if state.limiter is not None:
        wait = state.limiter.take(f"open311:{who.id}")
        if wait > 0:
            raise Open311Error(
                429,
                "too many reports from this api_key: try again later",
                headers={"Retry-After": str(retry_after(wait))},
            )
    return who.id


@api(
    "Open311: a report's photo (EXIF removed)",
    returns="Any",
    media=("image/jpeg", "image/png", "image/webp"),
    errors=(404,),
)
async def get_media(request: Request) -> Response:
    name = request.path_params["name"]
    path = _state(request).core.media.path(name)
    if path is None:
        raise ResourceNotFound(f"no media {name[:80]}")
    return FileResponse(
        path,
        media_type=MEDIA_TYPES[path.suffix[1:]],
        headers={
            "Cache-Control": "public, max-age=31536000, immutable",  # the name is the content's hash
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'",
        },
    )


@api("Open311: an operator sets a request's status", body="Object", errors=(400, 404, 409))
async def set_status(request: Request) -> Response:
    """An operator moves a request along its lifecycle (needs the right to update the entity)."""
    state = _state(request)
    request_id = request.path_params["request_id"]
    eid = entity_id(request_id)
    expand = state.core.terms.expand
    tenant = ngsild_tenant(request)  # the operators' API is NGSI-LD's: its tenant rules (access, name)
    target = Target(tenant, entity_id=eid, types=(expand(ENTITY_TYPE),))
    guard.require(request, "update", target)
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        raise BadRequestData('the body must be {"status": "...", "notes": "..."}')
    notes = body.get("notes")
    if notes is not None and not isinstance(notes, str):
        raise BadRequestData("notes must be a string")
    try:
        done = await state.core.set_status(tenant, request_id, body["status"], notes, principal(request).id)
    except Open311Error as error:
        raise (Conflict if error.status == 409 else BadRequestData)("; ".join(error.descriptions)) from None
    if done is None:
        raise ResourceNotFound(f"no service request {request_id[:64]}")
    return Response(orjson.dumps(done), media_type="application/json")


def routes() -> list[Route]:
    return [
        open311_route(BASE + "/services.{format}", list_services, ["GET"]),
        open311_route(BASE + "/services/{service_code}.{format}", service_definition, ["GET"]),
        open311_route(BASE + "/requests.{format}", get_requests, ["GET"]),
        open311_route(BASE + "/requests.{format}", post_request, ["POST"]),
        open311_route(BASE + "/requests/{request_id}.{format}", get_request, ["GET"]),
        open311_route(BASE + "/tokens/{token}.{format}", get_token, ["GET"]),
        Route(BASE + "/media/{name}", get_media, methods=["GET"]),
        Route(OPERATOR + "/{request_id}/status", set_status, methods=["POST"]),
    ]
