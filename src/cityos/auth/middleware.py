"""The door: with --auth required, a Principal from the request's Authorization header, in a
contextvar (auth/principal.py) that handlers, the store and the audit trail read, and the declared
purpose (the Purpose header) for the access policies' purpose conditions, read in the same pass over
the headers. With --auth off this middleware is not installed: the principal stays OPEN. The
request id (X-Request-Id, made by request_id_of) is set and echoed for every request by
app.ProtocolGuard.

Pure ASGI (no BaseHTTPMiddleware), so the contextvars set here are those the handler sees.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from collections.abc import Callable

import orjson
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from cityos.audit.events import AuditEvent, AuditSink
from cityos.auth.authenticator import Authenticator
from cityos.auth.errors import TooManyRequests, Unauthorized
from cityos.auth.principal import ANONYMOUS, current_principal, current_request_id
from cityos.auth.ratelimit import RateLimiter, retry_after
from cityos.errors import NgsiLdError
from cityos.policy.compiled import current_purpose

log = logging.getLogger("cityos.auth")
REQUEST_ID_HEADER = "X-Request-Id"
CALLER_SCOPE_KEY = "cityos.caller"  # the principal's id, left in the scope for the access log
PURPOSE_HEADER = b"purpose"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}\Z")  # \Z: `$` would let a final newline in
# made ids: a random prefix per process (so workers never collide) and a counter: cheaper than a
# uuid4 per request, which is a system call
_PREFIX = secrets.token_hex(8)
_NUMBERS = itertools.count(1)
# Answered without credentials whatever the policies say (docs/security.md, "The authorization
# matrix"; tests/owasp_routes.py PUBLIC_ROUTES): the version, the token endpoint (it checks its own
# HTTP Basic credentials), the IoT Agent's about, hosted @contexts, which clients must fetch, and
# the inbox for context sources' notifications (its credential is the random subscription id it
# made: ngsild/remote_notify.py).
PUBLIC_PATHS = frozenset(
    {
        "/version",
        "/cityos/v1/auth/token",
        "/iot/about",
        "/ngsi-ld/ex/remote-notify",
        "/cityos/v1/indicators",
        "/cityos/v1/rules",  # how each alert is decided: public, as the indicators (only GET is routed)
        "/cityos/v1/insight/register",
        # the API description and its page, and the probes of load balancers (ops/http.py PUBLIC)
        "/openapi.json",
        "/docs",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/docs/docs.js",
        "/health/live",
        "/health/ready",
    }
)
PUBLIC_READS = "/ngsi-ld/v1/jsonldContexts"
# Open311 GeoReport v2 (open311/http.py): its clients carry no Authorization header; a report proves
# its own api_key (an API key of this trust layer), and no answer carries personal data
PUBLIC_PREFIX = "/open311/v2/"
# the web console's pages and assets (console/http.py): a browser sends no Authorization header, so
# they pass the door; each page calls the API with the session cookie's token, and the API decides
CONSOLE_PATHS = ("/", "/console/")
# Open data (docs/open-data.md): the catalogue, its downloads and the CKAN read API answer anyone,
# and show only what the policies give the anonymous caller (catalog/public.py); CKAN clients send
# their read actions as POST too.
OPEN_DATA = ("/catalog", "/api/3/action/", "/api/action/")
# the console's session cookie (console/http.py SESSION_COOKIE: HttpOnly, SameSite=Strict; its value
# is a bearer token) stands for `Authorization: Bearer <value>` on these reads only, which the
# browser asks for without a header of its own (MapLibre's tile requests, an EventSource): GET and
# HEAD, never a write, so a cookie cannot carry a forged write (no CSRF), and only when the request
# brings no Authorization header (docs/security.md, "Issue 18: the session cookie on the map's reads")
SESSION_COOKIE = "cityos_session"
COOKIE_READ_PREFIX = "/tiles/"
COOKIE_READ_PATHS = frozenset({"/cityos/v1/changes"})
COOKIE_METHODS = ("GET", "HEAD")
# the citizens' page and API (citizen/http.py): for anyone; they ask the API as the anonymous
# caller, so the policies decide what is public
CITIZEN_PREFIX = "/city/"


def request_id_of(given: bytes | None) -> str:
    """The id a request is known by: the client's X-Request-Id when it is sane, else a new one."""
    if given is not None and _SANE_ID.match(given):
        return given.decode()
    return f"{_PREFIX}-{next(_NUMBERS):x}"


