"""Download routes of the public datasets (docs/open-data.md), streamed:

GET /catalog/datasets/{id}/entities.{csv,geojson,parquet}    the current entities
GET /catalog/datasets/{id}/history.{csv,geojson,parquet}     every attribute instance of their history
GET /catalog/datasets/{id}/entities.csv-metadata.json        the CSV's CSVW metadata (licence, attribution, columns)

A dataset above --export-max-rows is refused (403 TooManyResults) before the first byte.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from cityos.catalog.dcat import download_url
from cityos.catalog.http import base_url, fresh
from cityos.ops.declare import api

CACHE = "public, max-age=60"


def _links(request: Request, licence: str, dataset_id: str, fmt: str) -> str:
    links = [f'<{licence}>; rel="license"']
    if fmt == "csv":
        meta = f"{base_url(request)}/catalog/datasets/{dataset_id}/entities.csv-metadata.json"
        links.append(f'<{meta}>; rel="describedby"; type="application/csvm+json"')
    return ", ".join(links)


@api(
    "A dataset's download: entities or history as CSV, GeoJSON or Parquet, streamed",
    returns="Any",
    media=("text/csv", "application/geo+json", "application/vnd.apache.parquet"),
    errors=(403, 404, 422),
)
async def download(request: Request) -> Response:
    catalog = await fresh(request)
    exporter = catalog.exporter
    dataset = exporter.public.dataset(request.path_params["dataset_id"])
    kind, fmt = request.path_params["kind"], request.path_params["fmt"]
    name = fmt if kind == "entities" else f"{kind}-{fmt}"
    export = await exporter.export(dataset, kind, fmt, source=download_url(catalog.file_base, dataset, name))
    headers = {
        "Content-Disposition": f'attachment; filename="{export.filename}"',
        "Cache-Control": CACHE,
        "Link": _links(request, dataset.licence, dataset.id, fmt if kind == "entities" else ""),
    }
    return StreamingResponse(export.chunks, media_type=export.media_type, headers=headers)


@api(
    "The CSV download's CSV on the Web metadata (licence, attribution, columns)",
    returns="Object",
    media=("application/csvm+json",),
    errors=(404,),
)
async def csv_metadata(request: Request) -> Response:
    catalog = await fresh(request)
    exporter = catalog.exporter
    dataset = exporter.public.dataset(request.path_params["dataset_id"])
    csv_url = download_url(catalog.file_base, dataset, "csv")
    body = await exporter.csvw(dataset, csv_url, source=csv_url)
    return Response(orjson.dumps(body), media_type="application/csvm+json", headers={"Cache-Control": CACHE})


def routes() -> list[Route]:
    return [
        Route("/catalog/datasets/{dataset_id}/entities.csv-metadata.json", csv_metadata, methods=["GET"]),
        Route("/catalog/datasets/{dataset_id}/{kind:str}.{fmt:str}", download, methods=["GET"]),
    ]
