"""The load generator: runs in its own process, drives one server over real HTTP/1.1 keep-alive
connections from N concurrent asyncio tasks, and times every request.

Two clients: `raw` (the default) writes pre-formatted HTTP/1.1 requests on asyncio transports and
parses responses with httptools; `httpx` uses httpx.AsyncClient. On this project's 2-core machine
httpx tops out near 800 requests/s against an endpoint that serves 14,000, so it would measure the
client, not the server; docs/performance.md records both ceilings.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import cast

import httptools
import httpx
import uvloop

from benchmarks.workloads import Builder, Request, Workload, builder

# 207 (a batch with per-entity errors, a partial update that skipped attributes) counts as an error
SUCCESS = frozenset((200, 201, 204))


@dataclass(frozen=True)
class LoadSpec:
    """One load run: a duration-bound run when requests is None, else exactly `requests` requests
    (built before the clock starts, so heavy bodies such as 1,000-entity batches are not timed)."""

    host: str
    port: int
    workload: Workload
    connections: int
    duration: float = 5.0
    requests: int | None = None
    client: str = "raw"
    seed: int = 0


@dataclass
class LoadResult:
    ops: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    error_sample: str = ""

    @property
    def rate(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds (nearest rank)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class _Protocol(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight (no pipelining)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self._fail(exc or ConnectionError("connection closed by the server"))

    def _fail(self, exc: BaseException) -> None:
        self.alive = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.alive = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))


class RawClient:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.head = f"Host: {host}:{port}\r\nAccept: application/json\r\n"
        self.protocol: _Protocol | None = None

    async def send(self, request: Request) -> tuple[int, bytes]:
        if self.protocol is None or not self.protocol.alive:
            self.close()
            loop = asyncio.get_running_loop()
            _, self.protocol = await loop.create_connection(_Protocol, self.host, self.port)
        protocol = self.protocol
        assert protocol.transport is not None
        head = f"{request.method} {request.path} HTTP/1.1\r\n{self.head}"
        if request.authorization:
            head += f"Authorization: {request.authorization}\r\n"
        if request.body or request.method in ("POST", "PUT", "PATCH"):
            head += f"Content-Type: application/json\r\nContent-Length: {len(request.body)}\r\n"
        protocol.body = []
        protocol.waiter = asyncio.get_running_loop().create_future()
        protocol.transport.write(head.encode() + b"\r\n" + request.body)
        return await protocol.waiter

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None


async def _drive(spec: LoadSpec) -> LoadResult:
    build: Builder = builder(spec.workload)
    rng = random.Random(spec.seed)
    prebuilt = [build(seq, rng) for seq in range(spec.requests)] if spec.requests is not None else None
    result = LoadResult()
    counter = iter(range(10**12))
    http = httpx.AsyncClient(
        base_url=f"http://{spec.host}:{spec.port}",
        limits=httpx.Limits(max_connections=spec.connections, max_keepalive_connections=spec.connections),
        timeout=120,
    )
    start = time.perf_counter()
    deadline = start + spec.duration

    async def send(raw: RawClient, request: Request) -> tuple[int, bytes]:
        if spec.client == "raw":
            return await raw.send(request)
        headers = {"Content-Type": "application/json"}
        if request.authorization:
            headers["Authorization"] = request.authorization
        response = await http.request(request.method, request.path, content=request.body or None, headers=headers)
        return response.status_code, response.content

    async def worker() -> None:
        raw = RawClient(spec.host, spec.port)
        try:
            while True:
                seq = next(counter)
                if prebuilt is not None:
                    if seq >= len(prebuilt):
                        return
                    request = prebuilt[seq]
                elif time.perf_counter() >= deadline:
                    return
                else:
                    request = build(seq, rng)
                began = time.perf_counter()
                try:
                    status, body = await send(raw, request)
                except (OSError, httpx.HTTPError, httptools.HttpParserError) as exc:
                    status, body = 0, repr(exc).encode()
                result.latencies.append(time.perf_counter() - began)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status in SUCCESS:
                    result.ops += 1
                else:
                    result.errors += 1
                    result.error_sample = (
                        result.error_sample or f"{status} {request.method} {request.path}: {body[:300]!r}"
                    )
        finally:
            raw.close()

    try:
        await asyncio.gather(*(worker() for _ in range(spec.connections)))
    finally:
        result.elapsed = time.perf_counter() - start
        await http.aclose()
    return result


def run_load(spec: LoadSpec) -> LoadResult:
    """Entry point in the load-generating process (uvloop, like the server)."""
    return uvloop.run(_drive(spec))
