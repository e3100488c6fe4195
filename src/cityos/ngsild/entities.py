"""Handlers for /entities and /entities/{id}/attrs: parse, call the entity core, render."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.entities import update
from cityos.entities.model import (
    Entity,
    Instance,
    infer_type,
    parse_attribute,
    parse_entity,
    parse_fragment,
    parse_instance,
)
from cityos.entities.render import RenderOptions, downgrade, plain_options, render_entity, to_geojson_feature
from cityos.entities.render_cache import HIDDEN, render_one
from cityos.entities.values import check_name, now, require_uri
from cityos.errors import BadRequestData, InvalidRequest, NgsiLdError, ResourceNotFound
from cityos.jsonld.registry import ResolvedContext
from cityos.ngsild import access, entity_maps, forwarding
from cityos.ngsild.common import (
    accept,
    body_context,
    check_params,
    encoded_response,
    existing_tenant,
    flag,
    has_query,
    json_response,
    no_content,
    options,
    preferred_version,
    query_context,
    read_payload,
    services,
    tenant,
)
from cityos.ngsild.join import JoinPlan, join_plan, render_joined
from cityos.ngsild.negotiation import GEO_JSON, JSON, JSON_LD
from cityos.ngsild.querying import plain_params, purge_entities, query_entities, type_filter
from cityos.ops.declare import api
from cityos.policy.enforce import WriteCheck
from cityos.query import budget
from cityos.query.projection import Projected, depth, parse_projection
from cityos.store.base import MutationResult
from cityos.store.temporal_base import SCOPE_ATTR
from cityos.temporal.service import record_deletion

BASE = "/ngsi-ld/v1"
RETRIEVE_PARAMS = (
    "attrs",
    "pick",
    "omit",
    "options",
    "format",
    "lang",
    "geometryProperty",
    "local",
    "datasetId",
    "join",
    "joinLevel",
    "containedBy",
    "entityMap",
    "expandValues",
    "type",
    "via",
    "contextSourceTimeAt",
)
# the query parameters each write accepts (checked by the handler, described by ops/openapi.py)
CREATE_PARAMS = ("local",)
REPLACE_PARAMS = ("local",)
MERGE_PARAMS = ("local", "options", "format")
DELETE_PARAMS = ("local", "type")
APPEND_PARAMS = ("options", "local", "type")
UPDATE_PARAMS = ("options", "local", "type")
PARTIAL_PARAMS = ("local", "options", "type")
REPLACE_ATTRIBUTE_PARAMS = ("local",)
DELETE_ATTRIBUTE_PARAMS = ("datasetId", "deleteAll", "local", "type")
ENTITY_MEDIA = (JSON, JSON_LD, GEO_JSON)
# what a created entity's id opens (ops/openapi.py links): the stateful API tests follow these
_CREATED = {"entity_id": "$request.body#/id"}
CREATED_LINKS = {
    "RetrieveEntity": ("retrieve_entity", _CREATED),
    "AppendAttributes": ("append_attributes", _CREATED),
    "UpdateAttributes": ("update_attributes", _CREATED),
    "MergeEntity": ("merge_entity", _CREATED),
    "ReplaceEntity": ("replace_entity", _CREATED),
    "DeleteEntity": ("delete_entity", _CREATED),
}
REPRESENTATION_OPTIONS = ("keyValues", "concise", "normalized", "sysAttrs", "simplified")


def representation(request: Request, terms: ResolvedContext, params: Mapping[str, str] | None = None) -> RenderOptions:
    """Render options from `options`, `format`, `attrs`, `pick`, `omit` and `lang` (of the URL, or of
    `params` when a query body supplies some of them)."""
    if not params and not has_query(request):
        return plain_options(terms.terms)  # no parameter: the options every plain read shares
    chosen = options(request, (*REPRESENTATION_OPTIONS, "noOverwrite", "replace", "update", "count"))
    fmt = plain_params(request).get("format")  # the same last value as query_params.get, parsed once
    formats = {"keyValues", "simplified", "concise", "normalized"} & chosen
    if fmt is not None:
        if fmt not in ("keyValues", "simplified", "concise", "normalized"):
            raise InvalidRequest(f"unknown format {fmt!r}")
        formats = {fmt}
    formats = {"keyValues" if f == "simplified" else f for f in formats}
    if len(formats) > 1:
        raise BadRequestData("options name more than one representation format")
    name = next(iter(formats), "normalized")
    params = params if params is not None else plain_params(request)
    return projected(params, terms, format=name, sys_attrs="sysAttrs" in chosen)


def projected(params: Mapping[str, str], terms: ResolvedContext, *, format: str, sys_attrs: bool) -> RenderOptions:
    """Render options from the projection parameters (attrs, pick, omit, lang, datasetId), checked
    against each other; shared by the entity and temporal representations."""
    pick = _projection(params.get("pick"), "pick")
    omit = _projection(params.get("omit"), "omit")
    attrs = _projection(params.get("attrs"), "attrs")
    if pick is not None and omit is not None:
        raise BadRequestData("pick and omit cannot be used together")
    if attrs is not None and (pick is not None or omit is not None):
        raise BadRequestData("attrs cannot be combined with pick or omit")
    for projection in (pick, omit, attrs):
        if projection is not None and depth(projection) > 0 and params.get("join") is None:
            raise BadRequestData("a linked-entity projection (name{...}) needs join")
    keep = dropped = None
    pick_id = pick_type = pick_scope = True
    selected = pick if pick is not None else attrs
    if selected is not None:
        names = [p.name for p in selected]
        if pick is not None:
            pick_id, pick_type, pick_scope = "id" in names, "type" in names, "scope" in names
        keep = frozenset(terms.terms.expand(n) for n in names if n not in ("id", "type"))
    if omit is not None:
        names = [p.name for p in omit if not p.nested]  # name{...} omits inside the linked entity
        pick_id, pick_type, pick_scope = "id" not in names, "type" not in names, "scope" not in names
        dropped = frozenset(terms.terms.expand(n) for n in names if n not in ("id", "type"))
    return RenderOptions(
        terms=terms.terms,
        format=format,
        sys_attrs=sys_attrs,
        attrs=keep,
        omit=dropped,
        pick_id=pick_id,
        pick_type=pick_type,
        pick_scope=pick_scope,
        lang=params.get("lang"),
        datasets=_datasets(params.get("datasetId")),
    )


def _datasets(raw: str | None) -> frozenset[str | None] | None:
    if raw is None:
        return None
    items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items:
        raise BadRequestData("datasetId must not be empty")
    return frozenset(None if item == "@none" else require_uri(item, "datasetId") for item in items)


def _projection(raw: str | None, what: str) -> tuple[Projected, ...] | None:
    return None if raw is None else parse_projection(raw, what)


def _attr_iri(request: Request, context: ResolvedContext, *, scope_ok: bool = False) -> str:
    name = check_name(unquote(request.path_params["attr"]), "attribute name")
    if name == "scope" and not scope_ok:
        raise BadRequestData("scope is not an attribute; update it through the entity")
    return context.terms.expand(name)


def _entity_id(request: Request) -> str:
    return require_uri(unquote(request.path_params["entity_id"]), "entity id")


async def _mutate_one(request: Request, tenant_name: str, entity_id: str, mutator: update.Mutator) -> MutationResult:
    """Run one mutation atomically; a `type` parameter restricts it to entities of those types."""
    type_param = request.query_params.get("type") if has_query(request) else None
    if type_param is not None:
        context = await query_context(request, tenant_name)
        mutator = update.only_types(entity_id, type_filter(type_param, context), mutator)
    mutator = access.guarded(entity_id, mutator, access.writes(request, tenant_name))
    return await _run_one(request, tenant_name, entity_id, mutator)


async def _run_one(request: Request, tenant_name: str, entity_id: str, mutator: update.Mutator) -> MutationResult:
    """Run one mutation, already guarded by the access policies, atomically."""
    try:
        results = await services(request).store.mutate(tenant_name, [(entity_id, mutator)], atomic=True)
    except access.DENIED as error:
        await access.denied(request, tenant_name, [entity_id], error)
        raise
    return results[0]


def _partial_result(result: MutationResult, context: ResolvedContext) -> Response:
    """204 when every attribute was handled, else 207 with updated / notUpdated."""
    outcome = result.outcome
    assert outcome is not None
    if not outcome.not_updated:
        return no_content()
    # UpdateResult names attributes by their expanded IRIs (what the suite expects, 010_04_01)
    body = {
        "updated": list(outcome.updated),
        "notUpdated": [{"attributeName": iri, "reason": reason} for iri, reason in outcome.not_updated],
    }
    return json_response(body, status=207)


@dataclass(frozen=True)
class EntityWrite:
    """What every write on /entities/{id}... needs: the id, the body, the tenant, the @context."""

    entity_id: str
    body: Any
    tenant: str
    context: ResolvedContext


async def entity_write(request: Request, allowed: tuple[str, ...], *, merge_patch: bool = False) -> EntityWrite:
    check_params(request, allowed)
    entity_id = _entity_id(request)
    body, media = await read_payload(request, merge_patch=merge_patch)
    tenant_name = tenant(request)
    context = await body_context(request, body, media, tenant_name=tenant_name)
    return EntityWrite(entity_id, body, tenant_name, context)


# -- /entities ------------------------------------------------------------------------------------
@api(
    "Create an entity",
    query=CREATE_PARAMS,
    body="EntityInput",
    ok=201,
    returns=None,
    errors=(400, 409, 415),
    links=CREATED_LINKS,
)
async def create_entity(request: Request) -> Response:
    check_params(request, CREATE_PARAMS)
    body, media = await read_payload(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the entity must be a JSON object")
    tenant_name = tenant(request)
    context = await body_context(request, body, media, tenant_name=tenant_name)
    stamp = now()
    entity = parse_entity(body, context.terms, stamp=stamp)
    location = f"{BASE}/entities/" + quote(entity["id"], safe=":;=@!$&'()*+,~-._")

    async def local(part: Any) -> Response:
        own = entity if part is body else parse_entity(part, context.terms, stamp=stamp)
        await _mutate_one(request, tenant_name, entity["id"], update.create(own))
        return Response(status_code=201, headers={"Location": location})

    created = lambda: Response(status_code=201, headers={"Location": location})  # noqa: E731
    return await forwarding.run_write(
        request, tenant_name, "createEntity", entity["id"], body, context, local, created, types=entity["type"]
    )


@api(
    "Retrieve an entity",
    query=RETRIEVE_PARAMS,
    returns="Entity",
    more={203: "Entity"},
    errors=(400, 404, 406),
    media=ENTITY_MEDIA,
)
async def retrieve_entity(request: Request) -> Response:
    check_params(request, RETRIEVE_PARAMS)
    media = accept(request, (JSON, JSON_LD, GEO_JSON))
    entity_id = _entity_id(request)
    tenant_name = await existing_tenant(request)
    context = await query_context(request, tenant_name)
    params = plain_params(request)
    render = representation(request, context, params)
    if media != GEO_JSON and params.get("geometryProperty") is not None:
        raise BadRequestData("geometryProperty needs Accept: application/geo+json")
    read = access.view(request, tenant_name)
    store = services(request).store
    if (
        read.unrestricted
        and media != GEO_JSON
        and params.get("local") != "true"
        and not store.registrations_none(tenant_name)  # most tenants: no source, no coroutine
    ):
        federated = await forwarding.consumption(
            request,
            tenant_name,
            context,
            forwarding.READ_VIA,
            ids=[entity_id],
            types=type_filter(params["type"], context) if params.get("type") else None,
            attrs=params["attrs"].split(",") if params.get("attrs") else None,
        )
        if federated is not None:
            found_here = await store.get_entity(tenant_name, entity_id)
            local = render_entity(found_here, render) if found_here is not None else None
            merged, answers = await forwarding.retrieve(federated, entity_id, local or None)
            if merged is None:
                raise forwarding.NotFoundWithWarnings(
                    f"entity {entity_id} does not exist", forwarding.warnings_of(answers)
                )
            return forwarding.with_warnings(json_response(merged, media=media, context=context), answers)
    cached = read.unrestricted or access.renders_cached(read)  # auth off: no call
    if cached and media != GEO_JSON and not render.attrs and _plain_read(request, params):
        # the common read: rendered from the stored document through the render cache, under a
        # restricted caller's view too (its entries are its own: what it may see, projected)
        found = await store.get_stored(tenant_name, entity_id)
        if found is not None:
            ld_context = orjson.dumps(context.value) if media == JSON_LD else None
            view = None if read.unrestricted else read
            data = render_one(found, store.decode_stored, render, ld_context, view)
            if data == HIDDEN:
                await access.hidden(request, tenant_name, entity_id)
            if not data:
                raise ResourceNotFound(f"the projection leaves nothing of entity {entity_id}")
            response = encoded_response(data, media, context)
            if not entity_maps.wanted(request):  # no map side: no coroutine to make
                return response
            return await entity_maps.for_entity(request, tenant_name, entity_id, response)
        entity = None
    else:
        entity = await store.get_entity(tenant_name, entity_id)
    if entity is None:
        raise ResourceNotFound(f"entity {entity_id} does not exist")
    if not read.unrestricted:  # auth off: no coroutine to make (this is the hottest read)
        entity = await access.visible_or_404(request, tenant_name, read, entity)
    type_param = params.get("type")
    if type_param is not None and not set(type_filter(type_param, context)) & set(entity["type"]):
        raise ResourceNotFound(f"entity {entity_id} is not of type {type_param}")
    if render.attrs and not any(iri in entity["attrs"] for iri in render.attrs):
        raise ResourceNotFound(f"entity {entity_id} has none of the requested attributes")
    if media == GEO_JSON:
        feature = to_geojson_feature(entity, render, params.get("geometryProperty"))
        response = geojson_response(request, feature, context)
        if not read.unrestricted:
            await access.personal_reads(request, tenant_name, read, [entity])
        return await entity_maps.for_entity(request, tenant_name, entity_id, response)
    if not read.unrestricted:
        await access.personal_reads(request, tenant_name, read, [entity])
    plan = request_join_plan(request, params)
    if plan is not None:
        # a join's fetches and renderings share one --query-timeout (only the join needs the budget:
        # the plain read does not pay for a deadline it would never check)
        with budget.scope(services(request).settings.query_timeout):
            rendered = await render_joined([entity], render, plan, store, tenant_name, read)
        body: Any = rendered if plan.mode == "flat" and len(rendered) > 1 else rendered[0]
        response = json_response(body, media=media, context=context)
        return await entity_maps.for_entity(request, tenant_name, entity_id, response)
    body = render_entity(entity, render)
    if not body:
        raise ResourceNotFound(f"the projection leaves nothing of entity {entity_id}")
    headers: dict[str, str] = {}
    status = 200
    version = preferred_version(request)
    if version is not None:
        major, minor = (int(part) for part in version.split("."))
        status = 203 if (major, minor) < (1, 8) and downgrade(body) else 200
        headers["Preference-Applied"] = f"ngsi-ld={version}"
    response = json_response(body, media=media, context=context, status=status, headers=headers)
    return await entity_maps.for_entity(request, tenant_name, entity_id, response)


def _plain_read(request: Request, params: Mapping[str, str]) -> bool:
    """A retrieve that needs nothing of the entity but its rendering: no type filter, no join, no
    version preference (whose downgrade reads the rendered body)."""
    if not params:
        return preferred_version(request) is None
    return (
        params.get("type") is None
        and params.get("join") is None
        and params.get("joinLevel") is None
        and preferred_version(request) is None
    )


def request_join_plan(request: Request, params: Mapping[str, str] | None = None) -> JoinPlan | None:
    params = params if params is not None else request.query_params
    return join_plan(
        params.get("join"),
        params.get("joinLevel"),
        _projection(params.get("pick"), "pick"),
        _projection(params.get("omit"), "omit"),
    )


def geojson_response(request: Request, body: dict[str, Any], context: ResolvedContext) -> Response:
    if "body=json" in request.headers.get("prefer", ""):
        return json_response(body, media=GEO_JSON, context=context)
    return json_response({**body, "@context": context.value}, media=GEO_JSON)


@api("Replace an entity", query=REPLACE_PARAMS, body="EntityInput", ok=204, returns=None, errors=(400, 404))
async def replace_entity(request: Request) -> Response:
    write = await entity_write(request, REPLACE_PARAMS)
    entity_id, body, tenant_name, context = write.entity_id, write.body, write.tenant, write.context
    if isinstance(body, dict):
        update.check_same_id(body.get("id"), entity_id)
        body = {**body, "id": entity_id}
    stamp = now()
    entity = parse_entity(body, context.terms, stamp=stamp)

    async def local(part: Any) -> Response:
        own = entity if part is body else parse_entity(part, context.terms, stamp=stamp)
        await _mutate_one(request, tenant_name, entity_id, update.replace(own))
        return no_content()

    return await forwarding.run_write(
        request, tenant_name, "replaceEntity", entity_id, body, context, local, no_content, types=entity["type"]
    )


@api(
    "Merge a fragment into an entity",
    query=MERGE_PARAMS,
    body="Fragment",
    ok=204,
    returns=None,
    errors=(400, 404),
)
async def merge_entity(request: Request) -> Response:
    write = await entity_write(request, MERGE_PARAMS, merge_patch=True)
    entity_id, body, tenant_name, context = write.entity_id, write.body, write.tenant, write.context
    stamp = now()
    fragment = parse_fragment(body, context.terms, stamp=stamp, nulls="deep", path_id=entity_id)

    async def local(part: Any) -> Response:
        own = (
            fragment
            if part is body
            else parse_fragment(part, context.terms, stamp=stamp, nulls="deep", path_id=entity_id)
        )
        await _mutate_one(request, tenant_name, entity_id, update.merge(entity_id, own))
        return no_content()

    return await forwarding.run_write(request, tenant_name, "mergeEntity", entity_id, body, context, local, no_content)


@api("Delete an entity", query=DELETE_PARAMS, ok=204, returns=None, errors=(400, 404))
async def delete_entity(request: Request) -> Response:
    check_params(request, DELETE_PARAMS)
    entity_id = _entity_id(request)
    tenant_name = await existing_tenant(request)

    async def local(_: Any) -> Response:
        await _mutate_one(request, tenant_name, entity_id, update.delete(entity_id))
        return no_content()

    return await forwarding.run_write(request, tenant_name, "deleteEntity", entity_id, None, None, local, no_content)


# -- /entities/{id}/attrs ---------------------------------------------------------------------------
@api(
    "Append attributes to an entity",
    query=APPEND_PARAMS,
    body="Fragment",
    ok=204,
    returns=None,
    more={207: "BatchResult"},
    errors=(400, 404),
)
async def append_attributes(request: Request) -> Response:
    no_overwrite = "noOverwrite" in options(request, ("noOverwrite",))
    write = await entity_write(request, APPEND_PARAMS)
    entity_id, body, tenant_name, context = write.entity_id, write.body, write.tenant, write.context
    stamp = now()
    fragment = parse_fragment(body, context.terms, stamp=stamp, path_id=entity_id)

    async def local(part: Any) -> Response:
        own = fragment if part is body else parse_fragment(part, context.terms, stamp=stamp, path_id=entity_id)
        mutator = update.append(entity_id, own, no_overwrite=no_overwrite, add_types=True)
        return _partial_result(await _mutate_one(request, tenant_name, entity_id, mutator), context)

    return await forwarding.run_write(request, tenant_name, "appendAttrs", entity_id, body, context, local, no_content)


@api(
    "Update attributes of an entity",
    query=UPDATE_PARAMS,
    body="Fragment",
    ok=204,
    returns=None,
    more={207: "BatchResult"},
    errors=(400, 404),
)
async def update_attributes(request: Request) -> Response:
    write = await entity_write(request, UPDATE_PARAMS, merge_patch=True)
    entity_id, body, tenant_name, context = write.entity_id, write.body, write.tenant, write.context
    stamp = now()
    fragment = parse_fragment(body, context.terms, stamp=stamp, path_id=entity_id)

    async def local(part: Any) -> Response:
        own = fragment if part is body else parse_fragment(part, context.terms, stamp=stamp, path_id=entity_id)
        result = await _mutate_one(request, tenant_name, entity_id, update.update_attrs(entity_id, own))
        return _partial_result(result, context)

    return await forwarding.run_write(request, tenant_name, "updateAttrs", entity_id, body, context, local, no_content)


@api("Update one attribute partially", query=PARTIAL_PARAMS, body="Attribute", ok=204, returns=None, errors=(400, 404))
async def partial_attribute_update(request: Request) -> Response:
    write = await entity_write(request, PARTIAL_PARAMS, merge_patch=True)
    entity_id, body, tenant_name, context = write.entity_id, write.body, write.tenant, write.context
    attr = _attr_iri(request, context)
    if not isinstance(body, dict):
        raise BadRequestData("the attribute fragment must be a JSON object")
    name, stamp = request.path_params["attr"], now()
    fragment = {k: v for k, v in body.items() if k != "@context"}
    dataset = fragment.get("datasetId")

    def parse(kind: str | None) -> Instance:
        """The patch of the fragment, typed as the existing attribute when it names no type."""
        typed = fragment if kind is None else {**fragment, "type": kind}
        if not typed:
            raise BadRequestData("the attribute fragment is empty")
        patch = parse_instance(name, typed, context.terms, stamp=stamp, nulls="instance", value_optional=True)
        patch.pop("createdAt", None)
        patch.pop("datasetId", None)
        return patch

    async def local(_: Any) -> Response:
        if "type" in fragment or (has_query(request) and "type" in request.query_params):
            kind = None
            if "type" not in fragment:
                kind = _attribute_type(await services(request).store.get_entity(tenant_name, entity_id), attr)
            patch = parse(kind)
            await _mutate_one(request, tenant_name, entity_id, update.partial_update(entity_id, attr, patch, dataset))
        else:
            check = access.writes(request, tenant_name)
            mutator = _typed_in_transaction(entity_id, attr, dataset, (name, fragment, parse), check)
            await _run_one(request, tenant_name, entity_id, mutator)
        return no_content()

    return await forwarding.run_write(
        request, tenant_name, "updateAttrs", entity_id, body, context, local, no_content, attr=attr
    )


def _attribute_type(current: Entity | None, attr: str) -> str | None:
    """The type of the attribute's first instance in `current`: what a fragment without one takes."""
    kind: str | None = ((current or {}).get("attrs", {}).get(attr) or [{}])[0].get("type")
    return kind


