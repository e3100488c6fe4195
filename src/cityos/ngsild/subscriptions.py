"""Handlers for /subscriptions (spec 5.8): parse the request, call subscriptions/, render."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.entities.values import require_uri
from cityos.errors import AlreadyExists, ResourceNotFound
from cityos.federation import loops
from cityos.federation.subscriptions import FederatedSubscriptions
from cityos.jsonld.registry import ResolvedContext
from cityos.jsonld.termmap import TermMap
from cityos.ngsild.common import (
    accept,
    body_context,
    check_params,
    existing_tenant,
    json_response,
    no_content,
    options,
    principal,
    query_context,
    read_payload,
    require_change,
    resource_routes,
    services,
    tenant,
)
from cityos.ngsild.guard import hide, require
from cityos.ngsild.querying import LINK_SAFE, page
from cityos.ops.declare import api
from cityos.policy.decision import Target
from cityos.query.entity_query import selector_predicate
from cityos.store.base import StoredContextRow
from cityos.subscriptions.delivery import check_endpoint
from cityos.subscriptions.model import (
    Doc,
    Subscription,
    ignored_members,
    merge_subscription,
    parse_subscription,
    render_subscription,
)
from cityos.subscriptions.owner import Owner, may_manage
from cityos.subscriptions.service import SubscriptionService

BASE = "/ngsi-ld/v1"
COLLECTION = BASE + "/subscriptions"

log = logging.getLogger("cityos.subscriptions")

LISTING_PARAMS = ("limit", "offset", "count", "options")  # of both subscription listings


def subscriptions(request: Request) -> SubscriptionService:
    result: SubscriptionService = request.app.state.subscriptions
    return result


def federated(request: Request) -> FederatedSubscriptions:
    found: FederatedSubscriptions = request.app.state.federated_subscriptions
    return found


def _subscription_id(request: Request) -> str:
    return require_uri(request.path_params["subscription_id"], "subscription id")


async def check_targets(request: Request, tenant_name: str, doc: Doc) -> None:
    """What a subscription points at must be usable now: its jsonldContext is fetched (504 when it
    cannot be), and its endpoint must be allowed by the outgoing-request policy."""
    if "jsonldContext" in doc:
        await services(request).contexts.resolve(tenant_name, doc["jsonldContext"])
    check_endpoint(doc["notification"]["endpoint"]["uri"], services(request).settings.allow_private_networks)


async def _implicit_context(request: Request, tenant_name: str, value: Any) -> str:
    """Host a @context that is not a single URL as an ImplicitlyCreated context (spec 5.13.2),
    so notifications can name it in one Link header; returns its URL."""
    registry = services(request).contexts
    stored = registry.add_hosted(tenant_name, {"@context": value}, kind="ImplicitlyCreated")
    row = StoredContextRow(tenant_name, stored.local_id, stored.kind, stored.document, stored.created_at)
    await services(request).store.save_context(row)
    return stored.url


def _check_subscribe(request: Request, tenant_name: str, doc: Doc) -> None:
    """Creating (or re-aiming) a subscription needs "subscribe" on what it watches: each entity
    selector's types and id, with the watched attributes (403 and nothing stored when refused)."""
    if principal(request).unrestricted:
        return
    attrs = tuple(doc.get("watchedAttributes", ()))
    selectors = doc.get("entities") or [None]
    for selector in selectors:
        types: tuple[str, ...] = ()
        entity_id = None
        if selector is not None:
            union, _ = selector_predicate([selector], lambda name: name)  # stored expanded
            types = tuple(union or ())
            entity_id = selector.get("id")
        # an entity target (no resource): subscribing is reading, later, the entities it selects
        target = Target(tenant=tenant_name, entity_id=entity_id, types=types, attrs=attrs)
        require(request, "subscribe", target)


def _owned(request: Request, service: SubscriptionService, tenant_name: str, subscription_id: str) -> Subscription:
    """The subscription if the caller may manage it; someone else's answers 404, as a missing one."""
    subscription = service.require(tenant_name, subscription_id)
    if not may_manage(principal(request), subscription.owner):
        missing = ResourceNotFound(f"subscription {subscription_id} does not exist")
        target = Target(tenant=tenant_name, resource="subscription")
        raise hide(request, f"{request.method} subscription", target, missing) from None
    return subscription


