"""The benchmark run: baselines, then every scenario against one `cityos serve` process, each repeated,
with the load generated from a separate process. Produces the rows of the table."""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import httpx

from benchmarks import future, rawsqlite
from benchmarks.entities import ENTITY_TYPE
from benchmarks.loadgen import LoadResult, LoadSpec, run_load
from benchmarks.report import Row
from benchmarks.servers import ServerProcess, cityos_server, constant_server
from benchmarks.workloads import API, BATCH_SIZE, Workload

CONSTANT = "constant JSON"
RAW_WRITE = "raw SQLite write"
RAW_READ = "raw SQLite read"
# scenario name -> (workload kind, baseline row, target ratio); targets from issue 4
SCENARIOS: list[tuple[str, str, str, float | None]] = [
    ("1. create one entity", "create", CONSTANT, 0.40),
    ("2. partial attribute update", "update", CONSTANT, 0.40),
    ("4. retrieve entity by id", "retrieve", CONSTANT, 0.50),
    ("5a. query type, limit=20", "query_type", CONSTANT, 0.30),
    ("5b. query q filter, limit=20", "query_q", CONSTANT, None),
    ("5c. query geoQ near 500 m, limit=20", "query_geo", CONSTANT, None),
]
# constant-app variants, each changing one layer of the stack
ALTERNATIVES = [
    ("stdlib json", ["--json", "json"]),
    ("asyncio loop", ["--loop", "asyncio"]),
    ("h11 parser", ["--http", "h11"]),
]
RSS_TARGET_MB = 200.0


@dataclass(frozen=True)
class Config:
    connections: int = 8
    duration: float = 5.0
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


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, config: Config, workdir: Path, pool: ProcessPoolExecutor) -> None:
        self.config, self.workdir, self.pool = config, workdir, pool
        self.rows: list[Row] = []
        self.stored = 0
        self.rss_after_load: float | None = None

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

    def measure(
        self,
        row: Row,
        server: ServerProcess,
        workload: Callable[[int], Workload],
        *,
        per_op: int = 1,
        requests: list[int] | None = None,
        connections: int | None = None,
    ) -> Row:
        """Warm up (duration runs only), then repeat; workload(i) gives repeat i its own ids."""
        config = self.config
        log(f"  {row.name} …")
        if requests is None and config.warmup > 0:
            self.load(server, workload(-1), duration=config.warmup, connections=connections)
        for index in range(config.repeat if requests is None else len(requests)):
            count = None if requests is None else requests[index]
            result = self.load(server, workload(index), requests=count, connections=connections, seed=index)
            row.rates.append(result.rate * per_op)
            row.p50_ms.append(result.percentile(0.50))
            row.p99_ms.append(result.percentile(0.99))
            row.errors += result.errors
            row.error_sample = row.error_sample or result.error_sample
        row.rss_mb = server.peak_rss_mb()
        return row

    # -- baselines ---------------------------------------------------------------------------------
    def raw_sqlite(self) -> None:
        config = self.config
        log(f"raw SQLite baseline: {config.entities:,} documents …")
        docs = rawsqlite.documents(config.entities)
        path = self.workdir / "raw.db"
        write = Row(RAW_WRITE, unit="rows/s", kind="baseline")
        write.rates = [rawsqlite.write_rate(path, docs) for _ in range(config.repeat)]
        read = Row(RAW_READ, unit="rows/s", kind="baseline")
        reads = max(1000, min(50_000, config.entities))
        ids = [id_ for id_, _ in docs]
        read.rates = [rawsqlite.read_rate(path, ids, reads, seed=i) for i in range(config.repeat)]
        self.rows += [write, read]

    def constant(self) -> None:
        log("constant-JSON baseline (uvicorn + uvloop + httptools + Starlette + orjson) …")
        with constant_server(self.workdir) as server:
            self.rows.append(self.measure(Row(CONSTANT, kind="baseline"), server, lambda i: Workload("constant")))
        if not self.config.alternatives:
            return
        for label, options in ALTERNATIVES:
            with constant_server(self.workdir, *options) as server:
                row = Row(f"alt: constant JSON, {label}", kind="alternative", baseline=CONSTANT)
                self.rows.append(self.measure(row, server, lambda i: Workload("constant")))

    # -- the broker --------------------------------------------------------------------------------
    def cityos(self) -> None:
        config = self.config
        with cityos_server(self.workdir) as server:
            log(f"cityos serve (pid {server.pid}) on a fresh SQLite file")
            batches = math.ceil(config.entities / config.batch_size)
            split = [batches // config.repeat + (1 if i < batches % config.repeat else 0) for i in range(config.repeat)]
            split = [n for n in split if n]
            starts = [sum(split[:i]) * config.batch_size for i in range(len(split))]
            stored = sum(split) * config.batch_size
            row = Row(f"3. batch upsert, {config.batch_size:,}/request", unit="entities/s", baseline=RAW_WRITE)
            row.target = 0.25
            self.rows.append(
                self.measure(
                    row,
                    server,
                    lambda i: Workload("batch", start=starts[i], batch_size=config.batch_size),
                    per_op=config.batch_size,
                    requests=split,
                    connections=min(2, config.connections),
                )
            )
            self.stored, self.rss_after_load = _stored_count(server), row.rss_mb
            log(f"  {self.stored:,} entities stored; server peak RSS {row.rss_mb or 0:.0f} MB")
            for name, kind, baseline, target in SCENARIOS:
                scenario = Row(name, baseline=baseline, target=target)
                workload = partial(_scenario_workload, kind, stored)
                self.rows.append(self.measure(scenario, server, workload))
            self.rows.extend(future.scenarios(self, server, stored))


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


def compute_ratios(rows: list[Row]) -> None:
    by_name = {row.name: row for row in rows}
    for row in rows:
        base = by_name.get(row.baseline)
        if base is not None and base.rate > 0 and row.rates:
            row.ratio = row.rate / base.rate


@dataclass
class Outcome:
    rows: list[Row]
    stored: int
    rss_after_load: float | None

    @property
    def rss_met(self) -> bool | None:
        return None if self.rss_after_load is None else self.rss_after_load <= RSS_TARGET_MB


def run(config: Config) -> Outcome:
    """Every row, in table order: baselines first, then the broker's scenarios, then alternatives."""
    with (
        tempfile.TemporaryDirectory(prefix="cityos-bench-") as tmp,
        ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool,
    ):
        bench = Bench(config, Path(tmp), pool)
        bench.raw_sqlite()
        bench.constant()
        bench.cityos()
    order = {"baseline": 0, "scenario": 1, "alternative": 2}
    rows = sorted(bench.rows, key=lambda r: (order[r.kind], r.name if r.kind == "scenario" else ""))
    compute_ratios(rows)
    return Outcome(rows, bench.stored, bench.rss_after_load)
