"""Handlers for /snapshots (spec 6.36-6.38) and the NGSILD-Snapshot header (6.3.22).

A snapshot belongs to the principal that made it, as an entity map does: another principal's
snapshot does not exist for the caller (404). The access policies see it as the resource
"snapshot" of its tenant, as registrations are (ngsild/guard.py): `read` to retrieve, list or use
one, `administer` to create, clone, update, delete or purge. Its entities are those its maker could
read when it was made (the fill runs under the maker's read view), and reading them is judged again
by the entity policies of the tenant it was made in (ngsild/access.view maps the hidden tenant back)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cityos.entities.model import parse_entity
from cityos.entities.values import MAX_SAFE_INTEGER, now, require_uri
from cityos.errors import (
    AlreadyExists,
    BadRequestData,
    Conflict,
    NgsiLdError,
    OperationNotSupported,
    ResourceNotFound,
    TooManyResults,
)
from cityos.jsonld.registry import ResolvedContext
from cityos.net import OutboundPolicy
from cityos.ngsild import access
from cityos.ngsild.common import (
    accept,
    body_context,
    check_params,
    json_response,
    link_context,
    link_header,
    no_content,
    principal,
    query_context,
    read_payload,
    services,
    tenant,
)
from cityos.ngsild.guard import hide, require
from cityos.ops.declare import api
from cityos.policy.decision import Action, Target
from cityos.query.entity_query import QuerySpec, build_entity_query
from cityos.snapshots import fill, history, lifecycle, model
from cityos.snapshots.remote import ask_sources
from cityos.snapshots.scope import HEADER, SCOPE_KEY, SnapshotScope, new_hidden_tenant
from cityos.store.base import EntityStore
from cityos.store.snapshot_base import SnapshotRow
from cityos.tasks import stop_tasks

log = logging.getLogger("cityos.snapshots")
BASE = "/ngsi-ld/v1"
RESOURCE = "snapshot"
HEADER_KEY = HEADER.lower().encode()
TOUCH_SECONDS = 60.0  # lastUsedAt is rewritten at most this often (a read is not a write each time)
# what a request with NGSILD-Snapshot may do: the retrievals and queries of current entities
# and the temporal ones, which read the history the snapshot's snapshotTemporalQueries froze
SCOPED = (
    ("GET", BASE + "/entities"),
    ("GET", BASE + "/types"),
    ("GET", BASE + "/attributes"),
    ("GET", BASE + "/temporal/entities"),
)
SCOPED_POST = (BASE + "/entityOperations/query", BASE + "/temporal/entityOperations/query")


class SnapshotFills:
    """The fills and clones running in the background, stopped before the store closes."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, work: Awaitable[object]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def wait(self) -> None:
        """Until every fill started so far has ended (tests, and a clean stop)."""
        while self.tasks:
            await asyncio.wait(set(self.tasks))

    async def stop(self) -> None:
        await stop_tasks(list(self.tasks))


# query parameters each handler accepts (checked by it, described by ops/openapi.py)
QUERY_SNAPSHOTS_PARAMS = ("q", "limit", "offset", "count")
PURGE_SNAPSHOTS_PARAMS = ("q",)


def _fills(request: Request) -> SnapshotFills:
    fills: SnapshotFills = request.scope["app"].state.snapshot_fills
    return fills


def _target(tenant_name: str) -> Target:
    return Target(tenant=tenant_name, resource=RESOURCE)


def _missing(snapshot_id: str) -> ResourceNotFound:
    return ResourceNotFound(f"snapshot {snapshot_id} does not exist")


async def _mine(request: Request, tenant_name: str, snapshot_id: str, action: Action) -> SnapshotRow:
    """The snapshot if the caller may `action` ("read" or "administer") it: it is its maker's or an
    admin's, and the policies allow `read` on snapshots (else 404, as if it did not exist) and
    `action` (else 403)."""
    row = await services(request).store.get_snapshot(tenant_name, snapshot_id)
    if row is None:
        raise _missing(snapshot_id)
    if lifecycle.expired(row.document, services(request).settings.snapshot_max_lifetime, time.time()):
        _fills(request).start(lifecycle.evict(services(request).store, row))  # its data goes in the background
        raise _missing(snapshot_id)
    if not principal(request).may_manage(row.document.get(model.OWNER)):
        raise hide(request, f"{action} snapshot", _target(tenant_name), _missing(snapshot_id))
    require(request, "read", _target(tenant_name), hidden=_missing(snapshot_id))
    if action != "read":
        require(request, action, _target(tenant_name))
    return row


