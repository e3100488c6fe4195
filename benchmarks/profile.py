"""Profile one scenario: start `cityos serve`, load entities, drive the scenario while py-spy samples the
server, and print where the server's time goes (inclusive and own time per function).

python -m benchmarks.profile query_type --entities 100000 --duration 10 --output /tmp/query_type.txt

Needs py-spy (`pip install py-spy`); the collapsed stacks are kept in --output for a flame graph
(e.g. https://www.speedscope.app accepts them).
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from benchmarks.loadgen import LoadSpec, run_load
from benchmarks.servers import cityos_server
from benchmarks.workloads import BATCH_SIZE, Workload

# frames that are a thread waiting for work, which py-spy cannot always tell from running
WAITS = frozenset({"_worker (concurrent/futures/thread.py)"})
KINDS = ("create", "update", "batch", "retrieve", "query_type", "query_q", "query_geo")


def summarise(collapsed: Path, top: int = 25) -> str:
    """Inclusive and own shares of samples per function (file:line dropped), from py-spy's raw output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        if frames[-1] in WAITS:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples", "", "inclusive  own     function"]
    for name, count in inclusive.most_common(top):
        lines.append(f"{count / total:6.1%}  {own[name] / total:6.1%}  {name}")
    lines += ["", "top own time:"]
    lines += [f"{count / total:6.1%}  {name}" for name, count in own.most_common(top)]
    return "\n".join(lines)


def _function(frame: str) -> str:
    """'handler (cityos/ngsild/entities.py:42)' -> 'handler (cityos/ngsild/entities.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--output", type=Path, default=None, help="where to keep py-spy's collapsed stacks")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory(prefix="cityos-profile-") as tmp, cityos_server(Path(tmp)) as server:
        batches = math.ceil(args.entities / BATCH_SIZE)
        load = Workload("batch", batch_size=BATCH_SIZE)
        if args.kind != "batch":
            run_load(LoadSpec("127.0.0.1", server.port, load, 2, requests=batches))
        stored = batches * BATCH_SIZE if args.kind != "batch" else 0
        output = args.output or Path(tmp) / "stacks.txt"
        record = [py_spy, "record", "--pid", str(server.pid), "--format", "raw", "--rate", "200"]
        record += ["--duration", str(math.ceil(args.duration)), "--output", str(output), "--nonblocking"]
        spy = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        workload = Workload(args.kind, stored=stored, start=stored, tag="profile")
        if args.kind == "batch":
            spec = LoadSpec("127.0.0.1", server.port, workload, 2, requests=batches)
        else:
            spec = LoadSpec("127.0.0.1", server.port, workload, args.connections, args.duration)
        result = run_load(spec)
        _, errors = spy.communicate(timeout=120)
        print(f"{args.kind}: {result.rate:,.1f} req/s, p50 {result.percentile(0.5):.2f} ms, errors {result.errors}")
        if spy.returncode != 0:
            print(errors.decode(), file=sys.stderr)
            return 1
        print(summarise(output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
