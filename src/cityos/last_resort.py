"""The last-resort handler: an exception no handler knew answers a ProblemDetails 500, logs one
line with a request id, and leaves the client's keep-alive connection usable.

Starlette's own `Exception` handler runs in ServerErrorMiddleware, which sends the answer and then
raises again, so uvicorn closes the connection without `Connection: close` and the client's next
request on it fails too. This middleware sits inside it (around the routes and the NGSI-LD error
handlers) and does not raise again once it has answered. The traceback is logged at DEBUG only,
cut (errors.log_briefly): one request cannot write more than that to the log.
"""

from __future__ import annotations

import logging
import uuid

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cityos.auth.principal import current_request_id
from cityos.errors import MAX_LOGGED_MESSAGE, InternalError, log_briefly

log = logging.getLogger("cityos")


def report(method: str, path: str, exc: BaseException) -> bytes:
    """Log `exc` in one line under the request's id (X-Request-Id, auth/middleware.py; a new one
    outside a request) and return the ProblemDetails body that names the id, so an operator can find
    the line a client reports."""
    request_id = current_request_id.get() or uuid.uuid4().hex[:16]
    where = path if len(path) <= MAX_LOGGED_MESSAGE else path[:MAX_LOGGED_MESSAGE] + "..."
    log_briefly(log, exc, "unhandled error, request %s: %s %s", request_id, method, where)
    error = InternalError(f"an unexpected error occurred (request {request_id}); see the server log")
    return orjson.dumps({**error.problem(), "instance": f"urn:cityos:request:{request_id}"})


class LastResort:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:  # part of another answer is out: only closing the connection can end it
                raise
            await answer_unexpected(scope, send, exc)


async def answer_unexpected(scope: Scope, send: Send, exc: Exception) -> None:
    """The 500 of an exception no handler knew (also sent by app.ProtocolGuard, which does this
    middleware's work itself when nothing stands between them)."""
    body = report(scope["method"], scope["path"], exc)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})
