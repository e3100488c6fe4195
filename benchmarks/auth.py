"""Scenario 8: what `--auth required` costs. Retrieve, type query, q query and partial update with an
API key whose policy filters attributes (the reader may not see `address`), against a second server
started with --auth required on the same database, repeat by repeat paired with the same workload on
the auth-off server (the ratio is auth-on rate over auth-off rate in the same repeat; target 85%,
issue 14). The row is skipped while this CityOS has no API keys (`cityos keys create`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from benchmarks.entities import ENTITY_TYPE
from benchmarks.future import NOT_YET
from benchmarks.report import Row
from benchmarks.servers import ServerProcess, cityos_server
from benchmarks.targets import Target
from benchmarks.workloads import Workload

if TYPE_CHECKING:
    from benchmarks.runner import Bench

TARGET = Target(ratio=0.85)
ROLE = "bench-reader"
SCENARIOS = [
    ("8a. retrieve entity by id, auth on", "retrieve"),
    ("8b. query type, limit=20, auth on", "query_type"),
    ("8c. query q filter, limit=20, auth on", "query_q"),
    ("8d. partial attribute update, auth on", "update"),
]
POLICIES = [
    {
        "id": "bench-reader",
        "effect": "allow",
        "principals": {"roles": [ROLE]},
        "actions": ["read", "update"],
        "resources": {"types": [ENTITY_TYPE], "exceptAttrs": ["address"]},
    }
]


def create_key(database: str) -> str | None:
    """A new API key with the bench role, made with the CLI as an operator would; None if this CityOS
    has no `cityos keys`."""
    env = {**os.environ, "CITYOS_DATABASE": database}
    done = subprocess.run(
        [sys.executable, "-m", "cityos", "keys", "create", "--role", ROLE, "--name", "bench", "--tenant", ""],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return None
    for line in reversed(done.stdout.splitlines()):
        words = line.strip().split()
        if words:
            return words[-1]
    return None


def auth_rows(bench: Bench, server: ServerProcess, backend: str, url: str | None, stored: int) -> list[Row]:
    """For each scenario, an auth-off row and its auth-on row, measured side by side."""
    pairs = [(Row(name.replace("auth on", "auth off"), backend=backend), kind, name) for name, kind in SCENARIOS]
    rows = [Row(name, baseline=off.name, target=TARGET, backend=backend) for off, _, name in pairs]
    database = url or str(Path(bench.workdir) / "bench.db")
    key = create_key(database)
    if key is None:
        for row in rows:
            row.skipped = NOT_YET  # no API keys in this CityOS (cityos keys create)
        return rows
    policy_file = Path(bench.workdir) / "bench-policies.json"
    policy_file.write_bytes(orjson.dumps(POLICIES))
    extra = ["--auth", "required", "--policy-file", str(policy_file)]
    sqlite_file = None if url else Path(database)
    out: list[Row] = []
    with cityos_server(bench.workdir, url, name="auth", extra=extra, database=sqlite_file) as secured:
        for row, (off_row, kind, _) in zip(rows, pairs, strict=True):

            def workload(index: int, kind: str = kind, authorization: str = "") -> Workload:
                tag = f"auth-{kind}{index}"
                return Workload(kind, stored=stored, start=stored, tag=tag, authorization=authorization)

            def off_sample(index: int, kind: str = kind, off_row: Row = off_row) -> float:
                cpu_before = server.cpu_seconds()  # CPU per request: the fair comparison on a loaded machine
                result = bench.load(server, workload(index, kind), seed=index)
                if result.ops:
                    off_row.cpu_ms.append((server.cpu_seconds() - cpu_before) * 1000 / result.ops)
                bench.record(off_row, result)
                return result.rate

            def on(index: int, kind: str = kind) -> Workload:
                return workload(index, kind, f"Bearer {key}")

            bench.measure(row, secured, on, baseline=off_sample)
            off_row.rss_mb = server.peak_rss_mb()
            row.rss_mb = secured.peak_rss_mb()
            out += [off_row, row]
    return out
