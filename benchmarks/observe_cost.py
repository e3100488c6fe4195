"""What metrics and the access log add to a request's CPU time, in one process without sockets
(the paired end-to-end rows are scenario 11 of `python -m benchmarks`; this one separates the
parts): the application is called as uvicorn calls it, GET by id of a stored entity, in rounds
alternating between four applications on one SQLite file: bare (--no-metrics, no access log),
metrics only, access log only (JSON, to /dev/null) and both. Median CPU microseconds per request.

Run: python -m benchmarks.observe_cost [--rounds 9] [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cityos.app import create_app
from cityos.settings import Settings

ENTITY = b'{"id":"urn:ngsi-ld:Room:1","type":"Room","temperature":{"type":"Property","value":21}}'
VARIANTS = {
    "bare": {"metrics": False, "access_log": False},
    "metrics": {"metrics": True, "access_log": False},
    "access log": {"metrics": False, "access_log": True},
    "both": {"metrics": True, "access_log": True},
}


async def call(app: Any, method: str, path: str, body: bytes = b"") -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
        + ([(b"content-length", str(len(body)).encode())] if body else []),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 1026),
        "state": {},
    }
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def per_request(app: Any, requests: int) -> float:
    start = time.process_time()
    for _ in range(requests):
        await call(app, "GET", "/ngsi-ld/v1/entities/urn:ngsi-ld:Room:1")
    return (time.process_time() - start) * 1e6 / requests


async def compare(rounds: int, requests: int) -> None:
    logging.getLogger("cityos.access").setLevel(logging.INFO)  # as `cityos serve` at its default level
    with tempfile.TemporaryDirectory() as folder, open(os.devnull, "w") as null:
        database = str(Path(folder) / "cost.db")
        apps = {}
        contexts = []
        for name, options in VARIANTS.items():
            settings = Settings(database=database, log_format="json", **options)
            app = create_app(settings)
            context = app.router.lifespan_context(app)
            await context.__aenter__()
            contexts.append(context)
            apps[name] = app
        assert await call(apps["bare"], "POST", "/ngsi-ld/v1/entities", ENTITY) in (201, 409)
        for app in apps.values():
            guard = app.build_middleware_stack()  # the stack uvicorn calls
            app.middleware_stack = guard
        import sys

        sys.stderr = null  # the access lines go to stderr
        results: dict[str, list[float]] = {name: [] for name in apps}
        names = list(apps)
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                results[name].append(await per_request(apps[name], requests))
        sys.stderr = sys.__stderr__
        for context in contexts:
            await context.__aexit__(None, None, None)
    bare = statistics.median(results["bare"])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:>10}: {median:7.1f} µs CPU per request  (+{median - bare:5.1f} µs, {median / bare:.3f} x bare)")
    print(f"load average {os.getloadavg()[0]:.2f} (1 min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    asyncio.run(compare(args.rounds, args.requests))


if __name__ == "__main__":
    main()
