"""Thin Starlette handlers of the map data: GET /tiles/{z}/{x}/{y}.mvt and GET /cityos/v1/changes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.jsonld.registry import ResolvedContext
from cityos.mapdata import changes
from cityos.mapdata.cache import Cached
from cityos.mapdata.changes import hub_of
from cityos.mapdata.tiles import Tile, TileLimits, render_tile, tile_box
from cityos.ngsild import access
from cityos.ngsild.common import check_params, existing_tenant, query_context, services
from cityos.query import budget
from cityos.query.entity_query import QuerySpec, build_entity_query
from cityos.store.base import EntityQuery

MVT = "application/vnd.mapbox-vector-tile"
TILE_PARAMS = ("type", "q")
GEO_ATTR = "location"


def display_names(raw: str, context: ResolvedContext) -> dict[str, str]:
    """The --tile-attrs setting as {expanded IRI: the name used in the tile}, in the request's @context."""
    names = [n.strip() for n in raw.split(",") if n.strip()]
    return {context.terms.expand(n): context.terms.compact(context.terms.expand(n)) for n in names}


def _queries(
    request: Request, tenant: str, context: ResolvedContext, tile: Tile
) -> tuple[EntityQuery, Callable[[int | None], EntityQuery]]:
    """The caller's query (type, q, its access policy) without and with the tile's box."""
    from cityos.query.geo import parse_geo_query

    params = request.query_params
    settings = services(request).settings

    def spec(geo: object) -> QuerySpec:
        return QuerySpec(
            type_expr=params.get("type"), q=params.get("q"), geo=geo, max_pattern_length=settings.max_pattern_length
        )

    read = access.view(request, tenant)
    plain = access.restrict(build_entity_query(spec(None), context.terms.expand), read)
    box = parse_geo_query("intersects", "Polygon", tile_box(tile), GEO_ATTR)

    def boxed(limit: int | None) -> EntityQuery:
        query = access.restrict(build_entity_query(spec(box), context.terms.expand), read)
        query.limit = limit
        return query

    boxed(0)  # validates type and q before any store work (BadRequestData)
    return plain, boxed


@budget.per_request
async def get_tile(request: Request) -> Response:
    check_params(request, TILE_PARAMS)
    path = request.path_params
    tile = Tile.parse(path["z"], path["x"], path["y"])
    tenant = await existing_tenant(request)
    context = await query_context(request, tenant)
    plain, boxed = _queries(request, tenant, context, tile)
    settings = services(request).settings
    read = access.view(request, tenant)
    cache = hub_of(request).cache if read.unrestricted else None  # a restricted caller's tile is never kept
    key = (tenant, tile, request.query_params.get("type"), request.query_params.get("q"), request.headers.get("link"))
    found = cache.get(key, tenant, tile.z, tile.x, tile.y) if cache is not None and cache.enabled else None
    if found is not None:
        return _answer(request, found.body, found.layer, found.etag, settings.tile_max_age)
    stamp = cache.stamp(tenant, tile.z, tile.x, tile.y) if cache is not None else (0, 0, 0)
    body, layer = await render_tile(
        services(request).store,
        tenant,
        tile,
        plain,
        boxed,
        context.terms.expand(GEO_ATTR),
        display_names(settings.tile_attrs, context),
        context.terms.compact,
        TileLimits(settings.tile_max_features, settings.tile_cluster_cells),
        project=None if read.unrestricted else read.project,
    )
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    if cache is not None:
        cache.put(key, Cached(body, layer, etag, stamp, time.monotonic()))
    return _answer(request, body, layer, etag, settings.tile_max_age)


def _answer(request: Request, body: bytes, layer: str, etag: str, max_age: int) -> Response:
    headers = {
        "ETag": etag,
        "Cache-Control": f"private, max-age={max_age}",  # what a caller sees depends on its policy
        "Vary": "Authorization, NGSILD-Tenant, Link",
        "X-Tile-Layer": layer,
    }
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=MVT, headers=headers)


def routes() -> list[Route]:
    return [
        Route("/tiles/{z}/{x}/{y}.mvt", get_tile, methods=["GET"]),
        Route(changes.PATH, changes.stream_changes, methods=["GET"]),
    ]
