"""Handlers for GET /entities (query) and DELETE /entities (purge)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from cityos.entities import update
from cityos.entities.model import Entity
from cityos.entities.render import render_entity, to_geojson_feature
from cityos.entities.values import check_name, now
from cityos.errors import BadRequestData, TooManyResults
from cityos.jsonld.registry import ResolvedContext
from cityos.ngsild.common import (
    accept,
    check_params,
    csv_param,
    existing_tenant,
    json_response,
    no_content,
    options,
    query_context,
    services,
)
from cityos.ngsild.negotiation import GEO_JSON, JSON, JSON_LD
from cityos.store.base import EntityQuery

QUERY_PARAMS = (
    "id",
    "type",
    "idPattern",
    "attrs",
    "pick",
    "omit",
    "q",
    "scopeQ",
    "georel",
    "geometry",
    "coordinates",
    "geoproperty",
    "geometryProperty",
    "csf",
    "lang",
    "expandValues",
    "local",
    "options",
    "format",
    "count",
    "limit",
    "offset",
    "orderBy",
    "collation",
    "join",
    "joinLevel",
    "containedBy",
    "entityMap",
    "datasetId",
    "via",
    "contextSourceTimeAt",
)
PURGE_PARAMS = (
    "id",
    "type",
    "idPattern",
    "attrs",
    "q",
    "scopeQ",
    "georel",
    "geometry",
    "coordinates",
    "geoproperty",
    "local",
    "keep",
    "drop",
    "csf",
)
SYSTEM_ATTRIBUTES = frozenset({"createdAt", "modifiedAt", "deletedAt", "observedAt", "expiresAt"})


def type_filter(raw: str, context: ResolvedContext) -> list[str]:
    """Expanded types of a `type` parameter (a comma-separated list means any of them)."""
    names = [part.strip() for part in raw.replace("|", ",").split(",")]
    types = []
    for name in names:
        name = name.strip("()")
        check_name(name, "entity type")
        types.append(context.terms.expand(name))
    return types


def build_query(request: Request, context: ResolvedContext) -> EntityQuery:
    params = request.query_params
    query = EntityQuery()
    if params.get("type") is not None:
        query.types = type_filter(params["type"], context)
    ids = csv_param(request, "id")
    if ids is not None:
        query.ids = ids
    if params.get("idPattern") is not None:
        query.id_pattern = params["idPattern"]
    attrs = csv_param(request, "attrs")
    if attrs is not None:
        if any("{" in a for a in attrs):
            raise BadRequestData("linked-entity projections are not supported in attrs")
        query.attrs = [context.terms.expand(check_name(a, "attribute name")) for a in attrs]
    predicates: list[Callable[[Entity], bool]] = []
    q = params.get("q")
    if q is not None:
        from cityos.query.q import compile_q

        predicates.append(compile_q(q, context.terms.expand))
    if predicates:
        query.predicate = lambda entity: all(p(entity) for p in predicates)
    return query


def page(request: Request) -> tuple[int, int]:
    settings = services(request).settings
    try:
        limit = int(request.query_params.get("limit", settings.default_page_size))
        offset = int(request.query_params.get("offset", 0))
    except ValueError as exc:
        raise BadRequestData("limit and offset must be integers") from exc
    if limit < 0 or offset < 0:
        raise BadRequestData("limit and offset must not be negative")
    if limit > settings.max_page_size:
        raise TooManyResults(f"limit {limit} is above the maximum page size {settings.max_page_size}")
    return limit, offset


async def query_entities(request: Request) -> Response:
    from cityos.ngsild.entities import geojson_response, representation

    check_params(request, QUERY_PARAMS)
    media = accept(request, (JSON, JSON_LD, GEO_JSON))
    tenant_name = await existing_tenant(request)
    context = await query_context(request, tenant_name)
    render = representation(request, context)
    params = request.query_params
    wants_count = (
        "count" in options(request, ("keyValues", "concise", "normalized", "sysAttrs", "simplified", "count"))
        or params.get("count") == "true"
    )
    filters = ("id", "type", "idPattern", "attrs", "q", "georel", "geoQ", "scopeQ")
    if not any(params.get(k) for k in filters) and params.get("local") != "true":
        raise BadRequestData("a query needs at least one of type, id, idPattern, attrs, q or a geo-query")
    query = build_query(request, context)
    limit, offset = page(request)
    query.limit, query.offset, query.count = limit, offset, wants_count
    result = await services(request).store.query_entities(tenant_name, query)
    headers = {"NGSILD-Results-Count": str(result.total)} if wants_count and result.total is not None else {}
    if media == GEO_JSON:
        features = [to_geojson_feature(e, render, params.get("geometryProperty")) for e in result.entities]
        return geojson_response(request, {"type": "FeatureCollection", "features": features}, context)
    body = [render_entity(entity, render) for entity in result.entities]
    response = json_response(body, media=media, context=context, headers=headers)
    return response


async def purge_entities(request: Request) -> Response:
    """DELETE /entities: delete matching entities, or with keep/drop only some of their attributes."""
    check_params(request, PURGE_PARAMS)
    tenant_name = await existing_tenant(request)
    context = await query_context(request, tenant_name)
    params = request.query_params
    if params.get("keep") is not None and params.get("drop") is not None:
        raise BadRequestData("keep and drop cannot be used together")
    qualifying = params.get("type") is not None or params.get("georel") is not None or params.get("local") == "true"
    attrs = csv_param(request, "attrs")
    if attrs is not None and any(a not in SYSTEM_ATTRIBUTES for a in attrs):
        qualifying = True
    q = params.get("q")
    if q is not None:
        if "{" in q:
            raise BadRequestData("linked-entity queries are not supported when purging")
        from cityos.query.q import parse_q, q_attribute_names

        if any(name not in SYSTEM_ATTRIBUTES for name in q_attribute_names(parse_q(q))):
            qualifying = True
    if not qualifying:
        raise BadRequestData("purging needs type, attrs, q (on non-system attributes), a geo-query or local=true")
    query = build_query(request, context)
    result = await services(request).store.query_entities(tenant_name, query)
    keep = csv_param(request, "keep")
    drop = csv_param(request, "drop")
    stamp = now()
    operations = []
    for entity in result.entities:
        if keep is None and drop is None:
            operations.append((entity["id"], update.delete(entity["id"])))
        else:
            names = {context.terms.expand(n) for n in (keep or drop or [])}
            operations.append((entity["id"], update.prune(entity["id"], names, keep=keep is not None, stamp=stamp)))
    if operations:
        await services(request).store.mutate(tenant_name, operations, atomic=True)
    return no_content()
