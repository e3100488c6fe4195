"""Round trips and statements per request on PostgreSQL, counted on the wire.

    python -m benchmarks.round_trips KIND N [--postgres URL]

sends N requests of one of benchmarks.instructions' kinds through the whole ASGI application
in-process (as `benchmarks.instructions` does) on a fresh, migrated schema (BenchSchema), with every
database connection of the process (the pool, the LISTEN connection, the audit sealer's and the
outbox worker's) passing through a counting TCP proxy on 127.0.0.1. For the measured loop only it
prints, per request: the round trips (a client message after a server message, on any connection:
what makes the process wait for PostgreSQL), the protocol messages by kind (Q: a simple query such as
BEGIN or COMMIT, P: a statement parsed, i.e. not in asyncpg's statement cache, B: a prepared
statement bound and run, d: COPY data), the bytes each way, and every statement's text with how
often it ran. Counting happens in the proxy, outside the driver, so nothing asyncpg does is missed
(a statement's Parse round trip when it is not cached, a transaction's BEGIN and COMMIT).

The proxy adds a hop, so its times mean nothing: only the counts are read. TLS is switched off
through the proxy (sslmode=disable) so that the messages can be read.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import benchmarks.instructions as instructions
from benchmarks.postgres import BenchSchema, default_url, unreachable

_UNTYPED = {80877103, 80877104}  # SSLRequest, GSSENCRequest: before the startup message, no type byte


@dataclass
class Tally:
    """What the proxy saw since the last reset."""

    round_trips: int = 0
    messages: collections.Counter[str] = field(default_factory=collections.Counter)
    statements: collections.Counter[str] = field(default_factory=collections.Counter)
    sent: int = 0
    received: int = 0

    def reset(self) -> None:
        self.round_trips, self.sent, self.received = 0, 0, 0
        self.messages.clear()
        self.statements.clear()


class _Client:
    """One client connection's side of the protocol: its messages parsed as they arrive."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.buffer = b""
        self.started = False  # the startup message seen: every later message has a type byte
        self.named: dict[bytes, str] = {}  # prepared statement name -> its text
        self.server_spoke = True  # the last bytes came from the server: the next client bytes are a new round trip

    def feed(self, data: bytes) -> None:
        tally = self.tally
        tally.sent += len(data)
        if self.server_spoke:
            tally.round_trips += 1
            self.server_spoke = False
        self.buffer += data
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    return
                (length,) = struct.unpack("!I", self.buffer[:4])
                if len(self.buffer) < length:
                    return
                (code,) = struct.unpack("!I", self.buffer[4:8])
                self.started = code not in _UNTYPED
                self.buffer = self.buffer[length:]
                continue
            if len(self.buffer) < 5:
                return
            kind = chr(self.buffer[0])
            (length,) = struct.unpack("!I", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                return
            body, self.buffer = self.buffer[5 : 1 + length], self.buffer[1 + length :]
            tally.messages[kind] += 1
            if kind == "Q":
                tally.statements[_short(body.rstrip(b"\0").decode())] += 1
            elif kind == "P":
                name, _, rest = body.partition(b"\0")
                self.named[name] = _short(rest.partition(b"\0")[0].decode())
            elif kind == "B":
                statement = body.split(b"\0", 2)[1]  # portal name, then the statement's
                tally.statements[self.named.get(statement, "?")] += 1


def _short(sql: str) -> str:
    return " ".join(sql.split())[:110]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_data: object) -> None:
    try:
        while data := await reader.read(65536):
            on_data(data)  # type: ignore[operator]
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _proxy(tally: Tally, host: str, port: int, listen: int) -> asyncio.Server:
    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(host, port)
        client = _Client(tally)

        def from_server(data: bytes) -> None:
            tally.received += len(data)
            client.server_spoke = True

        await asyncio.gather(
            _pipe(client_reader, server_writer, client.feed), _pipe(server_reader, client_writer, from_server)
        )

    return await asyncio.start_server(serve, "127.0.0.1", listen)


def _through(url: str, port: int) -> str:
    """The schema's URL with the proxy's address and TLS off."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    address = f"127.0.0.1:{port}"
    netloc_new = f"{netloc[0]}@{address}" if netloc[1] else address
    query = f"{parts.query}&sslmode=disable" if parts.query else "sslmode=disable"
    return urlunsplit(parts._replace(netloc=netloc_new, query=query))


async def _count(kind: str, count: int, url: str, listen: int, show: int) -> None:
    tally = Tally()
    upstream = urlsplit(url)
    server = await _proxy(tally, upstream.hostname or "127.0.0.1", upstream.port or 5432, listen)
    measured = instructions.timed

    async def timed(
        app: object,
        requests: list[tuple[str, str, bytes]],
        authorization: bytes | None,
        finish: Callable[[], None] | None = None,
    ) -> float:
        await asyncio.sleep(0.3)  # the load's after-work (the sealer, the outbox) settles first
        tally.reset()
        started = time.perf_counter()
        spent = await measured(app, requests, authorization, finish)
        wall = time.perf_counter() - started
        await asyncio.sleep(0.3)  # the measured writes' own after-work (the sealer) is theirs
        n = len(requests)
        print(f"{kind}: {n} requests, {wall / n * 1000:.2f} ms wall each through the proxy")
        print(f"  round trips per request: {tally.round_trips / n:.2f}")
        print("  messages per request: " + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(tally.messages.items())))
        print(f"  bytes per request: {tally.sent / n:,.0f} sent, {tally.received / n:,.0f} received")
        for text, times in tally.statements.most_common(show):
            print(f"  {times / n:6.2f}  {text}")
        return spent

    instructions.timed = timed
    try:
        await instructions.measure(kind, count)
    finally:
        instructions.timed = measured
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", help="a kind of benchmarks.instructions (get, spot, parking, avg, lastn, ...)")
    parser.add_argument("count", type=int)
    parser.add_argument("--postgres", default=default_url(), help="the PostgreSQL server (a schema is made in it)")
    parser.add_argument("--port", type=int, default=0, help="the proxy's port (default: any free one)")
    parser.add_argument("--show", type=int, default=12, help="statements listed (most frequent first)")
    args = parser.parse_args()
    from benchmarks.servers import free_port

    listen = args.port or free_port()
    if why := unreachable(args.postgres):  # also puts PostGIS in public, not in the new schema
        raise SystemExit(why)
    with BenchSchema(args.postgres) as schema:
        os.environ[instructions.DATABASE_ENV] = _through(schema.url, listen)
        asyncio.run(_count(args.kind, args.count, args.postgres, listen, args.show))


if __name__ == "__main__":
    main()