def _single_url(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and len(value) == 1 and isinstance(value[0], str))


@api("Create a subscription", body="Subscription", ok=201, returns=None, errors=(400, 409))
async def create_subscription(request: Request) -> Response:
    check_params(request, ())
    body, media = await read_payload(request)
    tenant_name = tenant(request)
    context = await body_context(request, body, media, tenant_name=tenant_name)
    doc = parse_subscription(body, context.terms, max_pattern_length=services(request).settings.max_pattern_length)
    _check_subscribe(request, tenant_name, doc)
    await check_targets(request, tenant_name, doc)
    service = subscriptions(request)
    if service.get(tenant_name, doc["id"]) is not None:
        raise AlreadyExists(f"subscription {doc['id']} already exists")
    if "jsonldContext" not in doc and not _single_url(context.value):
        doc["jsonldContext"] = await _implicit_context(request, tenant_name, context.value)
    owner = Owner.of(principal(request))
    made = Subscription(tenant_name, doc, context.value, owner=owner)
    via, me = request.headers.get("via"), request.headers.get("host") or f"{request.url.netloc}"
    loops.check(via, me)  # a copy this broker forwarded, come back round a cycle of registrations
    await service.create(made, context.terms)
    await federated(request).created(made, via=via, me=me)  # the copies at sources: in the background
    location = quote(f"{COLLECTION}/{doc['id']}", safe="/:;=@!$&'()*+,~-._")
    return Response(status_code=201, headers={"Location": location, **_ignored_warning(body, doc["id"])})


def _ignored_warning(body: Any, subscription_id: str) -> dict[str, str]:
    """Members 5.2.12 does not define are not stored (ETSI 5811_02_04); say so in a `Warning`
    header (RFC 7234, code 299) and the log rather than drop them without a word."""
    ignored = ignored_members(body)
    if not ignored:
        return {}
    names = ", ".join(ignored)
    log.info("subscription %s: ignored members not defined by NGSI-LD: %s", subscription_id, names)
    return {"Warning": f'299 cityos "ignored members not defined by NGSI-LD 5.2.12: {names}"'}


def preference_applied(request: Request) -> dict[str, str]:
    """RFC 7240 `Prefer: ngsi-ld=<version>` (any case, quoted or not, with parameters, in a list)."""
    for item in request.headers.get("prefer", "").split(","):
        name, _, value = item.split(";")[0].strip().partition("=")
        if name.strip().lower() == "ngsi-ld":
            version = value.strip().strip('"')
            if version.startswith("1."):
                return {"Preference-Applied": f"ngsi-ld={version}"}
    return {}


@api("Retrieve a subscription", returns="Subscription", errors=(400, 404))
async def retrieve_subscription(request: Request) -> Response:
    check_params(request, ())
    subscription_id = _subscription_id(request)
    media = accept(request)
    tenant_name = await existing_tenant(request)
    service = subscriptions(request)
    subscription = _owned(request, service, tenant_name, subscription_id)
    await service.settle(tenant_name, subscription_id)
    context = await query_context(request, tenant_name)
    body = render_subscription(subscription, context.terms, datetime.now(UTC))
    return json_response(body, media=media, context=context, headers=preference_applied(request))


@api("List subscriptions", query=LISTING_PARAMS, returns="SubscriptionList")
async def query_subscriptions(request: Request) -> Response:
    async def load(tenant_name: str) -> list[Subscription]:
        return subscriptions(request).listing(tenant_name)

    return await listing_response(request, load, render_subscription, COLLECTION)


async def listing_response(
    request: Request,
    load: Callable[[str], Awaitable[list[Subscription]]],
    render: Callable[[Subscription, TermMap, datetime], Doc],
    collection: str,
) -> Response:
    """GET of a subscription collection (entity or context source ones): the caller's own
    subscriptions of the tenant, one page, rendered with the request's @context."""
    check_params(request, LISTING_PARAMS)
    media = accept(request)
    tenant_name = await existing_tenant(request)
    limit, offset = page(request)
    counted = wants_count(request)
    context = await query_context(request, tenant_name)
    who = principal(request)
    everything = [s for s in await load(tenant_name) if may_manage(who, s.owner)]
    moment = datetime.now(UTC)
    body = [render(s, context.terms, moment) for s in everything[offset : offset + limit]]
    return page_response(
        body,
        len(everything),
        media=media,
        context=context,
        limit=limit,
        offset=offset,
        wants_count=counted,
        collection=collection,
        query=request.query_params.multi_items(),
    )


