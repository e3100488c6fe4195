"""The forecast and register API: thin handlers over ForecastService and ModelRegister.

POST /cityos/v1/forecasters/compute             forecast with every forecaster (or ?id=a,b), admins only
POST /cityos/v1/forecasters/{id}/compute        one forecaster, admins only
GET  /cityos/v1/insight/register                the register of models: public (how a number that
                                                affects a citizen was made)
The forecasts themselves are read as NGSI-LD entities (type TimeSeriesForecast), under the access
policies like any entity. Computing reads the store directly, hence admins of every tenant.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.auth.credentials import require_admin
from cityos.errors import OperationNotSupported, ResourceNotFound
from cityos.insight.forecast import ForecastUnavailable
from cityos.insight.forecast_service import ForecastService, Issued, UnknownForecaster
from cityos.insight.register import ModelRegister
from cityos.ngsild.common import principal, tenant
from cityos.ops.declare import api

PREFIX = "/cityos/v1/forecasters"
REGISTER = "/cityos/v1/insight/register"


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def summary(item: Issued) -> dict[str, Any]:
    return {
        "forecaster": item.forecaster,
        "entity": item.entity,
        "forecast": item.forecast_entity,
        "validFrom": item.valid_from,
        "validTo": item.valid_to,
        "stored": item.error is None,
        **({"error": item.error} if item.error else {}),
        "values": item.values,
    }


async def _compute(request: Request, ids: list[str]) -> Response:
    require_admin(principal(request), every_tenant=True)
    service: ForecastService = request.app.state.forecasts
    try:
        done = await service.compute_all(ids, tenant=tenant(request))
    except UnknownForecaster as exc:
        raise ResourceNotFound(f"no forecaster {exc.args[0]}") from None
    except ForecastUnavailable as exc:
        raise OperationNotSupported(str(exc)) from None
    return _json([summary(item) for item in done])


@api("Compute every forecast now (admin)", returns="Any", errors=(422,))
async def compute_all(request: Request) -> Response:
    return await _compute(request, [i for i in request.query_params.get("id", "").split(",") if i])


@api("Compute one forecast now (admin)", returns="Any", errors=(404, 422))
async def compute_one(request: Request) -> Response:
    return await _compute(request, [request.path_params["forecaster_id"]])


@api("The register of models: indicators, forecasters, rules, detectors (public)", returns="Any", errors=())
async def register(request: Request) -> Response:
    found: ModelRegister = request.app.state.model_register
    return _json(found.entries())


def routes() -> list[Route]:
    return [
        Route(PREFIX + "/compute", compute_all, methods=["POST"]),
        Route(PREFIX + "/{forecaster_id}/compute", compute_one, methods=["POST"]),
        Route(REGISTER, register, methods=["GET"]),
    ]
