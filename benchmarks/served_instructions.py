"""Instructions per request of a served endpoint: the real uvicorn server under callgrind, real sockets.

`benchmarks.instructions` calls the ASGI application in-process, so uvicorn's protocol, the event
loop's socket I/O and the reader threads' wake-ups are not in its counts. This runs the server as
`cityos serve` runs it (or the constant-JSON floor, benchmarks/constant_app.py) under
`valgrind --tool=callgrind --instr-atstart=no`, sends WARM requests, switches instrumentation on,
sends COUNT requests from CONNECTIONS keep-alive connections, switches it off and prints the
server's instructions per request (all its threads):

    python -m benchmarks.served_instructions retrieve DATABASE 2000 --port 7401
    python -m benchmarks.served_instructions floor - 2000 --port 7402
    python -m benchmarks.served_instructions query_offset DATABASE 1000 --port 7403 [--floor]

DATABASE is a file built by `python -m benchmarks.scale_reads build FILE N` (OffStreetParking
bench-{i}); spot and parking are the writes of benchmarks/instructions.py (scenario 2's partial update
of availableSpotNumber of a random one of the first N, scenario 1's create of a new OffStreetParking):
served, concurrent writes share transactions (group commit), which the in-process count never does;
retrieve asks for random ids among the first N (--entities); query, query_offset, q and geo are
scenario 5's pages (benchmarks/scale_reads.py request_of: type `limit=20`, at a random offset,
`q=availableSpotNumber>50`, near 500 m of a random point), and with --floor they are answered by
the query floor (benchmarks/query_floor.py, on the same file, `prepare`d first). With --auth the server
runs with `--auth required` and scenario 8's policy (benchmarks/auth.py: the reader may read the
entities but not their `address`), and every request carries a new API key of the reader's role (made
in DATABASE with `cityos keys create`), as row 8a sends them. The periodic
work (expiry sweep, credentials poll, audit checkpoints, WAL checkpoints) is put off as in
benchmarks/instructions.py, so the count is the request's own. PYTHONPATH chooses the checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from benchmarks.auth import POLICIES, create_key
from benchmarks.entities import entity_id
from benchmarks.instructions import API, ENTITIES
from benchmarks.instructions import request_of as write_of
from benchmarks.loadgen import RawClient
from benchmarks.query_floor import prepare, wait_for
from benchmarks.scale_reads import request_of
from benchmarks.workloads import Request

# run inside the server process under valgrind: the periodic work put off, then `cityos serve`
SERVE = """
import sys
from benchmarks.instructions import put_off_periodic
put_off_periodic()
from cityos.cli import main
sys.exit(main(sys.argv[1:]))
"""
FLOOR = "import sys; from benchmarks.constant_app import main; sys.exit(main(sys.argv[1:]))"
QUERY_FLOOR = "import sys; from benchmarks.query_floor import main; sys.exit(main(['serve', *sys.argv[1:]]))"
PAGES = ("query", "query_offset", "q", "geo")
WRITES = ("spot", "parking")  # benchmarks/instructions.py request_of: scenario 2's update, scenario 1's create


async def _send(port: int, requests: list[Request], connections: int) -> None:
    queue = list(reversed(requests))

    async def worker() -> None:
        client = RawClient("127.0.0.1", port)
        try:
            while queue:
                status, body = await client.send(queue.pop())
                if status >= 300:
                    raise SystemExit(f"answered {status}: {body[:200]!r}")
        finally:
            client.close()

    await asyncio.gather(*(worker() for _ in range(connections)))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.served_instructions", description=__doc__)
    parser.add_argument("kind", choices=("retrieve", "floor", *PAGES, *WRITES))
    parser.add_argument("database")
    parser.add_argument("count", type=int)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--entities", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warm", type=int, default=500)
    parser.add_argument("--auth", action="store_true", help="--auth required, scenario 8's policy and key")
    parser.add_argument("--floor", action="store_true", help="pages: served by benchmarks/query_floor.py")
    parser.add_argument("--serve", nargs=argparse.REMAINDER, default=[], help="more `cityos serve` options")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="served-callgrind-")) / "callgrind.out"
    authorization = ""
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    if args.kind == "floor":
        command = [sys.executable, "-c", FLOOR, "--port", str(args.port)]
        check, path = f"http://127.0.0.1:{args.port}/constant", "/constant"
    elif args.floor:
        prepare(args.database)
        command = [sys.executable, "-c", QUERY_FLOOR, args.database, "--port", str(args.port)]
        check, path = f"http://127.0.0.1:{args.port}/ready", ""
    else:
        serve = ["serve", "--port", str(args.port), "--database", args.database, "--log-level", "warning"]
        if args.auth:
            key = create_key(args.database)
            if key is None:
                raise SystemExit("`cityos keys create` failed")
            authorization = f"Bearer {key}"
            policies = out.parent / "policies.json"
            policies.write_bytes(orjson.dumps(POLICIES))
            serve += ["--auth", "required", "--policy-file", str(policies)]
        command = [sys.executable, "-c", SERVE, *serve, *args.serve]
        check, path = f"http://127.0.0.1:{args.port}/version", ""
    server = subprocess.Popen([*valgrind, *command], stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        wait_for(check, server)
        rng = random.Random(0)
        written = itertools.count(rng.randrange(10**9))

        def request() -> Request:
            if args.kind == "floor":
                return Request("GET", path)
            if args.kind in PAGES:
                _, target, _ = request_of(args.kind, args.entities, rng)
                return Request("GET", target, b"", authorization)
            if args.kind in WRITES:  # creates: a new id each (c{seq}); updates: one of the first N (at most ENTITIES)
                seq = next(written) if args.kind == "parking" else rng.randrange(min(args.entities, ENTITIES))
                method, target, body = write_of(args.kind, seq)
                return Request(method, target, body, authorization)
            return Request("GET", f"{API}/entities/{entity_id(rng.randrange(args.entities))}", b"", authorization)

        asyncio.run(_send(args.port, [request() for _ in range(args.warm)], args.connections))
        measured = [request() for _ in range(args.count)]
        subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], capture_output=True, check=True)
        asyncio.run(_send(args.port, measured, args.connections))
        subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], capture_output=True, check=True)
    finally:
        server.terminate()
        server.wait(timeout=120)
    total = 0
    for part in out.parent.glob("callgrind.out*"):
        found = re.search(r"^totals: (\d+)", part.read_text(errors="replace"), re.MULTILINE)
        total += int(found.group(1)) if found else 0
    print(f"{args.kind}: {total / args.count:,.0f} instructions per request ({total:,} for {args.count}; {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
