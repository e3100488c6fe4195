"""Handlers for /entityOperations: batch create, upsert, update, merge and delete.

Each entity of a batch stands alone: its own validation, its own @context, its own savepoint in the
store. Failures are reported per entity (207) and never roll back the others; a malformed request
as a whole (not an array, an empty array, a null item) is refused before anything is written.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.entities import update
from cityos.entities.model import parse_entity, parse_fragment
from cityos.entities.values import now, require_uri
from cityos.errors import BadRequestData, NgsiLdError
from cityos.ngsild import access, forwarding
from cityos.ngsild.common import (
    body_context,
    check_params,
    existing_tenant,
    json_response,
    link_context,
    no_content,
    options,
    read_payload,
    services,
    tenant,
)
from cityos.ngsild.negotiation import JSON_LD
from cityos.ngsild.querying import query_post
from cityos.ops.declare import api
from cityos.serving import collector

BASE = "/ngsi-ld/v1/entityOperations"


class BatchReport:
    """The per-entity outcome of a batch; an id named twice is reported once, in first order (the
    sets keep that check constant-time: a list scan made a 1,000-entity batch quadratic)."""

    def __init__(self) -> None:
        self.success: list[str] = []
        self.errors: list[dict[str, Any]] = []
        self.created: list[str] = []
        self.partial = False
        self.forwarded: set[str] = set()  # ids a context source took: attributes it updated count as updated
        self._succeeded: set[str] = set()
        self._created: set[str] = set()

    def fail(self, entity_id: Any, error: NgsiLdError) -> None:
        self.errors.append({"entityId": entity_id if isinstance(entity_id, str) else "", "error": error.problem()})

    def succeed(self, entity_id: str) -> None:
        if entity_id not in self._succeeded:
            self._succeeded.add(entity_id)
            self.success.append(entity_id)

    def create(self, entity_id: str) -> None:
        if entity_id not in self._created:
            self._created.add(entity_id)
            self.created.append(entity_id)

    def body(self) -> dict[str, Any]:
        return {"success": self.success, "errors": self.errors}


def _collected_less(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A batch handler run with the garbage collector's young collections deferred: a batch holds
    tens of thousands of acyclic objects alive until it is answered, which each collection would
    walk for nothing (serving/collector.py `deferred`)."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        with collector.deferred():
            return await handler(request)

    return run


# query parameters each handler accepts (checked by it, described by ops/openapi.py)
BATCH_CREATE_PARAMS = ("local",)
BATCH_UPSERT_PARAMS = ("options", "local")
BATCH_UPDATE_PARAMS = ("options", "local")
BATCH_MERGE_PARAMS = ("options", "local", "format")
BATCH_DELETE_PARAMS = ("local",)


async def _entities(request: Request) -> tuple[list[Any], str]:
    body, media = await read_payload(request, merge_patch=False)
    if media == JSON_LD and link_context(request) is not None:
        raise BadRequestData("a Link header @context is not allowed with Content-Type application/ld+json")
    if not isinstance(body, list):
        raise BadRequestData("a batch operation needs a JSON array")
    if not body:
        raise BadRequestData("the batch is empty")
    if any(item is None for item in body):
        raise BadRequestData("the batch contains a null item")
    limit = services(request).settings.max_batch_size
    if len(body) > limit:
        raise BadRequestData(
            f"the batch has {len(body)} entities, more than the maximum {limit}: send it in smaller batches "
            "or raise --max-batch-size (CITYOS_MAX_BATCH_SIZE)"
        )
    return body, media


async def _run(
    request: Request, tenant_name: str, planned: list[tuple[str, update.Mutator]], report: BatchReport
) -> None:
    if not planned:
        return
    results = await services(request).store.mutate(
        tenant_name, access.guard_all(request, tenant_name, planned), atomic=False
    )
    refused = [r for r in results if isinstance(r.error, access.DENIED)]
    if refused:  # one audit record for the entities of the batch the policies refused
        await access.denied(request, tenant_name, [r.entity_id for r in refused], refused[0].error)  # type: ignore[arg-type]
    for result in results:
        if result.error is not None:
            report.fail(result.entity_id, result.error)
            continue
        outcome = result.outcome
        assert outcome is not None
        report.succeed(result.entity_id)
        if outcome.created:
            report.create(result.entity_id)
        if outcome.not_updated and result.entity_id not in report.forwarded:
            report.partial = True


async def _prepare(
    request: Request, items: list[Any], media: str, tenant_name: str, report: BatchReport, build: Any
) -> list[tuple[str, update.Mutator]]:
    """Validate each entity with its own @context; invalid ones become error entries. The registry
    caches compiled contexts and recent failures, so a context shared by the entities is fetched
    once, and the whole batch gets one budget for fetching (context_request_budget)."""
    planned: list[tuple[str, update.Mutator]] = []
    deadline = services(request).contexts.deadline()
    for item in items:
        entity_id = item.get("id", item.get("@id")) if isinstance(item, dict) else None
        try:
            context = await body_context(request, item, media, tenant_name=tenant_name, deadline=deadline)
            planned.append(build(item, context))
        except NgsiLdError as error:
            report.fail(entity_id, error)
    return planned


async def _forward(
    request: Request, tenant_name: str, kind: str, items: list[Any], media: str, report: BatchReport
) -> list[Any]:
    """Send the parts registered context sources take (spec 4.3.6, D.4); the rest stays local."""

    async def context_of(item: Any) -> Any:
        return await body_context(request, item, media, tenant_name=tenant_name)

    local, errors, taken, report.forwarded = await forwarding.batch(request, tenant_name, kind, items, context_of)
    report.errors.extend(errors)
    failed = {e["entityId"] for e in errors}
    for entity_id in taken:
        if entity_id not in failed:
            report.succeed(entity_id)
    return local


def _finish(report: BatchReport, *, success_status: int, body_on_success: Any = None) -> Response:
    if report.errors or report.partial:
        return json_response(report.body(), status=207)
    if success_status == 204 or body_on_success is None:
        return no_content()
    return json_response(body_on_success, status=success_status)


@api(
    "Create entities (batch)",
    query=BATCH_CREATE_PARAMS,
    body="EntityBatch",
    ok=201,
    returns="Created",
    more={207: "BatchResult"},
)
@_collected_less
async def batch_create(request: Request) -> Response:
    check_params(request, BATCH_CREATE_PARAMS)
    items, media = await _entities(request)
    tenant_name = tenant(request)
    report = BatchReport()
    stamp = now()
    items = await _forward(request, tenant_name, "create", items, media, report)

    def build(item: Any, context: Any) -> tuple[str, update.Mutator]:
        entity = parse_entity(item, context.terms, stamp=stamp)
        return entity["id"], update.create(entity)

    await _run(request, tenant_name, await _prepare(request, items, media, tenant_name, report, build), report)
    return _finish(report, success_status=201, body_on_success=report.success)


@api(
    "Create or replace entities (batch)",
    query=BATCH_UPSERT_PARAMS,
    body="EntityBatch",
    ok=201,
    returns="Created",
    more={204: None, 207: "BatchResult"},
)
@_collected_less
async def batch_upsert(request: Request) -> Response:
    check_params(request, BATCH_UPSERT_PARAMS)
    chosen = options(request, ("replace", "update"))
    if len(chosen) > 1:
        raise BadRequestData("options must be replace or update, not both")
    mode = "update" if "update" in chosen else "replace"
    items, media = await _entities(request)
    tenant_name = tenant(request)
    report = BatchReport()
    stamp = now()
    items = await _forward(request, tenant_name, "upsert", items, media, report)

    def build(item: Any, context: Any) -> tuple[str, update.Mutator]:
        entity = parse_entity(item, context.terms, stamp=stamp)
        return entity["id"], update.upsert(entity, mode=mode)

    await _run(request, tenant_name, await _prepare(request, items, media, tenant_name, report, build), report)
    if report.errors:
        return json_response(report.body(), status=207)
    if report.created:
        return json_response(report.created, status=201)
    return no_content()


async def _fragment_batch(request: Request, nulls: str, mutator: Any, kind: str) -> Response:
    """Batch update and merge: each item is a fragment of an existing entity."""
    items, media = await _entities(request)
    tenant_name = tenant(request)
    report = BatchReport()
    stamp = now()
    items = await _forward(request, tenant_name, kind, items, media, report)

    def build(item: Any, context: Any) -> tuple[str, update.Mutator]:
        fragment = parse_fragment(item, context.terms, stamp=stamp, nulls=nulls)
        entity_id = require_uri(fragment["id"], "entity id")
        return entity_id, mutator(entity_id, fragment)

    await _run(request, tenant_name, await _prepare(request, items, media, tenant_name, report, build), report)
    return _finish(report, success_status=204)


@api(
    "Update entities (batch)",
    query=BATCH_UPDATE_PARAMS,
    body="EntityBatch",
    ok=204,
    returns=None,
    more={207: "BatchResult"},
)
@_collected_less
async def batch_update(request: Request) -> Response:
    check_params(request, BATCH_UPDATE_PARAMS)
    # `update` and `replace` belong to upsert, but the FIWARE tutorials and clients written against
    # Orion-LD send them here too; a batch update replaces each attribute it names either way
    no_overwrite = "noOverwrite" in options(request, ("noOverwrite", "update", "replace"))
    return await _fragment_batch(
        request,
        "instance",
        lambda entity_id, fragment: update.update_attrs(entity_id, fragment, no_overwrite=no_overwrite),
        "update",
    )


@api(
    "Merge into entities (batch)",
    query=BATCH_MERGE_PARAMS,
    body="EntityBatch",
    ok=204,
    returns=None,
    more={207: "BatchResult"},
)
@_collected_less
async def batch_merge(request: Request) -> Response:
    check_params(request, BATCH_MERGE_PARAMS)
    return await _fragment_batch(request, "deep", update.merge, "merge")


@api(
    "Delete entities (batch)", query=BATCH_DELETE_PARAMS, body="IdList", ok=204, returns=None, more={207: "BatchResult"}
)
@_collected_less
async def batch_delete(request: Request) -> Response:
    check_params(request, BATCH_DELETE_PARAMS)
    items, media = await _entities(request)
    tenant_name = await existing_tenant(request)
    report = BatchReport()
    items = await _forward(request, tenant_name, "delete", items, media, report)
    planned: list[tuple[str, update.Mutator]] = []
    for item in items:
        try:
            entity_id = require_uri(item, "entity id")
        except NgsiLdError as error:
            report.fail(item, error)
            continue
        planned.append((entity_id, update.delete(entity_id)))
    await _run(request, tenant_name, planned, report)
    return _finish(report, success_status=204)


def routes() -> list[Route]:
    return [
        Route(BASE + "/create", batch_create, methods=["POST"]),
        Route(BASE + "/upsert", batch_upsert, methods=["POST"]),
        Route(BASE + "/update", batch_update, methods=["POST"]),
        Route(BASE + "/merge", batch_merge, methods=["POST"]),
        Route(BASE + "/delete", batch_delete, methods=["POST"]),
        Route(BASE + "/query", query_post, methods=["POST"]),
    ]
