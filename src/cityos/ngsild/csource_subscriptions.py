"""Handlers for /csourceSubscriptions (spec 5.11): context source registration subscriptions,
created, retrieved, queried, updated and deleted as entity subscriptions are (the same body
checks, endpoint policy and owner rules), run by registrations/subscriptions.py."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.entities.values import require_uri
from cityos.errors import ResourceNotFound
from cityos.ngsild.common import (
    accept,
    body_context,
    check_params,
    existing_tenant,
    json_response,
    no_content,
    principal,
    query_context,
    read_payload,
    require_change,
    resource_routes,
    services,
    tenant,
)
from cityos.ngsild.guard import require
from cityos.ngsild.registrations import csource
from cityos.ngsild.subscriptions import LISTING_PARAMS, check_targets, listing_response, preference_applied
from cityos.ops.declare import api
from cityos.policy.decision import Target
from cityos.registrations.subscriptions import (
    CSOURCE,
    merge_csource_subscription,
    parse_csource_subscription,
    registration_filter,
    render_csource_subscription,
)
from cityos.subscriptions.model import Subscription
from cityos.subscriptions.owner import Owner, may_manage

COLLECTION = "/ngsi-ld/v1/csourceSubscriptions"


def _target(tenant_name: str) -> Target:
    return Target(tenant=tenant_name, resource="registration")


async def _owned(request: Request, tenant_name: str) -> Subscription:
    """The subscription if it exists and the caller may manage it (404 otherwise)."""
    subscription_id = require_uri(request.path_params["subscription_id"], "subscription id")
    subscription = await csource(request).get(tenant_name, subscription_id)
    if subscription is None or not may_manage(principal(request), subscription.owner):
        raise ResourceNotFound(f"context source registration subscription {subscription_id} does not exist")
    return subscription


@api("Create a context source subscription", body="Subscription", ok=201, returns=None, errors=(400, 409))
async def create_csource_subscription(request: Request) -> Response:
    check_params(request, ())
    body, media = await read_payload(request)
    tenant_name = tenant(request)
    require(request, "read", _target(tenant_name))
    context = await body_context(request, body, media, tenant_name=tenant_name)
    max_length = services(request).settings.max_pattern_length
    doc = parse_csource_subscription(body, context.terms, max_pattern_length=max_length)
    registration_filter(doc).compile(context.terms, max_length)  # refuses what cannot be evaluated
    await check_targets(request, tenant_name, doc)
    owner = Owner.of(principal(request))
    subscription = Subscription(tenant_name, doc, context.value, owner=owner, kind=CSOURCE)
    await csource(request).save(subscription)  # AlreadyExists (409) if the id is taken
    location = quote(f"{COLLECTION}/{doc['id']}", safe="/:;=@!$&'()*+,~-._")
    return Response(status_code=201, headers={"Location": location})


@api("Retrieve a context source subscription", returns="Subscription", errors=(400, 404))
async def retrieve_csource_subscription(request: Request) -> Response:
    check_params(request, ())
    media = accept(request)
    tenant_name = await existing_tenant(request)
    subscription = await _owned(request, tenant_name)
    context = await query_context(request, tenant_name)
    body = render_csource_subscription(subscription, context.terms, datetime.now(UTC))
    return json_response(body, media=media, context=context, headers=preference_applied(request))


@api("List context source subscriptions", query=LISTING_PARAMS, returns="SubscriptionList")
async def query_csource_subscriptions(request: Request) -> Response:
    return await listing_response(request, csource(request).listing, render_csource_subscription, COLLECTION)


@api("Update a context source subscription", body="Object", ok=204, returns=None, errors=(400, 404))
async def update_csource_subscription(request: Request) -> Response:
    check_params(request, ())
    body, media = await read_payload(request, merge_patch=True)
    tenant_name = await existing_tenant(request)
    current = await _owned(request, tenant_name)
    context = await body_context(request, body, media, tenant_name=tenant_name)
    require_change(body)
    max_length = services(request).settings.max_pattern_length
    doc = merge_csource_subscription(current.doc, body, context.terms, max_pattern_length=max_length)
    registration_filter(doc).compile(context.terms, max_length)
    await check_targets(request, tenant_name, doc)
    updated = dataclasses.replace(current, doc=doc)  # an internal one keeps what it forwarded
    await csource(request).save(updated, before=current)
    return no_content()


@api("Delete a context source subscription", ok=204, returns=None, errors=(400, 404))
async def delete_csource_subscription(request: Request) -> Response:
    check_params(request, ())
    tenant_name = await existing_tenant(request)
    current = await _owned(request, tenant_name)
    await csource(request).delete(tenant_name, current.id)
    return no_content()


def routes() -> list[Route]:
    return resource_routes(
        COLLECTION,
        "subscription_id",
        create=create_csource_subscription,
        query=query_csource_subscriptions,
        retrieve=retrieve_csource_subscription,
        update=update_csource_subscription,
        delete=delete_csource_subscription,
    )
