"""Slow and idle clients against real `cityos serve` processes (issue 13, item 1.3): request heads
and bodies that never finish are cut at --header-timeout / --body-timeout, the connection cap
refuses clearly and frees its slots, kept-alive connections close when idle or after
--keep-alive-max-requests, and normal clients are answered throughout.

Timeouts are set to about a second so the tests stay short."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server_process import LoggedServer

ENTITIES = "/ngsi-ld/v1/entities"
HALF_HEAD = b"GET /ngsi-ld/v1/entities?type=Room HTTP/1.1\r\nHost: x\r\nX-Slow: "


def serve(tmp_path: Path, *flags: str, database: str | None = None, workers: int = 1) -> LoggedServer:
    args = ["--header-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1", *flags]
    if workers > 1:
        args += ["--workers", str(workers)]
    server = LoggedServer(tmp_path / "serve.log", *args, env={"CITYOS_DATABASE": database or str(tmp_path / "city.db")})
    server.start()
    return server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LoggedServer]:
    server = serve(tmp_path)
    yield server
    server.stop()


async def open_slow(port: int, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]]:
    """Connections that send half a request head, each with the time its opening began (the
    server's header timer cannot start before it; taken after the connect, a busy client loop could
    record it hundreds of milliseconds late)."""
    slow = []
    for _ in range(count):
        began = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        slow.append((reader, writer, began))
        writer.write(HALF_HEAD)
    return slow


async def read_all(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when the close came (monotonic)."""
    data = await asyncio.wait_for(reader.read(-1), timeout)
    return data, time.monotonic()


async def normal_client_latencies(base: str, seconds: float) -> list[float]:
    """A well-behaved client asking every 0.1 s; each answer's latency."""
    latencies = []
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.monotonic()
            answer = await client.get(ENTITIES, params={"type": "Room"})
            assert answer.status_code == 200, answer.text
            latencies.append(time.monotonic() - start)
            await asyncio.sleep(0.1)
    return latencies


def test_half_sent_heads_are_dropped_after_the_header_timeout_while_others_are_served(server: LoggedServer) -> None:
    async def scenario() -> None:
        served = asyncio.create_task(normal_client_latencies(server.base, 2.5))
        slow = await open_slow(server.port, 600)
        endings = await asyncio.gather(*(read_all(r, 8) for r, _, _ in slow))
        latencies = await served
        assert latencies and max(latencies) < 1.0, latencies
        for (data, closed_at), (_, _, opened) in zip(endings, slow, strict=True):
            assert data.startswith(b"HTTP/1.1 408 "), data[:80]
            assert b"connection: close" in data
            assert 0.8 < closed_at - opened < 4.0  # 1 s, a sweep (0.25 s) and a loaded machine
        for _, writer, _ in slow:
            writer.close()

    asyncio.run(scenario())


def test_a_head_never_started_is_dropped_too(server: LoggedServer) -> None:
    async def scenario() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        start = time.monotonic()
        data, closed_at = await read_all(reader, 5)
        assert data.startswith(b"HTTP/1.1 408 ")
        assert 0.8 < closed_at - start < 4.0
        writer.close()

    asyncio.run(scenario())


