"""The catalogue's routes: thin handlers over CatalogService (anyone may call them: they show only
what the access policies give the anonymous caller, without personal data; docs/open-data.md).

GET /catalog                                DCAT-AP 3 catalogue: JSON-LD, Turtle or RDF/XML (Accept or ?format=)
GET /catalog/datasets                       the public datasets as declared, with their download links
GET /catalog/datasets/{id}                  one dataset, with what the live data says (count, extent, time span)
GET /catalog/datasets/{id}/counts?by=attr   entities per value of a declared attribute, groups below k hidden
GET|POST /api/3/action/{action}             CKAN-compatible read API (also /api/action/{action}, as CKAN)
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.catalog import ckan, dcat
from cityos.catalog.dcat import download_url
from cityos.catalog.model import Dataset
from cityos.catalog.service import CatalogService
from cityos.errors import BadRequestData, ResourceNotFound
from cityos.ngsild.negotiation import JSON, JSON_LD, negotiate
from cityos.ops.declare import api
from cityos.temporal.query import format_micros

RDF_MEDIA = {JSON_LD: "jsonld", JSON: "jsonld", "text/turtle": "ttl", "application/rdf+xml": "rdf"}
CKAN_ACTIONS = ("package_list", "package_show", "package_search", "organization_list", "status_show")
CACHE = "public, max-age=60"


def service(request: Request) -> CatalogService:
    found: CatalogService = request.app.state.catalog
    return found


async def fresh(request: Request) -> CatalogService:
    """The catalogue service, the dataspace offers its datasets may stand for read as they are now."""
    found = service(request)
    await found.refresh()
    return found


def base_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=JSON, headers=headers)


# the CKAN actions' parameters (package_search: q, fq, rows, start; package_show: id)
CKAN_PARAMS = ("id", "name_or_id", "q", "fq", "rows", "start", "all_fields", "limit", "offset")


@api(
    "The open-data catalogue, DCAT-AP 3 (JSON-LD, Turtle or RDF/XML by Accept or format)",
    query=("format",),
    returns="Any",
    media=("application/ld+json", "text/turtle", "application/rdf+xml"),
)
async def catalog(request: Request) -> Response:
    chosen = request.query_params.get("format")
    if chosen is not None:
        if chosen not in dcat.MEDIA:
            raise BadRequestData(f"format must be one of {', '.join(dcat.MEDIA)}")
        fmt = chosen
    else:
        fmt = RDF_MEDIA[negotiate(request.headers.get("accept"), (JSON_LD, "text/turtle", "application/rdf+xml", JSON))]
    graph = await (await fresh(request)).graph(base_url(request))
    body = dcat.serialize(graph, fmt)
    return Response(body, media_type=dcat.MEDIA[fmt], headers={"Vary": "Accept", "Cache-Control": CACHE})


def summary(dataset: Dataset, base: str) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "type": dataset.type,
        **({"offer": dataset.offer} if dataset.offer else {}),
        **({"attrs": sorted(dataset.attrs)} if dataset.attrs is not None else {}),
        **({"q": dataset.q} if dataset.q else {}),
        **({"area": list(dataset.area)} if dataset.area else {}),
        "title": dataset.title,
        "description": dataset.description,
        "keywords": {lang: list(words) for lang, words in dataset.keywords.items()},
        "themes": list(dataset.themes),
        "licence": dataset.licence,
        "countsBy": list(dataset.group_by),
        "distributions": {name: download_url(base, dataset, name) for name in dcat.distributions()},
    }


@api("The published datasets (docs/open-data.md)", returns="ObjectList", media=("application/json",), errors=())
async def list_datasets(request: Request) -> Response:
    base = base_url(request)
    return _json([summary(d, base) for d in (await fresh(request)).public.datasets()], headers={"Cache-Control": CACHE})


@api(
    "One published dataset with its computed coverage and distributions",
    returns="Object",
    media=("application/json",),
    errors=(404,),
)
async def show_dataset(request: Request) -> Response:
    catalog_service = await fresh(request)
    dataset = catalog_service.public.dataset(request.path_params["dataset_id"])
    described = await catalog_service.describe(dataset)
    stats = described.stats
    body = summary(dataset, base_url(request)) | {
        "entities": stats.count,
        "bbox": list(stats.bbox) if stats.bbox else None,
        "temporal": [format_micros(stats.first), format_micros(stats.last)]
        if stats.first is not None and stats.last is not None
        else None,
        "historyInstances": stats.instances,
        "medianUpdateSeconds": stats.interval,
        "frequency": dcat.frequency(stats),
        "byteSize": described.sizes,
    }
    return _json(body, headers={"Cache-Control": CACHE})


@api(
    "A dataset's entity counts by an attribute, groups under k hidden",
    query=("by",),
    returns="Object",
    media=("application/json",),
    errors=(400, 404),
)
async def counts(request: Request) -> Response:
    public = (await fresh(request)).public
    dataset = public.dataset(request.path_params["dataset_id"])
    by = request.query_params.get("by")
    if not by:
        raise BadRequestData(f"by is required: one of {', '.join(dataset.group_by) or '(none declared)'}")
    return _json(await public.counts(dataset, by), headers={"Cache-Control": CACHE})


# -- CKAN --
@api(
    "A CKAN read action (package_list, package_show, package_search, organization_list, status_show)",
    query=CKAN_PARAMS,
    body="Object",
    body_required=False,
    returns="Object",
    media=("application/json",),
    errors=(400, 404),
    errors_schema="Object",
)
async def ckan_action(request: Request) -> Response:
    action = request.path_params["action"]
    help_url = f"{base_url(request)}/api/3/action/help_show?name={action}"
    try:
        params = await _ckan_params(request)
        result = await _ckan(request, action, params)
    except ckan.CkanError as exc:
        error = {"__type": exc.kind, "message": f"{exc.kind}: {exc.message}"}
        return _json({"help": help_url, "success": False, "error": error}, status=exc.status)
    return _json({"help": help_url, "success": True, "result": result}, headers={"Cache-Control": CACHE})


async def _ckan_params(request: Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query_params)
    if request.method == "POST":
        body = await request.body()
        if body:
            try:
                loaded = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise ckan.CkanError("Validation Error", 400, "the body is not JSON") from None
            if not isinstance(loaded, dict):
                raise ckan.CkanError("Validation Error", 400, "the body must be a JSON object")
            params |= loaded
    return params


def _int(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ckan.CkanError("Validation Error", 409, f"{name}: invalid integer {value!r}") from None


async def _ckan(request: Request, action: str, params: dict[str, Any]) -> Any:
    catalog_service = await fresh(request)
    public, base = catalog_service.public, base_url(request)
    if action not in CKAN_ACTIONS:
        raise ckan.CkanError(
            "Not Found Error", 404, f"action {action} is not served (read API: {', '.join(CKAN_ACTIONS)})"
        )
    if action == "status_show":
        return ckan.status(public.catalog, base)
    if action == "organization_list":
        org = ckan.organization(public.catalog)
        return [org] if str(params.get("all_fields", "")).lower() in ("true", "1") else [org["name"]]
    if action == "package_list":
        names = [d.id for d in public.datasets()]
        offset, limit = _int(params, "offset", 0), params.get("limit")
        return names[offset : offset + _int(params, "limit", 0)] if limit is not None else names[offset:]
    if action == "package_show":
        name = params.get("id") or params.get("name_or_id")
        try:
            found = public.dataset(str(name)) if name else None
        except ResourceNotFound:
            found = None
        if found is None:
            raise ckan.CkanError("Not Found Error", 404, "Dataset not found")
        return ckan.package(public.catalog, await catalog_service.describe(found), base)
    packages = [ckan.package(public.catalog, item, base) for item in await catalog_service.describe_all()]
    return ckan.search(
        packages,
        str(params.get("q", "")),
        str(params.get("fq", "")),
        _int(params, "rows", 10),
        _int(params, "start", 0),
    )


def routes() -> list[Route]:
    return [
        Route("/catalog", catalog, methods=["GET"]),
        Route("/catalog/datasets", list_datasets, methods=["GET"]),
        Route("/catalog/datasets/{dataset_id}", show_dataset, methods=["GET"]),
        Route("/catalog/datasets/{dataset_id}/counts", counts, methods=["GET"]),
        Route("/api/3/action/{action}", ckan_action, methods=["GET", "POST"]),
        Route("/api/action/{action}", ckan_action, methods=["GET", "POST"]),  # CKAN's unversioned path (ckanapi's)
    ]
