"""Handlers for /entityMaps (spec 6.32, 6.34) and the entity-map side of queries and retrievals:
the `entityMap` flag and the NGSILD-EntityMap header (5.5.9.3, 5.7.1.4, 5.7.2.4).

A request that names a live map (header) is evaluated over the map's ids in the map's order; one that
asks for a map (flag) or names a dead one creates a map of everything its query selects.

With auth required a map belongs to the principal that made it (as a subscription does): another
principal's map does not exist for the caller (404; a header naming it makes a new map), and what a
map shows is cut, when it is read, to the entities the caller may read then.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.entities.model import Entity
from cityos.entities.values import require_uri
from cityos.errors import ResourceNotFound
from cityos.ngsild import access
from cityos.ngsild.common import (
    accept,
    check_params,
    existing_tenant,
    flag,
    json_response,
    no_content,
    principal,
    query_context,
    read_payload,
    services,
)
from cityos.ngsild.guard import hide
from cityos.ngsild.querying import QUERY_PARAMS, build_query, check_csf, check_not_too_wide
from cityos.ops.declare import api
from cityos.policy.decision import Target
from cityos.query.entity_maps import (
    EntityMap,
    Lifetime,
    follow,
    new_map,
    parse_lifetime,
    parse_update,
    recorded_query,
    render,
    same_selection,
)
from cityos.store.base import EntityQuery, EntityStore, QueryResult

BASE = "/ngsi-ld/v1"
HEADER = "NGSILD-EntityMap"
ID_BATCH = 10_000  # map ids per store query, well under SQLite's bound-parameter limit


@dataclass(frozen=True, slots=True)
class MapUse:
    """The map a request read or created, the NGSILD-EntityMap value to answer with, and the status
    to answer with when the request created the map (None: keep the handler's own)."""

    entity_map: EntityMap
    header: str
    status: int | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _lifetime(request: Request) -> Lifetime:
    settings = services(request).settings
    return Lifetime(
        timedelta(seconds=settings.entity_map_lifetime), timedelta(seconds=settings.entity_map_max_lifetime)
    )


def _map_id(request: Request) -> str:
    return require_uri(request.path_params["map_id"], "EntityMap id")


async def _live(store: EntityStore, tenant_name: str, map_id: str) -> EntityMap | None:
    entity_map = await store.get_entity_map(tenant_name, map_id)
    return entity_map if entity_map is not None and entity_map.live(_now()) else None


async def _mine(request: Request, tenant_name: str, map_id: str) -> EntityMap | None:
    """The live map if the caller may use it: its maker's or an admin's (principal.may_manage)."""
    entity_map = await _live(services(request).store, tenant_name, map_id)
    if entity_map is None or principal(request).may_manage(entity_map.owner):
        return entity_map
    missing = ResourceNotFound(f"EntityMap {map_id} does not exist or has expired")
    raise hide(request, f"{request.method} entity map", Target(tenant=tenant_name, resource="entityMap"), missing)


async def _existing(request: Request, tenant_name: str, map_id: str) -> EntityMap:
    entity_map = await _mine(request, tenant_name, map_id)
    if entity_map is None:
        raise ResourceNotFound(f"EntityMap {map_id} does not exist or has expired")
    return entity_map


def _header(request: Request) -> str | None:
    value = request.headers.get(HEADER)
    return value if value is not None and value.strip() else None


async def _referenced(request: Request, tenant_name: str, reference: str) -> EntityMap | None:
    """The live map a NGSILD-EntityMap value names, by bare id or by a URL ending in the id; None
    for anything else, which the caller answers by creating a new map (5.7.1.4)."""
    map_id = unquote(reference.strip().rsplit("/", 1)[-1])
    if not map_id:
        return None
    entity_map = await _live(services(request).store, tenant_name, map_id)
    return entity_map if entity_map is not None and principal(request).may_manage(entity_map.owner) else None


async def _create(request: Request, tenant_name: str, ids: list[str]) -> EntityMap:
    raw = request.query_params.get("entityMapLifetime")
    expires_at = _lifetime(request).expiry(_now(), None if raw is None else parse_lifetime(raw))
    owner = principal(request).owner_id
    entity_map = new_map(ids, expires_at, recorded_query(request.query_params.multi_items()), owner)
    await services(request).store.save_entity_map(tenant_name, entity_map)
    return entity_map


async def _matching(
    store: EntityStore, tenant_name: str, query: EntityQuery, among: tuple[str, ...] | None = None
) -> list[Entity]:
    """Every entity the query selects, unpaged; with `among`, only those ids (in batches)."""
    whole = replace(query, limit=None, offset=0, count=False)
    if among is None:
        return (await store.query_entities(tenant_name, whole)).entities
    allowed = None if query.ids is None else set(query.ids)
    candidates = [i for i in among if allowed is None or i in allowed]
    found: list[Entity] = []
    for start in range(0, len(candidates), ID_BATCH):
        batch = replace(whole, ids=candidates[start : start + ID_BATCH])
        found.extend((await store.query_entities(tenant_name, batch)).entities)
    return found


def _page(entities: list[Entity], limit: int, offset: int, count: bool) -> QueryResult:
    return QueryResult(
        entities[offset : offset + limit], len(entities) if count else None, offset + limit < len(entities)
    )


async def select(
    request: Request,
    tenant_name: str,
    query: EntityQuery,
    limit: int,
    offset: int,
    count: bool,
    stored_form: bool = False,
) -> tuple[QueryResult, MapUse | None]:
    """One page of a query: straight from the store, or over/into an entity map when the request
    names one (header) or asks for one (entityMap=true). `stored_form`: the caller takes the page
    in stored form (QueryResult.stored), which only the straight page may come in."""
    store = services(request).store
    reference = _header(request)
    if reference is None and not flag(request, "entityMap"):
        page = replace(query, limit=limit, offset=offset, count=count, stored_form=stored_form)
        return await store.query_entities(tenant_name, page), None
    current = None if reference is None else await _referenced(request, tenant_name, reference)
    if current is None or reference is None:
        matched = await _matching(store, tenant_name, query)
        created = await _create(request, tenant_name, [entity["id"] for entity in matched])
        return _page(matched, limit, offset, count), MapUse(created, created.id, 201)
    matched, pruned = follow(current, await _matching(store, tenant_name, query, current.entity_ids))
    if pruned is not None and same_selection(current, request.query_params):
        await store.update_entity_map(tenant_name, current.id, entity_ids=pruned.entity_ids)
    return _page(matched, limit, offset, count), MapUse(current, reference)


async def referenced(request: Request, tenant_name: str) -> tuple[bool, MapUse | None]:
    """(whether the request uses an entity map at all, the live map its NGSILD-EntityMap header
    names); (True, None) means a new map is owed (entityMap=true, or a dead reference)."""
    reference = _header(request)
    if reference is None and not flag(request, "entityMap"):
        return False, None
    current = None if reference is None else await _referenced(request, tenant_name, reference)
    if current is None or reference is None:
        return True, None
    return True, MapUse(current, reference)


async def created(request: Request, tenant_name: str, ids: list[str]) -> MapUse:
    """A new map of `ids` for a query that asked for one (answered with 201)."""
    entity_map = await _create(request, tenant_name, ids)
    return MapUse(entity_map, entity_map.id, 201)


async def for_entity(request: Request, tenant_name: str, entity_id: str, response: Response) -> Response:
    """The map side of a successful GET /entities/{id} (5.7.1.4): a live referenced map is echoed,
    otherwise a requested or dead-referenced map is created holding the entity; the status stays 200."""
    if not wanted(request):
        return response
    reference = _header(request)
    current = None if reference is None else await _referenced(request, tenant_name, reference)
    if current is not None and reference is not None:
        return answer(response, MapUse(current, reference))
    created = await _create(request, tenant_name, [entity_id])
    return answer(response, MapUse(created, created.id))


def wanted(request: Request) -> bool:
    """Whether a GET /entities/{id} has a map side (for_entity): a NGSILD-EntityMap header, or
    entityMap=true (checked: another value is a 400)."""
    return _header(request) is not None or flag(request, "entityMap")


def answer(response: Response, use: MapUse | None) -> Response:
    """Add the NGSILD-EntityMap header (and 201 for a map a query created) to a response."""
    if use is not None:
        response.headers[HEADER] = use.header
        if use.status is not None:
            response.status_code = use.status
    return response


# -- /entityMaps ------------------------------------------------------------------------------------
@api("Make an entity map of the entities a query selects", query=QUERY_PARAMS, ok=201, returns="Object")
async def create_entity_map(request: Request) -> Response:
    """GET /entityMaps?<query>: creates a map (6.34.3.1), hence 201 and the NGSILD-EntityMap header."""
    check_params(request, QUERY_PARAMS)
    media = accept(request)
    tenant_name = await existing_tenant(request)
    context = await query_context(request, tenant_name)
    check_not_too_wide(request)
    check_csf(request)
    query = access.restricted(request, tenant_name, build_query(request, context, tenant_name))
    matched = await _matching(services(request).store, tenant_name, query)
    created = await _create(request, tenant_name, [entity["id"] for entity in matched])
    return json_response(render(created), status=201, media=media, context=context, headers={HEADER: created.id})


@api("Retrieve an entity map", returns="Object", errors=(400, 404))
async def retrieve_entity_map(request: Request) -> Response:
    check_params(request, ())
    media = accept(request)
    map_id = _map_id(request)
    tenant_name = await existing_tenant(request)
    entity_map = await _readable(request, tenant_name, await _existing(request, tenant_name, map_id))
    context = await query_context(request, tenant_name)
    return json_response(render(entity_map), media=media, context=context)


async def _readable(request: Request, tenant_name: str, entity_map: EntityMap) -> EntityMap:
    """The map with only the entities the caller may read now (its rights may have shrunk since
    the map was made); untouched with auth off."""
    if principal(request).unrestricted:
        return entity_map
    query = access.restricted(request, tenant_name, EntityQuery())
    seen, _ = follow(entity_map, await _matching(services(request).store, tenant_name, query, entity_map.entity_ids))
    return replace(entity_map, entity_ids=tuple(entity["id"] for entity in seen))


@api("Change an entity map's expiry", body="Object", ok=204, returns=None, errors=(400, 404))
async def update_entity_map(request: Request) -> Response:
    """PATCH: only expiresAt changes, cut to the maximum lifetime; a past value expires the map."""
    check_params(request, ())
    map_id = _map_id(request)
    body, _ = await read_payload(request, merge_patch=True)
    tenant_name = await existing_tenant(request)
    requested = parse_update(body)
    await _existing(request, tenant_name, map_id)
    expires_at = _lifetime(request).clamp(_now(), requested)
    if not await services(request).store.update_entity_map(tenant_name, map_id, expires_at=expires_at):
        raise ResourceNotFound(f"EntityMap {map_id} does not exist")
    return no_content()


@api("Delete an entity map", ok=204, returns=None, errors=(400, 404))
async def delete_entity_map(request: Request) -> Response:
    check_params(request, ())
    map_id = _map_id(request)
    tenant_name = await existing_tenant(request)
    await _existing(request, tenant_name, map_id)
    if not await services(request).store.delete_entity_map(tenant_name, map_id):
        raise ResourceNotFound(f"EntityMap {map_id} does not exist")
    return no_content()


def routes() -> list[Route]:
    one = BASE + "/entityMaps/{map_id}"
    return [
        Route(BASE + "/entityMaps", create_entity_map, methods=["GET"]),
        Route(one, retrieve_entity_map, methods=["GET"]),
        Route(one, update_entity_map, methods=["PATCH"]),
        Route(one, delete_entity_map, methods=["DELETE"]),
    ]
