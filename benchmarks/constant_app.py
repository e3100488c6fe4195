"""The HTTP floor of our stack: one route returning a constant JSON body, served exactly as `cityos serve`
serves the broker (uvicorn + uvloop + httptools + Starlette + orjson, same log settings), in its own process.

Run: python -m benchmarks.constant_app --port 8001 [--json json] [--loop asyncio] [--http h11]
The options switch one layer at a time, to measure the alternatives the stack was chosen over.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY: dict[str, Any] = {
    "id": "urn:ngsi-ld:OffStreetParking:constant",
    "type": "OffStreetParking",
    "availableSpotNumber": {"type": "Property", "value": 121, "observedAt": "2026-11-22T10:00:00Z"},
}


def create_app(json_lib: str = "orjson", *, receiver: bool = False) -> Starlette:
    """The body is serialised on every request, as a real handler would, with the chosen library.
    With receiver=True the app also counts NGSI-LD notifications (POST /notify, GET /stats, POST /reset)."""
    dumps: Callable[[Any], bytes] = orjson.dumps if json_lib == "orjson" else lambda v: json.dumps(v).encode()
    stats: dict[str, float] = {}

    async def constant(request: Request) -> Response:
        return Response(dumps(BODY), media_type="application/json")

    async def notify(request: Request) -> Response:
        notification = orjson.loads(await request.body())
        now = time.time()
        stats["first"] = stats["first"] or now
        stats["last"] = now
        stats["notifications"] += 1
        stats["entities"] += len(notification.get("data", []))
        return Response(status_code=204)

    async def reset(request: Request) -> Response:
        stats.update(notifications=0, entities=0, first=0.0, last=0.0)
        return Response(status_code=204)

    async def report(request: Request) -> Response:
        return Response(orjson.dumps(stats), media_type="application/json")

    routes = [Route("/constant", constant, methods=["GET"])]
    if receiver:
        stats.update(notifications=0, entities=0, first=0.0, last=0.0)
        routes += [
            Route("/notify", notify, methods=["POST"]),
            Route("/reset", reset, methods=["POST"]),
            Route("/stats", report, methods=["GET"]),
        ]
    return Starlette(routes=routes)


def uvicorn_options(host: str, port: int) -> dict[str, Any]:
    """The keyword arguments `cityos serve --log-level warning` gives uvicorn.run (see cityos/cli)."""
    return {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "server_header": False,
        "lifespan": "on",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.constant_app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--json", dest="json_lib", choices=("orjson", "json"), default="orjson")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument(
        "--http", choices=("auto", "httptools", "h11", "guarded"), default="auto", help="guarded: cityos serve's"
    )
    parser.add_argument("--receiver", action="store_true", help="also count notifications on POST /notify")
    args = parser.parse_args(argv)
    http: Any = args.http
    if http == "guarded":  # httptools with cityos's head/body timeouts and connection cap (cityos.serving)
        from cityos.serving import GuardedHttpToolsProtocol

        http = GuardedHttpToolsProtocol
    uvicorn.run(
        create_app(args.json_lib, receiver=args.receiver),
        loop=args.loop,
        http=http,
        **uvicorn_options(args.host, args.port),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
