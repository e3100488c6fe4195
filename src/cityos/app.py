"""create_app(settings): the ASGI application, with nothing done at import time."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import re
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Coroutine
from time import perf_counter_ns
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cityos import __version__
from cityos.audit import http as audit_http
from cityos.audit.service import StoreAudit
from cityos.auth import http as auth_http
from cityos.auth.middleware import CALLER_SCOPE_KEY, REQUEST_ID_HEADER, AuthMiddleware, request_id_of
from cityos.auth.principal import current_request_id
from cityos.auth.ratelimit import RATE_TABLE_VARIABLE
from cityos.auth.service import Identity
from cityos.catalog import http as catalog_http
from cityos.catalog.model import EMPTY as EMPTY_CATALOG
from cityos.catalog.model import CatalogFileError, load_catalog
from cityos.catalog.public import PublicData
from cityos.catalog.service import CatalogService
from cityos.citizen import http as citizen_http
from cityos.citizen import page_key
from cityos.console import http as console_http
from cityos.dataspace import http as dataspace_http
from cityos.dataspace.door import PartnerDoor
from cityos.dataspace.service import AgreementDirectory, DataspaceService
from cityos.entities import render_cache
from cityos.entities.expiry import now_key
from cityos.errors import (
    DatabaseBusy,
    FailureLog,
    InternalError,
    MethodNotAllowed,
    NgsiLdError,
    ResourceNotFound,
    log_failure,
)
from cityos.exports import http as exports_http
from cityos.federation.client import Forwarder
from cityos.federation.subscriptions import FederatedSubscriptions
from cityos.ingest import runs_http
from cityos.ingest.service import IngestService
from cityos.insight import alerts_http, forecast_http
from cityos.insight import http as insight_http
from cityos.insight.alerts import AlertRules
from cityos.insight.anomaly_watch import AnomalyWatch, detector_settings
from cityos.insight.forecast_files import ForecasterFileError
from cityos.insight.forecast_service import ForecastService
from cityos.insight.model import IndicatorFileError
from cityos.insight.register import (
    ModelRegister,
    detector_entries,
    forecaster_entries,
    indicator_entries,
    rule_entries,
)
from cityos.insight.rules import RuleFileError
from cityos.insight.service import IndicatorService
from cityos.last_resort import LastResort, answer_unexpected, report
from cityos.lifeline import exit_with_supervisor
from cityos.logs import configure as configure_logging
from cityos.mapdata import http as mapdata_http
from cityos.mapdata.cache import TileCache
from cityos.mapdata.changes import ChangeHub
from cityos.mapdata.kept_cells import KeptCells
from cityos.net import OutboundPolicy
from cityos.ngsild import (
    batch,
    contexts,
    csource_subscriptions,
    discovery,
    entities,
    entity_maps,
    info,
    registrations,
    remote_notify,
    subscriptions,
    temporal,
)
from cityos.ngsild.common import TENANT_HEADER, Services
from cityos.observe import http as observe_http
from cityos.observe.access import MAX_PENDING, AccessLog
from cityos.observe.metrics import HTTP_INDEX, HTTP_UNIT, Metrics
from cityos.observe.wiring import metrics_for
from cityos.open311 import http as open311_http
from cityos.open311.services import CatalogueError
from cityos.ops import http as ops_http
from cityos.ops.declare import api
from cityos.pipeline import WritePipeline, context_registry, settings_store
from cityos.policy import http as policy_http
from cityos.policy.service import PolicyService, access_policies
from cityos.registrations.subscriptions import CSourceSubscriptions
from cityos.serving import collector
from cityos.serving.requests import quick_requests
from cityos.serving.routing import index_routes
from cityos.settings import Settings
from cityos.snapshots import http as snapshots_http
from cityos.snapshots import lifecycle as snapshot_lifecycle
from cityos.snapshots.scope import HEADER as SNAPSHOT_HEADER
from cityos.store.base import StoreEvent
from cityos.store.fair import current_client
from cityos.tasks import stop_task

log = logging.getLogger("cityos")
SWEEP_SECONDS = 1.0
STARTUP_ALERTS_SECONDS = 10.0  # at most this long for the alerts of the demo city's load before the port opens
# what a browser app may send and read across origins (the cors_origins setting)
TENANT_HEADER_KEY = TENANT_HEADER.lower().encode()  # as ASGI gives header names
TENANT_HEADER_BYTES = TENANT_HEADER.encode()
CORS_REQUEST_HEADERS = [
    "Accept",
    "Content-Type",
    "Link",
    TENANT_HEADER,
    "Authorization",
    REQUEST_ID_HEADER,
    SNAPSHOT_HEADER,
]
CORS_EXPOSED_HEADERS = [
    "Location",
    "Link",
    "NGSILD-Results-Count",
    TENANT_HEADER,
    "Content-Range",
    "Preference-Applied",
    "Retry-After",
    REQUEST_ID_HEADER,
    "WWW-Authenticate",
    SNAPSHOT_HEADER,
    "NGSILD-Warning",  # what a distributed operation's sources said (federation)
]


def problem_response(error: NgsiLdError) -> Response:
    return Response(
        orjson.dumps(error.problem()), status_code=error.status, media_type="application/json", headers=error.headers()
    )


async def ngsild_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NgsiLdError)
    if exc.audit is not None:  # refused by access control (ngsild/guard.py)
        await request.app.state.services.audit.record([exc.audit])
    return problem_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return problem_response(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
    if exc.status_code == 404:
        return problem_response(ResourceNotFound(f"no resource at {request.url.path}"))
    error = InternalError(str(exc.detail))
    return Response(
        orjson.dumps({**error.problem(), "status": exc.status_code}),
        status_code=exc.status_code,
        media_type="application/json",
    )


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Errors outside LastResort (in the outer middlewares): the same one line and ProblemDetails;
    Starlette closes the connection after these."""
    body = report(request.method, request.url.path, exc)
    return Response(body, status_code=500, media_type="application/json")


