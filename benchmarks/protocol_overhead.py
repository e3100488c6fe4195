"""What cityos's guarded HTTP protocol (cityos.serving) costs per request over uvicorn's httptools
protocol, measured in one process without sockets: the same request is fed to each protocol and
answered by a minimal ASGI app, in alternating rounds, and the median CPU time per request is
compared. Sockets, the kernel and the client are left out so the difference is not lost in noise.

Run: python -m benchmarks.protocol_overhead [--rounds 20] [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from cityos.serving import ConnectionLimits, GuardedHttpToolsProtocol, configure

REQUEST = b"GET /ngsi-ld/v1/entities?type=Room HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n"


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"[]"})


class Transport(asyncio.Transport):
    """Just enough of a transport: writes are dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 1026)}.get(name, default)

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def per_request(protocol_class: type[HttpToolsProtocol], requests: int) -> float:
    """CPU microseconds per request on one kept-alive connection."""
    config = Config(app=app, lifespan="off", log_level="warning", access_log=False)
    config.load()
    state = ServerState()
    protocol = protocol_class(config=config, server_state=state, app_state={})  # type: ignore[call-arg]
    protocol.connection_made(Transport())
    start = time.process_time()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        while protocol.cycle is None or not protocol.cycle.response_complete:
            await asyncio.sleep(0)
    return (time.process_time() - start) * 1e6 / requests


async def compare(rounds: int, requests: int) -> None:
    configure(ConnectionLimits(keep_alive_max_requests=0))
    results: dict[str, list[float]] = {"httptools": [], "guarded": []}
    classes = {"httptools": HttpToolsProtocol, "guarded": GuardedHttpToolsProtocol}
    for r in range(rounds):
        for name in list(classes) if r % 2 == 0 else reversed(list(classes)):
            results[name].append(await per_request(classes[name], requests))
    base, guarded = statistics.median(results["httptools"]), statistics.median(results["guarded"])
    for name, values in results.items():
        print(f"{name}: median {statistics.median(values):.2f} us/request  {[round(v, 1) for v in values]}")
    print(f"guarded - httptools: {guarded - base:+.2f} us/request ({guarded / base:.3f}x)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.protocol_overhead", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args(argv)
    uvloop.run(compare(args.rounds, args.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
