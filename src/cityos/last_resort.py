"""The last-resort handler: an exception no handler knew answers a ProblemDetails 500, logs one
line with a request id, and leaves the client's keep-alive connection usable.

Starlette's own `Exception` handler runs in ServerErrorMiddleware, which sends the answer and then
raises again, so uvicorn closes the connection without `Connection: close` and the client's next
request on it fails too. This middleware sits inside it (around the routes and the NGSI-LD error
handlers) and does not raise again once it has answered. The traceback is logged at DEBUG only,
cut to MAX_TRACEBACK_CHARS: one request cannot write more than that to the log.
"""

from __future__ import annotations

import logging
import traceback
import uuid

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cityos.errors import InternalError

log = logging.getLogger("cityos")
MAX_TRACEBACK_CHARS = 4000
MAX_MESSAGE_CHARS = 200


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit // 2]} ... {text[-limit // 2 :]}"


def report(method: str, path: str, exc: BaseException) -> bytes:
    """Log `exc` in one line under a new request id (its traceback at DEBUG, cut) and return the
    ProblemDetails body that names the id, so an operator can find the line a client reports."""
    request_id = uuid.uuid4().hex[:16]
    log.error(
        "unhandled error, request %s: %s %s: %s: %s",
        request_id,
        method,
        _cut(path, MAX_MESSAGE_CHARS),
        type(exc).__name__,
        _cut(str(exc), MAX_MESSAGE_CHARS),
    )
    if log.isEnabledFor(logging.DEBUG):
        text = "".join(traceback.format_exception(exc))
        log.debug("request %s traceback:\n%s", request_id, _cut(text, MAX_TRACEBACK_CHARS))
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
            body = report(scope["method"], scope["path"], exc)
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
