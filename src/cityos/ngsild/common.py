"""Request parsing and response rendering shared by the NGSI-LD handlers."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.audit.events import AuditEvent, AuditSink, NullAudit
from cityos.auth.principal import (
    OpenDirectory,
    Principal,
    PrincipalDirectory,
    current_principal,
    current_request_id,
)
from cityos.entities.values import check_nesting
from cityos.errors import BadRequestData, InvalidRequest, NonexistentTenant, PayloadTooLarge
from cityos.jsonld.registry import ContextRegistry, ResolvedContext
from cityos.ngsild.negotiation import JSON, JSON_LD, negotiate, request_media_type
from cityos.policy.decision import Authorizer, OpenAuthorizer
from cityos.settings import Settings
from cityos.snapshots.scope import SCOPE_KEY as SNAPSHOT_SCOPE
from cityos.store.base import EntityStore

Endpoint = Callable[[Request], Awaitable[Response]]
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
LINK_RE = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]+)*)")
TENANT_HEADER = "NGSILD-Tenant"
TENANT_RE = re.compile(r"^[A-Za-z0-9_\-.:]{1,64}$")


@dataclass
class Services:
    """What handlers need, built once by create_app (no globals)."""

    settings: Settings
    store: EntityStore
    contexts: ContextRegistry
    authorizer: Authorizer = field(default_factory=OpenAuthorizer)  # policy/decision.py
    audit: AuditSink = field(default_factory=NullAudit)  # audit/events.py
    principals: PrincipalDirectory = field(default_factory=OpenDirectory)  # auth/principal.py


def services(request: Request) -> Services:
    result: Services = request.scope["app"].state["services"]  # State's item, not its __getattr__ hook
    return result


def principal(request: Request) -> Principal:
    """Who the request acts for (set by the auth middleware; OPEN with auth off)."""
    return current_principal.get()


def tenant(request: Request) -> str:
    """The tenant a request acts in: NGSILD-Tenant's, or with NGSILD-Snapshot the snapshot's hidden
    tenant (snapshots/http.SnapshotHeader checked the caller's access to both already)."""
    scoped = request.scope.get(SNAPSHOT_SCOPE)
    if scoped is not None:
        hidden: str = scoped.hidden
        return hidden
    value = request.headers.get(TENANT_HEADER)
    if value is None or value == "":
        check_tenant_access("")
        return ""
    if not TENANT_RE.match(value):
        raise BadRequestData(f"invalid tenant name {value!r}")
    check_tenant_access(value)
    return value


def check_tenant_access(name: str) -> None:
    """A tenant the caller may not use does not exist for it (404 NonexistentTenant, the same answer
    as for a tenant that does not exist, recorded as a refused request)."""
    who = current_principal.get()
    if who.unrestricted or who.may_use_tenant(name):
        return
    error = NonexistentTenant(f"tenant {name} does not exist")
    error.audit = AuditEvent(
        principal=who.id,
        operation="request.denied",
        tenant=name,
        outcome="denied",
        request_id=current_request_id.get(),
        detail={"reason": "tenant", "status": error.status},
    )
    raise error


async def existing_tenant(request: Request) -> str:
    """The request's tenant, which must exist already (reads never create tenants)."""
    name = tenant(request)
    if SNAPSHOT_SCOPE in request.scope:  # a snapshot's tenant exists with the snapshot, even empty
        return name
    if name and not await services(request).store.tenant_exists(name):  # the default tenant always exists
        raise NonexistentTenant(f"tenant {name} does not exist")
    return name


def has_query(request: Request) -> bool:
    """Whether the URL has a query string: most writes have none, and Starlette parses one (for
    `request.query_params`) at a cost that shows in every write."""
    return bool(request.scope.get("query_string"))


def check_params(request: Request, allowed: Iterable[str]) -> None:
    if not has_query(request):
        return
    allowed_set = set(allowed)
    for key in request.query_params:
        if key not in allowed_set:
            raise InvalidRequest(f"unknown query parameter {key!r}")


def link_context(request: Request) -> str | None:
    header = request.headers.get("link")
    if not header:
        return None
    for match in LINK_RE.finditer(header):
        url, params = match.group(1), match.group(2)
        if CONTEXT_REL in params:
            return url.strip()
    return None


def _holds_nul(value: Any) -> bool:
    """Whether a string of `value` (a key or a value, at any depth) holds U+0000, which PostgreSQL's
    text and jsonb cannot hold (refused on both back-ends, so that they answer alike)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


async def read_json(request: Request) -> Any:
    settings = services(request).settings
    body = await request.body()
    if len(body) > settings.max_body_bytes:
        raise PayloadTooLarge(f"the body is larger than {settings.max_body_bytes} bytes")
    if not body:
        raise InvalidRequest("the request body is empty")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    if b"\\u0000" in body and _holds_nul(value):  # the escape is rare: the walk only then
        raise BadRequestData("a string holds the character U+0000, which cannot be stored")
    limit = settings.max_nesting_depth
    # JSON nests no deeper than its count of opening brackets (those inside strings only add to
    # it): a body with no more of them than the limit needs no walk (a create's body has ~40)
    if body.count(b"{") + body.count(b"[") > limit:
        check_nesting(value, limit)
    return value


async def read_payload(request: Request, *, merge_patch: bool = False) -> tuple[Any, str]:
    """(parsed JSON body, media type) after the Content-Type checks."""
    media = request_media_type(request.headers.get("content-type"), allow_merge_patch=merge_patch)
    return await read_json(request), media


async def body_context(
    request: Request, body: Any, media: str, *, tenant_name: str, deadline: float | None = None
) -> ResolvedContext:
    """The @context of a request body: inline for application/ld+json, Link header otherwise.
    `deadline` bounds the fetching of a request that resolves several (ContextRegistry.resolve)."""
    registry = services(request).contexts
    link = link_context(request)
    if media == JSON_LD:
        if link is not None:
            raise BadRequestData("a Link header @context is not allowed with Content-Type application/ld+json")
        if not isinstance(body, dict) or "@context" not in body:
            raise BadRequestData("an application/ld+json body must contain @context")
        return await registry.resolve(tenant_name, body["@context"], deadline=deadline)
    if isinstance(body, dict) and "@context" in body:
        raise BadRequestData("@context in the body requires Content-Type application/ld+json")
    return await registry.resolve(tenant_name, link, deadline=deadline)


async def query_context(request: Request, tenant_name: str) -> ResolvedContext:
    return await services(request).contexts.resolve(tenant_name, link_context(request))


def accept(request: Request, offered: tuple[str, ...] = (JSON, JSON_LD)) -> str:
    return negotiate(request.headers.get("accept"), offered)


def link_header(url: str) -> str:
    return f'<{url}>; rel="{CONTEXT_REL}"; type="application/ld+json"'


def json_response(
    content: Any,
    *,
    status: int = 200,
    media: str = JSON,
    context: ResolvedContext | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Render a body: ld+json carries @context inside, application/json in a Link header."""
    extra = dict(headers or {})
    if context is not None:
        if media == JSON_LD:
            if isinstance(content, dict):
                content = {**content, "@context": context.value}
            elif isinstance(content, list):
                content = [{**item, "@context": context.value} for item in content]
        else:
            extra["Link"] = link_header(context.link_url)
    return Response(orjson.dumps(content), status_code=status, media_type=media, headers=extra)


def encoded_response(
    data: bytes, media: str, context: ResolvedContext, headers: dict[str, str] | None = None
) -> Response:
    """json_response for a body already in JSON (its @context inside with ld+json). Without
    `headers` (a retrieve by id, most pages) the response's raw headers are made here, the same
    ones Starlette's Response makes (Link, content-length, content-type), without its header
    mapping's encoding and scans per request, and the Link header's bytes kept per context URL."""
    if headers:
        extra = dict(headers)
        if media != JSON_LD:
            extra["Link"] = link_header(context.link_url)
        return Response(data, status_code=200, media_type=media, headers=extra)
    response = Response.__new__(Response)  # what Response(data, 200, {...}, media) sets, in its order
    response.status_code = 200
    response.media_type = media
    response.background = None
    response.body = data
    raw = [(b"content-length", str(len(data)).encode()), (b"content-type", _MEDIA_BYTES.get(media) or media.encode())]
    if media != JSON_LD:
        link = _LINKS.get(context.link_url)
        if link is None:
            if len(_LINKS) >= 1024:
                _LINKS.clear()
            link = _LINKS[context.link_url] = link_header(context.link_url).encode("latin-1")
        raw.insert(0, (b"link", link))
    response.raw_headers = raw
    return response


_LINKS: dict[str, bytes] = {}  # a context URL -> its Link header's value (link_header), latin-1 as Starlette's
_MEDIA_BYTES = {media: media.encode() for media in (JSON, JSON_LD, "application/geo+json")}


def no_content(headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=204, headers=headers)


def flag(request: Request, name: str) -> bool:
    if not has_query(request):
        return False
    value = request.query_params.get(name)
    if value is None:
        return False
    if value.lower() in ("true", ""):
        return True
    if value.lower() == "false":
        return False
    raise BadRequestData(f"{name} must be true or false, got {value!r}")


def options(request: Request, allowed: Iterable[str]) -> set[str]:
    """The `options` parameter as a set, each value checked against `allowed`."""
    if not has_query(request):
        return set()
    raw = request.query_params.getlist("options")
    values = {v.strip() for item in raw for v in item.split(",") if v.strip()}
    unknown = values - set(allowed)
    if unknown:
        raise InvalidRequest(f"unknown options: {', '.join(sorted(unknown))}")
    return values


def csv_param(request: Request, name: str) -> list[str] | None:
    if not has_query(request):
        return None
    raw = request.query_params.get(name)
    if raw is None:
        return None
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not values:
        raise BadRequestData(f"{name} must not be empty")
    return values


VERSION_RE = re.compile(r"^\d+\.\d+$")


def preferred_version(request: Request) -> str | None:
    """The NGSI-LD version a client asks for with `Prefer: ngsi-ld=X.Y` (RFC 7240)."""
    header = request.headers.get("prefer")
    if not header:
        return None
    for preference in header.split(","):
        name, _, rest = preference.strip().partition("=")
        if name.strip().lower() != "ngsi-ld":
            continue
        value = rest.split(";")[0].strip().strip('"')
        if VERSION_RE.match(value):
            return value
    return None


def resource_routes(
    collection: str,
    item_param: str,
    *,
    create: Endpoint,
    query: Endpoint,
    retrieve: Endpoint,
    update: Endpoint,
    delete: Endpoint,
) -> list[Route]:
    """The routes of a CRUD resource (subscriptions, registrations): the collection with and
    without a trailing slash, and one item by id."""
    one = f"{collection}/{{{item_param}}}"
    return [
        Route(collection, create, methods=["POST"]),
        Route(collection + "/", create, methods=["POST"]),
        Route(collection, query, methods=["GET"]),
        Route(collection + "/", query, methods=["GET"]),
        Route(one, retrieve, methods=["GET"]),
        Route(one, update, methods=["PATCH"]),
        Route(one, delete, methods=["DELETE"]),
    ]


def require_change(body: Any) -> None:
    """A PATCH fragment must change something besides @context, id and type (400 otherwise)."""
    if isinstance(body, dict) and not (body.keys() - {"@context", "id", "type"}):
        raise BadRequestData("the fragment changes nothing")
