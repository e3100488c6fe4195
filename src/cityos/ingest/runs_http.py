"""The import runs API (admins of every tenant: a run may be of any tenant): GET /cityos/v1/imports
(newest first, paged), GET and PUT /cityos/v1/imports/{run_id} (PUT: how `cityos import --url`
records its run at the broker it writes to). Thin handlers over ingest/runs.py and the store."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.auth.credentials import require_admin
from cityos.errors import BadRequestData, ResourceNotFound
from cityos.ingest.runs import RUNS_PATH, parse_run
from cityos.ngsild.common import Services, principal
from cityos.ops.declare import api

MAX_BODY = 64 * 1024


def _admin(request: Request) -> Services:
    require_admin(principal(request), every_tenant=True)
    services: Services = request.app.state.services
    return services


@api("Import runs, newest first, with their counts and first rejects (admin)", query=("limit", "offset"))
async def list_runs(request: Request) -> Response:
    services = _admin(request)
    params = request.query_params
    unknown = set(params) - {"limit", "offset"}
    if unknown:
        raise BadRequestData(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    try:
        limit = int(params.get("limit", services.settings.default_page_size))
        offset = int(params.get("offset", 0))
    except ValueError as exc:
        raise BadRequestData("limit and offset are integers") from exc
    if not 0 < limit <= services.settings.max_page_size or offset < 0:
        raise BadRequestData(f"limit must be 1-{services.settings.max_page_size}, offset not negative")
    runs = await services.store.list_import_runs(limit, offset)
    return Response(orjson.dumps([run.as_dict() for run in runs]), media_type="application/json")


@api("One import run (admin)")
async def get_run(request: Request) -> Response:
    services = _admin(request)
    run = await services.store.get_import_run(request.path_params["run_id"])
    if run is None:
        raise ResourceNotFound(f"no import run {request.path_params['run_id']}")
    return Response(orjson.dumps(run.as_dict()), media_type="application/json")


@api("Record an import run made elsewhere, e.g. by `cityos import --url` (admin)", body="Any", ok=204)
async def put_run(request: Request) -> Response:
    services = _admin(request)
    body = await request.body()
    if len(body) > MAX_BODY:
        raise BadRequestData(f"a run is at most {MAX_BODY} bytes")
    try:
        run = parse_run(orjson.loads(body), request.path_params["run_id"])
    except orjson.JSONDecodeError as exc:
        raise BadRequestData("the body is not JSON") from exc
    except ValueError as exc:
        raise BadRequestData(str(exc)) from exc
    await services.store.save_import_run(run)
    return Response(status_code=204)


def routes() -> list[Route]:
    return [
        Route(RUNS_PATH, list_runs, methods=["GET"]),
        Route(RUNS_PATH + "/{run_id}", get_run, methods=["GET"]),
        Route(RUNS_PATH + "/{run_id}", put_run, methods=["PUT"]),
    ]