def _snapshot_id(request: Request) -> str:
    return require_uri(request.path_params["snapshot_id"], "snapshot id")


def _location(snapshot_id: str) -> dict[str, str]:
    return {"Location": f"{BASE}/snapshots/" + quote(snapshot_id, safe=":;=@!$&'()*+,~-._")}


def _render(request: Request, document: dict[str, Any]) -> dict[str, Any]:
    return model.render(document, lifecycle.expires_at(document, services(request).settings.snapshot_max_lifetime))


async def _too_many(request: Request, tenant_name: str, plans: list[fill.Plan]) -> None:
    """Refuse before anything is made a query that alone selects more local entities than one
    snapshot may hold (403 TooManyResults); a union that grows too large with the context sources'
    entities still ends the fill as failure, with nothing kept."""
    limit = services(request).settings.snapshot_max_entities
    store = services(request).store
    for number, plan in enumerate(plans):
        counted = await store.query_entities(tenant_name, replace(plan.query, limit=0, offset=0, count=True))
        if (counted.total or 0) > limit:
            raise TooManyResults(
                f"snapshotQueries[{number}] selects {counted.total} entities; a snapshot holds at most {limit}"
                " (snapshot_max_entities)"
            )


def _plan(request: Request, tenant_name: str, context: ResolvedContext, raw: dict[str, Any]) -> fill.Plan:
    """A snapshot query compiled as POST /entityOperations/query compiles its body, with the
    caller's access policies applied: invalid q, geoQ or selectors are refused before anything is made."""
    geo = None
    if raw.get("geoQ") is not None:
        from cityos.query.geo import parse_geoq

        geo = parse_geoq(raw["geoQ"])
    spec = QuerySpec(
        attrs=raw.get("attrs"),
        q=raw.get("q"),
        scope_q=raw.get("scopeQ"),
        geo=geo,
        selectors=raw.get("entities"),
        max_pattern_length=services(request).settings.max_pattern_length,
    )
    read = access.view(request, tenant_name)
    query = access.restrict(build_entity_query(spec, context.terms.expand), read)
    return fill.Plan(raw, query, read, lambda item: parse_entity(item, context.terms, stamp=now()))


def _temporal_plan(
    request: Request, tenant_name: str, context: ResolvedContext, raw: dict[str, Any]
) -> history.TemporalPlan:
    """A snapshot temporal query compiled as the temporal API compiles one, under the caller's access."""
    geo = None
    if raw.get("geoQ") is not None:
        from cityos.query.geo import parse_geoq

        geo = parse_geoq(raw["geoQ"])
    query = history.compile_query(raw, context.terms.expand, geo, services(request).settings.max_pattern_length)
    return history.TemporalPlan(query, access.temporal_read(request, tenant_name, query))


def _sources(request: Request, tenant_name: str, context: ResolvedContext) -> fill.Sources:
    settings = services(request).settings
    store = services(request).store
    policy = OutboundPolicy(
        allow_private_networks=settings.allow_private_networks,
        timeout=settings.notification_timeout,
        max_bytes=settings.notification_max_bytes,
    )
    link = link_context(request)

    async def ask(raw: dict[str, Any]) -> list[dict[str, Any]]:
        registrations = await store.list_registrations(tenant_name)
        return await ask_sources(registrations, raw, context.terms.expand, policy, link and link_header(link))

    return ask


async def _finish(
    store: EntityStore,
    row: SnapshotRow,
    status: str,
    details: list[dict[str, Any]],
    past: list[dict[str, Any]] | None = None,
) -> None:
    """Record how a fill or clone ended; if the snapshot was deleted meanwhile, its entities go too."""
    current = await store.get_snapshot(row.tenant, row.id)
    if current is not None:
        document = {
            **current.document,
            "snapshotStatus": status,
            "snapshotQueriesDetails": details,
            "modifiedAt": now(),
        }
        if past is not None and "snapshotTemporalQueries" in current.document:
            document["snapshotTemporalQueriesDetails"] = past
        await store.save_snapshot(SnapshotRow(row.tenant, row.id, document), create=False)
    if current is None or await store.get_snapshot(row.tenant, row.id) is None:
        await fill.drop(store, row.document[model.HIDDEN])


