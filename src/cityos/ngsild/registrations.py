"""Handlers for /csourceRegistrations (spec 5.9, 5.10): create (with the mode rules and
conflicts of 4.3.6.3 and 5.9.2), retrieve, query (types, ids, attrs, q, csf, geoQ, scopeQ and the
temporal query, paged with links that keep the filters), update and delete. Every change is
reported to the context source registration subscriptions (ngsild/csource_subscriptions.py).
An expired registration (expiresAt passed) behaves as deleted; it is removed lazily, when read.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.entities.values import require_uri
from cityos.errors import AlreadyExists, BadRequestData, ResourceNotFound
from cityos.jsonld.termmap import TermMap
from cityos.ngsild.common import (
    accept,
    body_context,
    check_params,
    csv_param,
    existing_tenant,
    json_response,
    no_content,
    query_context,
    read_payload,
    require_change,
    resource_routes,
    services,
    tenant,
)
from cityos.ngsild.guard import allowed, hide, require
from cityos.ngsild.querying import page
from cityos.ngsild.subscriptions import page_response, wants_count
from cityos.ops.declare import api
from cityos.policy.decision import Target
from cityos.query.entity_query import check_pattern
from cityos.query.geo import parse_geo_query
from cityos.query.q import parse_q
from cityos.registrations import (
    RegistrationFilter,
    expired,
    matches,
    merge_registration,
    parse_registration,
    render_registration,
)
from cityos.registrations.conflicts import check_local, check_registrations, entity_ids
from cityos.registrations.subscriptions import CSourceSubscriptions
from cityos.store.base import RegistrationRow
from cityos.subscriptions.model import Doc
from cityos.temporal.query import parse_window

BASE = "/ngsi-ld/v1"
COLLECTION = BASE + "/csourceRegistrations"
# the parameters that select registrations; a query needs at least one (5.10.2.4)
FILTER_PARAMS = ("type", "id", "idPattern", "attrs", "q", "csf", "georel", "scopeQ", "timerel")
QUERY_PARAMS = (
    *FILTER_PARAMS,
    "geometry",
    "coordinates",
    "geoproperty",
    "timeproperty",
    "timeAt",
    "endTimeAt",
    "limit",
    "offset",
    "count",
    "options",
)


def _registration_id(request: Request) -> str:
    return require_uri(request.path_params["registration_id"], "registration id")


async def _live(request: Request, tenant_name: str, registration_id: str) -> RegistrationRow | None:
    """The stored registration unless it has expired (an expired one is deleted now)."""
    store = services(request).store
    row = await store.get_registration(tenant_name, registration_id)
    if row is not None and expired(row.document):
        await store.delete_registration(tenant_name, registration_id)
        return None
    return row


def _target(tenant_name: str) -> Target:
    return Target(tenant=tenant_name, resource="registration")


async def _require(request: Request, tenant_name: str, registration_id: str) -> RegistrationRow:
    """The registration, if it exists and the caller may read registrations (404 otherwise: one it
    may not read is not told apart from one that does not exist)."""
    missing = ResourceNotFound(f"context source registration {registration_id} does not exist")
    if not allowed(request, "read", _target(tenant_name)):
        raise hide(request, "read", _target(tenant_name), missing)
    row = await _live(request, tenant_name, registration_id)
    if row is None:
        raise missing
    return row


def csource(request: Request) -> CSourceSubscriptions:
    result: CSourceSubscriptions = request.app.state.csource
    return result


async def _check_conflicts(request: Request, tenant_name: str, doc: Doc) -> None:
    """409 for the conflicts of 4.3.6.3 and 5.9.2 (other registrations, local entities)."""
    store = services(request).store
    rows = await store.list_registrations(tenant_name)
    check_registrations(doc, (row.document for row in rows if not expired(row.document)))
    local = {}
    for entity_id in entity_ids(doc):
        entity = await store.get_entity(tenant_name, entity_id)
        if entity is not None:
            local[entity_id] = entity
    check_local(doc, local)


@api("Create a context source registration", body="Registration", ok=201, returns=None, errors=(400, 409))
async def create_registration(request: Request) -> Response:
    check_params(request, ())
    body, media = await read_payload(request)
    tenant_name = tenant(request)
    require(request, "administer", _target(tenant_name))
    context = await body_context(request, body, media, tenant_name=tenant_name)
    doc = parse_registration(body, context.terms, max_pattern_length=services(request).settings.max_pattern_length)
    if await _live(request, tenant_name, doc["id"]) is not None:
        raise AlreadyExists(f"context source registration {doc['id']} already exists")
    await _check_conflicts(request, tenant_name, doc)
    await services(request).store.save_registration(RegistrationRow(tenant_name, doc["id"], doc), create=True)
    await csource(request).changed(tenant_name, None, doc)
    location = quote(f"{COLLECTION}/{doc['id']}", safe="/:;=@!$&'()*+,~-._")
    return Response(status_code=201, headers={"Location": location})


@api("Retrieve a context source registration", returns="Registration", errors=(400, 404))
async def retrieve_registration(request: Request) -> Response:
    check_params(request, ())
    registration_id = _registration_id(request)
    media = accept(request)
    tenant_name = await existing_tenant(request)
    row = await _require(request, tenant_name, registration_id)
    context = await query_context(request, tenant_name)
    return json_response(render_registration(row.document, context.terms), media=media, context=context)


Selection = tuple[list[str] | None, list[str] | None, str | None, list[str] | None]


def _selection(request: Request, terms: TermMap) -> Selection:
    """(types, ids, idPattern, attrs) of a query, names expanded with the request's @context."""
    types = csv_param(request, "type")
    ids = csv_param(request, "id")
    for item in ids or ():
        require_uri(item, "id")
    id_pattern = request.query_params.get("idPattern")
    if id_pattern is not None:
        check_pattern(id_pattern, services(request).settings.max_pattern_length)
    attrs = csv_param(request, "attrs")
    return (
        None if types is None else [terms.expand(t) for t in types],
        ids,
        id_pattern,
        None if attrs is None else [terms.expand(a) for a in attrs],
    )


