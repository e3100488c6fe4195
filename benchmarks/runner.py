"""The benchmark run: every scenario against one `cityos serve` process, each repeated, with the load
generated from a separate process. The machine is noisy, so each repeat of a scenario is paired with a
repeat of its baseline run just before it, and the ratio shown is the median of the paired ratios."""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import httpx

from benchmarks import future
from benchmarks.entities import ENTITY_TYPE
from benchmarks.loadgen import LoadResult, LoadSpec, run_load
from benchmarks.rawsqlite import RawStore, documents
from benchmarks.report import Row
from benchmarks.servers import ServerProcess, cityos_server, constant_server
from benchmarks.workloads import API, BATCH_SIZE, Workload

CONSTANT = "constant JSON (HTTP floor)"
RAW_WRITE = "raw SQLite write, 1,000 rows/txn"
RAW_WRITE_ONE = "raw SQLite write, 1 row/txn"
RAW_READ = "raw SQLite read by key"
# (row name, workload kind, target ratio to the constant-JSON endpoint); targets from issue 4
SCENARIOS: list[tuple[str, str, float | None]] = [
    ("1. create one entity", "create", 0.40),
    ("2. partial attribute update", "update", 0.40),
    ("4. retrieve entity by id", "retrieve", 0.50),
    ("5a. query type, limit=20", "query_type", 0.30),
    ("5b. query q filter, limit=20", "query_q", None),
    ("5c. query geoQ near 500 m, limit=20", "query_geo", None),
]
BATCH_TARGET = 0.25
RSS_TARGET_MB = 200.0
# constant-app variants, each changing one layer of the stack
ALTERNATIVES = [
    ("stdlib json", ["--json", "json"]),
    ("asyncio loop", ["--loop", "asyncio"]),
    ("h11 parser", ["--http", "h11"]),
]


@dataclass(frozen=True)
class Config:
    connections: int = 8
    duration: float = 2.0
    warmup: float = 1.0
    repeat: int = 5
    entities: int = 100_000
    batch_size: int = BATCH_SIZE
    client: str = "raw"
    alternatives: bool = True

    @classmethod
    def smoke(cls) -> Config:
        """Tiny sizes: every scenario runs, in a few seconds each, so the harness cannot rot."""
        return cls(duration=0.5, warmup=0.2, repeat=1, entities=200, batch_size=100, alternatives=False)