class AuthMiddleware:
    """Added with --auth required only (the request id is set and echoed by app.ProtocolGuard,
    outside this, so refusals carry it too)."""

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        limiter: RateLimiter | None = None,
        anonymous_served: Callable[[], bool] = lambda: True,
        audit: Callable[[], AuditSink] | None = None,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.limiter = limiter
        # whether any policy grants the anonymous caller something (open data); without one, a
        # request without credentials is answered 401 on every route but the public ones
        self.anonymous_served = anonymous_served
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authorization = purpose = cookie = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == PURPOSE_HEADER and purpose is None:
                purpose = value
            elif name == b"cookie" and cookie is None:
                cookie = value
        if authorization is None and cookie is not None and cookie_read(scope):
            authorization = session_authorization(cookie)
        try:
            # a partner city's request, proven by its signature (dataspace/door.py, outside this)
            principal = scope.get("cityos.principal")
            if principal is None and authorization is not None:
                principal = self.authenticator.cached(authorization)
            if principal is None:
                principal = await self.authenticator.authenticate(authorization)
            if self.limiter is not None:
                caller = principal.id
                if principal.kind == "anonymous" and scope.get("client"):
                    caller = f"anonymous@{scope['client'][0]}"
                wait = self.limiter.take(caller)
                if wait > 0:
                    raise TooManyRequests("rate limit exceeded", retry_after(wait))
            if principal.kind == "anonymous" and not self.anonymous_served() and not public(scope):
                await self._denied(scope)
                raise Unauthorized()
        except (Unauthorized, TooManyRequests) as refused:
            await problem(send, refused)
            return
        scope[CALLER_SCOPE_KEY] = principal.id
        principal_token = current_principal.set(principal)
        declared = purpose.decode("latin-1").strip() if purpose is not None else ""
        purpose_token = current_purpose.set(declared) if declared else None  # unset: None, the default
        try:
            await self.app(scope, receive, send)
        finally:
            if purpose_token is not None:
                current_purpose.reset(purpose_token)
            current_principal.reset(principal_token)

    async def _denied(self, scope: Scope) -> None:
        """A request without credentials refused at the door: a request.denied record, as every refusal."""
        if self.audit is None:
            return
        event = AuditEvent(
            principal=ANONYMOUS.id,
            operation="request.denied",
            tenant="",
            targets=(f"{scope['method']} {scope['path']}",),
            outcome="denied",
            request_id=current_request_id.get(),
            detail={"status": 401, "reason": "no credentials"},
        )
        try:
            await self.audit().record([event])
        except Exception:  # a failed audit write must not turn a 401 into a 500
            log.exception("recording a refusal failed")


def cookie_read(scope: Scope) -> bool:
    """A read of the map's data, where the console's session cookie may stand for a bearer token."""
    path: str = scope["path"]
    return scope["method"] in COOKIE_METHODS and (path.startswith(COOKIE_READ_PREFIX) or path in COOKIE_READ_PATHS)


def session_authorization(cookie: bytes) -> bytes | None:
    """`Bearer <token>` from a Cookie header's session cookie; None without one."""
    token = cookie_parser(cookie.decode("latin-1")).get(SESSION_COOKIE, "").strip()
    return b"Bearer " + token.encode("latin-1") if token else None


def public(scope: Scope) -> bool:
    """A route that anyone may call (PUBLIC_PATHS, and reading hosted @contexts)."""
    path: str = scope["path"]
    if (
        path in PUBLIC_PATHS
        or path.startswith(PUBLIC_PREFIX)
        or path == CONSOLE_PATHS[0]
        or path.startswith(CONSOLE_PATHS[1])
        or path.startswith(CITIZEN_PREFIX)
    ):
        return True
    if path == OPEN_DATA[0] or path.startswith("/catalog/"):
        return scope["method"] in ("GET", "HEAD")
    if path.startswith(OPEN_DATA[1:]):
        return scope["method"] in ("GET", "HEAD", "POST")
    return path.startswith(PUBLIC_READS) and scope["method"] in ("GET", "HEAD")


async def problem(send: Send, error: NgsiLdError) -> None:
    """A ProblemDetails answer sent straight from a middleware (also dataspace/door.py's)."""
    body = orjson.dumps(error.problem())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
