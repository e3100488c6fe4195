"""The indicator API: thin handlers over IndicatorService.

GET  /cityos/v1/indicators                  every loaded indicator, as declared (anyone: how a
                                            number is made is public)
POST /cityos/v1/indicators/compute          compute and store all (or ?id=a,b), admins only
POST /cityos/v1/indicators/{id}/compute     compute and store one, admins only
GET  /cityos/v1/indicators/{id}/verify      recompute the stored value from its provenance, admins only
PUT  /cityos/v1/indicators/{id}             add or replace one from its TOML text (kept in --indicators-dir;
                                            this worker only until the others start again), admins only
Computing reads the store directly (no access policy applies to it), hence admins of every tenant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePath
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.auth.credentials import require_admin
from cityos.errors import BadRequestData, OperationNotSupported, ResourceNotFound
from cityos.insight.engine import Result, iso
from cityos.insight.model import Indicator, IndicatorFileError
from cityos.insight.service import IndicatorService, UnknownIndicator, Written
from cityos.ngsild.common import principal, tenant
from cityos.ops.declare import api

PREFIX = "/cityos/v1/indicators"


def _service(request: Request, *, admin: bool) -> IndicatorService:
    if admin:
        require_admin(principal(request), every_tenant=True)
    service: IndicatorService = request.app.state.indicators
    return service


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def describe(indicator: Indicator) -> dict[str, Any]:
    return {
        "id": indicator.id,
        "name": indicator.name,
        "description": indicator.description,
        "standard": indicator.standard,
        "clause": indicator.clause,
        "references": list(indicator.references),
        "unit": indicator.unit,
        "period": indicator.period,
        "anchor": indicator.anchor,
        "scope": indicator.scope,
        "coverage": indicator.coverage,
        "formula": indicator.formula.text,
        "version": indicator.version,
        "digest": indicator.digest,
        "source": PurePath(indicator.source).name,  # the file, not where the server keeps it
        "entity": indicator.entity_id,
        **(
            {"districts": {d.id: {"name": d.name, "polygon": [list(p) for p in d.ring]} for d in indicator.districts}}
            if indicator.districts
            else {}
        ),
        "inputs": {
            name: {k: v for k, v in vars_of(item).items() if v is not None and k != "name"}
            for name, item in indicator.inputs.items()
        },
    }


def vars_of(item: Any) -> dict[str, Any]:
    return {name: getattr(item, name) for name in item.__slots__}


def summary(result: Result, error: str | None = None) -> dict[str, Any]:
    """What a computation gave, as the API and the CLI show it."""
    return {
        "id": result.indicator.id,
        "entity": result.indicator.entity_of(result.district),
        **({"district": result.district.id} if result.district is not None else {}),
        "value": result.value,
        "unit": result.indicator.unit,
        "status": result.status,
        "reason": result.reason,
        "coverage": round(result.coverage, 6),
        "window": [iso(result.window[0]), iso(result.window[1])],
        "stored": error is None,
        **({"error": error} if error else {}),
    }


def _written(written: Written) -> dict[str, Any]:
    return summary(written.result, written.error)


@api("The register of city indicators (public)", returns="Any", errors=())
async def list_indicators(request: Request) -> Response:
    service = _service(request, admin=False)
    return _json([describe(service.indicators[key]) for key in sorted(service.indicators)])


@api("Compute every indicator now (admin)", returns="Any", headers=("NGSILD-Tenant",))
async def compute_all(request: Request) -> Response:
    service = _service(request, admin=True)
    ids = [i for i in request.query_params.get("id", "").split(",") if i]
    try:
        done = await service.compute_all(ids, tenant=tenant(request))
    except UnknownIndicator as exc:
        raise ResourceNotFound(f"no indicator {exc.args[0]}") from None
    return _json([_written(item) for item in done])


@api("Compute one indicator now (admin)", returns="Any", errors=(400, 404), headers=("NGSILD-Tenant",))
async def compute_one(request: Request) -> Response:
    service = _service(request, admin=True)
    try:
        done = await service.compute_scopes(request.path_params["indicator_id"], tenant=tenant(request))
    except UnknownIndicator as exc:
        raise ResourceNotFound(f"no indicator {exc.args[0]}") from None
    # the city's value; a district-scoped indicator: the list of its districts' values
    return _json(
        _written(done[0]) if len(done) == 1 and done[0].result.district is None else [_written(w) for w in done]
    )


@api("Recompute an indicator and compare (admin)", returns="Any", errors=(400, 404), headers=("NGSILD-Tenant",))
async def verify(request: Request) -> Response:
    service = _service(request, admin=True)
    indicator_id = request.path_params["indicator_id"]
    try:
        verdict = await service.verify(indicator_id, tenant=tenant(request))
    except UnknownIndicator as exc:
        raise ResourceNotFound(f"no indicator {exc.args[0]}") from None
    return _json(
        {
            "id": indicator_id,
            "matches": verdict.matches,
            "stored": verdict.stored,
            "recomputed": verdict.recomputed,
            "reason": verdict.reason,
        }
    )


async def put_file(
    request: Request, put: Callable[[str, str], tuple[Any, bool]], key: str, show: Callable[[Any], Any], noun: str
) -> Response:
    """PUT of a declaration file (an indicator, an alert rule): its TOML text in, what was loaded
    out; a refused file is 400 with its line and reason, nothing changed."""
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestData(f"{noun} is UTF-8 text") from exc
    try:
        loaded, created = put(request.path_params[key], text)
    except IndicatorFileError as exc:  # a refused rule file too (RuleFileError)
        raise BadRequestData(f"line {exc.line}: {exc.reason}" if exc.line else exc.reason) from None
    except ValueError as exc:
        raise OperationNotSupported(str(exc)) from None
    return _json(show(loaded), status=201 if created else 200)


@api("Add or replace an indicator (admin)", body="Object", returns="Any", more={201: "Any"}, errors=(400,))
async def put_indicator(request: Request) -> Response:
    service = _service(request, admin=True)
    return await put_file(request, service.put, "indicator_id", describe, "an indicator file")


def routes() -> list[Route]:
    return [
        Route(PREFIX, list_indicators, methods=["GET"]),
        Route(PREFIX + "/compute", compute_all, methods=["POST"]),
        Route(PREFIX + "/{indicator_id}/compute", compute_one, methods=["POST"]),
        Route(PREFIX + "/{indicator_id}/verify", verify, methods=["GET"]),
        Route(PREFIX + "/{indicator_id}", put_indicator, methods=["PUT"]),
    ]
