"""The per-request HTTP path (issue 15): the route index picks the route Starlette's full scan
picks, QuickHeaders answers as Headers does, and ProtocolGuard does LastResort's work when auth is
off (a 500 named by the request id, and a failure after the answer began is not covered up)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.serving.requests import CityRequest, QuickHeaders
from cityos.serving.routing import RouteIndex
from cityos.settings import Settings

METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS")


def full_scan(routes: list[Any], scope: dict[str, Any]) -> tuple[Any, Match]:
    """Starlette's choice: the first full match, else the first partial one."""
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route, match
        if match is Match.PARTIAL and partial is None:
            partial = route
    return (partial, Match.PARTIAL) if partial is not None else (None, Match.NONE)


def indexed(index: RouteIndex, scope: dict[str, Any]) -> tuple[Any, Match]:
    return full_scan(index.candidates(scope["path"]), scope)


def sample_paths(routes: list[Any]) -> list[str]:
    paths = {"", "/", "/nothing", "/ngsi-ld", "/ngsi-ld/v1", "/ngsi-ld/v1/", "/iot", "/cityos/v1/admin"}
    for route in routes:
        for value in ("x", "urn:ngsi-ld:T:1", "a/b", ""):
            path = route.path
            while "{" in path:
                start, end = path.index("{"), path.index("}")
                path = path[:start] + value + path[end + 1 :]
            paths |= {path, path + "/", path + "/more", path.rstrip("/"), path + "x"}
    return sorted(paths)


def test_the_route_index_picks_what_the_full_scan_picks(tmp_path: Path) -> None:
    app = create_app(Settings(database=str(tmp_path / "routes.db")))
    index = app.router.middleware_stack
    assert isinstance(index, RouteIndex)
    routes = app.router.routes
    paths = sample_paths(routes)
    assert len(paths) > 300
    for path in paths:
        for method in METHODS:
            scope = {"type": "http", "path": path, "method": method, "root_path": ""}
            assert indexed(index, scope) == full_scan(routes, scope), (method, path)
    assert len(index.candidates("/ngsi-ld/v1/temporal/entities/urn:x")) < len(routes) / 5


def test_a_route_added_after_start_is_found(tmp_path: Path) -> None:
    app = create_app(Settings(database=str(tmp_path / "added.db")))

    async def hello(request: Request) -> Response:
        return Response(b"hello")

    with TestClient(app) as client:
        assert client.get("/hello").status_code == 404
        app.router.routes.append(Route("/hello", hello))
        assert client.get("/hello").text == "hello"
        assert client.post("/hello").status_code == 405


@pytest.mark.parametrize("name", ["accept", "Accept", "LINK", "ngsild-tenant", "absent", "X-Two"])
def test_quick_headers_answer_as_headers_do(name: str) -> None:
    raw = [(b"accept", b"application/json"), (b"link", b"<x>"), (b"x-two", b"1"), (b"x-two", b"2")]
    scope = {"type": "http", "headers": raw}
    assert QuickHeaders(scope=scope).get(name) == Headers(scope=scope).get(name)
    assert QuickHeaders(scope=scope).get(name, "default") == Headers(scope=scope).get(name, "default")


BODIES = {
    "one chunk": [{"type": "http.request", "body": b'{"value": 1}'}],
    "chunks": [
        {"type": "http.request", "body": b'{"va', "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b'lue": 1}', "more_body": False},
    ],
    "empty": [{"type": "http.request", "body": b""}],
    "no body member": [{"type": "http.request"}],
    "client gone": [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}],
}


async def read_twice(kind: type[Request], messages: list[dict[str, Any]]) -> list[Any]:
    """What `body` gives (or raises) twice, `stream` after it, the disconnected flag, and what a
    consumed `stream` leaves to `body` (messages past the last: a RuntimeError, as any read past)."""
    scope = {"type": "http", "headers": []}
    request = kind(scope, receiver(messages))
    seen: list[Any] = []
    for _ in range(2):
        try:
            seen.append(await request.body())
        except (ClientDisconnect, RuntimeError) as error:
            seen.append(type(error).__name__)
    seen.append([chunk async for chunk in request.stream()] if isinstance(seen[0], bytes) else None)
    seen.append(request._is_disconnected)
    streamed = kind(scope, receiver(messages))
    try:
        seen.append([chunk async for chunk in streamed.stream()])
        await streamed.body()
    except (ClientDisconnect, RuntimeError) as error:
        seen.append(type(error).__name__)
    return seen