async def _failed(store: EntityStore, row: SnapshotRow, exc: Exception) -> None:
    if not isinstance(exc, fill.TooLarge):
        log.exception("snapshot %s of tenant %r failed", row.id, row.tenant, exc_info=exc)
    await fill.drop(store, row.document[model.HIDDEN])  # nothing half-made stays
    detail = str(exc) if isinstance(exc, fill.TooLarge) else "the snapshot could not be made"
    failed = {"resultStatus": model.FAILURE, "detail": detail}
    document = row.document
    details = [failed] * len(document.get("snapshotQueries") or [])
    past = [failed] * len(document.get("snapshotTemporalQueries") or [])
    await _finish(store, row, model.FAILURE, details, past)


async def _run_fill(
    store: EntityStore,
    row: SnapshotRow,
    plans: tuple[list[fill.Plan], list[history.TemporalPlan]],
    sources: fill.Sources,
    max_entities: int,
    beat_seconds: float,
) -> None:
    hidden = row.document[model.HIDDEN]
    beat = lifecycle.Beat(store, row, beat_seconds)  # a fill whose process stops is found by its silence
    try:
        status, details, past = await fill.fill(store, row.tenant, hidden, plans[0], sources, max_entities, plans[1])
    except Exception as exc:  # a background task: its end is recorded in the snapshot, never lost
        await beat.stop()
        await _failed(store, row, exc)
        return
    finally:
        await beat.stop()
    await _finish(store, row, status, details, past)


async def _run_clone(
    store: EntityStore, row: SnapshotRow, original: dict[str, Any], max_entities: int, beat_seconds: float
) -> None:
    beat = lifecycle.Beat(store, row, beat_seconds)
    try:
        await fill.copy(store, original[model.HIDDEN], row.document[model.HIDDEN], max_entities)
    except Exception as exc:
        await beat.stop()
        await _failed(store, row, exc)
        return
    finally:
        await beat.stop()
    details, past = original.get("snapshotQueriesDetails", []), original.get("snapshotTemporalQueriesDetails")
    await _finish(store, row, original["snapshotStatus"], details, past)


@api("Make a snapshot of the entities queries select", body="Object", ok=201, returns="Any")
async def create_snapshot(request: Request) -> Response:
    """POST /snapshots (5.16.1): 201 at once; the queries run in the background (preparing)."""
    check_params(request, ())
    body, media = await read_payload(request)
    tenant_name = tenant(request)
    require(request, "administer", _target(tenant_name))
    snapshot_id, queries, temporal_queries, priority = model.parse_create(body)
    settings = services(request).settings
    lifetime = lifecycle.lifetime_members(body, settings.snapshot_max_lifetime, time.time())
    context = await body_context(request, body, media, tenant_name=tenant_name)
    plans = [_plan(request, tenant_name, context, raw) for raw in queries]
    temporal = [_temporal_plan(request, tenant_name, context, raw) for raw in temporal_queries]
    store = services(request).store
    if await store.get_snapshot(tenant_name, snapshot_id) is not None:  # before anything is evicted for it
        raise AlreadyExists(f"snapshot {snapshot_id} already exists")
    await _too_many(request, tenant_name, plans)
    await lifecycle.make_room(store, settings, tenant_name, priority)
    stamp = now()
    owner = principal(request).owner_id
    hidden = new_hidden_tenant(tenant_name)
    document = model.new_document(snapshot_id, queries, priority, stamp, hidden, owner, temporal_queries)
    row = SnapshotRow(tenant_name, snapshot_id, lifecycle.with_members(document, lifetime))
    await store.save_snapshot(row, create=True)
    sources = _sources(request, tenant_name, context)
    max_entities, beat = settings.snapshot_max_entities, settings.snapshot_fill_beat
    work = _run_fill(store, row, (plans, temporal), sources, max_entities, beat)
    _fills(request).start(work)
    return Response(status_code=201, headers=_location(snapshot_id))


