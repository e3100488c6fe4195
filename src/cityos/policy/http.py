"""The admin API of access policies (/cityos/v1/admin/policies; role admin only; the request's
declared purpose is read by auth/middleware.py). Thin: PolicyService (policy/service.py) does the work."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.auth.credentials import require_admin
from cityos.errors import InvalidRequest, NgsiLdError, ResourceNotFound
from cityos.ngsild.common import json_response, no_content, principal, read_json, services
from cityos.ops.declare import api
from cityos.policy.enforce import record_denied
from cityos.policy.service import PolicyService
from cityos.store.policy_base import PolicyRow

BASE = "/cityos/v1/admin/policies"


def render(row: PolicyRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "version": row.version,
        "policy": row.document,
        "changedBy": row.changed_by,
        "changedAt": row.changed_at,
        "source": row.source,
    }


async def _service(request: Request) -> PolicyService:
    """The policy service, for an admin of every tenant only (401 for the anonymous caller, 403 for
    others; the refusal is audited)."""
    service: PolicyService | None = getattr(request.app.state, "policies", None)
    if service is None:
        raise ResourceNotFound("access policies are off (--auth off)")
    caller = principal(request)
    try:
        require_admin(caller, every_tenant=True)  # policies bind every tenant
    except NgsiLdError as error:
        await record_denied(services(request).audit, caller, "", [], error, "policy.admin")
        raise
    return service


def _policy_id(request: Request) -> str:
    return str(request.path_params["policy_id"])


@api("List access policies", returns="Any")
async def list_policies(request: Request) -> Response:
    service = await _service(request)
    version, rows = await service.store.load_policies()
    return json_response({"version": version, "policies": [render(row) for row in rows]})


@api("Add an access policy", body="Object", ok=201, returns="Any", errors=(400, 409))
async def create_policy(request: Request) -> Response:
    service = await _service(request)
    body = await read_json(request)
    policy_id = body.get("id") if isinstance(body, dict) else None
    if not isinstance(policy_id, str):
        raise InvalidRequest("a policy needs an id")
    row = await service.change("create", policy_id, body, by=principal(request).id)
    return json_response(render(row), status=201, headers={"Location": f"{BASE}/{quote(row.id, safe='')}"})


@api("Retrieve an access policy", returns="Object", errors=(404,))
async def get_policy(request: Request) -> Response:
    service = await _service(request)
    policy_id = _policy_id(request)
    _, rows = await service.store.load_policies()
    for row in rows:
        if row.id == policy_id:
            return json_response(render(row))
    raise ResourceNotFound(f"policy {policy_id} does not exist")


@api("An access policy's versions", returns="Any", errors=(404,))
async def policy_history(request: Request) -> Response:
    service = await _service(request)
    policy_id = _policy_id(request)
    rows = await service.store.policy_history(policy_id)
    if not rows:
        raise ResourceNotFound(f"policy {policy_id} does not exist")
    return json_response([render(row) for row in rows])


@api("Replace an access policy", body="Object", returns="Any", errors=(400, 404))
async def replace_policy(request: Request) -> Response:
    service = await _service(request)
    body = await read_json(request)
    row = await service.change("replace", _policy_id(request), body, by=principal(request).id)
    return json_response(render(row))


@api("Delete an access policy", ok=204, returns=None, errors=(404,))
async def delete_policy(request: Request) -> Response:
    service = await _service(request)
    await service.change("delete", _policy_id(request), None, by=principal(request).id)
    return no_content()


@api("Read the policy file again", returns="Any")
async def reload_file(request: Request) -> Response:
    """Read the --policy-file again (also what SIGHUP-less deployments use after editing it)."""
    service = await _service(request)
    if not service.policy_file:
        raise ResourceNotFound("no --policy-file is set")
    try:
        changed = await service.sync_file()
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"the policy file was not loaded: {exc}") from exc
    await service.reload()
    return json_response({"version": service.authorizer.version, "changed": [render(row) for row in changed]})


def routes() -> list[Route]:
    one = BASE + "/{policy_id}"
    return [
        Route(BASE, list_policies, methods=["GET"]),
        Route(BASE, create_policy, methods=["POST"]),
        Route(BASE + "/reload", reload_file, methods=["POST"]),
        Route(one, get_policy, methods=["GET"]),
        Route(one + "/history", policy_history, methods=["GET"]),
        Route(one, replace_policy, methods=["PUT"]),
        Route(one, delete_policy, methods=["DELETE"]),
    ]