def test_a_trickled_body_is_cut_at_the_body_timeout_and_nothing_is_written(server: LoggedServer) -> None:
    body = b'{"id": "urn:ngsi-ld:Room:trickle", "type": "Room", "temperature": {"type": "Property", "value": 21}}'
    head = (
        f"POST {ENTITIES} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    async def scenario() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head)
        start = time.monotonic()
        ending = asyncio.create_task(read_all(reader, 5))
        sent = 0
        while not ending.done() and sent < len(body) - 1:  # one byte every 0.2 s: never the last one in time
            try:
                writer.write(body[sent : sent + 1])
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            await asyncio.sleep(0.2)
        data, closed_at = await ending
        assert data.startswith(b"HTTP/1.1 408 "), data[:80]
        assert b"body" in data
        assert 0.8 < closed_at - start < 4.0
        writer.close()

    asyncio.run(scenario())
    answer = httpx.get(f"{server.base}{ENTITIES}/urn:ngsi-ld:Room:trickle")
    assert answer.status_code == 404
    assert "Traceback" not in server.log()


def test_past_the_connection_cap_a_newcomer_is_refused_clearly_and_served_once_slots_free(tmp_path: Path) -> None:
    server = serve(tmp_path, "--max-connections", "5", "--body-timeout", "30")
    head = f"POST {ENTITIES} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n"

    async def scenario() -> None:
        busy = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(5)]
        for _, writer in busy:  # each one is in a request: its body is awaited
            writer.write(head.encode())
            await writer.drain()
        await asyncio.sleep(0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /ngsi-ld/v1/entities?type=Room HTTP/1.1\r\nHost: x\r\n\r\n")
        data, _ = await read_all(reader, 3)
        head_part, _, problem = data.partition(b"\r\n\r\n")
        assert head_part.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1" in head_part and b"connection: close" in head_part
        assert b"TooManyConnections" in problem
        writer.close()
        for _, busy_writer in busy:
            busy_writer.close()
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=server.base, timeout=5) as client:
            answer = await client.get(ENTITIES, params={"type": "Room"})
            assert answer.status_code == 200

    try:
        asyncio.run(scenario())
        assert "refused 1 connection(s) so far" in server.log()
    finally:
        server.stop()


def test_at_the_cap_idle_and_slow_connections_give_way_to_a_normal_client(tmp_path: Path) -> None:
    server = serve(tmp_path, "--max-connections", "5", "--header-timeout", "30", "--keep-alive-timeout", "30")

    async def scenario() -> None:
        slow = await open_slow(server.port, 20)
        await asyncio.sleep(0.3)
        latencies = await normal_client_latencies(server.base, 1.0)
        assert latencies and max(latencies) < 1.0
        closed = 0
        for reader, writer, _ in slow:
            with contextlib.suppress(TimeoutError, ConnectionError):
                closed += (await asyncio.wait_for(reader.read(-1), 0.1)) == b""
            writer.close()
        assert closed >= 15  # the oldest waiting connections were closed to make room

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(server: LoggedServer) -> None:
    request = b"GET /ngsi-ld/v1/entities?type=Room HTTP/1.1\r\nHost: x\r\n\r\n"

    async def scenario() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request)
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert first.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in first.lower()
        answered = time.monotonic()
        rest, closed_at = await read_all(reader, 5)
        assert b"HTTP/1.1" not in rest  # closed without another answer (no 408 on an idle connection)
        assert 0.8 < closed_at - answered < 4.0
        writer.close()

    asyncio.run(scenario())


def test_a_connection_serves_at_most_keep_alive_max_requests(tmp_path: Path) -> None:
    server = serve(tmp_path, "--keep-alive-max-requests", "3")
    try:
        with httpx.Client(base_url=server.base, timeout=5) as client:
            answers = [client.get(ENTITIES, params={"type": "Room"}) for _ in range(4)]
        assert [a.status_code for a in answers] == [200] * 4
        assert [a.headers.get("connection") for a in answers] == [None, None, "close", None]
    finally:
        server.stop()


def test_each_worker_applies_the_limits(fresh_postgres: str, tmp_path: Path) -> None:
    server = serve(tmp_path, database=fresh_postgres, workers=2)

    async def scenario() -> None:
        served = asyncio.create_task(normal_client_latencies(server.base, 2.0))
        slow = await open_slow(server.port, 40)
        endings = await asyncio.gather(*(read_all(r, 8) for r, _, _ in slow))
        assert max(await served) < 1.0
        for (data, closed_at), (_, _, opened) in zip(endings, slow, strict=True):  # whichever worker accepted it
            assert data.startswith(b"HTTP/1.1 408 ")
            assert 0.8 < closed_at - opened < 4.0  # 1 s, a sweep (0.25 s) and a loaded machine
        for _, writer, _ in slow:
            writer.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