@api("Clone a snapshot", body="Object", body_required=False, ok=201, returns="Any", errors=(400, 404))
async def clone_snapshot(request: Request) -> Response:
    """POST /snapshots/{id}/clone (5.16.2): a new snapshot with a copy of the original's entities."""
    check_params(request, ())
    body, _ = await read_payload(request)
    tenant_name = tenant(request)
    original = (await _mine(request, tenant_name, _snapshot_id(request), "administer")).document
    snapshot_id, priority = model.parse_clone(body, original)
    settings = services(request).settings
    # the clone keeps the original's lifetime unless the body gives its own
    inherited = {name: original.get(name) for name in ("snapshotLifetime", model.UNTIL)}
    lifetime = {**inherited, **lifecycle.lifetime_members(body, settings.snapshot_max_lifetime, time.time())}
    if original["snapshotStatus"] == model.PREPARING:
        raise Conflict("the snapshot is still being prepared; clone it once its snapshotStatus has changed")
    store = services(request).store
    if await store.get_snapshot(tenant_name, snapshot_id) is not None:
        raise AlreadyExists(f"snapshot {snapshot_id} already exists")
    await lifecycle.make_room(store, settings, tenant_name, priority)
    owner = principal(request).owner_id
    queries, past = original.get("snapshotQueries", []), original.get("snapshotTemporalQueries")
    hidden = new_hidden_tenant(tenant_name)
    document = model.new_document(snapshot_id, queries, priority, now(), hidden, owner, past)
    row = SnapshotRow(tenant_name, snapshot_id, lifecycle.with_members(document, lifetime))
    await store.save_snapshot(row, create=True)
    work = _run_clone(store, row, original, settings.snapshot_max_entities, settings.snapshot_fill_beat)
    _fills(request).start(work)
    return Response(status_code=201, headers=_location(snapshot_id))


@api("Retrieve a snapshot and its status", returns="Object", errors=(400, 404))
async def retrieve_snapshot(request: Request) -> Response:
    """GET /snapshots/{id} (5.16.3): the snapshot and its status."""
    check_params(request, ())
    media = accept(request)
    tenant_name = tenant(request)
    row = await _mine(request, tenant_name, _snapshot_id(request), "read")
    return json_response(_render(request, row.document), media=media, context=await query_context(request, tenant_name))


def _page(request: Request) -> tuple[int, int]:
    settings = services(request).settings
    try:
        limit = int(request.query_params.get("limit", settings.default_page_size))
        offset = int(request.query_params.get("offset", 0))
    except ValueError as exc:
        raise BadRequestData("limit and offset must be integers") from exc
    if not 0 <= limit <= settings.max_page_size or not 0 <= offset <= MAX_SAFE_INTEGER:
        raise BadRequestData(f"limit must be from 0 to {settings.max_page_size} and offset not negative")
    return limit, offset


async def _selected(request: Request, tenant_name: str, q: str | None, action: Action) -> list[SnapshotRow]:
    """The caller's snapshots that q (Snapshot members only, 5.16.7.4) selects; every one without q."""
    test = None if q is None else model.purge_filter(q, services(request).settings.max_pattern_length)
    require(request, action, _target(tenant_name))
    who = principal(request)
    max_lifetime, moment = services(request).settings.snapshot_max_lifetime, time.time()
    return [
        row
        for row in await services(request).store.list_snapshots(tenant_name)
        if who.may_manage(row.document.get(model.OWNER))
        and not lifecycle.expired(row.document, max_lifetime, moment)  # gone; the sweep removes it
        and (test is None or test(row.document))
    ]


@api("List the caller's snapshots", query=QUERY_SNAPSHOTS_PARAMS, returns="ObjectList")
async def query_snapshots(request: Request) -> Response:
    """GET /snapshots: the tenant's snapshots (the caller's), optionally filtered by q, paged."""
    check_params(request, QUERY_SNAPSHOTS_PARAMS)
    media = accept(request)
    tenant_name = tenant(request)
    limit, offset = _page(request)
    rows = await _selected(request, tenant_name, request.query_params.get("q"), "read")
    headers = {"NGSILD-Results-Count": str(len(rows))} if request.query_params.get("count") == "true" else {}
    body = [_render(request, row.document) for row in rows[offset : offset + limit]]
    context = await query_context(request, tenant_name)
    return json_response(body, media=media, context=context, headers=headers)


@api("Change a snapshot's priority", body="Object", returns="Object", errors=(400, 404))
async def update_snapshot(request: Request) -> Response:
    """PATCH /snapshots/{id} (5.16.4): only snapshotPriority changes; 200 with the snapshot."""
    check_params(request, ())
    media = accept(request)
    body, _ = await read_payload(request, merge_patch=True)
    tenant_name = tenant(request)
    priority = model.parse_update(body)
    settings = services(request).settings
    lifetime = lifecycle.lifetime_members(body, settings.snapshot_max_lifetime, time.time())
    row = await _mine(request, tenant_name, _snapshot_id(request), "administer")
    document = lifecycle.with_members({**row.document, "modifiedAt": now()}, lifetime)
    if priority is not None:
        document["snapshotPriority"] = priority
    await services(request).store.save_snapshot(SnapshotRow(tenant_name, row.id, document), create=False)
    return json_response(_render(request, document), media=media, context=await query_context(request, tenant_name))