def _typed_in_transaction(
    entity_id: str,
    attr: str,
    dataset: str | None,
    fragment: tuple[str, dict[str, Any], Callable[[str | None], Instance]],
    check: WriteCheck | None,
) -> update.Mutator:
    """The partial update of a fragment without a type, typed from the entity its own transaction
    reads: a read of the entity before the write cost as much as the rest of the request. The
    fragment is parsed untyped here, and again with the existing type only when that type reads it
    differently (infer_type guessed another type, or wrapped it as a value); a parse error still
    comes before any other (policy, not found), as when the type was read first."""
    name, raw, parse = fragment
    untyped: Instance | NgsiLdError
    try:
        untyped = parse(None)
    except NgsiLdError as error:
        untyped = error
    guessed, read_as = infer_type(name, raw)

    def run(current: Entity | None) -> update.Outcome:
        kind = _attribute_type(current, attr)
        if kind and (read_as is not raw or kind != guessed):
            patch = parse(kind)
        elif isinstance(untyped, NgsiLdError):
            raise untyped
        else:
            patch = untyped
        return access.guarded(entity_id, update.partial_update(entity_id, attr, patch, dataset), check)(current)

    return run


@api("Replace one attribute", query=REPLACE_ATTRIBUTE_PARAMS, body="Attribute", ok=204, returns=None, errors=(400, 404))
async def replace_attribute(request: Request) -> Response:
    write = await entity_write(request, REPLACE_ATTRIBUTE_PARAMS)
    entity_id, body, tenant_name, context = write.entity_id, write.body, write.tenant, write.context
    attr = _attr_iri(request, context)
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "@context"}
    instances = parse_attribute(request.path_params["attr"], body, context.terms, stamp=now())

    async def local(_: Any) -> Response:
        await _mutate_one(request, tenant_name, entity_id, update.replace_attr(entity_id, attr, instances))
        return no_content()

    return await forwarding.run_write(
        request, tenant_name, "replaceAttrs", entity_id, body, context, local, no_content, attr=attr
    )


