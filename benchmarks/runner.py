"""The benchmark run: every scenario against one `cityos serve` process per back-end (SQLite, then
PostgreSQL), each repeated, with the load generated from a separate process. The machine is noisy, so
each repeat of a scenario is paired with a repeat of its baseline run just before it, and the ratio
shown is the median of the paired ratios. Every back-end is compared with the same constant-JSON
floor, and with the raw-write floor of its own database. On PostgreSQL the read scenarios run once
more against a server with several worker processes. The scaling table (--scale) and the remote run
(--url) are in scale.py."""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import httpx

from benchmarks import future
from benchmarks.auth import auth_rows
from benchmarks.durability import durability
from benchmarks.entities import ENTITY_TYPE
from benchmarks.federation import federation_rows
from benchmarks.iot import mqtt_row
from benchmarks.loadgen import LoadResult, LoadSpec, run_load
from benchmarks.observe import observe_rows
from benchmarks.postgres import BenchSchema, RawPostgres, default_url, redact, unreachable
from benchmarks.rawsqlite import RawStore, documents
from benchmarks.report import LABELS, Row
from benchmarks.rules import rules_rows
from benchmarks.scale import SizeResult, remote, scale_size
from benchmarks.servers import (
    RemoteServer,
    ServerProcess,
    StartFailed,
    cityos_server,
    constant_server,
    load_average,
    log_problems,
    parse_cpus,
    server_cpus,
)
from benchmarks.targets import RSS_MB, target
from benchmarks.workloads import API, BATCH_SIZE, Workload

CONSTANT = "constant JSON (HTTP floor)"
SQLITE, POSTGRES = "sqlite", "postgres"
BACKENDS = (SQLITE, POSTGRES)
# the read scenarios, run again with several server workers (PostgreSQL: SQLite serves one process)
READS = ("retrieve", "query_type", "query_type_offset", "query_q", "query_geo")
# (row name, workload kind); their targets are in targets.py (issue 15)
SCENARIOS: list[tuple[str, str]] = [
    ("1. create one entity", "create"),
    ("2. partial attribute update", "update"),
    ("4. retrieve entity by id", "retrieve"),
    ("5a. query type, limit=20", "query_type"),
    ("5b. query q filter, limit=20", "query_q"),
    ("5c. query geoQ near 500 m, limit=20", "query_geo"),
    ("5d. query type, limit=20, random offset", "query_type_offset"),
]
RSS_TARGET_MB = RSS_MB
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
    backends: tuple[str, ...] = BACKENDS
    postgres: str = field(default_factory=default_url)
    require_postgres: bool = False  # an unusable PostgreSQL fails the run instead of being skipped
    workers: tuple[int, ...] = (1, 2)  # server processes of the read rows; above 1: PostgreSQL only
    logs: str = ""  # a directory to copy the servers' logs to at the end ('': they are deleted)
    analyze: bool = True  # PostgreSQL: VACUUM (ANALYZE) the schema after each load, as autovacuum would
    clients: int = 1  # load-generating processes (one event loop each), the connections split among them
    main: bool = True  # the main table; off when only the scaling table or a remote run is asked for
    scale: tuple[int, ...] = (10_000, 100_000, 1_000_000)  # entity counts of the scaling table (scale.py)
    scale_instances: int = 10_000  # temporal instances of the scaling table's temporal rows
    scale_duration: float = 0.0  # seconds per repeat in the scaling table, without warm-up (0: duration's)
    mqtt: bool = True  # scenario 9, the IoT Agent over a real Mosquitto
    url: str = ""  # a cityos server started elsewhere (e.g. a bigger machine): loaded, not started
    floor_url: str = ""  # the constant-JSON app next to it (python -m benchmarks.constant_app --host ...)
    only: tuple[str, ...] = ()  # scenario numbers to run ("8", "5a"); () runs all (the load, 3, always runs)

    def selected(self, name: str) -> bool:
        """Is the scenario named `name` ("8a. retrieve ...") one this run measures?"""
        return not self.only or any(name.startswith(number) for number in self.only)

    @classmethod
    def smoke(cls) -> Config:
        """Tiny sizes: every scenario runs, in a few seconds each, so the harness cannot rot."""
        return cls(
            duration=0.5,
            warmup=0.2,
            repeat=1,
            entities=200,
            batch_size=100,
            alternatives=False,
            scale=(200, 400),
            scale_instances=200,
            scale_duration=0.1,
        )


