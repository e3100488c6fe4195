"""Handlers for /jsonldContexts: list, serve, add, delete and reload @contexts (spec 5.13)."""

from __future__ import annotations

from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.errors import BadRequestData, InvalidRequest, ResourceNotFound
from cityos.jsonld.registry import CORE_FILES
from cityos.jsonld.termmap import TermMap, define_terms
from cityos.ngsild.common import check_params, json_response, no_content, read_json, services, tenant
from cityos.ngsild.guard import require
from cityos.ngsild.negotiation import request_media_type
from cityos.ops.declare import api
from cityos.policy.decision import Target
from cityos.store.base import StoredContextRow

BASE = "/ngsi-ld/v1/jsonldContexts"
KINDS = ("Hosted", "Cached", "ImplicitlyCreated")

# query parameters each handler accepts (checked by it, described by ops/openapi.py)
LIST_CONTEXTS_PARAMS = ("details", "kind")
SERVE_CONTEXT_PARAMS = ("details",)
DELETE_CONTEXT_PARAMS = ("reload",)


def _bool_param(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return False
    if value.lower() == "true":
        return True
    if value.lower() == "false":
        return False
    raise BadRequestData(f"{name} must be true or false, got {value!r}")


def _context_id(request: Request) -> str:
    raw = request.scope.get("raw_path", b"").decode("latin-1")
    marker = BASE + "/"
    if marker in raw:
        return unquote(raw.split(marker, 1)[1].split("?", 1)[0])
    return str(request.path_params["context_id"])


def _core_details(url: str) -> dict[str, object]:
    return {"URL": url, "localId": url.rsplit("/", 1)[-1], "kind": "Cached", "createdAt": "1970-01-01T00:00:00Z"}


@api("List the @contexts this broker holds", query=LIST_CONTEXTS_PARAMS, returns="ObjectList")
async def list_contexts(request: Request) -> Response:
    check_params(request, LIST_CONTEXTS_PARAMS)
    details = _bool_param(request, "details")
    kind = request.query_params.get("kind")
    if kind is not None and kind not in KINDS:
        raise BadRequestData(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    items = services(request).contexts.listing(tenant(request), kind)
    if details:
        return json_response([item.details() for item in items])
    return json_response([item.url for item in items])


@api("A hosted @context document (or its details)", query=SERVE_CONTEXT_PARAMS, returns="Object", errors=(400, 404))
async def serve_context(request: Request) -> Response:
    check_params(request, SERVE_CONTEXT_PARAMS)
    details = _bool_param(request, "details")
    context_id = _context_id(request)
    registry = services(request).contexts
    stored = registry.find(tenant(request), context_id)
    if stored is None:
        core = registry.core_document(context_id)
        if core is None:
            raise ResourceNotFound(f"no @context {context_id} is known")
        return json_response(_core_details(context_id) if details else core)
    response = json_response(stored.details() if details else stored.document)
    stored.touch()  # serving counts as a hit, after the answer that reports the count so far
    return response


def _administer(request: Request, tenant_name: str) -> None:
    """Adding, deleting and reloading @contexts changes what every client's terms mean: "administer"
    on resource "context" (403 otherwise; the list and the documents are readable by anyone)."""
    require(request, "administer", Target(tenant=tenant_name, resource="context"))


@api("Add a hosted @context", body="Object", ok=201, returns=None, errors=(400, 409))
async def add_context(request: Request) -> Response:
    check_params(request, ())
    _administer(request, tenant(request))
    request_media_type(request.headers.get("content-type"))
    body = await read_json(request)
    if not isinstance(body, dict) or "@context" not in body:
        raise InvalidRequest("the payload must be a JSON object with an @context member")
    value = body["@context"]
    items = value if isinstance(value, list) else [value]
    if not isinstance(value, dict | list | str) or not all(isinstance(i, dict | str) for i in items):
        raise BadRequestData("@context must be an object, a URL or an array of them")
    for item in items:
        if isinstance(item, dict):
            define_terms(TermMap(), item)  # refuse a malformed context now, not at first use
    tenant_name = tenant(request)
    registry = services(request).contexts
    stored = registry.add_hosted(tenant_name, {"@context": value})
    await services(request).store.save_context(
        StoredContextRow(tenant_name, stored.local_id, stored.kind, stored.document, stored.created_at)
    )
    return Response(status_code=201, headers={"Location": f"{BASE}/{stored.local_id}"})


@api(
    "Delete a hosted @context, or reload a cached one",
    query=DELETE_CONTEXT_PARAMS,
    ok=204,
    returns=None,
    errors=(400, 404),
)
async def delete_context(request: Request) -> Response:
    check_params(request, DELETE_CONTEXT_PARAMS)
    reload = _bool_param(request, "reload")
    context_id = _context_id(request)
    registry = services(request).contexts
    tenant_name = tenant(request)
    _administer(request, tenant_name)
    stored = registry.find(tenant_name, context_id)
    if stored is None:
        if context_id in CORE_FILES or registry.core_document(context_id) is not None:
            if reload:
                return no_content()
            raise BadRequestData("the core @context cannot be deleted")
        if reload:
            raise BadRequestData(f"no cached @context {context_id} to reload")
        raise ResourceNotFound(f"no @context {context_id} is known")
    if reload:
        if stored.kind != "Cached":
            raise BadRequestData(f"only cached @contexts can be reloaded; {context_id} is {stored.kind}")
        await registry.reload(stored)
        return no_content()
    registry.remove(stored)
    if stored.kind != "Cached":
        await services(request).store.delete_context(tenant_name, stored.local_id)
    return no_content()


def routes() -> list[Route]:
    return [
        Route(BASE, list_contexts, methods=["GET"]),
        Route(BASE, add_context, methods=["POST"]),
        Route(BASE + "/{context_id:path}", serve_context, methods=["GET"]),
        Route(BASE + "/{context_id:path}", delete_context, methods=["DELETE"]),
    ]
