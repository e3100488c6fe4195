"""Scenario 11: what metrics and the access log cost (issue 20: at most 5%). Two more servers on the
same database, started side by side: one with everything observed (Prometheus metrics, which are
on by default, plus `--access-log --log-format json` at `--log-level info`, each line written to its
log file), one with `--no-metrics` and no access log. Repeat by repeat, the same workload runs on
the bare server and then on the observed one; the ratio is the observed rate over the bare rate
in the same repeat (target 95%), and the CPU per request of both is recorded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.report import Row
from benchmarks.servers import ServerProcess, cityos_server
from benchmarks.targets import Target
from benchmarks.workloads import Workload

if TYPE_CHECKING:
    from benchmarks.runner import Bench

TARGET = Target(ratio=0.95)
SCENARIOS = [
    ("11a. retrieve entity by id, observed", "retrieve"),
    ("11b. query type, limit=20, observed", "query_type"),
    ("11c. partial attribute update, observed", "update"),
]
OBSERVED = ["--access-log", "--log-format", "json", "--log-level", "info", "--metrics"]
BARE = ["--no-metrics", "--no-access-log"]


def observe_rows(bench: Bench, backend: str, url: str | None, stored: int) -> list[Row]:
    """For each scenario, a bare row and its observed row, measured side by side."""
    pairs = [(Row(name.replace("observed", "bare"), backend=backend), kind, name) for name, kind in SCENARIOS]
    rows = [Row(name, baseline=bare.name, target=TARGET, backend=backend) for bare, _, name in pairs]
    sqlite_file = None if url else Path(bench.workdir) / "bench.db"
    out: list[Row] = []
    with (
        cityos_server(bench.workdir, url, name="bare", extra=BARE, database=sqlite_file) as bare,
        cityos_server(bench.workdir, url, name="observed", extra=OBSERVED, database=sqlite_file) as observed,
    ):
        for row, (bare_row, kind, _) in zip(rows, pairs, strict=True):

            def workload(index: int, kind: str = kind) -> Workload:
                return Workload(kind, stored=stored, start=stored, tag=f"observe-{kind}{index}")

            def bare_sample(index: int, bare_row: Row = bare_row) -> float:
                return _sample(bench, bare, bare_row, workload(index), index)

            def on(index: int) -> Workload:
                return workload(index)

            if bench.config.warmup > 0:  # measure() warms the observed server up; the bare one too
                bench.load(bare, workload(-1), duration=bench.config.warmup)
            bench.measure(row, observed, on, baseline=bare_sample)
            bare_row.rss_mb = bare.peak_rss_mb()
            row.rss_mb = observed.peak_rss_mb()
            out += [bare_row, row]
    return out


def _sample(bench: Bench, server: ServerProcess, row: Row, workload: Workload, seed: int) -> float:
    cpu_before = server.cpu_seconds()  # CPU per request: the fair comparison on a loaded machine
    result = bench.load(server, workload, seed=seed)
    if result.ops:
        row.cpu_ms.append((server.cpu_seconds() - cpu_before) * 1000 / result.ops)
    bench.record(row, result)
    return result.rate
