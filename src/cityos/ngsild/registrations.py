"""Handlers for /csourceRegistrations (spec 5.9, 5.10) and the /csourceSubscriptions listing.

This is the registry only: registrations are stored, retrieved, queried, updated and deleted, but
NO request is forwarded to a registered context source (distributed operations are out of scope),
and context source registration subscriptions cannot be created yet (the listing is always empty).
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
    resource_routes,
    services,
    tenant,
)
from cityos.ngsild.guard import allowed, hide, require
from cityos.ngsild.querying import page
from cityos.ngsild.subscriptions import page_response, wants_count
from cityos.policy.decision import Target
from cityos.query.entity_query import check_pattern
from cityos.registrations import expired, matches, merge_registration, parse_registration, render_registration
from cityos.store.base import RegistrationRow
from cityos.subscriptions.model import Doc

BASE = "/ngsi-ld/v1"
COLLECTION = BASE + "/csourceRegistrations"
SUBSCRIPTIONS = BASE + "/csourceSubscriptions"
QUERY_PARAMS = ("type", "id", "idPattern", "attrs", "limit", "offset", "count", "options")


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


async def create_registration(request: Request) -> Response:
    check_params(request, ())
    body, media = await read_payload(request)
    tenant_name = tenant(request)
    require(request, "administer", _target(tenant_name))
    context = await body_context(request, body, media, tenant_name=tenant_name)
    doc = parse_registration(body, context.terms, max_pattern_length=services(request).settings.max_pattern_length)
    if await _live(request, tenant_name, doc["id"]) is not None:
        raise AlreadyExists(f"context source registration {doc['id']} already exists")
    await services(request).store.save_registration(RegistrationRow(tenant_name, doc["id"], doc), create=True)
    location = quote(f"{COLLECTION}/{doc['id']}", safe="/:;=@!$&'()*+,~-._")
    return Response(status_code=201, headers={"Location": location})


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


async def query_registrations(request: Request) -> Response:
    check_params(request, QUERY_PARAMS)
    media = accept(request)
    tenant_name = await existing_tenant(request)
    require(request, "read", _target(tenant_name))
    limit, offset = page(request)
    counted = wants_count(request)
    context = await query_context(request, tenant_name)
    types, ids, id_pattern, attrs = _selection(request, context.terms)
    store = services(request).store
    found: list[Doc] = []
    for row in await store.list_registrations(tenant_name):
        if expired(row.document):
            await store.delete_registration(tenant_name, row.id)
        elif matches(row.document, types=types, ids=ids, id_pattern=id_pattern, attrs=attrs):
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
    )


async def update_registration(request: Request) -> Response:
    check_params(request, ())
    registration_id = _registration_id(request)
    body, media = await read_payload(request, merge_patch=True)
    tenant_name = await existing_tenant(request)
    current = await _require(request, tenant_name, registration_id)
    require(request, "administer", _target(tenant_name))
    context = await body_context(request, body, media, tenant_name=tenant_name)
    if isinstance(body, dict) and not (body.keys() - {"@context", "id", "type"}):
        raise BadRequestData("the fragment changes nothing")
    doc = merge_registration(
        current.document, body, context.terms, max_pattern_length=services(request).settings.max_pattern_length
    )
    await services(request).store.save_registration(RegistrationRow(tenant_name, registration_id, doc), create=False)
    return no_content()


async def delete_registration(request: Request) -> Response:
    check_params(request, ())
    registration_id = _registration_id(request)
    tenant_name = await existing_tenant(request)
    await _require(request, tenant_name, registration_id)
    require(request, "administer", _target(tenant_name))
    await services(request).store.delete_registration(tenant_name, registration_id)
    return no_content()


async def query_csource_subscriptions(request: Request) -> Response:
    """Listing only: context source registration subscriptions cannot be created yet."""
    check_params(request, ("limit", "offset", "count", "options"))
    media = accept(request)
    tenant_name = await existing_tenant(request)
    limit, offset = page(request)
    counted = wants_count(request)
    context = await query_context(request, tenant_name)
    return page_response(
        [],
        0,
        media=media,
        context=context,
        limit=limit,
        offset=offset,
        wants_count=counted,
        collection=SUBSCRIPTIONS,
    )


async def retrieve_csource_subscription(request: Request) -> Response:
    check_params(request, ())
    subscription_id = require_uri(request.path_params["subscription_id"], "subscription id")
    accept(request)
    await existing_tenant(request)
    raise ResourceNotFound(f"context source registration subscription {subscription_id} does not exist")


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
        Route(SUBSCRIPTIONS, query_csource_subscriptions, methods=["GET"]),
        Route(SUBSCRIPTIONS + "/", query_csource_subscriptions, methods=["GET"]),
        Route(SUBSCRIPTIONS + "/{subscription_id}", retrieve_csource_subscription, methods=["GET"]),
    ]