@api("Delete one attribute", query=DELETE_ATTRIBUTE_PARAMS, ok=204, returns=None, errors=(400, 404))
async def delete_attribute(request: Request) -> Response:
    check_params(request, DELETE_ATTRIBUTE_PARAMS)
    entity_id = _entity_id(request)
    tenant_name = await existing_tenant(request)
    context = await query_context(request, tenant_name)
    dataset = request.query_params.get("datasetId")
    if dataset is not None:
        require_uri(dataset, "datasetId")
    delete_all = flag(request, "deleteAll")
    if request.path_params["attr"] == "scope":
        attr, mutator = SCOPE_ATTR, update.delete_scope(entity_id, stamp=now())
    else:
        attr = _attr_iri(request, context)
        mutator = update.delete_attr(entity_id, attr, dataset=dataset, delete_all=delete_all, stamp=now())

    async def local(_: Any) -> Response:
        try:
            await _mutate_one(request, tenant_name, entity_id, mutator)
        except access.HiddenEntity:
            raise
        except ResourceNotFound:
            store = services(request).store
            if not await record_deletion(store, tenant_name, entity_id, attr, dataset=dataset, delete_all=delete_all):
                raise
        return no_content()

    return await forwarding.run_write(
        request, tenant_name, "deleteAttrs", entity_id, None, context, local, no_content, attr=attr
    )