def wants_count(request: Request) -> bool:
    """`count=true` or `options=count` (the only option a catalogue listing takes)."""
    return "count" in options(request, ("count",)) or request.query_params.get("count") == "true"


def page_response(
    body: list[Any],
    total: int,
    *,
    media: str,
    context: ResolvedContext,
    limit: int,
    offset: int,
    wants_count: bool,
    collection: str,
    query: Sequence[tuple[str, str]] = (),
) -> Response:
    """One page of a catalogue listing (subscriptions, registrations): NGSILD-Results-Count when
    asked for, and prev/next Link headers that repeat the request's other parameters (`query`,
    in their order: the filters and count stay on every page)."""
    headers = {"NGSILD-Results-Count": str(total)} if wants_count else {}
    response = json_response(body, media=media, context=context, headers=headers)
    kept = "".join(f"{k}={quote(v, safe=LINK_SAFE)}&" for k, v in query if k not in ("limit", "offset"))
    if limit > 0:
        if offset > 0:
            response.headers.append("Link", _page_link(collection, kept, max(0, offset - limit), limit, "prev", media))
        if offset + limit < total:
            response.headers.append("Link", _page_link(collection, kept, offset + limit, limit, "next", media))
    return response


def _page_link(collection: str, kept: str, offset: int, limit: int, rel: str, media: str) -> str:
    return f'<{collection}?{kept}limit={limit}&offset={offset}>; rel="{rel}"; type="{media}"'


@api("Update a subscription", body="Object", ok=204, returns=None, errors=(400, 404))
async def update_subscription(request: Request) -> Response:
    check_params(request, ())
    subscription_id = _subscription_id(request)
    body, media = await read_payload(request, merge_patch=True)
    tenant_name = await existing_tenant(request)
    service = subscriptions(request)
    current = _owned(request, service, tenant_name, subscription_id)
    context = await body_context(request, body, media, tenant_name=tenant_name)
    require_change(body)
    doc = merge_subscription(
        current.doc, body, context.terms, max_pattern_length=services(request).settings.max_pattern_length
    )
    if doc.get("entities") != current.doc.get("entities") or doc.get("watchedAttributes") != current.doc.get(
        "watchedAttributes"
    ):
        _check_subscribe(request, tenant_name, doc)
    await check_targets(request, tenant_name, doc)
    updated = Subscription(tenant_name, doc, current.context, current.delivery, _renewed(request, current))
    await service.update(updated)
    await federated(request).updated(current, updated)
    response = no_content()
    response.headers.update(_ignored_warning(body, subscription_id))
    return response


def _renewed(request: Request, current: Subscription) -> Owner | None:
    """An owner judged on stored attributes (subscriptions/owner.py SNAPSHOT_KINDS) who updates
    their subscription stores the attributes of the token they update it with."""
    owner, caller = current.owner, principal(request)
    if owner is not None and owner.snapshot is not None and owner.id == caller.id:
        return Owner.of(caller)
    return owner


@api("Delete a subscription", ok=204, returns=None, errors=(400, 404))
async def delete_subscription(request: Request) -> Response:
    check_params(request, ())
    subscription_id = _subscription_id(request)
    tenant_name = await existing_tenant(request)
    service = subscriptions(request)
    current = _owned(request, service, tenant_name, subscription_id)
    await service.delete(tenant_name, subscription_id)
    await federated(request).deleted(current)  # the copies' deletes go out in the background
    return no_content()


def routes() -> list[Route]:
    return resource_routes(
        COLLECTION,
        "subscription_id",
        create=create_subscription,
        query=query_subscriptions,
        retrieve=retrieve_subscription,
        update=update_subscription,
        delete=delete_subscription,
    )
