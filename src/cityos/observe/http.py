"""Where /metrics is answered: a route of the API (admin only with --auth required), or a listener
of its own on --metrics-port (no authentication: it is meant for loopback or a monitoring network).

With `serve --workers N` the separate port is served by the supervisor process, which adds up the
workers' multiprocess files (`supervisor_endpoint`); on the API port any worker answers for all.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cityos.auth.credentials import require_admin
from cityos.auth.principal import current_principal
from cityos.observe.metrics import Metrics
from cityos.ops.declare import api

PATH = "/metrics"
MAX_HEAD = 8192


def routes(metrics: Metrics | None) -> list[Route]:
    """GET /metrics on the API port, for an admin (with --auth off: whoever reaches the port)."""
    if metrics is None:
        return []

    @api("Prometheus metrics (admin; docs/operations.md)", returns="Text", media=("text/plain",), errors=())
    async def scrape(request: Request) -> Response:
        require_admin(current_principal.get(), every_tenant=True)  # counts span every tenant
        body, media_type = metrics.exposition()
        return Response(body, media_type=media_type)

    return [Route(PATH, scrape, methods=["GET"])]


class MetricsListener:
    """The --metrics-port listener of a single-process server: a minimal HTTP/1.1 answer on the
    event loop (GET /metrics, else 404), one request per connection."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._answer, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEAD:
                return
            request_line = head.split(b"\r\n", 1)[0].split()
            if len(request_line) >= 2 and request_line[0] == b"GET" and request_line[1].split(b"?")[0] == b"/metrics":
                body, media_type = self.metrics.exposition()
                status = b"200 OK"
            else:
                body, media_type, status = b"not found\n", "text/plain", b"404 Not Found"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + media_type.encode()
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def supervisor_endpoint(directory: str, host: str, port: int) -> Any:
    """`serve --workers N --metrics-port P`: the supervisor serves every worker's metrics, added up
    from the multiprocess directory (prometheus-client's threaded server). Returns the server."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
