"""The door: every HTTP request gets a request id (X-Request-Id, echoed), and with --auth required
a Principal from its Authorization header, both in contextvars (auth/principal.py) that handlers,
the store and the audit trail read. With --auth off nothing is checked: the principal stays OPEN.

Pure ASGI (no BaseHTTPMiddleware), so the contextvars set here are those the handler sees.
"""

from __future__ import annotations

import itertools
import re
import secrets

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cityos.auth.authenticator import Authenticator
from cityos.auth.errors import TooManyRequests, Unauthorized
from cityos.auth.principal import current_principal, current_request_id
from cityos.auth.ratelimit import RateLimiter, retry_after
from cityos.errors import NgsiLdError

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
# made ids: a random prefix per process (so workers never collide) and a counter: cheaper than a
# uuid4 per request, which is a system call
_PREFIX = secrets.token_hex(8)
_NUMBERS = itertools.count(1)


class AuthMiddleware:
    def __init__(
        self, app: ASGIApp, authenticator: Authenticator | None = None, limiter: RateLimiter | None = None
    ) -> None:
        self.app = app
        self.authenticator = authenticator  # None: --auth off
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = authorization = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value
            elif name == b"authorization":
                authorization = value
        request_id = given.decode() if given is not None and _SANE_ID.match(given) else f"{_PREFIX}-{next(_NUMBERS):x}"
        id_token = current_request_id.set(request_id)
        echoed = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", echoed)]
            await send(message)

        try:
            if self.authenticator is None:
                await self.app(scope, receive, send_with_id)
                return
            try:
                principal = await self.authenticator.authenticate(
                    authorization.decode("latin-1") if authorization is not None else None
                )
                if self.limiter is not None:
                    caller = principal.id
                    if principal.kind == "anonymous" and scope.get("client"):
                        caller = f"anonymous@{scope['client'][0]}"
                    wait = self.limiter.take(caller)
                    if wait > 0:
                        raise TooManyRequests("rate limit exceeded", retry_after(wait))
            except (Unauthorized, TooManyRequests) as refused:
                await _problem(send_with_id, refused)
                return
            principal_token = current_principal.set(principal)
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                current_principal.reset(principal_token)
        finally:
            current_request_id.reset(id_token)


async def _problem(send: Send, error: NgsiLdError) -> None:
    body = orjson.dumps(error.problem())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
