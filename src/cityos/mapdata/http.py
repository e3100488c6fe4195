"""Thin Starlette handlers of the map data: GET /tiles/{z}/{x}/{y}.mvt and GET /cityos/v1/changes."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.jsonld.registry import ResolvedContext
from cityos.mapdata import changes
from cityos.mapdata.cache import Cached
from cityos.mapdata.changes import hub_of
from cityos.mapdata.kept_cells import KEPT_MAX_ZOOM, View
from cityos.mapdata.tiles import Tile, TileLimits, render_tile
from cityos.ngsild import access
from cityos.ngsild.common import check_params, existing_tenant, query_context, services
from cityos.ops.declare import api
from cityos.ops.schemas import NGSI_LD_HEADERS
from cityos.policy.decision import ReadView
from cityos.query import budget
from cityos.query.entity_query import QuerySpec, build_entity_query
from cityos.store.base import EntityQuery, GeoGrid, GridCell

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
    """The caller's query (type, q, its access policy) without and with the tile's box. The box is
    the store's geo box alone, without an exact geo test: a point meets the tile exactly when it is in
    the box, and a shape whose box meets the tile is drawn, clipped by the map, at worst for nothing."""
    params = request.query_params
    settings = services(request).settings
    spec = QuerySpec(type_expr=params.get("type"), q=params.get("q"), max_pattern_length=settings.max_pattern_length)
    read = access.view(request, tenant)
    west, south, east, north = tile.bounds()
    box = (context.terms.expand(GEO_ATTR), (west, east, south, north))

    def query(limit: int | None, boxed: bool) -> EntityQuery:
        built = build_entity_query(spec, context.terms.expand)  # validates type and q (BadRequestData)
        if boxed:
            built.geo_box = box
        built.limit = limit
        return access.restrict(built, read)

    plain = query(None, boxed=False)
    return plain, lambda limit: query(limit, boxed=True)


@budget.per_request
@api(
    "A map tile (Mapbox Vector Tile 2.1) of the entities, or of their clusters (docs/map-data.md)",
    query=TILE_PARAMS,
    returns="Any",
    media=("application/vnd.mapbox-vector-tile",),
    errors=(400,),
    more={304: None},
    headers=NGSI_LD_HEADERS,
)
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
    if cache is None:
        body, layer, etag = await _draw(request, tenant, tile, plain, boxed, context, read)
        return _answer(request, body, layer, etag, settings.tile_max_age)
    cache.drawing += 1  # a change now bumps generations even with no tile kept (TileCache.idle)
    try:
        stamps = [cache.stamp(tenant, tile.z, tile.x, tile.y, layout) for layout in (False, True)]
        body, layer, etag = await _draw(request, tenant, tile, plain, boxed, context, read)
        # clusters without q count entities by place and type: an attribute's new value leaves them as they are
        layout_only = layer == "clusters" and request.query_params.get("q") is None
        cache.put(key, Cached(body, layer, etag, stamps[layout_only], time.monotonic(), layout_only))
    finally:
        cache.drawing -= 1
    return _answer(request, body, layer, etag, settings.tile_max_age)


async def _draw(
    request: Request,
    tenant: str,
    tile: Tile,
    plain: EntityQuery,
    boxed: Callable[[int | None], EntityQuery],
    context: ResolvedContext,
    read: ReadView,
) -> tuple[bytes, str, str]:
    """The tile's body, layer and ETag, drawn from the store."""
    settings = services(request).settings
    store = services(request).store
    body, layer = await render_tile(
        store,
        tenant,
        tile,
        plain,
        boxed,
        context.terms.expand(GEO_ATTR),
        display_names(settings.tile_attrs, context),
        context.terms.compact,
        TileLimits(settings.tile_max_features, settings.tile_cluster_cells),
        project=None if read.unrestricted else read.project,
        counted=_kept_counts(request, tenant, tile, plain, context, read),
    )
    return body, layer, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def _kept_counts(
    request: Request, tenant: str, tile: Tile, plain: EntityQuery, context: ResolvedContext, read: ReadView
) -> Callable[[GeoGrid], Awaitable[list[GridCell] | None]] | None:
    """The per-cell counts of a q-filtered tile of one type from the view's kept counts
    (kept_cells.py), or None: the store counts the tile itself."""
    hub = hub_of(request)
    q = request.query_params.get("q")
    types = plain.types
    if (
        not hub.kept.max_views
        or not hub.listening
        or not read.unrestricted
        or q is None
        or tile.z > KEPT_MAX_ZOOM
        or types is None
        or len(types) != 1
        or plain.predicate is None
    ):
        return None
    store = services(request).store
    settings = services(request).settings
    geo_attr = context.terms.expand(GEO_ATTR)
    view = View(types[0], geo_attr, plain.predicate, 0, 0.0)
    key = (tenant, types[0], q, request.headers.get("link"))

    async def counted(grid: GeoGrid) -> list[GridCell] | None:
        level = grid.key_level()
        if level is None or grid.tile is None:
            return await store.geo_grid(tenant, plain, grid)
        read_world = functools.partial(store.geo_grid, tenant, plain)
        found = await hub.kept.cells(hub.values, key, view, grid.tile, level, settings.tile_cache_seconds, read_world)
        return found if found is not None else await store.geo_grid(tenant, plain, grid)

    return counted


def _answer(request: Request, body: bytes, layer: str, etag: str, max_age: int) -> Response:
    headers = {
        "ETag": etag,
        "Cache-Control": f"private, max-age={max_age}",  # what a caller sees depends on its policy
        "Vary": "Authorization, Cookie, NGSILD-Tenant, Link",  # Cookie: the console's session (auth/middleware.py)
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
