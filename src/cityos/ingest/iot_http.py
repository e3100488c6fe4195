"""The IoT Agent over HTTP (Starlette handlers that only translate), under /iot as in FIWARE:

    GET  /iot/about                         version and counters
    POST /iot/services  GET  DELETE ?apikey= service groups       {"services": [...]}
    POST /iot/devices   GET  /iot/devices/{id}  DELETE             {"devices": [...]}
    POST /iot/d?k=APIKEY&i=DEVICE           an UltraLight 2.0 measure (text/plain)
    POST /iot/json?k=APIKEY&i=DEVICE        a JSON measure

The tenant is the `fiware-service` header (or NGSILD-Tenant); `fiware-servicepath` is kept.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos import __version__
from cityos.auth.devices import check_device, check_provisioner
from cityos.auth.principal import current_principal
from cityos.entities.values import check_nesting
from cityos.errors import BadRequestData, InvalidRequest, PayloadTooLarge, ResourceNotFound
from cityos.ingest.iot_agent import IotAgent
from cityos.ingest.iot_payloads import JSON, UL
from cityos.ingest.iot_provisioning import Registry, parse_device, parse_group
from cityos.ngsild.common import TENANT_HEADER, TENANT_RE, json_response, no_content
from cityos.ops.declare import api


def _agent(request: Request) -> IotAgent:
    agent: IotAgent = request.app.state.ingest.agent
    return agent


def _registry(request: Request) -> Registry:
    return _agent(request).registry


def _tenant(request: Request) -> str:
    value = request.headers.get("fiware-service") or request.headers.get(TENANT_HEADER) or ""
    if value and not TENANT_RE.match(value):
        raise BadRequestData(f"invalid service (tenant) name {value!r}")
    return value


def _service_path(request: Request) -> str:
    return request.headers.get("fiware-servicepath") or "/"


async def _body(request: Request) -> bytes:
    limit: int = request.app.state.services.settings.max_body_bytes
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    return body


async def _json_list(request: Request, key: str) -> list[Any]:
    try:
        document = orjson.loads(await _body(request))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    check_nesting(document, request.app.state.services.settings.max_nesting_depth)
    items = document.get(key) if isinstance(document, dict) else None
    if not isinstance(items, list) or not items:
        raise BadRequestData(f'the body must be {{"{key}": [...]}} with at least one item')
    return items


@api("The IoT Agent's version (as a FIWARE agent answers)", returns="Object", errors=())
async def about(request: Request) -> Response:
    agent = _agent(request)
    mqtt = request.app.state.ingest.mqtt
    body = {"libVersion": __version__, "name": "cityos-iot-agent", **agent.about()}
    body["mqtt"] = mqtt.status() if mqtt is not None else {"enabled": False}
    return json_response(body)


@api("Provision service groups (IoT Agent API)", body="Object", ok=201, returns=None, errors=(400, 409))
async def create_groups(request: Request) -> Response:
    tenant, path = _tenant(request), _service_path(request)
    groups = [parse_group(item, tenant, path) for item in await _json_list(request, "services")]
    await _registry(request).add_groups(groups)
    return Response(status_code=201)


@api("List service groups", returns="Object")
async def list_groups(request: Request) -> Response:
    groups = _registry(request).groups(_tenant(request))
    return json_response({"count": len(groups), "services": [g.document() for g in groups]})


@api("Delete a service group", ok=204, returns=None, errors=(400, 404))
async def delete_group(request: Request) -> Response:
    apikey = request.query_params.get("apikey")
    if not apikey:
        raise BadRequestData("give the apikey of the service group to delete (?apikey=...)")
    if not await _registry(request).remove_group(_tenant(request), apikey):
        raise ResourceNotFound(f"no service group with apikey {apikey}")
    return no_content()


@api("Provision devices (IoT Agent API)", body="Object", ok=201, returns=None, errors=(400, 409))
async def create_devices(request: Request) -> Response:
    tenant, path = _tenant(request), _service_path(request)
    registry = _registry(request)
    devices = []
    for item in await _json_list(request, "devices"):
        apikey = item.get("apikey") if isinstance(item, dict) else None
        group = registry.group(tenant, apikey) if isinstance(apikey, str) else registry.default_group(tenant)
        devices.append(parse_device(item, tenant, path, group))
    await registry.add_devices(devices)
    return Response(status_code=201)


@api("List devices", returns="Object")
async def list_devices(request: Request) -> Response:
    devices = _registry(request).devices(_tenant(request))
    return json_response({"count": len(devices), "devices": [d.document() for d in devices]})


@api("Retrieve a device", returns="Object", errors=(404,))
async def get_device(request: Request) -> Response:
    device_id = request.path_params["device_id"]
    device = _registry(request).device(_tenant(request), device_id)
    if device is None:
        raise ResourceNotFound(f"no device {device_id}")
    return json_response(device.document())


@api("Delete a device", ok=204, returns=None, errors=(404,))
async def delete_device(request: Request) -> Response:
    device_id = request.path_params["device_id"]
    if not await _registry(request).remove_device(_tenant(request), device_id):
        raise ResourceNotFound(f"no device {device_id}")
    return no_content()


async def _measure(request: Request, fmt: str) -> Response:
    apikey, device_id = request.query_params.get("k"), request.query_params.get("i")
    if not apikey or not device_id:
        raise BadRequestData("a measure needs the apikey (k) and the device id (i) as query parameters")
    principal = current_principal.get()
    if not principal.unrestricted and not check_device(principal, _registry(request).owner(apikey), apikey):
        raise ResourceNotFound(f"no device {device_id} with apikey {apikey}")  # as if unknown: nothing leaks
    outcome = await _agent(request).handle(apikey, device_id, await _body(request), fmt=fmt)
    if outcome.status == "unknown_device":
        raise ResourceNotFound(outcome.detail)
    if outcome.status == "malformed":
        raise BadRequestData(f"device {device_id}: {outcome.detail}")
    return Response(status_code=200)


@api(
    "A device's measures in UltraLight 2.0 (device key)",
    query=("k", "i", "t"),
    body="Text",
    returns=None,
    body_media=("text/plain",),
)
async def ultralight_measure(request: Request) -> Response:
    return await _measure(request, UL)


@api(
    "A device's measures in JSON (device key)",
    query=("k", "i", "t"),
    body="Object",
    returns=None,
)
async def json_measure(request: Request) -> Response:
    return await _measure(request, JSON)


Endpoint = Callable[[Request], Awaitable[Response]]


def _provisioning(endpoint: Endpoint) -> Endpoint:
    """With --auth required, provisioning is administration: an admin of the service's tenant."""

    @functools.wraps(endpoint)  # its name and API declaration (ops/declare.py) are the endpoint's
    async def checked(request: Request) -> Response:
        principal = current_principal.get()
        if not principal.unrestricted:
            check_provisioner(principal, _tenant(request))
        return await endpoint(request)

    return checked


def routes() -> list[Route]:
    return [
        Route("/iot/about", about, methods=["GET"]),
        Route("/iot/services", _provisioning(create_groups), methods=["POST"]),
        Route("/iot/services", _provisioning(list_groups), methods=["GET"]),
        Route("/iot/services", _provisioning(delete_group), methods=["DELETE"]),
        Route("/iot/devices", _provisioning(create_devices), methods=["POST"]),
        Route("/iot/devices", _provisioning(list_devices), methods=["GET"]),
        Route("/iot/devices/{device_id}", _provisioning(get_device), methods=["GET"]),
        Route("/iot/devices/{device_id}", _provisioning(delete_device), methods=["DELETE"]),
        Route("/iot/d", ultralight_measure, methods=["POST"]),
        Route("/iot/json", json_measure, methods=["POST"]),
    ]
