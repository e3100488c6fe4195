"""Handlers for the temporal API (spec 6.18-6.24): /temporal/entities and its attributes and
instances, /temporal/entityOperations/query and /temporal/entityMaps. They parse the request, call
temporal/ and the store, and render; the rules live in temporal/model.py and temporal/query.py.

Paths under /temporal/entities/ are split by hand: the suite sends empty segments
(`/temporal/entities//attrs/speed`, `.../attrs/speed/`) and dot segments that must reach a handler
and be answered 400 or 405, which `{param}` routes cannot express.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.entities.values import check_name, now, require_uri
from cityos.errors import BadRequestData, InvalidRequest, MethodNotAllowed, ResourceNotFound
from cityos.jsonld.registry import ResolvedContext
from cityos.ngsild import access, entity_maps
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
    tenant,
)
from cityos.ngsild.entities import projected
from cityos.ngsild.querying import (
    check_csf,
    check_not_too_wide,
    check_string_members,
    page,
    pagination_links,
    spec_from_params,
)
from cityos.ops.declare import api
from cityos.query import budget
from cityos.query.entity_maps import render as render_map
from cityos.query.entity_query import QuerySpec, build_entity_query, scope_predicate
from cityos.store.base import EntityStore
from cityos.store.temporal_base import AggregationSpec, TemporalQuery, TemporalWindow, stats_for
from cityos.temporal.model import (
    TemporalView,
    parse_instance_patch,
    parse_temporal_entity,
    parse_temporal_fragment,
    render_aggregated,
    render_temporal,
)
from cityos.temporal.query import (
    FORMATS,
    REPRESENTATION_OPTIONS,
    Aggregation,
    Window,
    choose_format,
    content_range,
    parse_aggregation,
    parse_last_n,
    parse_window,
)

BASE = "/ngsi-ld/v1"
TEMPORAL = BASE + "/temporal/entities"
# below /temporal/entities/ an empty segment is meaningful (the suite pins 400/405 for empty ids and
# names), so the trailing-slash normalisation of app.ProtocolGuard leaves it to dispatch()
SELF_ROUTED = re.compile(re.escape(TEMPORAL) + "/.+")
TEMPORAL_PARAMS = ("timerel", "timeAt", "endTimeAt", "timeproperty", "lastN", "aggrMethods", "aggrPeriodDuration")
SELECTION_PARAMS = ("id", "type", "idPattern", "q", "scopeQ", "georel", "geometry", "coordinates", "geoproperty", "csf")
VIEW_PARAMS = ("attrs", "pick", "omit", "options", "format", "datasetId", "expandValues", "lang", "local")
MAP_PARAMS = ("entityMap", "entityMapLifetime")
QUERY_PARAMS = (*SELECTION_PARAMS, *VIEW_PARAMS, *TEMPORAL_PARAMS, *MAP_PARAMS, "count", "limit", "offset", "orderBy")
RETRIEVE_PARAMS = (*VIEW_PARAMS, *TEMPORAL_PARAMS, *MAP_PARAMS, "type")
QUERY_BODY_MEMBERS = frozenset(
    {"type", "entities", "attrs", "pick", "omit", "q", "geoQ", "scopeQ", "csf", "temporalQ", "aggrParams"}
    | {"@context", "local", "expandValues", "datasetId", "lang"}
)


@dataclass(frozen=True, slots=True)
class TemporalRequest:
    """The temporal side of a read: window, lastN, aggregation and how to render."""

    window: Window
    last_n: int | None
    aggregation: Aggregation | None
    view: TemporalView


# query parameters each handler accepts (checked by it, described by ops/openapi.py)
QUERY_TEMPORAL_POST_PARAMS = ("limit", "offset", "count", "options", "format", "local", "lang")


def _request(
    request: Request, context: ResolvedContext, values: Mapping[str, Any], params: Mapping[str, str]
) -> TemporalRequest:
    """From temporal `values` (URL parameters or a temporalQ) and the URL's representation options."""
    chosen = options(request, REPRESENTATION_OPTIONS)
    fmt = request.query_params.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise InvalidRequest(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")
    window = parse_window(
        values.get("timerel"), values.get("timeAt"), values.get("endTimeAt"), values.get("timeproperty")
    )
    last_n = parse_last_n(values.get("lastN"))
    methods, duration = values.get("aggrMethods"), values.get("aggrPeriodDuration")
    form = choose_format(chosen, fmt, request.method == "POST" and (methods is not None or duration is not None))
    aggregation = parse_aggregation(methods, duration) if form == "aggregatedValues" else None
    render = projected(params, context, format="normalized", sys_attrs="sysAttrs" in chosen)
    return TemporalRequest(window, last_n, aggregation, TemporalView(render, form, window.timeproperty))


def _store_query(
    request: Request, spec: QuerySpec, context: ResolvedContext, temporal: TemporalRequest
) -> TemporalQuery:
    scope_test: Callable[[Sequence[str]], bool] | None = None
    if spec.scope_q is not None:  # judged over time by the store, not on a windowed entity
        matches = scope_predicate(spec.scope_q)

        def scope_test(scopes: Sequence[str]) -> bool:
            return matches({"scope": list(scopes)})

        spec = replace(spec, scope_q=None)
    spec = replace(spec, max_pattern_length=services(request).settings.max_pattern_length)
    selection = build_entity_query(spec, context.terms.expand)
    datasets = temporal.view.options.datasets
    window = temporal.window
    return TemporalQuery(
        window=TemporalWindow(window.timeproperty, window.start, window.end),
        ids=selection.ids,
        id_pattern=selection.id_pattern,
        types=selection.types,
        attrs=selection.attrs,
        datasets=None if datasets is None else sorted(datasets, key=lambda d: d or ""),
        last_n=temporal.last_n,
        predicate=selection.predicate,
        scope_test=scope_test,
        max_instances=services(request).settings.temporal_page_size,
    )


def _descending(order_by: Any) -> bool:
    """Temporal results are ordered by id only (021_23): `id` or `id;desc`."""
    if order_by is None or order_by in ("id", "id;asc"):
        return False
    if order_by == "id;desc":
        return True
    raise BadRequestData(f"orderBy of temporal queries takes id or id;desc, got {order_by!r}")


# -- reads ------------------------------------------------------------------------------------------
@api(
    "Query temporal entities (history)",
    query=QUERY_PARAMS,
    returns="TemporalEntityList",
    more={206: "TemporalEntityList"},
)
async def query_temporal(request: Request) -> Response:
    """GET /temporal/entities."""
    check_params(request, QUERY_PARAMS)
    media = accept(request)
    tenant_name = await existing_tenant(request)
    context = await query_context(request, tenant_name)
    check_not_too_wide(request)
    check_csf(request)
    params = request.query_params
    temporal = _request(request, context, params, params)
    query = _store_query(request, spec_from_params(request), context, temporal)
    query.descending = _descending(params.get("orderBy"))
    return await _answer(request, tenant_name, context, query, temporal, media)


@api(
    "Query temporal entities with the query in the body",
    query=QUERY_TEMPORAL_POST_PARAMS,
    body="Query",
    returns="TemporalEntityList",
    more={206: "TemporalEntityList"},
)
async def query_temporal_post(request: Request) -> Response:
    """POST /temporal/entityOperations/query: the query in the body, paging and representation in the URL."""
    check_params(request, QUERY_TEMPORAL_POST_PARAMS)
    media = accept(request)
    body, body_media = await read_payload(request)
    tenant_name = await existing_tenant(request)
    if not isinstance(body, dict) or body.get("type") != "Query":
        raise BadRequestData('a query body is a JSON object with "type": "Query"')
    unknown = set(body) - QUERY_BODY_MEMBERS
    if unknown:
        raise BadRequestData(f"members not allowed in a query: {', '.join(sorted(unknown))}")
    context = await body_context(request, body, body_media, tenant_name=tenant_name)
    values: dict[str, Any] = {}
    for member in ("temporalQ", "aggrParams"):
        part = body.get(member) or {}
        if not isinstance(part, dict):
            raise BadRequestData(f"{member} must be a JSON object")
        values.update({k: v for k, v in part.items() if k not in values})
    check_string_members(body)
    params: dict[str, str] = dict(request.query_params)
    for member in ("attrs", "pick", "omit", "datasetId"):
        value = body.get(member)
        if value is not None:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
                raise BadRequestData(f"{member} must be a non-empty array of strings")
            params[member] = ",".join(items)
    temporal = _request(request, context, values, params)
    geo = None
    if body.get("geoQ") is not None:
        from cityos.query.geo import parse_geoq

        geo = parse_geoq(body["geoQ"])
    entities = body.get("entities")
    if entities is not None and (not isinstance(entities, list) or not entities):
        raise BadRequestData("entities must be a non-empty array")
    spec = QuerySpec(
        attrs=params["attrs"].split(",") if "attrs" in params else None,
        q=body.get("q"),
        scope_q=body.get("scopeQ"),
        geo=geo,
        selectors=entities,
    )
    if spec.is_empty():
        raise BadRequestData("a query needs entities, attrs, q or geoQ")
    query = _store_query(request, spec, context, temporal)
    return await _answer(request, tenant_name, context, query, temporal, media)


@budget.per_request  # the store and the rendering share one --query-timeout
async def _answer(
    request: Request,
    tenant_name: str,
    context: ResolvedContext,
    query: TemporalQuery,
    temporal: TemporalRequest,
    media: str,
) -> Response:
    """Run a temporal query (over or into an entity map if asked), page and render it."""
    store = services(request).store
    read = access.temporal_read(request, tenant_name, query)
    limit, offset = page(request)
    query.limit, query.offset = limit, offset
    query.count = request.query_params.get("count") == "true"
    uses_map, use = await entity_maps.referenced(request, tenant_name)
    if use is not None:
        allowed = set(query.ids) if query.ids is not None else None
        query.ids = [i for i in use.entity_map.entity_ids if allowed is None or i in allowed]
    elif uses_map:
        everything = await store.temporal_query(tenant_name, replace(query, limit=None, offset=0, max_instances=0))
        use = await entity_maps.created(request, tenant_name, [e["id"] for e in everything.entities])
    headers: dict[str, str] = {}
    if temporal.aggregation is not None:
        spec = _aggregation_spec(temporal)
        aggregated = await store.temporal_aggregate(tenant_name, query, spec)
        series = [access.project_aggregated(read, e) for e in aggregated.entities]
        body = [
            render_aggregated(e, temporal.view.options, temporal.aggregation, temporal.window)
            for e in budget.checked(series)
        ]
        total, has_more, cut = aggregated.total, aggregated.has_more, None
    else:
        result = await store.temporal_query(tenant_name, query)
        shown = [read.project(e) for e in result.entities]
        await access.personal_reads(request, tenant_name, read, shown)
        body = [render_temporal(e, temporal.view) for e in budget.checked(shown)]
        total, has_more, cut = result.total, result.has_more, result.cut
    if query.count and total is not None:
        headers["NGSILD-Results-Count"] = str(total)
    status = 200
    if cut is not None:
        status = 206
        headers["Content-Range"] = content_range(temporal.window, temporal.last_n, *cut)
    response = json_response(
        [item for item in body if item], status=status, media=media, context=context, headers=headers
    )
    for link in pagination_links(request, limit, offset, has_more):
        response.headers.append("Link", link)
    return entity_maps.answer(response, use)


def _aggregation_spec(temporal: TemporalRequest) -> AggregationSpec:
    """Periods start at timeAt for after/between, else at each attribute's first instance."""
    assert temporal.aggregation is not None
    duration = temporal.aggregation.duration
    return AggregationSpec(
        duration.months, duration.micros, temporal.window.start, stats_for(temporal.aggregation.methods)
    )


@budget.per_request
async def retrieve_temporal(request: Request, entity_id: str) -> Response:
    """GET /temporal/entities/{id}: one read answers (the entity's existence, and that of the
    attributes asked for, are checked in it); the reasons for a 404 are looked up after it."""
    check_params(request, RETRIEVE_PARAMS)
    media = accept(request)
    tenant_name = await existing_tenant(request)
    context = await query_context(request, tenant_name)
    params = request.query_params
    temporal = _request(request, context, params, params)
    store = services(request).store
    render = temporal.view.options
    names = csv_param(request, "attrs")
    attrs = None if names is None else [context.terms.expand(check_name(n, "attribute name")) for n in names]
    query = _store_query(request, QuerySpec(ids=[entity_id]), context, temporal)
    query.attrs, query.require_instances = attrs, False
    query.any_of_attrs = None if render.attrs is None else sorted(render.attrs)
    read = access.temporal_read(request, tenant_name, query)
    headers: dict[str, str] = {}
    status = 200
    body: dict[str, Any] = {}
    if temporal.aggregation is not None:
        spec = _aggregation_spec(temporal)
        found_aggregates = (await store.temporal_aggregate(tenant_name, query, spec)).entities
        aggregated = [access.project_aggregated(read, e) for e in found_aggregates]
        if aggregated:
            body = render_aggregated(aggregated[0], render, temporal.aggregation, temporal.window)
    else:
        result = await store.temporal_query(tenant_name, query)
        found = [read.project(e) for e in result.entities]
        await access.personal_reads(request, tenant_name, read, found)
        body = render_temporal(found[0], temporal.view) if found else {}
        if result.cut is not None:
            status = 206
            headers["Content-Range"] = content_range(temporal.window, temporal.last_n, *result.cut)
    if not body:
        await _why_not_found(store, tenant_name, entity_id, render.attrs)
    response = json_response(body, status=status, media=media, context=context, headers=headers)
    return await entity_maps.for_entity(request, tenant_name, entity_id, response)


async def _why_not_found(store: EntityStore, tenant_name: str, entity_id: str, attrs: Collection[str] | None) -> None:
    """The 404 of a retrieval that found nothing to show, saying why."""
    info = await store.temporal_entity(tenant_name, entity_id)
    if info is None:
        raise ResourceNotFound(f"entity {entity_id} has no temporal evolution")
    if attrs is not None and not any(iri in info.attrs for iri in attrs):
        raise ResourceNotFound(f"entity {entity_id} has none of the requested attributes")
    raise ResourceNotFound(f"the projection leaves nothing of entity {entity_id}")


@api("Make an entity map of a temporal query", query=QUERY_PARAMS, ok=201, returns="Object")
async def temporal_entity_maps(request: Request) -> Response:
    """GET /temporal/entityMaps?<temporal query>: a map of the entities the query selects (6.34)."""
    check_params(request, QUERY_PARAMS)
    media = accept(request)
    tenant_name = await existing_tenant(request)
    context = await query_context(request, tenant_name)
    if request.query_params.get("timerel") is None:
        raise BadRequestData("a temporal EntityMap is made from a temporal query, which needs timerel and timeAt")
    check_not_too_wide(request)
    check_csf(request)
    temporal = _request(request, context, request.query_params, request.query_params)
    query = _store_query(request, spec_from_params(request), context, temporal)
    query.max_instances = 0
    access.temporal_read(request, tenant_name, query)
    matched = await services(request).store.temporal_query(tenant_name, query)
    use = await entity_maps.created(request, tenant_name, [e["id"] for e in matched.entities])
    headers = {entity_maps.HEADER: use.header}
    return json_response(render_map(use.entity_map), status=201, media=media, context=context, headers=headers)


# -- writes -----------------------------------------------------------------------------------------
@api("Create a temporal entity, or add to its history", body="Object", ok=201, returns=None, more={204: None})
async def create_temporal(request: Request) -> Response:
    """POST /temporal/entities: 201 for a new temporal entity, 204 when its history is extended."""
    check_params(request, ("local",))
    body, media = await read_payload(request)
    tenant_name = tenant(request)
    context = await body_context(request, body, media, tenant_name=tenant_name)
    entity_id, types, pairs = parse_temporal_entity(body, context.terms, now())
    await access.temporal_write(request, tenant_name, entity_id, "create", types, [attr for attr, _ in pairs])
    if not await services(request).store.temporal_write(tenant_name, entity_id, types, pairs):
        return no_content()
    location = f"{TEMPORAL}/" + quote(entity_id, safe=":;=@!$&'()*+,~-._")
    return Response(status_code=201, headers={"Location": location})


async def add_attributes(request: Request, entity_id: str) -> Response:
    """POST /temporal/entities/{id}/attrs: append instances."""
    check_params(request, ("local",))
    body, media = await read_payload(request)
    tenant_name = tenant(request)
    context = await body_context(request, body, media, tenant_name=tenant_name)
    types, pairs = parse_temporal_fragment(body, context.terms, now(), entity_id)
    await access.temporal_write(request, tenant_name, entity_id, "update", types, [attr for attr, _ in pairs])
    store = services(request).store
    if await store.temporal_entity(tenant_name, entity_id) is None:
        raise ResourceNotFound(f"entity {entity_id} has no temporal evolution")
    await store.temporal_write(tenant_name, entity_id, types, pairs)
    return no_content()


async def delete_temporal(request: Request, entity_id: str) -> Response:
    check_params(request, ("local",))
    tenant_name = await existing_tenant(request)
    await access.temporal_write(request, tenant_name, entity_id, "delete")
    if not await services(request).store.temporal_delete_entity(tenant_name, entity_id):
        raise ResourceNotFound(f"entity {entity_id} has no temporal evolution")
    return no_content()


async def _attribute(request: Request, tenant_name: str, name: str) -> str:
    return (await query_context(request, tenant_name)).terms.expand(name)


async def delete_attribute(request: Request, entity_id: str, name: str) -> Response:
    """DELETE /temporal/entities/{id}/attrs/{attr}: drop the history of one datasetId, or all."""
    check_params(request, ("datasetId", "deleteAll", "local"))
    tenant_name = await existing_tenant(request)
    attr = await _attribute(request, tenant_name, name)
    dataset = request.query_params.get("datasetId")
    if dataset is not None:
        require_uri(dataset, "datasetId")
    delete_all = request.query_params.get("deleteAll", "false").lower() == "true"
    await access.temporal_write(request, tenant_name, entity_id, "update", attrs=[attr])
    store = services(request).store
    if not await store.temporal_delete_attribute(tenant_name, entity_id, attr, dataset=dataset, delete_all=delete_all):
        raise ResourceNotFound(f"entity {entity_id} has no history of {name}")
    return no_content()


async def modify_instance(request: Request, entity_id: str, name: str, instance_id: str) -> Response:
    """PATCH /temporal/entities/{id}/attrs/{attr}/{instanceId}: change members of one instance."""
    check_params(request, ("local",))
    body, media = await read_payload(request, merge_patch=True)
    tenant_name = await existing_tenant(request)
    context = await body_context(request, body, media, tenant_name=tenant_name)
    patch = parse_instance_patch(name, body, context.terms, now())
    await access.temporal_write(request, tenant_name, entity_id, "update", attrs=[context.terms.expand(name)])
    store = services(request).store
    if not await store.temporal_modify_instance(tenant_name, entity_id, context.terms.expand(name), instance_id, patch):
        raise ResourceNotFound(f"entity {entity_id} has no instance {instance_id} of {name}")
    return no_content()


async def delete_instance(request: Request, entity_id: str, name: str, instance_id: str) -> Response:
    check_params(request, ("local",))
    tenant_name = await existing_tenant(request)
    attr = await _attribute(request, tenant_name, name)
    await access.temporal_write(request, tenant_name, entity_id, "update", attrs=[attr])
    if not await services(request).store.temporal_delete_instance(tenant_name, entity_id, attr, instance_id):
        raise ResourceNotFound(f"entity {entity_id} has no instance {instance_id} of {name}")
    return no_content()


# -- routing ----------------------------------------------------------------------------------------
def _entity_id(segment: str) -> str:
    if not segment:
        raise BadRequestData("the entity id in the path is empty")
    return require_uri(unquote(segment), "entity id")


def _name(segment: str) -> str:
    return check_name(unquote(segment), "attribute name")


@api(
    "Retrieve a temporal entity, or one of its attributes' history",
    method="GET",
    ok=200,
    returns="TemporalEntity",
    more={206: "TemporalEntity"},
    errors=(400, 404),
)
@api(
    "Add instances to a temporal entity's attributes",
    method="POST",
    ok=204,
    returns=None,
    body="Object",
    errors=(400, 404),
)
@api("Change one attribute instance", method="PATCH", ok=204, returns=None, body="Object", errors=(400, 404))
@api(
    "Delete a temporal entity, an attribute's history or one instance",
    method="DELETE",
    ok=204,
    returns=None,
    errors=(400, 404),
)
@api("No operation (405)", method="PUT", ok=405, returns="ProblemDetails", errors=(400, 404))
async def dispatch(request: Request) -> Response:
    """Everything below /temporal/entities/, split by hand (see the module docstring)."""
    parts = request.path_params["rest"].split("/")
    method = request.method
    if len(parts) == 2 and not parts[1]:
        parts = parts[:1]  # a trailing slash after the entity id; an empty name or instance id stays an error
    shape = len(parts)
    if parts == [""]:
        if method == "POST":
            return await create_temporal(request)
        if method == "GET":
            return await query_temporal(request)
        raise MethodNotAllowed(f"{method} needs an entity id")
    if (shape >= 2 and parts[1] != "attrs") or shape > 4:
        raise ResourceNotFound(f"no resource at {request.url.path}")
    if method == "PATCH" and shape == 4 and (not parts[2] or not parts[3]):
        raise MethodNotAllowed("PATCH needs an attribute name and an instance id")  # 016_02_04/06
    entity_id = _entity_id(parts[0])
    if shape == 1 and method in ("GET", "DELETE"):
        return await (retrieve_temporal if method == "GET" else delete_temporal)(request, entity_id)
    if (shape == 2 or (shape == 3 and not parts[2])) and method == "POST":
        return await add_attributes(request, entity_id)
    if shape == 3 and method == "DELETE":
        return await delete_attribute(request, entity_id, _name(parts[2]))
    if shape == 4 and method in ("PATCH", "DELETE"):
        name, instance_id = _name(parts[2]), require_uri(unquote(parts[3]), "instanceId")
        handler = modify_instance if method == "PATCH" else delete_instance
        return await handler(request, entity_id, name, instance_id)
    raise MethodNotAllowed(f"{method} is not allowed on {request.url.path}")


def routes() -> list[Route]:
    every = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return [
        Route(TEMPORAL, query_temporal, methods=["GET"]),
        Route(TEMPORAL, create_temporal, methods=["POST"]),
        Route(TEMPORAL + "/{rest:path}", dispatch, methods=every),
        Route(BASE + "/temporal/entityOperations/query", query_temporal_post, methods=["POST"]),
        Route(BASE + "/temporal/entityMaps", temporal_entity_maps, methods=["GET"]),
    ]