@dataclass
class Backend:
    """One back-end's run: what it stored, its server's memory, and why it did not run (note)."""

    name: str
    stored: int = 0
    rss_after_load: float | None = None
    rss_peak: float | None = None
    note: str = ""
    failed: bool = False  # it should have run and did not: the exit status says so
    problems: list[str] = field(default_factory=list)  # error lines of its servers' logs

    @property
    def label(self) -> str:
        return LABELS[self.name]

    @property
    def ran(self) -> bool:
        return not self.note

    @property
    def rss_met(self) -> bool | None:
        return None if self.rss_after_load is None else self.rss_after_load <= RSS_TARGET_MB


@dataclass
class Outcome:
    rows: list[Row]
    backends: list[Backend]
    sizes: list[SizeResult] = field(default_factory=list)  # the scaling table's, in run order
    loads: dict[str, list[float]] = field(default_factory=dict)  # 1-minute load averages sampled per table

    @property
    def failed(self) -> bool:
        return any(backend.failed for backend in self.backends)


def raw_names(label: str, batch_size: int) -> tuple[str, str, str]:
    """The storage-floor rows of one database: batch write, one-row write, read by key."""
    return (
        f"raw {label} write, {batch_size:,} rows/txn",
        f"raw {label} write, 1 row/txn",
        f"raw {label} read by key",
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    def __init__(
        self, config: Config, workdir: Path, pool: ProcessPoolExecutor, constant: ServerProcess | None
    ) -> None:
        self.config, self.workdir, self.pool, self.constant = config, workdir, pool, constant
        self.constant_row = Row(CONSTANT, kind="baseline")
        self.rows: list[Row] = [self.constant_row]
        self.started = time.monotonic()
        self.schema: BenchSchema | None = None  # the PostgreSQL schema of the back-end being measured
        self.loads: list[float] = []  # the machine's 1-minute load average after each repeat

    def log(self, message: str) -> None:
        log(message)

    def sample_load(self) -> None:
        self.loads.append(load_average()[0])

    def settle(self) -> None:
        """After a bulk load, before the load is queried: on PostgreSQL, refresh the planner's statistics
        (the benchmark's server may run without autovacuum, and would not have run it yet anyway)."""
        if self.schema is not None and self.config.analyze:
            log(f"  VACUUM (ANALYZE) {self.schema.name} ({self.schema.analyze():.1f} s)")

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
        """One load run in the load-generating process(es); blocks until it is done. With several clients
        the connections and requests are split among them (each creating its own ids)."""
        config = self.config
        total = connections or config.connections
        clients = max(1, min(config.clients, total, requests or total))
        specs, first = [], 0
        for index in range(clients):
            count = None if requests is None else requests // clients + (index < requests % clients)
            specs.append(
                LoadSpec(
                    host=server.host,
                    port=server.port,
                    workload=_shard(workload, index, first) if clients > 1 else workload,
                    connections=total // clients + (index < total % clients),
                    duration=duration or config.duration,
                    requests=count,
                    client=config.client,
                    seed=seed * clients + index,
                )
            )
            first += count or 0
        futures = [self.pool.submit(run_load, spec) for spec in specs]
        return _merged([future.result() for future in futures])

    def record(self, row: Row, result: LoadResult) -> None:
        """One repeat's result, in its row (for scenarios that run their own loads)."""
        _record(row, result)

    def constant_sample(self, index: int = 0, into: Row | None = None) -> float:
        """One repeat of the constant-JSON baseline, recorded in its row (or `into`); returns its rate."""
        assert self.constant is not None
        row = into or self.constant_row
        result = self.load(self.constant, Workload("constant"), seed=index)
        _record(row, result)
        row.rss_mb = self.constant.peak_rss_mb()
        return result.rate

    @property
    def floor(self) -> Callable[[int], float] | None:
        """The constant-JSON baseline to pair a scenario with (None: a remote run without --floor-url)."""
        return self.constant_sample if self.constant is not None else None

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
            cpu_before = server.cpu_seconds()
            result = self.load(server, workload(index), requests=count, connections=connections, seed=index)
            if result.ops and server.pid:
                row.cpu_ms.append((server.cpu_seconds() - cpu_before) * 1000 / (result.ops * per_op))
            _record(row, result, per_op)
            self.sample_load()
            if base:
                row.ratios.append(result.rate * per_op / base)
        row.rss_mb = server.peak_rss_mb()
        return row

    def alternatives(self) -> None:
        """Each alternative stack against the default one, paired repeat by repeat."""
        for label, options in ALTERNATIVES:
            with constant_server(self.workdir, *options) as server:
                row = Row(f"alt: constant JSON, {label}", kind="alternative", baseline=CONSTANT)
                self.rows.append(self.measure(row, server, lambda i: Workload("constant"), baseline=self.floor))

    def cityos(self, backend: Backend) -> None:
        """Every scenario on one back-end: a fresh database (file or schema), its own raw floor, one
        server; then, on PostgreSQL, the read scenarios against a multi-worker server."""
        config = self.config
        with ExitStack() as stack:
            url: str | None = None
            raw: RawStore | RawPostgres
            if backend.name == POSTGRES:
                schema = stack.enter_context(BenchSchema(config.postgres))
                log(f"schema {schema.name} in {redact(config.postgres)}, migrated with `cityos db upgrade`")
                url, self.schema = schema.url, schema
                stack.callback(setattr, self, "schema", None)
                raw = RawPostgres(url)
            else:
                raw = RawStore(self.workdir / "raw.db")
            stack.callback(raw.close)
            server = cityos_server(self.workdir, url)
            try:
                with server:
                    log(f"cityos serve (pid {server.pid}) on {backend.label}")
                    self.scenarios(backend, server, raw)
            finally:
                backend.problems += _problems(server)
            reads = any(config.selected(name) for name, kind in SCENARIOS if kind in READS)
            for workers in config.workers:
                if url is not None and workers > 1 and reads:
                    self.multi_worker(backend, url, workers)
            if config.selected("7"):
                log(f"  --durability normal and full, side by side ({time.monotonic() - self.started:.0f} s)")
                self.rows += durability(self, backend.name, url, backend.stored)

    def scenarios(self, backend: Backend, server: ServerProcess, raw: RawStore | RawPostgres) -> None:
        self.batch_upsert(backend, server, raw)
        self.settle()
        backend.rss_after_load = server.peak_rss_mb()  # before the count query below, which adds its own peak
        backend.stored = _stored_count(server)
        log(f"  {backend.stored:,} entities stored; server peak RSS {backend.rss_after_load or 0:.0f} MB")
        if not backend.stored:  # every other scenario needs them
            raise StartFailed(f"no entity stored by the batch upsert: {self.rows[-1].error_sample}")
        for name, kind in SCENARIOS:
            if not self.config.selected(name):
                continue
            row = Row(name, baseline=CONSTANT, target=target(name, backend.name), backend=backend.name)
            workload = partial(_scenario_workload, kind, backend.stored)
            self.rows.append(self.measure(row, server, workload, baseline=self.floor))
        for row in future.scenarios(self, server, backend.stored) if self.config.selected("6") else []:
            row.backend, row.target = backend.name, target(row.name, backend.name)
            self.rows.append(row)
        url = self.schema.url if self.schema is not None else None
        if self.config.selected("8"):  # scenario 8: --auth required
            self.rows += auth_rows(self, server, backend.name, url, backend.stored)
        if self.config.mqtt and self.config.selected("9"):
            self.rows.append(mqtt_row(self, backend.name, url, backend.stored))  # scenario 9: MQTT measures
        if self.config.selected("10"):  # scenario 10: a query forwarded to two context sources
            self.rows += federation_rows(self, server, backend.name, backend.stored)
        if self.config.selected("11"):  # scenario 11: metrics and the access log, on and off
            self.rows += observe_rows(self, backend.name, url, backend.stored)
        if self.config.selected("12"):  # scenario 12: a partial update with 100 alert rules loaded
            self.rows += rules_rows(self, backend.name, url, backend.stored)
        backend.rss_peak = server.peak_rss_mb()

    def multi_worker(self, backend: Backend, url: str, workers: int) -> None:
        """The read scenarios again, on the same data, with `workers` server processes."""
        server = cityos_server(self.workdir, url, workers=workers)
        try:
            with server:
                log(f"cityos serve --workers {workers} (pid {server.pid}) on {backend.label}")
                for name, kind in SCENARIOS:
                    if kind not in READS or not self.config.selected(name):
                        continue
                    found = target(name, backend.name)
                    row = Row(name, baseline=CONSTANT, target=found, backend=backend.name, workers=workers)
                    workload = partial(_scenario_workload, kind, backend.stored)
                    self.rows.append(self.measure(row, server, workload, baseline=self.floor))
        finally:
            backend.problems += _problems(server)

    def batch_upsert(self, backend: Backend, server: ServerProcess, raw: RawStore | RawPostgres) -> None:
        """Load `entities` new entities with 1,000-entity upserts; before each repeat the raw floor of
        the same database writes the same documents (while the server idles), so the rates are side by side."""
        config, size = self.config, self.config.batch_size
        batches = math.ceil(config.entities / size)
        split = [n for i in range(config.repeat) if (n := batches // config.repeat + (i < batches % config.repeat))]
        starts = [sum(split[:i]) * size for i in range(len(split))]
        names = raw_names(backend.label, size)
        write, write_one, read = (Row(name, unit="rows/s", kind="baseline", backend=backend.name) for name in names)
        self.rows += [write, write_one, read]

        def raw_write(index: int) -> float:
            rate = raw.write_rate(documents(starts[index], split[index] * size), size)
            write.rates.append(rate)
            return rate

        name = f"3. batch upsert, {size:,}/request"
        row = Row(name, unit="entities/s", baseline=write.name, target=target(name, backend.name), backend=backend.name)
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


def _keep_logs(workdir: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in workdir.glob("*.log"):
        shutil.copy(path, target / path.name)
    log(f"server logs copied to {target}")


def _problems(server: ServerProcess) -> list[str]:
    problems = log_problems(server.log)
    if problems:
        log(f"  {len(problems)} error lines in {server.log.name}, first: {problems[0][:300]}")
    return [f"{server.log.name}: {line}" for line in problems]


def _record(row: Row, result: LoadResult, per_op: int = 1) -> None:
    row.rates.append(result.rate * per_op)
    if result.latencies:  # none when the scenario counts its own operations (MQTT)
        row.p50_ms.append(result.percentile(0.50))
        row.p99_ms.append(result.percentile(0.99))
    row.errors += result.errors
    row.error_sample = row.error_sample or result.error_sample


def _shard(workload: Workload, client: int, first_request: int) -> Workload:
    """Client `client`'s share of a workload: its own ids for creates, its own run of batches."""
    if workload.kind == "batch":
        return replace(workload, start=workload.start + first_request * workload.batch_size)
    if workload.kind == "create":
        return replace(workload, tag=f"{workload.tag}c{client}")
    return workload


def _merged(results: list[LoadResult]) -> LoadResult:
    """Several clients' results as one run: operations added up over the longest client's time."""
    if len(results) == 1:
        return results[0]
    merged = LoadResult(elapsed=max(result.elapsed for result in results))
    for result in results:
        merged.ops += result.ops
        merged.errors += result.errors
        merged.latencies += result.latencies
        for status, count in result.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + count
        merged.error_sample = merged.error_sample or result.error_sample
    return merged


def _pin_client(cpus: set[int]) -> None:
    """A load-generating process keeps off the servers' CPUs (--server-cpus)."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def _scenario_workload(kind: str, stored: int, repeat: int) -> Workload:
    """Created entities get ids unique to their repeat (-1 is the warm-up)."""
    return Workload(kind, stored=stored, start=stored, tag=f"{kind}{repeat}")


def _stored_count(server: ServerProcess) -> int:
    response = httpx.get(
        f"{server.base}{API}/entities",
        params={"type": ENTITY_TYPE, "count": "true", "limit": "1"},
        timeout=60,
    )
    response.raise_for_status()
    return int(response.headers.get("NGSILD-Results-Count", "0"))


def run(config: Config) -> Outcome:
    """Every row, in table order: baselines, the broker's scenarios by back-end, then the alternative
    stacks; then the scaling table's sizes, or a remote server's (--url)."""
    backends = [Backend(name) for name in config.backends] if not config.url else [Backend("remote")]
    for backend in backends:  # before anything starts, so a required server fails fast
        if backend.name == POSTGRES and (reason := unreachable(config.postgres)) is not None:
            backend.failed = config.require_postgres
            backend.note = f"{'not run' if backend.failed else 'skipped'}: {reason}"
            log(f"PostgreSQL {backend.note}")
            if backend.failed:
                for other in backends:
                    other.note = other.note or "not run: the required PostgreSQL is not usable"
                return Outcome([], backends)
    sizes: list[SizeResult] = []
    loads: dict[str, list[float]] = {}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cityos-bench-")))
        if config.logs:
            stack.callback(_keep_logs, workdir, Path(config.logs))  # once every server has stopped
        pinned_cpus = parse_cpus(server_cpus()) if server_cpus() else set()
        others = set(os.sched_getaffinity(0)) - pinned_cpus if pinned_cpus else set()
        if pinned_cpus and not others:
            raise StartFailed(f"--server-cpus {server_cpus()} leaves no CPU for the load generator")
        pool = stack.enter_context(
            ProcessPoolExecutor(
                max_workers=max(1, config.clients),
                mp_context=get_context("spawn"),
                initializer=_pin_client,
                initargs=(others,),
            )
        )
        constant: ServerProcess | None = None
        if config.floor_url:
            constant = stack.enter_context(RemoteServer("constant-JSON app", config.floor_url))
        elif not config.url:
            log("constant-JSON app (uvicorn + uvloop + httptools + Starlette + orjson) …")
            constant = stack.enter_context(constant_server(workdir))
        bench = Bench(config, workdir, pool, constant)
        if constant is not None:
            bench.load(constant, Workload("constant"), duration=config.warmup)
        for backend in backends:
            if not backend.ran or not (config.main or config.scale or config.url):
                continue
            try:
                if config.url:
                    sizes += remote(bench, config.url)
                    continue
                if config.main:
                    log(f"== {backend.label} ==")
                    bench.cityos(backend)
                    loads[f"main {backend.name}"] = bench.loads
                    bench.loads = []
                for size in config.scale:
                    sizes.append(scale_size(bench, backend.name, size))
                    loads[f"scale {backend.name}"] = loads.get(f"scale {backend.name}", []) + bench.loads
                    bench.loads = []
            except (StartFailed, httpx.HTTPError) as exc:  # the server is not up, or answers nothing usable
                backend.note, backend.failed = f"failed: {str(exc).strip()[-2000:]}", True
                log(f"{backend.label} failed: {exc}")
        if config.alternatives and constant is not None:
            bench.alternatives()
            loads["alternatives"] = bench.loads
    order = {"baseline": 0, "scenario": 1, "alternative": 2}
    place = {name: index for index, name in enumerate(BACKENDS)}

    def key(row: Row) -> tuple[int, int, int, str]:
        return (order[row.kind], place.get(row.backend, -1), row.workers, row.name if row.kind == "scenario" else "")

    return Outcome(sorted(bench.rows, key=key), backends, sizes, loads)
