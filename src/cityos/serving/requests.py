"""The Request every route handler gets: Starlette's, with header look-ups and a body read that
cost less.

A handler asks for a dozen headers that are mostly absent (NGSILD-Tenant, Link, Prefer, the entity
map's, ...). Starlette's `Headers.get` is Mapping's: it calls `__getitem__`, which raises a KeyError
for an absent name, and catches it: an exception per absent header on every request. `get` here
scans the same list and returns the default, with the same answers. Every write reads its body:
Starlette's `body` gathers it through `stream`, an async generator closed by `aclosing`; `body`
here reads the same messages with a loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette._exception_handler import _lookup_exception_handler
from starlette._utils import is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send


class QuickHeaders(Headers):
    """Headers whose `get` returns the default without raising and catching a KeyError."""

    def get(self, key: str, default: Any = None) -> Any:
        wanted = key.lower().encode("latin-1")
        for name, value in self._list:
            if name == wanted:
                return value.decode("latin-1")
        return default


class CityRequest(Request):
    @property
    def headers(self) -> Headers:
        headers: Headers | None = self.__dict__.get("_headers")
        if headers is None:
            headers = self._headers = QuickHeaders(scope=self.scope)
        return headers

    async def body(self) -> bytes:
        """Starlette's `body` without its async generator: the same chunks joined, the same
        errors (the stream consumed already, the client gone), the body kept for a second call
        and for `stream`, which gives a kept `_body` back as Starlette's does."""
        body: bytes | None = self.__dict__.get("_body")
        if body is not None:
            return body
        if self._stream_consumed:
            raise RuntimeError("Stream consumed")
        chunks: list[bytes] = []
        receive = self._receive
        while not self._stream_consumed:
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                if not message.get("more_body", False):
                    self._stream_consumed = True
                if chunk:
                    chunks.append(chunk)
            elif message["type"] == "http.disconnect":
                self._is_disconnected = True
                raise ClientDisconnect()
        body = self._body = b"".join(chunks)  # one chunk (most bodies): that very bytes object
        return body


def request_response(func: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    """starlette.routing.request_response for an async handler, with a CityRequest.

    Starlette wraps every handler call in `wrap_app_handling_exceptions`: a closure, and a `send`
    wrapper per message that notes whether the answer has begun, so that an exception raised after
    it began is not answered twice. A handler here sends nothing: it returns its Response, which is
    sent once it has returned. So an exception of the handler is answered here, by the same
    handler look-up (`starlette.exception_handlers` of the scope: status handlers, then the
    exception's classes), before anything was sent. An exception while the Response is sent goes
    to ExceptionMiddleware's wrapper, which does the same as the one left out (it re-raises what no
    handler takes, and refuses to answer once the answer began)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = CityRequest(scope, receive, send)
        try:
            response: Response | None = await func(request)
        except Exception as exc:
            response = await _answer(request, exc)
            exc.__traceback__ = None  # as Starlette: reused exception instances accumulate tracebacks
        if response is not None:
            await response(scope, receive, send)

    return app


async def _answer(request: Request, exc: Exception) -> Response | None:
    """What Starlette's wrapper answers for an exception raised before anything was sent (re-raised
    when no handler takes it, for the outer middlewares)."""
    try:
        exception_handlers, status_handlers = request.scope["starlette.exception_handlers"]
    except KeyError:
        exception_handlers, status_handlers = {}, {}
    handler = status_handlers.get(exc.status_code) if isinstance(exc, HTTPException) else None
    if handler is None:
        handler = _lookup_exception_handler(exception_handlers, exc)
    if handler is None:
        raise exc
    answer: Any = handler  # Starlette types its handlers loosely (requests or websockets)
    if is_async_callable(answer):
        response: Response | None = await answer(request, exc)
    else:
        response = await run_in_threadpool(answer, request, exc)
    return response


def quick_requests(routes: Iterable[BaseRoute]) -> None:
    """Give every plain Route of an async function handler a CityRequest (others are left as made)."""
    for route in routes:
        if type(route) is Route and inspect.isfunction(route.endpoint) and inspect.iscoroutinefunction(route.endpoint):
            route.app = request_response(route.endpoint)