@dataclass
class Outcome:
    rows: list[Row]
    stored: int
    rss_after_load: float | None
    rss_peak: float | None

    @property
    def rss_met(self) -> bool | None:
        return None if self.rss_after_load is None else self.rss_after_load <= RSS_TARGET_MB


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, config: Config, workdir: Path, pool: ProcessPoolExecutor, constant: ServerProcess) -> None:
        self.config, self.workdir, self.pool, self.constant = config, workdir, pool, constant
        self.constant_row = Row(CONSTANT, kind="baseline")
        self.raw_rows = [Row(name, unit="rows/s", kind="baseline") for name in (RAW_WRITE, RAW_WRITE_ONE, RAW_READ)]
        self.rows: list[Row] = [self.constant_row, *self.raw_rows]
        self.stored = 0
        self.rss_after_load: float | None = None
        self.rss_peak: float | None = None
        self.started = time.monotonic()

    def load(
        self,
        server: ServerProcess,
        workload: Workload,
        *,
        duration: float | None = None,
        requests: int | None = None,
        connections: int | None = None,
        seed: int = 0,
    ) -> LoadResult:
        """One load run in the load-generating process; blocks until it is done."""
        config = self.config
        spec = LoadSpec(
            host="127.0.0.1",
            port=server.port,
            workload=workload,
            connections=connections or config.connections,
            duration=duration or config.duration,
            requests=requests,
            client=config.client,
            seed=seed,
        )
        return self.pool.submit(run_load, spec).result()

    def constant_sample(self, index: int = 0) -> float:
        """One repeat of the constant-JSON baseline, recorded in its row; returns its rate."""
        result = self.load(self.constant, Workload("constant"), seed=index)
        _record(self.constant_row, result)
        self.constant_row.rss_mb = self.constant.peak_rss_mb()
        return result.rate

    def measure(
        self,
        row: Row,
        server: ServerProcess,
        workload: Callable[[int], Workload],
        *,
        baseline: Callable[[int], float] | None = None,
        per_op: int = 1,
        requests: list[int] | None = None,
        connections: int | None = None,
    ) -> Row:
        """Warm up (duration runs only), then repeat: baseline(i), then the scenario; workload(i) gives
        repeat i its own ids (-1 is the warm-up)."""
        config = self.config
        log(f"  {row.name} … ({time.monotonic() - self.started:.0f} s)")
        if requests is None and config.warmup > 0:
            self.load(server, workload(-1), duration=config.warmup, connections=connections)
        for index in range(config.repeat if requests is None else len(requests)):
            base = baseline(index) if baseline is not None else None
            count = None if requests is None else requests[index]
            result = self.load(server, workload(index), requests=count, connections=connections, seed=index)
            _record(row, result, per_op)
            if base:
                row.ratios.append(result.rate * per_op / base)
        row.rss_mb = server.peak_rss_mb()
        return row

    def alternatives(self) -> None:
        """Each alternative stack against the default one, paired repeat by repeat."""
        for label, options in ALTERNATIVES:
            with constant_server(self.workdir, *options) as server:
                row = Row(f"alt: constant JSON, {label}", kind="alternative", baseline=CONSTANT)
                self.rows.append(
                    self.measure(row, server, lambda i: Workload("constant"), baseline=self.constant_sample)
                )

    def cityos(self) -> None:
        with cityos_server(self.workdir) as server:
            log(f"cityos serve (pid {server.pid}) on a fresh SQLite file")
            self.batch_upsert(server)
            self.rss_after_load = server.peak_rss_mb()  # before the count query below, which adds its own peak
            self.stored = _stored_count(server)
            log(f"  {self.stored:,} entities stored; server peak RSS {self.rss_after_load or 0:.0f} MB")
            for name, kind, target in SCENARIOS:
                row = Row(name, baseline=CONSTANT, target=target)
                workload = partial(_scenario_workload, kind, self.stored)
                self.rows.append(self.measure(row, server, workload, baseline=self.constant_sample))
            self.rows.extend(future.scenarios(self, server, self.stored))
            self.rss_peak = server.peak_rss_mb()

    def batch_upsert(self, server: ServerProcess) -> None:
        """Load `entities` new entities with 1,000-entity upserts; before each repeat the raw-SQLite
        baseline writes the same documents (while the server idles), so the rates are side by side."""
        config, size = self.config, self.config.batch_size
        batches = math.ceil(config.entities / size)
        split = [n for i in range(config.repeat) if (n := batches // config.repeat + (i < batches % config.repeat))]
        starts = [sum(split[:i]) * size for i in range(len(split))]
        raw = RawStore(self.workdir / "raw.db")
        write, write_one, read = self.raw_rows

        def raw_write(index: int) -> float:
            rate = raw.write_rate(documents(starts[index], split[index] * size), size)
            write.rates.append(rate)
            return rate

        row = Row(f"3. batch upsert, {size:,}/request", unit="entities/s", baseline=RAW_WRITE, target=BATCH_TARGET)
        measured = self.measure(
            row,
            server,
            lambda i: Workload("batch", start=starts[i], batch_size=size),
            per_op=size,
            requests=split,
            connections=min(2, config.connections),
            baseline=raw_write,
        )
        self.rows.append(measured)
        total = sum(split) * size
        singles = documents(total, max(200, min(2000, total // 50)))
        for index in range(config.repeat):
            write_one.rates.append(raw.write_rate(singles[index :: config.repeat], 1))
            read.rates.append(raw.read_rate(max(1000, min(20_000, total)), seed=index))
        raw.close()


def _record(row: Row, result: LoadResult, per_op: int = 1) -> None:
    row.rates.append(result.rate * per_op)
    row.p50_ms.append(result.percentile(0.50))
    row.p99_ms.append(result.percentile(0.99))
    row.errors += result.errors
    row.error_sample = row.error_sample or result.error_sample


def _scenario_workload(kind: str, stored: int, repeat: int) -> Workload:
    """Created entities get ids unique to their repeat (-1 is the warm-up)."""
    return Workload(kind, stored=stored, start=stored, tag=f"{kind}{repeat}")


def _stored_count(server: ServerProcess) -> int:
    response = httpx.get(
        f"http://127.0.0.1:{server.port}{API}/entities",
        params={"type": ENTITY_TYPE, "count": "true", "limit": "1"},
        timeout=60,
    )
    response.raise_for_status()
    return int(response.headers.get("NGSILD-Results-Count", "0"))


def run(config: Config) -> Outcome:
    """Every row, in table order: baselines, the broker's scenarios, then the alternative stacks."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cityos-bench-")))
        pool = stack.enter_context(ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")))
        log("constant-JSON app (uvicorn + uvloop + httptools + Starlette + orjson) …")
        constant = stack.enter_context(constant_server(workdir))
        bench = Bench(config, workdir, pool, constant)
        bench.load(constant, Workload("constant"), duration=config.warmup)
        bench.cityos()
        if config.alternatives:
            bench.alternatives()
    order = {"baseline": 0, "scenario": 1, "alternative": 2}
    rows = sorted(bench.rows, key=lambda r: (order[r.kind], r.name if r.kind == "scenario" else ""))
    return Outcome(rows, bench.stored, bench.rss_after_load, bench.rss_peak)
