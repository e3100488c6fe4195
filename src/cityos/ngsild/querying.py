"""Handlers for GET /entities (query) and DELETE /entities (purge)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cityos.entities import update
from cityos.entities.render import render_entity, to_geojson_feature
from cityos.entities.render_cache import render_page
from cityos.entities.values import MAX_SAFE_INTEGER, now, require_uri
from cityos.errors import BadRequestData, TooManyResults
from cityos.jsonld.registry import ResolvedContext
from cityos.ngsild import access, forwarding
from cityos.ngsild.common import (
    accept,
    body_context,
    check_params,
    csv_param,
    encoded_response,
    existing_tenant,
    has_query,
    json_response,
    no_content,
    options,
    query_context,
    read_payload,
    services,
)
from cityos.ngsild.join import join_plan
from cityos.ngsild.negotiation import GEO_JSON, JSON, JSON_LD
from cityos.ops.declare import api
from cityos.policy.enforce import seen
from cityos.query import budget
from cityos.query.entity_query import QuerySpec, build_entity_query, ordering, type_predicate
from cityos.query.ordering import check_collation
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
    "orderFrom",
    "join",
    "joinLevel",
    "containedBy",
    "entityMap",
    "entityMapLifetime",
    "datasetId",
    "via",
    "contextSourceTimeAt",
    "splitEntities",
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
PLAIN_PARAMS = "cityos.plain_params"  # the request scope's key of plain_params()
SYSTEM_ATTRIBUTES = frozenset(
    {"id", "type", "scope", "createdAt", "modifiedAt", "deletedAt", "observedAt", "expiresAt"}
)

# query parameters each handler accepts (checked by it, described by ops/openapi.py)
QUERY_POST_PARAMS = ("limit", "offset", "count", "options", "format", "local", "lang", "geometryProperty")


def plain_params(request: Request) -> dict[str, str]:
    """The URL's parameters as a plain dict (the last value of a repeated name, as QueryParams' own
    lookup gives), made once per request: QueryParams.get raises and catches a KeyError for every
    absent name, and a read asks for dozens of names that are mostly absent. Read-only."""
    scope = request.scope
    params: dict[str, str] | None = scope.get(PLAIN_PARAMS)
    if params is None:  # no query string (a retrieve by id): nothing for Starlette to parse
        params = scope[PLAIN_PARAMS] = dict(request.query_params) if has_query(request) else {}
    return params


def check_not_too_wide(request: Request, *, purge: bool = False) -> None:
    """A query or purge must name a type, an attribute, a q on an attribute, a geo-query or
    local=true; ids or a pattern alone select too much (spec 5.7.2, 5.6.x purge). A query (not a
    purge) with id or idPattern alone is let through when `allow_id_only_queries` is set: clients
    written against Orion-LD list or clean up their own entities that way (docs/conformance.md)."""
    params = plain_params(request)
    if params.get("type") is not None or params.get("georel") is not None or params.get("local") == "true":
        return
    ids_given = params.get("id") or params.get("idPattern")
    if ids_given and not purge and services(request).settings.allow_id_only_queries:
        return
    attrs = csv_param(request, "attrs")
    if attrs is not None and any(a not in SYSTEM_ATTRIBUTES for a in attrs):
        return
    q = params.get("q")
    if q is not None:
        from cityos.query.q import parse_q, q_attribute_names

        parsed = parse_q(q, services(request).settings.max_pattern_length)
        if any(name not in SYSTEM_ATTRIBUTES for name in q_attribute_names(parsed)):
            return
    hint = "" if purge else " (ids alone are accepted with --allow-id-only-queries)"
    raise BadRequestData(
        f"the request needs type, attrs, q (on non-system attributes), a geo-query or local=true{hint}"
    )


def check_csf(request: Request) -> None:
    csf = plain_params(request).get("csf")
    if csf is not None:
        from cityos.query.q import parse_q

        parse_q(csf, services(request).settings.max_pattern_length)  # context source filters share the q grammar


def type_filter(raw: str, context: ResolvedContext) -> list[str]:
    """Expanded types of a `type` parameter used as a selector on a single entity (any of them)."""
    return type_predicate(raw, context.terms.expand)[0]


def geo_from_params(request: Request) -> Any:
    params = plain_params(request)
    if not any(params.get(k) is not None for k in ("georel", "geometry", "coordinates")):
        return None
    from cityos.query.geo import parse_geo_query

    return parse_geo_query(
        params.get("georel"), params.get("geometry"), params.get("coordinates"), params.get("geoproperty")
    )


def spec_from_params(request: Request) -> QuerySpec:
    params = plain_params(request)
    ids = csv_param(request, "id")
    for entity_id in ids or ():
        require_uri(entity_id, "id")
    type_expr = params.get("type")
    return QuerySpec(
        ids=ids,
        id_pattern=params.get("idPattern"),
        type_expr=None if type_expr == "*" else type_expr,
        attrs=csv_param(request, "attrs"),
        q=params.get("q"),
        scope_q=params.get("scopeQ"),
        geo=geo_from_params(request),
        expand_values=frozenset(csv_param(request, "expandValues") or ()),
        max_pattern_length=services(request).settings.max_pattern_length,
    )


def build_query(request: Request, context: ResolvedContext, tenant_name: str = "") -> EntityQuery:
    spec = spec_from_params(request)
    params = plain_params(request)
    plan = join_plan(params.get("join"), params.get("joinLevel"), None, None)
    if plan is not None:
        lookup = functools.partial(services(request).store.lookup_in_query, tenant_name)
        read = access.view(request, tenant_name)  # q reads linked entities as the caller may see them
        spec.lookup = lookup if read.unrestricted else lambda entity_id: seen(read, lookup(entity_id))
        spec.join_level = plan.level
    query = build_entity_query(spec, context.terms.expand)
    if params.get("orderBy") is not None:
        query.sort = ordering(
            params["orderBy"], context.terms.expand, collation=params.get("collation"), origin=params.get("orderFrom")
        )
    elif params.get("collation") is not None:
        check_collation(params["collation"])
    return query


LINK_SAFE = ":/.*;=!$'()@[]{}|~-_"
# a value made only of characters quote() leaves alone (ASCII letters, digits and LINK_SAFE) is
# its own quoted form: most paging values (types, numbers) skip the slower quote()
_UNQUOTED = re.compile(r"[A-Za-z0-9" + re.escape(LINK_SAFE) + "]*")


def _quoted(value: str) -> str:
    return value if _UNQUOTED.fullmatch(value) else quote(value, safe=LINK_SAFE)


PAGING = frozenset(("limit", "offset", "entityMap"))
LINKS_KEPT = 1024  # link templates remembered (all forgotten past it)
_templates: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, str, str]] = {}


def _template(path: str, params: Mapping[str, str]) -> tuple[str, str, str]:
    """(head, middle, tail) of a paging link: head + limit + middle + offset + tail. The query's
    other parameters sorted and quoted, kept per (path, parameters): a client pages through the
    same query with only the offset changing."""
    key = (path, tuple((k, v) for k, v in params.items() if k not in PAGING))
    found = _templates.get(key)
    if found is not None:
        return found
    # NUL cannot be in a name (check_params allows known names only) nor in a quoted value (%00)
    items = {k: _quoted(v) for k, v in key[1]} | {"limit": "\0L", "offset": "\0O"}
    query = "&".join(f"{k}={v}" for k, v in sorted(items.items()))
    head, rest = f"<{path.rstrip('/')}?{query}>".split("\0L")
    middle, tail = rest.split("\0O")
    if len(_templates) >= LINKS_KEPT:
        _templates.clear()
    found = _templates[key] = (head, middle, tail)
    return found


def pagination_links(request: Request, limit: int, offset: int, has_more: bool, base: str = "") -> list[str]:
    """rel="prev"/"next" Link values (spec 4.12, 6.3.x) with the same query, paged. `base` is an entity
    map's original query, which the request's own parameters override; entityMap=true is never
    repeated (following a link must page over the map, not create another)."""
    if limit == 0 or (offset == 0 and not has_more):
        return []
    params = {**dict(parse_qsl(base)), **plain_params(request)} if base else plain_params(request)
    path: str = request.scope["path"]
    if "?" in path or "#" in path or "\\" in path or path.startswith("//"):  # as Starlette's URL reads it
        path = request.url.path
    head, middle, tail = _template(path, params)
    # reserved characters inside values are escaped; `:`, `/`, `.` and `*` stay readable
    links = []
    if offset > 0:
        links.append(f'{head}{limit}{middle}{max(0, offset - limit)}{tail}; rel="prev";type="application/json"')
    if has_more:
        links.append(f'{head}{limit}{middle}{offset + limit}{tail}; rel="next";type="application/json"')
    return links


def check_string_members(body: dict[str, Any]) -> None:
    """The members of a Query body (POST .../entityOperations/query) that hold query text."""
    for member in ("q", "scopeQ", "join", "lang", "csf"):
        if body.get(member) is not None and not isinstance(body[member], str):
            raise BadRequestData(f"{member} must be a string")


def page(request: Request) -> tuple[int, int]:
    settings = services(request).settings
    try:
        params = plain_params(request)
        limit = int(params.get("limit", settings.default_page_size))
        offset = int(params.get("offset", 0))
    except ValueError as exc:
        raise BadRequestData("limit and offset must be integers") from exc
    if limit < 0 or offset < 0:
        raise BadRequestData("limit and offset must not be negative")
    if offset > MAX_SAFE_INTEGER:
        raise BadRequestData(f"offset must not be above {MAX_SAFE_INTEGER}")
    if limit > settings.max_page_size:
        raise TooManyResults(f"limit {limit} is above the maximum page size {settings.max_page_size}")
    return limit, offset


@api(
    "Query entities",
    query=QUERY_PARAMS,
    returns="EntityList",
    errors=(400, 406),
    media=("application/json", "application/ld+json", "application/geo+json"),
)
async def query_entities(request: Request) -> Response:
    check_params(request, QUERY_PARAMS)
    media = accept(request, (JSON, JSON_LD, GEO_JSON))
    tenant_name = await existing_tenant(request)
    context = await query_context(request, tenant_name)
    params = plain_params(request)
    check_not_too_wide(request)
    check_csf(request)
    if params.get("type") == "*" and params.get("local") == "false":
        raise BadRequestData("type=* selects every type and is only allowed for local queries")
    if media != GEO_JSON and params.get("geometryProperty") is not None:
        raise BadRequestData("geometryProperty needs Accept: application/geo+json")
    query = build_query(request, context, tenant_name)
    federated = None
    # type=* is a local query (spec 4.3.6: every type is not asked of the sources)
    if (
        media != GEO_JSON
        and params.get("local") != "true"
        and params.get("type") != "*"
        and not forwarding.unregistered(request, tenant_name)
    ):
        federated = await forwarding.consumption(
            request,
            tenant_name,
            context,
            ("queryEntity", "queryBatch"),
            ids=params["id"].split(",") if params.get("id") else None,
            types=type_filter(params["type"], context) if params.get("type") else None,
            attrs=params["attrs"].split(",") if params.get("attrs") else None,
        )
    if federated is not None and params.get("orderBy") is not None:
        raise BadRequestData("orderBy is not supported on a distributed query: add local=true (spec 4.23)")
    response = await run_query(request, tenant_name, context, query, media)
    if federated is None:
        return response
    return await forwarding.query_response(federated, response, media, list(request.query_params.multi_items()))


@budget.per_request  # the store, join and rendering share one --query-timeout
async def run_query(
    request: Request,
    tenant_name: str,
    context: ResolvedContext,
    query: EntityQuery,
    media: str,
    params: Mapping[str, str] | None = None,
) -> Response:
    """Page, run and render a query (shared by GET /entities and POST /entityOperations/query)."""
    from cityos.ngsild import entity_maps
    from cityos.ngsild.entities import geojson_response, representation

    params = params if params is not None else plain_params(request)
    render = representation(request, context, params)
    wants_count = "count" in options(request, REPRESENTATION_OPTIONS) or params.get("count") == "true"
    limit, offset = page(request)
    read = access.view(request, tenant_name)
    query = access.restrict(query, read)
    # documents as stored, for render_page's cache: not for joins, GeoJSON or audited personal reads
    stored_form = access.renders_cached(read) and media != GEO_JSON and params.get("join") is None
    result, emap = await entity_maps.select(request, tenant_name, query, limit, offset, wants_count, stored_form)
    if not read.unrestricted and result.stored is None:
        result.entities = [read.project(e) for e in result.entities]
        await access.personal_reads(request, tenant_name, read, result.entities)
    headers = {"NGSILD-Results-Count": str(result.total)} if wants_count and result.total is not None else {}
    links = pagination_links(request, limit, offset, result.has_more, emap.entity_map.query if emap else "")
    if media == GEO_JSON:
        features = [
            to_geojson_feature(e, render, params.get("geometryProperty")) for e in budget.checked(result.entities)
        ]
        geojson = geojson_response(request, {"type": "FeatureCollection", "features": features}, context)
        return entity_maps.answer(geojson, emap)
    from cityos.ngsild.entities import request_join_plan
    from cityos.ngsild.join import render_joined

    plan = request_join_plan(request, params)
    if plan is not None:
        assert result.stored is None  # asked only without join
        body = await render_joined(result.entities, render, plan, services(request).store, tenant_name, read)
        response = json_response(body, media=media, context=context, headers=headers)
    elif result.stored is not None:
        # an entity whose every member the projection removed is left out (019_17_01)
        ld_context = orjson.dumps(context.value) if media == JSON_LD else None
        view = None if read.unrestricted else read
        page_json = render_page(budget.checked(result.stored), result.decode, render, ld_context, view)
        response = encoded_response(page_json, media, context, headers)
    else:
        body = [rendered for entity in budget.checked(result.entities) if (rendered := render_entity(entity, render))]
        response = json_response(body, media=media, context=context, headers=headers)
    for value in links:
        response.headers.append("Link", value)
    return entity_maps.answer(response, emap)


@api("Delete the entities a query selects (or some of their attributes)", query=PURGE_PARAMS, ok=204, returns=None)
async def purge_entities(request: Request) -> Response:
    """DELETE /entities: delete matching entities, or with keep/drop only some of their attributes."""
    check_params(request, PURGE_PARAMS)
    tenant_name = await existing_tenant(request)
    context = await query_context(request, tenant_name)
    params = request.query_params
    if params.get("keep") is not None and params.get("drop") is not None:
        raise BadRequestData("keep and drop cannot be used together")
    check_not_too_wide(request, purge=True)
    query = build_query(request, context, tenant_name)  # validates q (and refuses linked-entity paths) before deleting
    types = type_filter(params["type"], context) if params.get("type") else None
    return await forwarding.run_purge(
        request, tenant_name, context, types, lambda _: _purge_here(request, tenant_name, context, query), no_content
    )


async def _purge_here(request: Request, tenant_name: str, context: ResolvedContext, query: EntityQuery) -> Response:
    """The local part of DELETE /entities."""
    result = await services(request).store.query_entities(tenant_name, access.restricted(request, tenant_name, query))
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
        operations = access.guard_all(request, tenant_name, operations)
        try:
            await services(request).store.mutate(tenant_name, operations, atomic=True)
        except access.DENIED as error:  # one entity it may not delete: nothing is deleted
            await access.denied(request, tenant_name, [entity_id for entity_id, _ in operations], error)
            raise
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
        "@context",
        "local",
        "expandValues",
        "join",
        "joinLevel",
        "containedBy",
        "datasetId",
        "ordering",
        "entityMap",
    }
)


@api(
    "Query entities with the query in the body",
    query=QUERY_POST_PARAMS,
    body="Query",
    returns="EntityList",
)
async def query_post(request: Request) -> Response:
    """POST /entityOperations/query: the query in a body, paging and representation in the URL."""
    check_params(request, QUERY_POST_PARAMS)
    media = accept(request, (JSON, JSON_LD, GEO_JSON))
    body, body_media = await read_payload(request)
    tenant_name = await existing_tenant(request)
    if not isinstance(body, dict):
        raise BadRequestData("the query must be a JSON object")
    if body.get("type") != "Query":
        raise BadRequestData('a query body needs "type": "Query"')
    unknown = set(body) - QUERY_BODY_MEMBERS
    if unknown:
        raise BadRequestData(f"members not allowed in a query: {', '.join(sorted(unknown))}")
    context = await body_context(request, body, body_media, tenant_name=tenant_name)
    geo = None
    if body.get("geoQ") is not None:
        from cityos.query.geo import parse_geoq

        geo = parse_geoq(body["geoQ"])
    entities = body.get("entities")
    if entities is not None and (not isinstance(entities, list) or not entities):
        raise BadRequestData("entities must be a non-empty array")
    check_string_members(body)
    params: dict[str, str] = dict(request.query_params)
    for member in ("attrs", "pick", "omit", "datasetId"):
        value = body.get(member)
        if value is None:
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise BadRequestData(f"{member} must be a non-empty array of strings")
        params[member] = ",".join(value)
    for member in ("join", "joinLevel", "lang", "expandValues"):
        if body.get(member) is not None:
            params[member] = str(body[member])
    spec = QuerySpec(
        attrs=params["attrs"].split(",") if "attrs" in params else None,
        q=body.get("q"),
        scope_q=body.get("scopeQ"),
        geo=geo,
        selectors=entities,
        max_pattern_length=services(request).settings.max_pattern_length,
    )
    if spec.is_empty():
        raise BadRequestData("a query needs entities, attrs, q or geoQ")
    query = build_entity_query(spec, context.terms.expand)
    order = body.get("ordering")
    if order is not None:
        if not isinstance(order, dict) or "orderBy" not in order:
            raise BadRequestData("ordering must be an object with orderBy")
        coordinates = order.get("coordinates")
        if coordinates is not None and not isinstance(coordinates, list):
            raise BadRequestData("ordering coordinates must be an array")
        query.sort = ordering(
            order["orderBy"],
            context.terms.expand,
            collation=order.get("collation"),
            origin=coordinates,
            geometry=order.get("geometry", "Point"),
        )
    federated = None
    if (
        media != GEO_JSON
        and params.get("local") != "true"
        and body.get("local") is not True
        and not forwarding.unregistered(request, tenant_name)
    ):
        selectors = [s for s in entities or [] if isinstance(s, dict)]
        federated = await forwarding.consumption(
            request,
            tenant_name,
            context,
            ("queryBatch", "queryEntity"),
            ids=[s["id"] for s in selectors if isinstance(s.get("id"), str)] or None,
            types=[context.terms.expand(s["type"]) for s in selectors if isinstance(s.get("type"), str)] or None,
            attrs=params["attrs"].split(",") if "attrs" in params else None,
        )
    if federated is not None and body.get("ordering") is not None:
        raise BadRequestData("ordering is not supported on a distributed query: add local=true (spec 4.23)")
    response = await run_query(request, tenant_name, context, query, media, params)
    if federated is None:
        return response
    return await forwarding.query_response(federated, response, media, list(request.query_params.multi_items()), body)