def receiver(messages: list[dict[str, Any]]) -> Any:
    pending = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(pending)

    return receive


@pytest.mark.parametrize("name", BODIES)
def test_city_request_body_reads_as_starlettes_does(name: str) -> None:
    """CityRequest.body (no async generator) gives the bytes, errors and state Starlette's gives."""
    messages = BODIES[name]
    assert asyncio.run(read_twice(CityRequest, messages)) == asyncio.run(read_twice(Request, messages))


def failing_app(tmp_path: Path) -> Any:
    app = create_app(Settings(database=str(tmp_path / "failing.db")))

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    app.router.routes.insert(0, Route("/boom", boom))
    return app


def test_auth_off_an_unexpected_error_is_a_500_named_by_the_request_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cityos")
    with TestClient(failing_app(tmp_path)) as client:
        response = client.get("/boom", headers={"X-Request-Id": "req-1", "NGSILD-Tenant": "t1"})
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "req-1"
        assert response.headers["ngsild-tenant"] == "t1"
        assert response.json()["instance"] == "urn:cityos:request:req-1"
        assert client.get("/version").status_code == 200  # and the app goes on serving
    lines = [r.getMessage() for r in caplog.records if "req-1" in r.getMessage()]
    assert len(lines) == 1 and "RuntimeError" in lines[0]


def test_auth_off_a_failure_after_the_answer_began_is_not_covered_up(tmp_path: Path) -> None:
    app = create_app(Settings(database=str(tmp_path / "half.db")))

    class Half:
        """An ASGI endpoint (not a request handler) that fails halfway through its answer."""

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise RuntimeError("failed while streaming")

    app.router.routes.insert(0, Route("/half", Half()))
    with TestClient(app) as client, pytest.raises(RuntimeError):
        client.get("/half")


def _chain(app: Any) -> list[str]:
    names = []
    while app is not None:
        names.append(type(app).__name__)
        app = getattr(app, "__dict__", {}).get("app")
    return names


@pytest.mark.parametrize("auth", ["off", "required"])
def test_requests_without_a_gate_header_skip_the_gates(tmp_path: Path, auth: str) -> None:
    """ProtocolGuard's one look-up in the header dict: a request without Signature-Input or
    NGSILD-Snapshot goes through the chain without the partner door and the snapshot middleware (the
    authentication of auth required stays); one with either header goes through every layer, and
    the snapshot header is still answered (an unknown snapshot: 404, not the tenant's entities)."""
    app = create_app(Settings(database=str(tmp_path / "gates.db"), auth=auth))
    guard = app.build_middleware_stack()
    while type(guard).__name__ != "ProtocolGuard":
        guard = guard.app
    full, plain = _chain(guard.app), _chain(guard.plain)
    assert "PartnerDoor" in full and "SnapshotHeader" in full
    assert [n for n in full if n not in ("PartnerDoor", "SnapshotHeader")] == plain
    assert ("AuthMiddleware" in plain) is (auth == "required")
    assert guard.gate_headers == {b"signature-input", b"ngsild-snapshot"}
    if auth == "required":
        return
    with TestClient(app) as client:
        assert client.get("/ngsi-ld/v1/entities?type=T").status_code == 200
        scoped = client.get("/ngsi-ld/v1/entities?type=T", headers={"NGSILD-Snapshot": "urn:ngsi-ld:Snapshot:none"})
        assert scoped.status_code == 404
        assert "Snapshot" in scoped.json()["detail"] or "snapshot" in scoped.json()["detail"]
        signed = client.get("/ngsi-ld/v1/entities?type=T", headers={"Signature-Input": 'sig=();keyid="x"'})
        assert signed.status_code == 401  # the partner door refused it: no partner "x"
