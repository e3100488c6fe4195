"""The admin API for keys and users, and the token endpoint (Starlette handlers that only translate):

    POST   /cityos/v1/admin/keys            {"name", "tenants"?, "roles"?, "groups"?, "expiresAt"?}
                                             -> 201 with the token, shown this once
    GET    /cityos/v1/admin/keys            GET /cityos/v1/admin/keys/{id}    (never a secret)
    DELETE /cityos/v1/admin/keys/{id}       revoke (204)
    POST   /cityos/v1/admin/users           {"name", "password", "tenants"?, "roles"?, "groups"?}
    GET    /cityos/v1/admin/users           DELETE /cityos/v1/admin/users/{name}
    PUT    /cityos/v1/admin/users/{name}/password   {"password"}
    POST   /cityos/v1/auth/token            HTTP Basic (a local user) -> a short-lived bearer token

Every admin route needs the admin role (401 without credentials, 403 without the role).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.auth.credentials import public_view, require_admin
from cityos.auth.errors import Unauthorized
from cityos.auth.hashing import parse_expiry
from cityos.auth.principal import Principal, current_principal
from cityos.auth.service import Identity
from cityos.errors import BadRequestData
from cityos.ngsild.common import json_response, no_content, read_json
from cityos.ops.declare import api

ADMIN = "/cityos/v1/admin"


def _admin() -> Principal:
    """The caller, who must be an admin: checked before the body is read."""
    principal = current_principal.get()
    require_admin(principal)
    return principal


def _identity(request: Request) -> Identity:
    identity: Identity = request.app.state.identity
    return identity


async def _object(request: Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequestData("the body must be a JSON object")
    return body


def _list(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name, [])
    if not isinstance(value, list):
        raise BadRequestData(f"{name} must be an array of strings")
    return value


def _tenants(body: dict[str, Any]) -> list[str] | None:
    return _list(body, "tenants") if body.get("tenants") is not None else None


@api("Create an API key (admin)", ok=201, returns="Object", body="Object", errors=(400, 404))
async def create_key(request: Request) -> Response:
    actor = _admin()
    body = await _object(request)
    expires = body.get("expiresAt")
    if expires is not None:
        if not isinstance(expires, str):
            raise BadRequestData("expiresAt must be a string (an ISO 8601 time or a duration such as 90d)")
        try:
            expires = parse_expiry(expires)
        except ValueError as exc:
            raise BadRequestData(str(exc)) from exc
    issued = await _identity(request).credentials.create_key(
        actor,
        name=body.get("name", ""),
        tenants=_tenants(body),
        roles=_list(body, "roles"),
        groups=_list(body, "groups"),
        expires_at=expires,
    )
    view = {**public_view(issued.row, time.time()), "token": issued.token}
    return json_response(view, status=201, headers={"Location": f"{ADMIN}/keys/{issued.row.id}"})


@api("List API keys", ok=200, returns="Any", errors=(400, 404))
async def list_keys(request: Request) -> Response:
    rows = await _identity(request).credentials.list_keys(_admin())
    now = time.time()
    return json_response([public_view(row, now) for row in rows])


@api("Retrieve an API key's record", ok=200, returns="Object", errors=(400, 404))
async def get_key(request: Request) -> Response:
    row = await _identity(request).credentials.get_key(_admin(), request.path_params["key_id"])
    return json_response(public_view(row, time.time()))


@api("Revoke an API key", ok=204, returns=None, errors=(400, 404))
async def revoke_key(request: Request) -> Response:
    await _identity(request).credentials.revoke_key(_admin(), request.path_params["key_id"])
    return no_content()


@api("Create a local user (admin)", ok=201, returns="Object", body="Object", errors=(400, 404))
async def create_user(request: Request) -> Response:
    actor = _admin()
    body = await _object(request)
    row = await _identity(request).credentials.create_user(
        actor,
        name=body.get("name", ""),
        password=body.get("password", ""),
        tenants=_tenants(body),
        roles=_list(body, "roles"),
        groups=_list(body, "groups"),
    )
    return json_response(public_view(row, time.time()), status=201, headers={"Location": f"{ADMIN}/users/{row.id}"})


@api("List local users", ok=200, returns="Any", errors=(400, 404))
async def list_users(request: Request) -> Response:
    rows = await _identity(request).credentials.list_users(_admin())
    now = time.time()
    return json_response([public_view(row, now) for row in rows])


@api("Delete a local user", ok=204, returns=None, errors=(400, 404))
async def delete_user(request: Request) -> Response:
    await _identity(request).credentials.delete_user(_admin(), request.path_params["name"])
    return no_content()


@api("Set a local user's password", ok=204, returns=None, body="Object", errors=(400, 404))
async def set_password(request: Request) -> Response:
    actor = _admin()
    body = await _object(request)
    await _identity(request).credentials.set_password(actor, request.path_params["name"], body.get("password", ""))
    return no_content()


@api("A token for a local user's password (HTTP Basic)", ok=200, returns="Object", errors=(400, 404))
async def issue_token(request: Request) -> Response:
    """A local user proves its password once (HTTP Basic, checked by the middleware) and gets a
    bearer token valid for --user-token-lifetime seconds."""
    principal = current_principal.get()
    header = request.headers.get("authorization", "")
    if principal.kind != "user" or not header.lower().startswith("basic "):
        raise Unauthorized("log in with HTTP Basic (a local user's name and password)")
    identity = _identity(request)
    user = await identity.credentials.store.get_credential("user", principal.id.removeprefix("user:"))
    if user is None:
        raise Unauthorized()
    lifetime = identity.settings.user_token_lifetime
    issued = await identity.credentials.issue_session(user, lifetime, time.time())
    answer = {"access_token": issued.token, "token_type": "Bearer", "expires_in": int(lifetime)}
    return json_response(answer, headers={"Cache-Control": "no-store"})


def routes() -> list[Route]:
    return [
        Route(f"{ADMIN}/keys", create_key, methods=["POST"]),
        Route(f"{ADMIN}/keys", list_keys, methods=["GET"]),
        Route(f"{ADMIN}/keys/{{key_id}}", get_key, methods=["GET"]),
        Route(f"{ADMIN}/keys/{{key_id}}", revoke_key, methods=["DELETE"]),
        Route(f"{ADMIN}/users", create_user, methods=["POST"]),
        Route(f"{ADMIN}/users", list_users, methods=["GET"]),
        Route(f"{ADMIN}/users/{{name}}", delete_user, methods=["DELETE"]),
        Route(f"{ADMIN}/users/{{name}}/password", set_password, methods=["PUT"]),
        Route("/cityos/v1/auth/token", issue_token, methods=["POST"]),
    ]