def _filter(request: Request) -> RegistrationFilter:
    """q, csf, the geo-query, scopeQ and the temporal query of a registration query (5.10.2)."""
    params = request.query_params
    max_length = services(request).settings.max_pattern_length
    for name in ("q", "csf"):
        if name in params:
            parse_q(params[name], max_length)  # a syntax error is BadRequestData before any read
    window = parse_window(
        params.get("timerel"), params.get("timeAt"), params.get("endTimeAt"), params.get("timeproperty") or None
    )
    return RegistrationFilter(
        q=params.get("q"),
        csf=params.get("csf"),
        geo=parse_geo_query(
            params.get("georel"), params.get("geometry"), params.get("coordinates"), params.get("geoproperty") or None
        ),
        scope_q=params.get("scopeQ"),
        window=window if window.timerel is not None else None,
    )


@api("List context source registrations", query=QUERY_PARAMS, returns="RegistrationList")
async def query_registrations(request: Request) -> Response:
    check_params(request, QUERY_PARAMS)
    media = accept(request)
    tenant_name = await existing_tenant(request)
    require(request, "read", _target(tenant_name))
    if not any(name in request.query_params for name in FILTER_PARAMS):
        raise BadRequestData(f"a registration query needs at least one of {', '.join(FILTER_PARAMS)} (5.10.2.4)")
    limit, offset = page(request)
    counted = wants_count(request)
    context = await query_context(request, tenant_name)
    types, ids, id_pattern, attrs = _selection(request, context.terms)
    selected = _filter(request).compile(context.terms, services(request).settings.max_pattern_length)
    store = services(request).store
    found: list[Doc] = []
    for row in await store.list_registrations(tenant_name):
        if expired(row.document):
            await store.delete_registration(tenant_name, row.id)
        elif matches(row.document, types=types, ids=ids, id_pattern=id_pattern, attrs=attrs) and selected(row.document):
            found.append(row.document)
    body = [render_registration(doc, context.terms) for doc in found[offset : offset + limit]]
    return page_response(
        body,
        len(found),
        media=media,
        context=context,
        limit=limit,
        offset=offset,
        wants_count=counted,
        collection=COLLECTION,
        query=request.query_params.multi_items(),
    )


@api("Update a context source registration", body="Object", ok=204, returns=None, errors=(400, 404))
async def update_registration(request: Request) -> Response:
    check_params(request, ())
    registration_id = _registration_id(request)
    body, media = await read_payload(request, merge_patch=True)
    tenant_name = await existing_tenant(request)
    current = await _require(request, tenant_name, registration_id)
    require(request, "administer", _target(tenant_name))
    context = await body_context(request, body, media, tenant_name=tenant_name)
    require_change(body)
    doc = merge_registration(
        current.document, body, context.terms, max_pattern_length=services(request).settings.max_pattern_length
    )
    await _check_conflicts(request, tenant_name, doc)
    await services(request).store.save_registration(RegistrationRow(tenant_name, registration_id, doc), create=False)
    await csource(request).changed(tenant_name, current.document, doc)
    return no_content()


@api("Delete a context source registration", ok=204, returns=None, errors=(400, 404))
async def delete_registration(request: Request) -> Response:
    check_params(request, ())
    registration_id = _registration_id(request)
    tenant_name = await existing_tenant(request)
    current = await _require(request, tenant_name, registration_id)
    require(request, "administer", _target(tenant_name))
    await services(request).store.delete_registration(tenant_name, registration_id)
    await csource(request).changed(tenant_name, current.document, None)
    return no_content()


def routes() -> list[Route]:
    return [
        *resource_routes(
            COLLECTION,
            "registration_id",
            create=create_registration,
            query=query_registrations,
            retrieve=retrieve_registration,
            update=update_registration,
            delete=delete_registration,
        ),
    ]
