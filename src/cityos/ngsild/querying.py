"""Handlers for GET /entities (query) and DELETE /entities (purge)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cityos.entities import update
from cityos.entities.render import render_entity, to_geojson_feature
from cityos.entities.values import now
from cityos.errors import BadRequestData, TooManyResults
from cityos.jsonld.registry import ResolvedContext
from cityos.ngsild.common import (
    accept,
    body_context,
    check_params,
    csv_param,
    existing_tenant,
    json_response,
    no_content,
    options,
    query_context,
    read_payload,
    services,
)
from cityos.ngsild.negotiation import GEO_JSON, JSON, JSON_LD
from cityos.query.entity_query import QuerySpec, build_entity_query, type_predicate
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
REPRESENTATION_OPTIONS = ("keyValues", "concise", "normalized", "sysAttrs", "simplified", "count")
SYSTEM_ATTRIBUTES = frozenset({"createdAt", "modifiedAt", "deletedAt", "observedAt", "expiresAt"})


def type_filter(raw: str, context: ResolvedContext) -> list[str]:
    """Expanded types of a `type` parameter used as a selector on a single entity (any of them)."""
    return type_predicate(raw, context.terms.expand)[0]


def geo_from_params(request: Request) -> Any:
    params = request.query_params
    if not any(params.get(k) is not None for k in ("georel", "geometry", "coordinates")):
        return None
    from cityos.query.geo import parse_geo_query

    return parse_geo_query(
        params.get("georel"), params.get("geometry"), params.get("coordinates"), params.get("geoproperty")
    )


def spec_from_params(request: Request) -> QuerySpec:
    params = request.query_params
    return QuerySpec(
        ids=csv_param(request, "id"),
        id_pattern=params.get("idPattern"),
        type_expr=params.get("type"),
        attrs=csv_param(request, "attrs"),
        q=params.get("q"),
        scope_q=params.get("scopeQ"),
        geo=geo_from_params(request),
    )


def build_query(request: Request, context: ResolvedContext) -> EntityQuery:
    return build_entity_query(spec_from_params(request), context.terms.expand)


def pagination_links(request: Request, limit: int, offset: int, has_more: bool) -> list[str]:
    """rel="prev"/"next" Link values (spec 4.12, 6.3.x) with the same query, paged."""
    if limit == 0:
        return []

    def link(new_offset: int, rel: str) -> str:
        params = {k: v for k, v in request.query_params.items() if k not in ("limit", "offset")}
        params.update({"limit": str(limit), "offset": str(new_offset)})
        query = "&".join(f"{k}={v.replace(',', '%2C')}" for k, v in sorted(params.items()))
        return f'<{request.url.path}?{query}>; rel="{rel}";type="application/json"'

    links = []
    if offset > 0:
        links.append(link(max(0, offset - limit), "prev"))
    if has_more:
        links.append(link(offset + limit, "next"))
    return links


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
    check_params(request, QUERY_PARAMS)
    media = accept(request, (JSON, JSON_LD, GEO_JSON))
    tenant_name = await existing_tenant(request)
    context = await query_context(request, tenant_name)
    params = request.query_params
    filters = ("id", "type", "idPattern", "attrs", "q", "georel", "geoQ", "scopeQ")
    if not any(params.get(k) for k in filters) and params.get("local") != "true":
        raise BadRequestData("a query needs at least one of type, id, idPattern, attrs, q or a geo-query")
    query = build_query(request, context)
    return await run_query(request, tenant_name, context, query, media)


async def run_query(
    request: Request, tenant_name: str, context: ResolvedContext, query: EntityQuery, media: str
) -> Response:
    """Page, run and render a query (shared by GET /entities and POST /entityOperations/query)."""
    from cityos.ngsild.entities import geojson_response, representation

    render = representation(request, context)
    params = request.query_params
    wants_count = "count" in options(request, REPRESENTATION_OPTIONS) or params.get("count") == "true"
    limit, offset = page(request)
    query.limit, query.offset, query.count = limit, offset, wants_count
    result = await services(request).store.query_entities(tenant_name, query)
    headers = {"NGSILD-Results-Count": str(result.total)} if wants_count and result.total is not None else {}
    links = pagination_links(request, limit, offset, result.has_more)
    if media == GEO_JSON:
        features = [to_geojson_feature(e, render, params.get("geometryProperty")) for e in result.entities]
        return geojson_response(request, {"type": "FeatureCollection", "features": features}, context)
    from cityos.ngsild.entities import request_join_plan
    from cityos.ngsild.join import render_joined

    plan = request_join_plan(request)
    if plan is not None:
        body = await render_joined(result.entities, render, plan, services(request).store, tenant_name)
    else:
        body = [render_entity(entity, render) for entity in result.entities]
    response = json_response(body, media=media, context=context, headers=headers)
    for value in links:
        response.headers.append("Link", value)
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
        from cityos.query.q import compile_q, parse_q, q_attribute_names

        compile_q(q, context.terms.expand)  # refuses linked-entity paths before anything is deleted
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


QUERY_BODY_MEMBERS = frozenset(
    {
        "type",
        "entities",
        "attrs",
        "pick",
        "omit",
        "q",
        "geoQ",
        "scopeQ",
        "csf",
        "lang",
        "temporalQ",
        "@context",
        "local",
        "expandValues",
        "join",
        "joinLevel",
        "containedBy",
        "datasetId",
        "entityMap",
    }
)


async def query_post(request: Request) -> Response:
    """POST /entityOperations/query: the query in a body, paging and representation in the URL."""
    check_params(request, ("limit", "offset", "count", "options", "format", "local", "lang", "geometryProperty"))
    media = accept(request, (JSON, JSON_LD, GEO_JSON))
    body, body_media = await read_payload(request)
    tenant_name = await existing_tenant(request)
    if not isinstance(body, dict):
        raise BadRequestData("the query must be a JSON object")
    if body.get("type") != "Query":
        raise BadRequestData('a query body needs "type": "Query"')
    unknown = set(body) - QUERY_BODY_MEMBERS
    if unknown:
        raise BadRequestData(f"unknown members in the query: {', '.join(sorted(unknown))}")
    context = await body_context(request, body, body_media, tenant_name=tenant_name)
    geo = None
    if body.get("geoQ") is not None:
        from cityos.query.geo import parse_geo_query

        geo_q = body["geoQ"]
        if not isinstance(geo_q, dict):
            raise BadRequestData("geoQ must be an object")
        geo = parse_geo_query(
            geo_q.get("georel"), geo_q.get("geometry"), geo_q.get("coordinates"), geo_q.get("geoproperty")
        )
    attrs = body.get("attrs")
    if attrs is not None and (not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs)):
        raise BadRequestData("attrs must be an array of attribute names")
    entities = body.get("entities")
    if entities is not None and (not isinstance(entities, list) or not entities):
        raise BadRequestData("entities must be a non-empty array")
    for member in ("q", "scopeQ"):
        if body.get(member) is not None and not isinstance(body[member], str):
            raise BadRequestData(f"{member} must be a string")
    spec = QuerySpec(attrs=attrs, q=body.get("q"), scope_q=body.get("scopeQ"), geo=geo, selectors=entities)
    if spec.is_empty():
        raise BadRequestData("a query needs entities, attrs, q or geoQ")
    query = build_entity_query(spec, context.terms.expand)
    return await run_query(request, tenant_name, context, query, media)
