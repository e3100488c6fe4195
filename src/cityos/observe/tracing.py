"""Optional OpenTelemetry traces (--otlp-endpoint): one server span per request, exported over
OTLP/HTTP in batches. Imported only when the setting is given (app.py), so a server without it
loads none of OpenTelemetry (tests/test_observe.py checks); install it with
`pip install 'cityos[tracing]'`.

The span is named `METHOD route-template` and carries the W3C trace context the caller sent
(traceparent), the route, the status and the request id (X-Request-Id), so a trace and the
access-log line and audit records of the same request can be joined.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cityos import __version__
from cityos.auth.principal import current_request_id


class Export:
    """The tracer of one application and its OTLP exporter (a batch sent in the background)."""

    def __init__(self, endpoint: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create({"service.name": "cityos", "service.version": __version__})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self.tracer = self.provider.get_tracer("cityos")
        self.propagator = TraceContextTextMapPropagator()
        self.server_kind = SpanKind.SERVER

    def shutdown(self) -> None:
        """Export what is left (at the server's stop)."""
        self.provider.shutdown()


class Tracing:
    """ASGI layer inside app.ProtocolGuard (the request id is set, the route is found below)."""

    def __init__(self, app: ASGIApp, export: Export) -> None:
        self.app = app
        self.tracer = export.tracer
        self.propagator = export.propagator
        self.server_kind = export.server_kind

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        parent = self.propagator.extract(carrier) if carrier else None
        method = scope["method"]
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.start_as_current_span(method, context=parent, kind=self.server_kind) as span:
            try:
                await self.app(scope, receive, watch)
            finally:
                route: Any = scope.get("route")
                template = getattr(route, "path", None)
                if template:
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                span.set_attribute("http.request.method", method)
                span.set_attribute("url.path", scope["path"])
                span.set_attribute("http.response.status_code", status)
                span.set_attribute("cityos.request_id", current_request_id.get())