class ProtocolGuard:
    """Checks made before routing, for every request: 411 for bodies without Content-Length,
    413 for declared oversize bodies, and the NGSILD-Tenant header echoed on every response.
    A trailing slash is dropped before routing (clients written against Orion-LD send
    `/entityOperations/create/`, `/entities/{id}/`), except on the routes that declare one
    themselves (`keep_slash`: `/entities/`, whose PATCH is the spec's empty-id error, and the
    temporal API, which routes its own segments). With auth off nothing stands between this and
    the routes, so it also answers unexpected errors (`last_resort`, last_resort.LastResort's
    work) and reports a failed start-up in one line (`startup_problem`, QuietStartup's): each
    middleware layer is one more coroutine per request and per message sent."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        keep_slash: tuple[re.Pattern[str], ...] = (),
        *,
        last_resort: bool = False,
        startup_problem: list[str] | None = None,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # what is recorded once a request is answered (observe/): one perf_counter pair, and the
        # matched route the router left in the scope
        self.metrics = metrics
        self.access_log = access_log
        self.observed = metrics is not None or access_log is not None
        self.keep_slash = keep_slash
        self.last_resort = last_resort
        self.quiet_startup = None if startup_problem is None else QuietStartup(app, startup_problem)
        # the layers that act only on a request carrying their header (the partner door's
        # Signature-Input, NGSILD-Snapshot) are left out of the chain of every other request: one
        # look-up here in the header dict made anyway, instead of a coroutine and a scan each
        self.plain, self.gate_headers = without_gates(app)

    def _route_path(self, path: str) -> str:
        if len(path) > 1 and path.endswith("/") and not any(p.match(path) for p in self.keep_slash):
            return path[:-1]
        return path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if self.quiet_startup is not None:
                await self.quiet_startup(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        client = scope.get("client")
        if client:
            current_client.set(client[0])  # the store shares its query capacity by client
        raw_path = scope.get("raw_path")
        if raw_path and b"%2" in raw_path and b"%2f" in raw_path.lower():
            # an encoded "/" inside an id must not split the route: decode everything else
            scope = dict(scope)
            scope["path"] = unquote(
                raw_path.decode("latin-1").split("?", 1)[0].replace("%2F", "%252F").replace("%2f", "%252F")
            )
        path = self._route_path(scope["path"])
        if path != scope["path"]:
            scope = {**scope, "path": path}
            if raw_path and raw_path.endswith(b"/"):  # handlers that split the raw path see the same
                scope["raw_path"] = raw_path[:-1]
        headers = dict(scope["headers"])
        app = self.plain if self.gate_headers.isdisjoint(headers) else self.app
        method = scope["method"]
        if method in ("POST", "PUT", "PATCH"):
            length = headers.get(b"content-length")
            if length is None and b"chunked" in headers.get(b"transfer-encoding", b""):
                await self._bare(send, 411)
                return
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                body = orjson.dumps(
                    {
                        "type": "https://uri.etsi.org/ngsi-ld/errors/PayloadTooLarge",
                        "title": "Payload too large",
                        "detail": f"the body is larger than {self.max_body_bytes} bytes (--max-body-bytes)",
                        "status": 413,
                    }
                )
                await self._send(send, 413, body, [(b"content-type", b"application/json")])
                return
        # every answer names its request (X-Request-Id, kept when the client sent a sane one) and
        # echoes the tenant; one wrapper of `send` for both, as this runs for every request
        request_id = request_id_of(headers.get(b"x-request-id"))
        echoed = [(b"x-request-id", request_id.encode())]
        tenant = headers.get(TENANT_HEADER_KEY)
        if tenant is not None:
            echoed.append((TENANT_HEADER_BYTES, tenant))

        started = False
        status = 500  # what a request that ends in an exception is counted as

        async def echo(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *echoed]
            await send(message)

        id_token = current_request_id.set(request_id)
        began = perf_counter_ns() if self.observed else 0
        try:
            if not self.last_resort:
                await app(scope, receive, echo)
                return
            try:
                await app(scope, receive, echo)
            except Exception as exc:  # last_resort.LastResort's answer, from here
                if started:  # part of another answer is out: only closing the connection can end it
                    raise
                await answer_unexpected(scope, echo, exc)
        finally:
            current_request_id.reset(id_token)
            if self.observed:
                ended = perf_counter_ns()
                nanos = ended - began  # an int: no float arithmetic for either consumer
                route = scope.get("route")
                metrics = self.metrics
                tally = None
                if metrics is not None:  # Metrics.request, inlined (no Python frame per request)
                    tally = metrics.http_tallies.get((id(route), method, status))  # a Route is not hashable
                    if tally is None:
                        tally = metrics.http_tally(route, method, status)
                    try:
                        tally.counts[HTTP_INDEX[(nanos + HTTP_UNIT - 1) // HTTP_UNIT]] += 1
                    except IndexError:  # past 10 s
                        tally.counts[bisect_left(tally.bounds, nanos)] += 1
                    tally.total += nanos
                access_log = self.access_log
                if access_log is not None:
                    # no AuthMiddleware (auth off, where last_resort is set): everyone is "open"
                    caller = scope.get(CALLER_SCOPE_KEY, "open" if self.last_resort else "-")
                    tenant_name = "" if tenant is None else tenant.decode("latin-1")
                    # the line's Shape, kept in the request's tally (one look-up for both)
                    shape = access_log.shapes.get((id(route), method, status)) if tally is None else tally.shape
                    if shape is None:
                        shape = access_log.shape(route, method, status, tally)
                    pending = access_log.pending  # AccessLog.record, inlined
                    pending.append((ended, request_id, caller, tenant_name, method, path, shape, nanos))
                    if not access_log.armed or len(pending) >= MAX_PENDING:
                        access_log.grew()

    async def _bare(self, send: Send, status: int) -> None:
        await self._send(send, status, b"", [(b"content-length", b"0")])

    async def _send(self, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        if body:
            headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def without_gates(app: ASGIApp) -> tuple[ASGIApp, frozenset[bytes]]:
    """The middleware chain `app` with every gate left out (a layer whose class names, as `GATE`,
    the request header it acts on; it passes every other request through untouched), and the gates'
    header names. The layers above a gate are shallow copies whose `app` skips it (they hold
    configuration only, shared with the originals)."""
    gate: bytes | None = getattr(type(app), "GATE", None)
    inner = getattr(app, "__dict__", {}).get("app")
    if inner is None:
        return app, frozenset()
    plain, names = without_gates(inner)
    if gate is not None:
        return plain, names | {gate}
    if plain is inner:
        return app, names
    layer = copy.copy(app)
    layer.app = plain  # type: ignore[attr-defined]
    return layer, names


class QuietStartup:
    """A start-up that fails for a known reason (the database held by another process) is reported
    in one line: the server's "startup failed" message carries it instead of the traceback."""

    def __init__(self, app: ASGIApp, problem: list[str]) -> None:
        self.app = app
        self.problem = problem

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def report(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.problem:
                message = {**message, "message": self.problem[-1]}
            await send(message)

        await self.app(scope, receive, report)


async def _sweep_expired(services: Services) -> None:
    """Delete transient entities and attributes once their expiresAt has passed. A database held
    by another process is one log line while it lasts, not one a second."""
    busy = False
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        try:
            await services.store.purge_expired(now_key())
            busy = False
        except DatabaseBusy:
            if not busy:
                log_failure(log, "expiry sweep skipped")
            busy = True
        except Exception:  # keep sweeping; the error is logged
            log_failure(log, "expiry sweep failed")


async def _cancel(task: asyncio.Task[None]) -> None:
    await stop_task(task)


class _Reloader:
    """Runs a cache reload one at a time; requests that arrive meanwhile make exactly one more run,
    so a burst of events (one per IoT device of a bulk provisioning) costs two reloads, not one each."""

    def __init__(self, what: str, reload: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.what = what
        self.reload = reload
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._failures = FailureLog(log)  # another worker's every write may ask for a reload

    def request(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self.reload()
            except Exception:  # the next event, or a resync, tries again
                self._failures.failed(self.what, "reloading %s after another worker's change failed", self.what)
            if not self._again:
                return


def _follow_other_workers(
    pipeline: WritePipeline, ingest: IngestService, identity: Identity, alert_rules: AlertRules
) -> Callable[[StoreEvent], None]:
    """Route other workers' writes to the caches they invalidate (a "resync" to all of them)."""
    notifier = pipeline.subscriptions
    hosted = _Reloader("hosted @contexts", pipeline.restore_hosted)
    provisioning = _Reloader("IoT provisioning", ingest.agent.registry.load)

    def on_event(event: StoreEvent) -> None:
        if event.kind in ("subscription", "subscription-status", "resync"):
            notifier.on_event(event)
        if event.kind in ("context", "resync"):
            hosted.request()
        if event.kind in ("ingest", "resync"):
            provisioning.request()
        identity.on_event(event)  # a revoked key or deleted user: out of the authentication cache
        alert_rules.on_event(event)  # a rule's state moved in another worker (an open alert, a running `for`)

    return on_event


@api("The broker's name and version", returns="Object", errors=())
async def version_info(request: Request) -> Response:
    return Response(orjson.dumps({"name": "cityos", "version": __version__}), media_type="application/json")


def create_app(settings: Settings, *, rate_table: str | None = None) -> Starlette:
    """`rate_table`: the rate-limit buckets the workers of `cityos serve --workers N` share."""
    render_cache.CACHE.resize(settings.render_cache_mb * 1024 * 1024)  # process-wide: one event loop
    registry = context_registry(settings)
    registry.base_url = f"http://{settings.host}:{settings.port}"
    services = Services(
        settings=settings,
        store=settings_store(settings, client_share=settings.client_query_share),  # one client cannot take all
        contexts=registry,
    )
    services.audit = StoreAudit(services.store)  # events that are not writes, chained with them
    pipeline = WritePipeline(services.store, registry, settings)
    ingest = IngestService(services.store, registry, settings)
    policies = access_policies(settings, services)  # None with --auth off: the OpenAuthorizer stays
    identity = Identity(services.store, settings, lambda: services.audit, rate_table)
    if identity.required:
        services.principals = identity.authenticator
    dataspace = _dataspace(settings, services, policies, pipeline)
    # Open311 GeoReport v2 (open311/): reports as entities, written through the one write path
    open311 = open311_http.Open311Http.build(settings, services.store, registry.core_terms(), rate_table)

    # calls to registered context sources (distributed operations): one bounded pool
    federation = Forwarder(
        OutboundPolicy(
            allow_private_networks=settings.allow_private_networks,
            timeout=settings.notification_timeout,
            max_bytes=settings.notification_max_bytes,
        ),
        signer=dataspace.sign_forwarded,  # a registration that is a partner city: signed, under its agreement
    )
    startup_problem: list[str] = []  # said by QuietStartup instead of a traceback
    metrics = metrics_for(settings, services, pipeline, ingest, federation)  # None with --no-metrics
    wants_access = settings.access_log or settings.log_level.lower() == "debug"
    access = AccessLog(settings.log_format) if wants_access else None  # observe/access.py
    traces: Any = None  # OpenTelemetry is imported only with --otlp-endpoint (observe/tracing.py)
    if settings.otlp_endpoint:
        from cityos.observe.tracing import Export

        traces = Export(settings.otlp_endpoint)
    snapshot_fills = snapshots_http.SnapshotFills()  # snapshots being made in the background
    csource = CSourceSubscriptions(services.store, registry, None)
    # subscriptions forwarded to context sources, and the inbox for their notifications
    federated = FederatedSubscriptions(
        services.store, registry, federation, csource, pipeline.subscriptions, lambda: dataspace.base_url
    )
    indicators = IndicatorService(
        services.store,
        registry.core_terms(),
        directory=settings.indicators_dir,
        interval=settings.indicators_interval,
        profile_file=settings.city_profile,
        demo=settings.demo_on_empty,
    )
    alert_rules = AlertRules(
        services.store,
        registry.core_terms(),
        directory=settings.rules_dir,
        max_tracked=settings.alerts_max_tracked,
        demo=settings.demo_on_empty,
    )
    # flags anomalous readings of --anomaly-attrs (off when empty), through the write path
    anomalies = AnomalyWatch(
        services.store, registry.core_terms(), attrs=settings.anomaly_attrs, settings=detector_settings(settings)
    )
    forecasts = ForecastService(services.store, registry.core_terms(), directory=settings.forecasters_dir)
    # the change stream's clients, fed by a change listener (and other workers' NOTIFY)
    tile_cache = TileCache(settings.tile_cache_mb * 1024 * 1024, settings.tile_cache_seconds)
    changes = ChangeHub(
        services.store, settings.changes_max_clients, settings.changes_queue, settings.workers > 1, tile_cache
    )
    changes.kept = KeptCells(settings.tile_q_views)
    # the open-data catalogue: the anonymous caller's view, as the policies give it (docs/open-data.md)
    open_data = CatalogService(
        PublicData(
            services.store,
            registry.core_terms(),
            EMPTY_CATALOG,  # the declared one is loaded at start (_start), a refused file said in one line
            authorizer=lambda: services.authorizer,
            k=settings.open_data_k,
            max_rows=settings.export_max_rows,
            offers=lambda: dataspace.offers,  # datasets may stand for the city's dataspace offers
        ),
        file_base=f"http://{_loopback_if_any(settings.host)}:{settings.port}",  # the files' source
        refresh=dataspace.refresh,
    )
    # the register of models (docs/indicators.md): rules and detectors add their providers here
    model_register = ModelRegister()
    model_register.add(lambda: indicator_entries(indicators.indicators))
    model_register.add(lambda: forecaster_entries(forecasts.forecasters))
    model_register.add(lambda: rule_entries(alert_rules.rules))
    model_register.add(lambda: detector_entries(anomalies))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # each step is undone on the way out, also when a later step fails at start-up
        async with contextlib.AsyncExitStack() as stack:
            try:
                await _start(stack)
            except DatabaseBusy as exc:
                startup_problem.append(f"cannot start: {exc.detail}; start again once it is free")
                raise
            yield

    async def _start(stack: contextlib.AsyncExitStack) -> None:
        """Each step pushes its undoing on `stack`, so a failed start-up undoes the steps before."""
        stack.push_async_callback(registry.aclose)
        stack.push_async_callback(federation.aclose)
        if not identity.required:
            log.warning(
                "auth is off: anyone who reaches http://%s:%d may read and change everything"
                " (--auth required, docs/security.md)",
                settings.host,
                settings.port,
            )
        await services.store.open()
        stack.push_async_callback(services.store.close)
        stack.push_async_callback(snapshot_fills.stop)  # before the store closes
        follow = _follow_other_workers(pipeline, ingest, identity, alert_rules)
        if policies is not None:
            policies.audit = services.audit
            try:
                await policies.start()
            except (OSError, ValueError) as exc:  # a missing or invalid --policy-file: one line
                startup_problem.append(f"cannot start: the policy file was not loaded: {exc}")
                raise
            follow = policies.follow(follow)
        follow = changes.follow(follow)
        services.store.set_event_listener(follow)
        stack.callback(services.store.set_event_listener, None)
        await dataspace.start()  # this city's key and partners; agreements become policies
        stack.push_async_callback(dataspace.close)
        if policies is not None:
            await policies.reload()
        await pipeline.start()  # before the first write: every change is matched and recorded
        stack.push_async_callback(pipeline.stop)
        await changes.start()  # a change listener: before the first write
        stack.push_async_callback(changes.stop)
        await anomalies.start()  # a change listener too: before the IoT Agent's and the demo's writes
        stack.push_async_callback(anomalies.stop)
        try:
            alert_rules.load()
        except (RuleFileError, OSError) as exc:
            startup_problem.append(f"cannot start: a rule file was refused: {exc}")
            raise
        await alert_rules.start()  # rules judge every change from here (the demo city's too): before the writes
        stack.push_async_callback(alert_rules.stop)
        await ingest.start()  # the IoT Agent, and the demo city into an empty database
        stack.push_async_callback(ingest.stop)
        await alert_rules.settle(STARTUP_ALERTS_SECONDS)  # the demo city's alerts are there when the port opens
        try:
            indicators.load()  # after the demo city: a first scheduled round finds it
        except (IndicatorFileError, OSError) as exc:
            startup_problem.append(f"cannot start: an indicator file was refused: {exc}")
            raise
        try:
            forecasts.load()
        except (ForecasterFileError, OSError) as exc:
            startup_problem.append(f"cannot start: a forecaster file was refused: {exc}")
            raise
        try:
            open311.load()  # the services file: reports need their catalogue
        except (CatalogueError, OSError) as exc:
            startup_problem.append(f"cannot start: the Open311 services file was refused: {exc}")
            raise
        if settings.demo_on_empty and not open311.page_key and settings.open311_api_key == "required":
            open311.page_key = await page_key.provision(identity.credentials)  # the page's reports work
        try:
            open_data.public.catalog = load_catalog(settings.catalog_file, demo=settings.demo_on_empty)
        except CatalogFileError as exc:
            startup_problem.append(f"cannot start: the open-data catalogue was refused: {exc}")
            raise
        indicators.start()  # the schedule (--indicators-interval); results go through the write path
        stack.push_async_callback(indicators.stop)
        csource.sender = pipeline.subscriptions.sender  # one Sender for every notification
        await csource.start()
        stack.push_async_callback(csource.stop)
        await federated.start()
        stack.push_async_callback(federated.stop)
        sweeper = asyncio.create_task(_sweep_expired(services))
        stack.push_async_callback(_cancel, sweeper)
        # interrupted snapshot fills fail, expired snapshots go (snapshots/lifecycle.py)
        snapshot_sweeper = asyncio.create_task(snapshot_lifecycle.sweep_forever(services.store, settings))
        stack.push_async_callback(_cancel, snapshot_sweeper)
        if traces is not None:
            stack.callback(traces.shutdown)
        if access is not None:
            stack.callback(access.flush)  # the last lines, at the stop
        if metrics is not None:
            stack.callback(metrics.close)
            sampler = asyncio.create_task(metrics.run(settings.metrics_interval))
            stack.push_async_callback(_cancel, sampler)
            if settings.metrics_port and settings.workers == 1:  # with workers, the supervisor serves it
                listener = observe_http.MetricsListener(metrics, settings.metrics_host, settings.metrics_port)
                await listener.start()
                stack.push_async_callback(listener.stop)

    routes = [
        *entities.routes(),
        *batch.routes(),
        *contexts.routes(),
        *info.routes(),
        *discovery.routes(),
        *subscriptions.routes(),
        *registrations.routes(),
        *csource_subscriptions.routes(),
        *remote_notify.routes(),
        *entity_maps.routes(),
        *snapshots_http.routes(),
        *temporal.routes(),
        *ingest.routes(),
        *audit_http.routes(),
        *runs_http.routes(),
        *policy_http.routes(),
        *dataspace_http.routes(),
        *insight_http.routes(),
        *alerts_http.routes(),
        *forecast_http.routes(),
        *open311_http.routes(),
        *mapdata_http.routes(),
        *exports_http.routes(),  # before the catalogue's: /catalog/datasets/{id}/{kind}.{fmt}
        *catalog_http.routes(),
        Route("/version", version_info, methods=["GET"]),
        *auth_http.routes(),
        *(console_http.routes() if settings.console else []),
        *(citizen_http.routes() if settings.console else []),
        *observe_http.routes(metrics if not settings.metrics_port else None),
        *ops_http.routes(),  # /openapi.json describes every route above (ops/openapi.py)
    ]
    handlers: dict[Any, Any] = {
        NgsiLdError: ngsild_error,
        HTTPException: http_error,
        Exception: unexpected_error,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.router.redirect_slashes = False
    quick_requests(app.router.routes)  # handlers get a CityRequest (serving/requests.py)
    index_routes(app.router)  # a request tries only the routes its path can match (serving/routing.py)
    app.state.services = services
    app.state.changes = changes
    app.state.federation = federation
    app.state.subscriptions = pipeline.subscriptions
    app.state.csource = csource
    app.state.federated_subscriptions = federated
    pipeline.subscriptions.access_source = services  # notifications are screened with its policies
    app.state.ingest = ingest
    app.state.identity = identity
    app.state.policies = policies
    app.state.snapshot_fills = snapshot_fills
    app.state.indicators = indicators
    app.state.alert_rules = alert_rules
    app.state.anomalies = anomalies  # its on_flag list is the hook for alert rules
    app.state.forecasts = forecasts
    app.state.catalog = open_data
    app.state.model_register = model_register
    app.state.open311 = open311
    app.add_middleware(snapshots_http.SnapshotHeader, answer=ngsild_error)  # innermost: inside authentication
    app.state.dataspace = dataspace
    if identity.required:  # who is calling and why, before any handler: auth/middleware.py (auth off: nothing to do)
        app.add_middleware(LastResort)  # innermost: answers what no handler knew, keeps the connection
        app.add_middleware(
            AuthMiddleware,
            authenticator=identity.authenticator,
            limiter=identity.limiter,
            anonymous_served=(lambda: True) if policies is None else (lambda: policies.authorizer.serves_anonymous),
            audit=lambda: services.audit,
        )
    # a partner city's signed request is verified before the auth middleware (dataspace/door.py)
    app.add_middleware(PartnerDoor, service=lambda: dataspace, enforcing=policies is not None)
    if traces is not None:  # inside ProtocolGuard: the request id is set, the route found below
        from cityos.observe.tracing import Tracing

        app.add_middleware(Tracing, export=traces)
    keep_slash = tuple(route.path_regex for route in routes if route.path.endswith("/"))
    app.add_middleware(
        ProtocolGuard,
        max_body_bytes=settings.max_body_bytes,
        keep_slash=(*keep_slash, temporal.SELF_ROUTED),
        last_resort=not identity.required,  # auth off: LastResort's work is done here, innermost
        startup_problem=startup_problem,  # QuietStartup's too
        metrics=metrics,
        access_log=access,
    )
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    if origins:  # outermost: a preflight is answered before any other check, on every path
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )
    return app


def _dataspace(
    settings: Settings, services: Services, policies: PolicyService | None, pipeline: WritePipeline
) -> DataspaceService:
    """The data channel between cities (dataspace/): its agreements are compiled into access
    policies, the partners' subscriptions act for their agreements, and notifications to a
    partner's inbox are signed."""

    async def reload_policies() -> None:
        if policies is not None:
            await policies.reload()

    host = _loopback_if_any(settings.host)
    service = DataspaceService(
        services.store,
        lambda: services.audit,
        allow_private_networks=settings.allow_private_networks,
        base_url=f"http://{host}:{settings.port}",
        on_agreements=reload_policies,
    )
    if policies is not None:
        policies.extra = service.policy_documents
    services.principals = AgreementDirectory(services.principals, service)
    pipeline.subscriptions.outgoing_signer = service.sign_notification
    return service


def _loopback_if_any(host: str) -> str:
    """The host part of this server's own URL: loopback for a wildcard address, IPv6 bracketed."""
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` and multi-worker runs: settings from CITYOS_* variables."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)  # a worker process starts with no logging set up
    exit_with_supervisor()  # a worker of `serve --workers N` must not outlive its supervisor
    app = create_app(settings, rate_table=os.environ.get(RATE_TABLE_VARIABLE))
    collector.tune()
    return app
