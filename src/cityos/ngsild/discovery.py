"""Handlers for the discovery API (spec 5.7.5-5.7.10): /types, /types/{type}, /attributes, /attributes/{attr}.

The store aggregates (per tenant, in expanded IRIs); these handlers only check the request, expand the
path name with the request's @context and compact the answer with it. `id` members stay expanded IRIs
(they identify the type or attribute), the `*Name(s)` members are compacted.
"""

from __future__ import annotations

import uuid
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.jsonld.registry import ResolvedContext
from cityos.ngsild import access, forwarding
from cityos.ngsild.common import (
    accept,
    check_params,
    existing_tenant,
    flag,
    json_response,
    query_context,
)
from cityos.ops.declare import api

BASE = "/ngsi-ld/v1"
TYPES = BASE + "/types"
ATTRIBUTES = BASE + "/attributes"
LIST_TYPES_PARAMS = ("details", "local")
LIST_ATTRIBUTES_PARAMS = ("details", "local", "count")  # count: defined by 6.3.20 for /attributes, no effect
ONE_PARAMS = ("local",)  # local=true: this broker's store only, no context source is asked (4.3.6.4)


def _path_name(request: Request, collection: str) -> str:
    """The name after `collection/`, percent-decoded only after splitting, so an encoded IRI
    (https%3A%2F%2F...%23Building) stays one segment."""
    raw = request.scope.get("raw_path", b"").decode("latin-1")
    marker = collection + "/"
    if marker in raw:
        return unquote(raw.split(marker, 1)[1].split("?", 1)[0])
    return str(request.path_params["name"])


async def _prepare(request: Request, allowed: tuple[str, ...]) -> tuple[str, str, ResolvedContext]:
    """Checks in the order the spec's errors take precedence: parameters, Accept, tenant, @context."""
    check_params(request, allowed)
    media = accept(request)
    tenant_name = await existing_tenant(request)
    context = await query_context(request, tenant_name)
    return media, tenant_name, context


def _list_id(kind: str) -> str:
    return f"urn:ngsi-ld:{kind}:{uuid.uuid4()}"


@api("Entity types in use", query=LIST_TYPES_PARAMS, returns="Any", errors=(400, 404))
async def list_types(request: Request) -> Response:
    """5.7.5 EntityTypeList, or with details=true 5.7.6 an array of EntityType."""
    media, tenant_name, context = await _prepare(request, LIST_TYPES_PARAMS)
    details = flag(request, "details")
    store = await access.catalog(request, tenant_name)
    compact = context.terms.compact
    if details:
        described = await store.entity_type_attributes(tenant_name)
        body: object = [
            {
                "id": iri,
                "type": "EntityType",
                "typeName": compact(iri),
                "attributeNames": [compact(attr) for attr in attrs],
            }
            for iri, attrs in described.items()
        ]
    else:
        types = await store.entity_types(tenant_name)
        body = {"id": _list_id("EntityTypeList"), "type": "EntityTypeList", "typeList": [compact(t) for t in types]}
    operation = "retrieveEntityTypeDetails" if details else "retrieveEntityTypes"
    return await _answer(request, tenant_name, context, operation, body, media)


async def _answer(
    request: Request, tenant_name: str, context: ResolvedContext, operation: str, local: object, media: str
) -> Response:
    """The local answer with the registered context sources' merged in (distributed discovery)."""
    body, answers = await forwarding.discovery(request, tenant_name, context, operation, local)
    if body is None:
        raise forwarding.NotFoundWithWarnings(f"{request.url.path} does not exist", forwarding.warnings_of(answers))
    return forwarding.with_warnings(json_response(body, media=media, context=context), answers)


@api("One entity type in detail", query=ONE_PARAMS, returns="Object", errors=(400, 404))
async def type_info(request: Request) -> Response:
    """5.7.7 EntityTypeInfo of one type, named by term or (percent-encoded) IRI."""
    media, tenant_name, context = await _prepare(request, ONE_PARAMS)
    name = _path_name(request, TYPES)
    stats = await (await access.catalog(request, tenant_name)).entity_type_stats(
        tenant_name, context.terms.expand(name)
    )
    if stats is None:
        return await _answer(request, tenant_name, context, "retrieveEntityTypeInfo", None, media)
    compact = context.terms.compact
    body = {
        "id": stats.type,
        "type": "EntityTypeInfo",
        "typeName": compact(stats.type),
        "entityCount": stats.entity_count,
        "attributeDetails": [
            {"id": attr, "type": "Attribute", "attributeName": compact(attr), "attributeTypes": kinds}
            for attr, kinds in stats.attribute_types.items()
        ],
    }
    return json_response(body, media=media, context=context)


@api("Attributes in use", query=LIST_ATTRIBUTES_PARAMS, returns="Any", errors=(400, 404))
async def list_attributes(request: Request) -> Response:
    """5.7.8 AttributeList, or with details=true 5.7.9 an array of Attribute (with typeNames)."""
    media, tenant_name, context = await _prepare(request, LIST_ATTRIBUTES_PARAMS)
    details = flag(request, "details")
    store = await access.catalog(request, tenant_name)
    compact = context.terms.compact
    if details:
        described = await store.attribute_type_names(tenant_name)
        body: object = [
            {
                "id": iri,
                "type": "Attribute",
                "attributeName": compact(iri),
                "typeNames": [compact(t) for t in types],
            }
            for iri, types in described.items()
        ]
    else:
        attrs = await store.attribute_names(tenant_name)
        body = {"id": _list_id("AttributeList"), "type": "AttributeList", "attributeList": [compact(a) for a in attrs]}
    operation = "retrieveAttrTypeDetails" if details else "retrieveAttrTypes"
    return await _answer(request, tenant_name, context, operation, body, media)


@api("One attribute in detail", query=ONE_PARAMS, returns="Object", errors=(400, 404))
async def attribute_info(request: Request) -> Response:
    """5.7.10 Attribute of one name, named by term or (percent-encoded) IRI. Entity members
    (id, type, scope, createdAt, ...) are not attributes, so they are never found."""
    media, tenant_name, context = await _prepare(request, ONE_PARAMS)
    name = _path_name(request, ATTRIBUTES)
    catalog = await access.catalog(request, tenant_name)
    stats = await catalog.attribute_stats(tenant_name, context.terms.expand(name))
    if stats is None:
        return await _answer(request, tenant_name, context, "retrieveAttrTypeInfo", None, media)
    compact = context.terms.compact
    body = {
        "id": stats.attr,
        "type": "Attribute",
        "attributeName": compact(stats.attr),
        "attributeCount": stats.instance_count,
        "attributeTypes": stats.attribute_types,
        "typeNames": [compact(t) for t in stats.type_names],
    }
    return json_response(body, media=media, context=context)


def routes() -> list[Route]:
    """Both /types and /types/ list (the ETSI suite uses the trailing slash); the exact routes come
    before the {name:path} ones so an empty name never reaches them."""
    return [
        Route(TYPES, list_types, methods=["GET"]),
        Route(TYPES + "/", list_types, methods=["GET"]),
        Route(TYPES + "/{name:path}", type_info, methods=["GET"]),
        Route(ATTRIBUTES, list_attributes, methods=["GET"]),
        Route(ATTRIBUTES + "/", list_attributes, methods=["GET"]),
        Route(ATTRIBUTES + "/{name:path}", attribute_info, methods=["GET"]),
    ]