async def _delete(store: EntityStore, row: SnapshotRow) -> None:
    await lifecycle.evict(store, row)


@api("Delete a snapshot and its entities", ok=204, returns=None, errors=(400, 404))
async def delete_snapshot(request: Request) -> Response:
    """DELETE /snapshots/{id} (5.16.5): the snapshot and its entities."""
    check_params(request, ())
    tenant_name = tenant(request)
    row = await _mine(request, tenant_name, _snapshot_id(request), "administer")
    await _delete(services(request).store, row)
    return no_content()


@api("Delete the caller's snapshots q selects", query=PURGE_SNAPSHOTS_PARAMS, ok=204, returns=None)
async def purge_snapshots(request: Request) -> Response:
    """DELETE /snapshots?q= (5.16.7): the caller's snapshots whose own members match q."""
    check_params(request, PURGE_SNAPSHOTS_PARAMS)
    tenant_name = tenant(request)
    q = request.query_params.get("q")
    if q is None:
        raise BadRequestData("a snapshot purge needs q")
    for row in await _selected(request, tenant_name, q, "administer"):
        await _delete(services(request).store, row)
    return no_content()


# -- NGSILD-Snapshot (6.3.22) ------------------------------------------------------------------------
def _scoped_operation(method: str, path: str) -> bool:
    if method == "POST":
        return path.rstrip("/") in SCOPED_POST
    return any(method == m and (path == p or path.startswith(p + "/")) for m, p in SCOPED)


async def resolve(request: Request, value: str) -> SnapshotScope:
    """The snapshot a request names, checked as a read of it; its lastUsedAt moves (5.2.41)."""
    if not _scoped_operation(request.method, request.url.path):
        raise OperationNotSupported(f"{HEADER} is supported on entity retrievals and queries only")
    owner = tenant(request)
    snapshot_id = value.strip()
    if not snapshot_id:
        raise BadRequestData(f"{HEADER} must name a snapshot")
    require_uri(snapshot_id, HEADER)
    row = await _mine(request, owner, snapshot_id, "read")
    used = row.document.get("lastUsedAt")
    stamp = now()
    if not isinstance(used, str) or _seconds_between(used, stamp) >= TOUCH_SECONDS:
        document = {**row.document, "lastUsedAt": stamp}
        await services(request).store.save_snapshot(SnapshotRow(owner, snapshot_id, document), create=False)
    return SnapshotScope(owner, snapshot_id, row.document[model.HIDDEN])


def _seconds_between(earlier: str, later: str) -> float:
    try:
        start = datetime.fromisoformat(earlier.replace("Z", "+00:00"))
        end = datetime.fromisoformat(later.replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    return (end.astimezone(UTC) - start.astimezone(UTC)).total_seconds()


ErrorAnswer = Callable[[Request, Exception], Awaitable[Response]]


class SnapshotHeader:
    """ASGI middleware: a request with NGSILD-Snapshot is served from the snapshot's hidden tenant
    (ngsild/common.tenant reads the scope this sets) and its answer echoes the header (6.3.22).
    It runs inside authentication, so the snapshot is looked up as the caller. A gate:
    app.ProtocolGuard leaves it out of the chain of a request without the header."""

    GATE = HEADER_KEY

    def __init__(self, app: ASGIApp, *, answer: ErrorAnswer) -> None:
        self.app = app
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope["headers"] if k == HEADER_KEY), None)
        if raw is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            scope[SCOPE_KEY] = await resolve(request, raw.decode("latin-1"))
        except NgsiLdError as exc:
            response = await self.answer(request, exc)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, functools.partial(_echo, send, raw))


async def _echo(send: Send, value: bytes, message: Message) -> None:
    if message["type"] == "http.response.start":
        message = {**message, "headers": [*message.get("headers", []), (HEADER_KEY, value)]}
    await send(message)


def routes() -> list[Route]:
    collection = BASE + "/snapshots"
    one = collection + "/{snapshot_id}"
    return [
        Route(collection, create_snapshot, methods=["POST"]),
        Route(collection, query_snapshots, methods=["GET"]),
        Route(collection, purge_snapshots, methods=["DELETE"]),
        Route(one, retrieve_snapshot, methods=["GET"]),
        Route(one, update_snapshot, methods=["PATCH"]),
        Route(one, delete_snapshot, methods=["DELETE"]),
        Route(one + "/clone", clone_snapshot, methods=["POST"]),
    ]