@api(
    "No operation: a path without an entity id (always 400 or 405)",
    ok=400,
    returns="ProblemDetails",
    errors=(405,),
    media=("application/json",),
)
async def missing_entity_id(request: Request) -> Response:
    raise BadRequestData("the entity id in the path is empty")


def routes() -> list[Route]:
    entity = BASE + "/entities/{entity_id}"
    every = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    # Starlette tries the routes in order: the hottest (a sensor update, a retrieve, a create) come
    # first (a route costs a regex match per request before it). No two of these paths match the same
    # URL, so the order changes no answer; the routes of one path keep their order (the first that
    # lacks the method answers 405).
    return [
        Route(entity + "/attrs/{attr}", partial_attribute_update, methods=["PATCH"]),
        Route(entity, retrieve_entity, methods=["GET"]),
        Route(BASE + "/entities", create_entity, methods=["POST"]),
        Route(entity + "/attrs/{attr}", replace_attribute, methods=["PUT"]),
        Route(entity + "/attrs/{attr}", delete_attribute, methods=["DELETE"]),
        Route(entity, replace_entity, methods=["PUT"]),
        Route(entity, merge_entity, methods=["PATCH"]),
        Route(entity, delete_entity, methods=["DELETE"]),
        Route(BASE + "/entities/", missing_entity_id, methods=["PUT", "PATCH"]),
        Route(BASE + "/entities//attrs", missing_entity_id, methods=every),
        Route(BASE + "/entities//attrs/", missing_entity_id, methods=every),
        Route(BASE + "/entities//attrs/{attr}", missing_entity_id, methods=every),
        Route(BASE + "/entities/", create_entity, methods=["POST"]),
        Route(BASE + "/entities", query_entities, methods=["GET"]),
        Route(BASE + "/entities/", query_entities, methods=["GET"]),
        Route(BASE + "/entities", purge_entities, methods=["DELETE"]),
        Route(BASE + "/entities/", purge_entities, methods=["DELETE"]),
        Route(entity + "/attrs", append_attributes, methods=["POST"]),
        Route(entity + "/attrs/", append_attributes, methods=["POST"]),
        Route(entity + "/attrs", update_attributes, methods=["PATCH"]),
        Route(entity + "/attrs/", update_attributes, methods=["PATCH"]),
    ]
