"""uvicorn's httptools protocol with the limits it lacks: a request head must arrive within
`--header-timeout`, a body within `--body-timeout`, a connection serves at most
`--keep-alive-max-requests` requests, and a worker holds at most `--max-connections`.

Why here and not in the application: a client that never finishes its headers never reaches the
ASGI app, so only the protocol sees it. One sweep per process, a few times a second, closes what
is past its deadline; the hot path only moves the connection between two ordered dicts (no timer
per request: uvicorn's own keep-alive timer is replaced by the same sweep).

At the cap a new connection first evicts the connection that has waited longest for a request
head (an idle keep-alive connection or a half-sent head): idle and slow clients cannot lock out a
normal one. Only when every connection is busy with a request is the newcomer refused, with a 503
written at once (the request is never read) and the connection closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("cityos.serving")

LINGER = 1.0
"""Seconds a refused connection stays half-open so the client reads the refusal before the close
(closing a socket with unread data sends a reset, which can destroy the answer in flight)."""


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 4096
    keep_alive_max_requests: int = 1000


_limits: ConnectionLimits | None = None


def configure(limits: ConnectionLimits) -> None:
    """Set the limits of this process (`cityos serve`; worker processes read them from CITYOS_*)."""
    global _limits
    _limits = limits


def current_limits() -> ConnectionLimits:
    global _limits
    if _limits is None:  # a worker of `serve --workers N`: its settings come from the environment
        from cityos.settings import Settings

        _limits = limits_from(Settings.from_env())
    return _limits


def limits_from(settings: Any) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_connections=settings.max_connections,
        keep_alive_max_requests=settings.keep_alive_max_requests,
    )


def _raw_problem(status: int, reason: str, type_name: str, title: str, detail: str, extra: list[str]) -> bytes:
    body = orjson.dumps({"type": f"urn:cityos:errors:{type_name}", "title": title, "status": status, "detail": detail})
    head = [f"HTTP/1.1 {status} {reason}", *extra]
    head += ["content-type: application/problem+json", f"content-length: {len(body)}", "connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


REFUSAL = _raw_problem(
    503,
    "Service Unavailable",
    "TooManyConnections",
    "Too many connections",
    "every connection of this server is busy with a request; try again shortly",
    ["retry-after: 1"],
)
HEADER_TIMEOUT = _raw_problem(
    408, "Request Timeout", "RequestTimeout", "Request timeout", "the request head did not arrive in time", []
)
BODY_TIMEOUT = _raw_problem(
    408, "Request Timeout", "RequestTimeout", "Request timeout", "the request body did not arrive in time", []
)


class _Shared:
    """Per-server state. `waiting`: connections waiting for a request head (new, or idle after an
    answer), with the time they began to wait; `receiving`: requests whose body is still coming,
    with the time their head was in. Both are in time order, so one sweep a fraction of a second
    finds every expired entry at their fronts: the hot path sets no timer at all."""

    def __init__(self, limits: ConnectionLimits, keep_alive: float, loop: asyncio.AbstractEventLoop) -> None:
        self.waiting: OrderedDict[GuardedHttpToolsProtocol, float] = OrderedDict()
        self.receiving: OrderedDict[GuardedHttpToolsProtocol, float] = OrderedDict()
        self.refused = 0
        self.header_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.keep_alive = keep_alive
        self.loop = loop
        self.interval = min(1.0, limits.header_timeout / 4, limits.body_timeout / 4, keep_alive / 4)
        loop.call_later(self.interval, self.sweep)

    def sweep(self) -> None:
        now = self.loop.time()
        soonest = min(self.header_timeout, self.keep_alive)
        expired = []
        for conn, since in self.waiting.items():
            waited = now - since
            if waited < soonest:
                break
            if conn.head_started or conn.requests == 0:  # a head under way, or a new connection's first
                if waited >= self.header_timeout:
                    expired.append((conn, HEADER_TIMEOUT))
            elif waited >= self.keep_alive:
                expired.append((conn, b""))  # idle after an answer: closed quietly, as keep-alive ends
        for conn, since in self.receiving.items():
            if now - since < self.body_timeout:
                break
            expired.append((conn, BODY_TIMEOUT))
        for conn, answer in expired:
            conn.expire(answer)
        self.loop.call_later(self.interval, self.sweep)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with head and body timeouts, a per-connection request cap and a connection cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # the cap is ours (connection_made), not uvicorn's per-request 503
        limits = current_limits()
        self._max_connections = limits.max_connections
        self._max_requests = limits.keep_alive_max_requests
        state = self.server_state
        shared = getattr(state, "cityos_shared", None)
        if shared is None:
            shared = _Shared(limits, self.timeout_keep_alive, self.loop)
            state.cityos_shared = shared  # type: ignore[attr-defined]
        self._shared: _Shared = shared
        self.requests = 0
        self.head_started = False
        self._refused = False

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._max_connections and not self._evict_one():
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._shared.waiting[self] = self.loop.time()

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest for a request head; False if none waits."""
        waiting = self._shared.waiting
        while waiting:
            victim, _ = waiting.popitem(last=False)
            if victim.transport is not None and not victim.transport.is_closing():
                victim.connections.discard(victim)  # its slot is free now, not when the loop gets to it
                victim.transport.close()
                return True
        return False

    def _refuse(self, transport: asyncio.Transport) -> None:
        self._refused = True
        self.transport = transport
        self._shared.refused += 1
        if self._shared.refused in (1, 10, 100) or self._shared.refused % 1000 == 0:
            log.warning(
                "refused %d connection(s) so far: %d connections, every one busy with a request (--max-connections)",
                self._shared.refused,
                len(self.connections),
            )
        transport.write(REFUSAL)
        try:
            transport.write_eof()  # the client reads the answer and EOF, then closes
        except (NotImplementedError, RuntimeError, OSError):
            transport.close()
            return
        self.loop.call_later(LINGER, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._shared.waiting.pop(self, None)
        self._shared.receiving.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the request of a refused connection is never read
        super().data_received(data)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        if self._refused:
            self.transport.close()
        return None

    # -- one request ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_started = True

    def on_headers_complete(self) -> None:
        shared = self._shared
        shared.waiting.pop(self, None)
        shared.receiving[self] = self.loop.time()
        super().on_headers_complete()
        self.requests += 1
        if self._max_requests and self.requests >= self._max_requests and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close, then closed

    def on_message_complete(self) -> None:
        self._shared.receiving.pop(self, None)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """uvicorn's, but the wait for the next request is timed by the sweep, not by a timer of
        its own (one timer set and cancelled per request is most of what this class would cost)."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.head_started = False
            self._shared.waiting[self] = self.loop.time()

    def expire(self, answer: bytes) -> None:
        """Close this connection, past its deadline, with `answer` (a 408) unless an answer began."""
        self._shared.waiting.pop(self, None)
        self._shared.receiving.pop(self, None)
        if self.transport is None or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() answers http.disconnect: nothing is written
            cycle.message_event.set()
        if cycle is not None and cycle.response_started and answer is BODY_TIMEOUT:
            answer = b""  # answered already (say a 413 before the whole body): just close
        if answer:
            self.transport.write(answer)
        self.transport.close()
