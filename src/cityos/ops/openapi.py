"""The OpenAPI 3.1 description of the application, generated from its route table: every route's
path, methods and path parameters come from Starlette's routes, the rest from what each handler
declares (ops/declare.py); nothing is written beside the code. A route whose handler declares
nothing is still described (its docstring as summary), and tests/test_openapi.py fails for it."""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import BaseRoute, Route

from cityos import __version__
from cityos.ops.declare import Operation, declared, in_description
from cityos.ops.schemas import ERROR_MEDIA, NGSI_LD_HEADERS, SCHEMAS, header, parameter, ref

OPENAPI_VERSION = "3.1.0"
STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No Content",
    207: "Multi-Status: some items failed (BatchResult)",
    400: "Invalid request or bad request data",
    401: "Credentials missing or invalid (--auth required)",
    403: "Refused by the access policies",
    404: "Not found",
    409: "Already exists or in conflict",
    411: "Length required",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable: the operation is not supported for this input",
    503: "The database is busy (Retry-After) or the check failed",
}
ALWAYS = (401, 403, 503)  # any route may answer these (auth, policies, a busy database)
GEO_JSON = "application/geo+json"
NGSI_LD = "/ngsi-ld/v1/"


def describe(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of `routes` (Starlette's, in the router's order)."""
    paths: dict[str, dict[str, Any]] = {}
    ids: set[str] = set()
    for route in routes:
        if not in_description(route):
            continue
        assert isinstance(route, Route)
        path = openapi_path(route)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            operation = _operation(route, method, declared(route.endpoint, method), ids)
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "CityOS",
            "version": __version__,
            "summary": "NGSI-LD context broker and smart-city platform",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # without --auth required nothing is asked; with it a key, a token or an OIDC token
        "security": [{}, {"bearer": []}],
    }


def openapi_path(route: Route) -> str:
    """`/a/{b:path}` (any convertor) as OpenAPI writes it: `/a/{b}`."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)


def operations(routes: list[BaseRoute]) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route: what the description must hold."""
    return {
        (method, openapi_path(route))
        for route in routes
        if isinstance(route, Route) and in_description(route)
        for method in (route.methods or set()) - {"HEAD"}
    }


def _operation(route: Route, method: str, op: Operation | None, ids: set[str]) -> dict[str, Any]:
    handler = route.endpoint
    name = getattr(handler, "__name__", "operation")
    operation_id = name if op is None or len(getattr(handler, "__api__", {})) <= 1 else f"{name}_{method.lower()}"
    base, n = operation_id, 2
    while operation_id in ids:  # the same handler on a twin path (trailing slash)
        operation_id, n = f"{base}_{n}", n + 1
    ids.add(operation_id)
    tag = _tag(route.path, getattr(handler, "__module__", "cityos"))
    if op is None:
        doc = (getattr(handler, "__doc__", None) or f"{method} {route.path}").strip().splitlines()[0]
        op = Operation(doc, errors=(400, 404))
    parameters = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for p in route.param_convertors
    ]
    parameters += [parameter(q) for q in op.query]
    headers = op.headers
    if headers is None:
        headers = NGSI_LD_HEADERS if route.path.startswith(NGSI_LD) else ()
    parameters += [header(name) for name in headers]
    described: dict[str, Any] = {
        "operationId": operation_id,
        "summary": op.summary,
        "tags": [tag],
        "responses": _responses(op),
    }
    if route.path.endswith("/") and len(route.path) > 1:
        described["description"] = "The same operation written with a trailing slash."
    if parameters:
        described["parameters"] = parameters
    if op.body is not None:
        described["requestBody"] = {
            "required": op.body_required,
            "content": {media: {"schema": ref(op.body)} for media in op.body_media},
        }
        if op.body_media == ("application/json",):
            described["requestBody"]["description"] = "application/ld+json is accepted too, its @context inside"
    return described


def _tag(path: str, module: str) -> str:
    """The group an operation is shown in: NGSI-LD's by its first path segment (entities,
    subscriptions, temporal...), the others by their package (audit, policy, insight...)."""
    if path.startswith(NGSI_LD):
        return "NGSI-LD " + path[len(NGSI_LD) :].split("/", 1)[0]
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "cityos"


def _responses(op: Operation) -> dict[str, Any]:
    problem = {ERROR_MEDIA: {"schema": ref(op.errors_schema)}}
    if op.errors_schema != "ProblemDetails":  # an API with its own error shape answers it in its own formats
        problem = {media: {"schema": ref(op.errors_schema)} for media in op.media}
    ok: dict[str, Any] = {"description": STATUS_TEXT.get(op.ok, "Success")}
    if op.returns is not None:
        content = {media: {"schema": ref(op.returns)} for media in op.media}
        if GEO_JSON in op.media:
            content[GEO_JSON] = {"schema": ref("FeatureCollection" if op.returns == "EntityList" else "Feature")}
        ok["content"] = content
    if op.links:
        ok["links"] = {
            name: {"operationId": target, "parameters": dict(values)} for name, (target, values) in op.links.items()
        }
    responses: dict[str, Any] = {str(op.ok): ok}
    for status, schema in op.more.items():
        other: dict[str, Any] = {"description": STATUS_TEXT.get(status, "Success")}
        if schema is not None:
            other["content"] = {media: {"schema": ref(schema)} for media in op.media}
        responses[str(status)] = other
    for status in (*op.errors, *ALWAYS):
        responses.setdefault(str(status), {"description": STATUS_TEXT.get(status, "Error"), "content": problem})
    responses["4XX"] = {"description": f"Another client error ({op.errors_schema})", "content": problem}
    return responses
