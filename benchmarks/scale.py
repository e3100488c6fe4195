"""The scaling table (--scale 10000,100000,1000000): for each size, a fresh database and server, loaded
with that many entities by batch upsert through the API (timed: the load rate), then every read and
write scenario at that size, each repeat paired with a constant-JSON floor repeat; the server's RSS and
the bytes on disk per entity, per history instance and per audit record; and per scenario the flatness, the rate at the
largest size over the rate at the smallest (issue 15: within 30%).

The load is the store's time, not the harness's: each chunk of batches is built in the load-generating
process before its clock starts, and sent over several connections; the load rate is entities over the
summed send time of the chunks (its spread: the chunks' own rates, so a store that slows as it grows
shows it).

Bytes on disk: SQLite, the pages of each table and its indexes (dbstat, read through the WAL), split
into the history tables (`temporal_*`), the audit trail (`audit_*`: one record per write, so it grows
with the writes as the history does, not with the entities) and the rest, and in all the database file
plus its WAL; PostgreSQL, pg_total_relation_size of each table of the run's schema (indexes and TOAST
included), split the same way. Per entity: the bytes of the rest over the entities stored; per history
instance: the history bytes over the rows of temporal_instances; per audit record: the audit bytes over
the rows of audit_log.

--url runs the same scenarios at one size against a server started elsewhere (nothing measured there
but rates: no RSS, no disk, no CPU), paired with the constant-JSON app given by --floor-url, if any."""

from __future__ import annotations

import math
import os
import sqlite3
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import future
from benchmarks.postgres import BenchSchema, redact
from benchmarks.report import LABELS, Row, _number, cell
from benchmarks.servers import RemoteServer, ServerProcess, cityos_server
from benchmarks.targets import (
    BYTES_PER_ENTITY,
    BYTES_PER_INSTANCE,
    FLAT,
    LOAD_SECONDS_1M,
    RSS_MB,
    target,
    without_ratio,
)
from benchmarks.workloads import Workload

if TYPE_CHECKING:
    from benchmarks.runner import Bench

HISTORY_PREFIXES = ("temporal_",)  # the history tables
AUDIT_PREFIXES = ("audit_",)  # the audit trail (records, queue, chain head, checkpoints); the rest: entities
LOAD_CONNECTIONS = 4
MAX_CHUNK = 50  # batches built before a chunk's clock starts: 50,000 entities, about 50 MB of bodies
# (row name, workload kind) at each size; the batch upsert rewrites stored entities (history on)
SCENARIOS = [
    ("1. create one entity", "create"),
    ("2. partial attribute update", "update"),
    ("3. batch upsert of stored ids, {batch:,}/request", "batch_existing"),
    ("4. retrieve entity by id", "retrieve"),
    ("5a. query type, limit=20", "query_type"),
    ("5d. query type, limit=20, random offset", "query_type_offset"),
    ("5b. query q filter, limit=20", "query_q"),
    ("5c. query geoQ near 500 m, limit=20", "query_geo"),
]
LOAD = "load by batch upsert"
TEMPORAL_TARGET_INSTANCES = 100_000


@dataclass
class SizeResult:
    """One size on one back-end."""

    backend: str
    size: int
    stored: int = 0
    load: Row = field(default_factory=lambda: Row(LOAD, unit="entities/s"))
    load_seconds: float = 0.0
    rows: list[Row] = field(default_factory=list)
    floor: Row = field(default_factory=lambda: Row("constant JSON (HTTP floor)", kind="baseline"))
    rss_after_load: float | None = None
    rss_peak: float | None = None
    bytes_total: int | None = None  # the database's files (SQLite: with the WAL), or the schema's tables
    bytes_entities: int | None = None  # the tables that are neither history nor audit, indexes included
    bytes_history: int | None = None
    instances: int | None = None
    bytes_audit: int | None = None
    audit_records: int | None = None
    note: str = ""

    @property
    def per_entity(self) -> float | None:
        return None if self.bytes_entities is None or not self.stored else self.bytes_entities / self.stored

    @property
    def per_instance(self) -> float | None:
        if self.bytes_history is None or not self.instances:
            return None
        return self.bytes_history / self.instances

    @property
    def per_audit_record(self) -> float | None:
        if self.bytes_audit is None or not self.audit_records:
            return None
        return self.bytes_audit / self.audit_records


def scale_size(bench: Bench, backend: str, size: int) -> SizeResult:
    """One size on a fresh database (file or schema) with its own server."""
    result = SizeResult(backend, size)
    with ExitStack() as stack:
        url: str | None = None
        database: Path | None = None
        if backend == "postgres":
            schema = stack.enter_context(BenchSchema(bench.config.postgres))
            url, bench.schema = schema.url, schema
            stack.callback(setattr, bench, "schema", None)
            bench.log(f"== scale {size:,}, PostgreSQL: schema {schema.name} in {redact(bench.config.postgres)} ==")
        else:
            database = bench.workdir / f"scale{size}.db"  # the file cityos_server(name=f"scale{size}") creates
            bench.log(f"== scale {size:,}, SQLite: {database} ==")
        server = stack.enter_context(cityos_server(bench.workdir, url, name=f"scale{size}"))
        saved = bench.config
        if saved.scale_duration:  # --smoke: every scenario at every size, briefly
            bench.config = replace(saved, duration=saved.scale_duration, warmup=0.0)
        try:
            _measure_size(bench, server, result, database)
        finally:
            bench.config = saved
            from benchmarks.runner import _problems

            problems = _problems(server)
            result.note = f"{len(problems)} error lines in the server log" if problems else ""
        if database is not None:
            for ending in ("", "-wal", "-shm"):  # a 1,000,000-entity file is several GB
                Path(f"{database}{ending}").unlink(missing_ok=True)
    return result


def remote(bench: Bench, url: str) -> list[SizeResult]:
    """The scaling scenarios at one size (--scale's first, else --entities) against a running server."""
    size = bench.config.scale[0] if bench.config.scale else bench.config.entities
    result = SizeResult("remote", size)
    with RemoteServer("cityos", url) as server:
        bench.log(f"== remote {url}: {size:,} entities ==")
        _measure_size(bench, server, result, None)
    return [result]


def _measure_size(bench: Bench, server: ServerProcess, result: SizeResult, database: Path | None) -> None:
    from benchmarks.runner import CONSTANT, _stored_count

    config = bench.config
    _load(bench, server, result)
    bench.settle()
    result.rss_after_load = server.peak_rss_mb()
    result.stored = _stored_count(server)
    started = time.perf_counter()
    if database is not None:
        footprint = sqlite_footprint(database)
    elif bench.schema is not None:
        footprint = postgres_footprint(bench.schema)
    else:
        footprint = Footprint()
    result.bytes_total, result.bytes_entities = footprint.total, footprint.entities
    result.bytes_history, result.instances = footprint.history, footprint.instances
    result.bytes_audit, result.audit_records = footprint.audit, footprint.audit_records
    bench.log(
        f"  {result.stored:,} stored in {result.load_seconds:.1f} s ({result.load.rate:,.0f}/s); RSS "
        f"{result.rss_after_load or 0:.0f} MB; disk measured in {time.perf_counter() - started:.1f} s"
    )

    def floor(index: int) -> float:
        return bench.constant_sample(index, into=result.floor)

    # not in --smoke, which only checks that every scenario runs at every size
    paired = floor if bench.constant is not None and not config.scale_duration else None
    for template, kind in SCENARIOS:
        name = template.format(batch=config.batch_size)
        found = target(name, result.backend)
        row = Row(name, baseline=CONSTANT if paired else "", target=found, backend=result.backend)
        if kind == "batch_existing":
            row.unit, row.baseline = "entities/s", ""
            workload = partial(_existing_batches, result.stored, config.batch_size)
            connections = min(2, config.connections)
            bench.measure(row, server, workload, per_op=min(config.batch_size, result.stored), connections=connections)
        else:
            workload = partial(_workload, kind, result.stored, uuid.uuid4().hex[:6])
            bench.measure(row, server, workload, baseline=paired)
        result.rows.append(row)
    for row in future.temporal(bench, server, config.scale_instances):
        row.backend, row.target = result.backend, target(row.name, result.backend)
        if row.name.startswith("6b") and config.scale_instances < TEMPORAL_TARGET_INSTANCES:
            row.target = None  # issue 15's 50 ms is over 100,000 instances: the main table's 6b
        result.rows.append(row)
    for row in result.rows:  # the ratio parts of the targets need a paired floor
        if not row.ratios:
            row.target = without_ratio(row.target)
    result.rss_peak = server.peak_rss_mb()


def _workload(kind: str, stored: int, run: str, repeat: int) -> Workload:
    """Created entities get ids unique to the run (a remote server keeps those of earlier runs)."""
    return Workload(kind, stored=stored, start=stored, tag=f"{kind}-{run}-{repeat}")


def _existing_batches(stored: int, batch_size: int, repeat: int) -> Workload:
    """Each repeat refreshes other runs of ids (start seeds the choice)."""
    return Workload("batch_existing", stored=stored, start=repeat + 1, batch_size=batch_size)


def _load(bench: Bench, server: ServerProcess, result: SizeResult) -> None:
    """`size` entities by batch upsert, chunk by chunk (each chunk's bodies built before its clock starts)."""
    size, batch = result.size, bench.config.batch_size
    batches = math.ceil(size / batch)
    connections = min(LOAD_CONNECTIONS, bench.config.connections)
    chunk = max(connections, min(MAX_CHUNK, batches // 10))  # every connection busy, 10 chunks or more
    bench.log(f"  loading {size:,} entities: {batches} batches of {batch:,}, {connections} connections")
    seconds, done = 0.0, 0
    for first in range(0, batches, chunk):
        count = min(chunk, batches - first)
        spec = Workload("batch", start=first * batch, batch_size=batch)
        loaded = bench.load(server, spec, requests=count, connections=connections)
        result.load.rates.append(loaded.rate * batch)
        result.load.errors += loaded.errors
        result.load.error_sample = result.load.error_sample or loaded.error_sample
        seconds += loaded.elapsed
        done += count * batch
        if first and (first // chunk) % 5 == 0:
            bench.log(f"    {done:,} loaded, {done / seconds:,.0f}/s so far")
        bench.sample_load()
    result.load_seconds = seconds
    result.load.rss_mb = server.peak_rss_mb()


@dataclass(frozen=True)
class Footprint:
    """Bytes on disk, split: all (SQLite: file + WAL), the entities' share, the history's with its
    instances, the audit trail's with its records; None where unknown."""

    total: int | None = None
    entities: int | None = None
    history: int | None = None
    instances: int | None = None
    audit: int | None = None
    audit_records: int | None = None


def _split(total: int, sizes: list[tuple[str, int]], instances: int | None, records: int | None) -> Footprint:
    history = sum(bytes_ for name, bytes_ in sizes if name.startswith(HISTORY_PREFIXES))
    audit = sum(bytes_ for name, bytes_ in sizes if name.startswith(AUDIT_PREFIXES))
    entities = sum(bytes_ for _, bytes_ in sizes) - history - audit
    return Footprint(total, entities, history, instances, audit, records)


def sqlite_footprint(database: Path) -> Footprint:
    """The bytes of a SQLite database by share (dbstat, through the WAL); only the total where the
    SQLite was built without dbstat."""
    total = sum(os.path.getsize(path) for path in (database, Path(f"{database}-wal")) if path.exists())
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)

    def count(table: str) -> int | None:
        try:
            (rows,) = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
            return int(rows)
        except sqlite3.OperationalError:
            return None

    try:
        try:
            sizes = connection.execute(
                "SELECT m.tbl_name, SUM(d.pgsize) FROM dbstat d JOIN sqlite_master m ON m.name = d.name"
                " GROUP BY m.tbl_name"
            ).fetchall()
        except sqlite3.OperationalError:
            return Footprint(total)
        return _split(total, sizes, count("temporal_instances"), count("audit_log"))
    finally:
        connection.close()


def postgres_footprint(schema: BenchSchema) -> Footprint:
    """The bytes of the schema's tables by share (indexes and TOAST included)."""

    sizes = schema.table_sizes()
    total = sum(size for _, size in sizes)
    return _split(total, sizes, schema.count("temporal_instances"), schema.count("audit_log"))


# -- the table -------------------------------------------------------------------------------------


def _flat(first: float | None, last: float | None, sizes: int = 2) -> str:
    """The rate at the largest size over the rate at the smallest, against issue 15's flatness."""
    if not first or not last or sizes < 2:
        return ""
    return f"{last / first:.2f} (≥ {FLAT:g}: {'met' if last / first >= FLAT else '**missed**'})"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _bytes(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_scale(sizes: list[SizeResult]) -> str:
    """One line per measure and back-end, one column per size; then the largest over the smallest size."""
    lines: list[str] = []
    for backend in dict.fromkeys(result.backend for result in sizes):
        lines += _backend_table(sorted((r for r in sizes if r.backend == backend), key=lambda r: r.size))
    return "\n".join(lines).rstrip()


def _backend_table(results: list[SizeResult]) -> list[str]:
    last, label = results[-1], LABELS.get(results[-1].backend, results[-1].backend)
    header = ["Measure", "Back-end", *(f"{r.size:,}" for r in results), "largest / smallest", "Target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def line(name: str, cells: list[str], flat: str = "", goal: str = "") -> None:
        lines.append("| " + " | ".join([name, label, *cells, flat, goal]) + " |")

    rates = [r.size / r.load_seconds if r.load_seconds else None for r in results]
    cells = []
    for r, rate in zip(results, rates, strict=True):
        chunks = f"chunks {_number(min(r.load.rates, default=0))}-{_number(max(r.load.rates, default=0))}"
        errors = f", **{r.load.errors} errors**" if r.load.errors else ""
        cells.append(f"{r.stored:,} in {r.load_seconds:.1f} s: {_number(rate or 0)}/s ({chunks}){errors}")
    goal = f"1,000,000 in < {LOAD_SECONDS_1M:.0f} s"
    if rates[-1]:
        projected = 1_000_000 / rates[-1]
        verdict = "met" if projected < LOAD_SECONDS_1M else "**missed**"
        goal += f" (at the largest size's rate: {projected:.0f} s, {verdict})"
    line(LOAD, cells, _flat(rates[0], rates[-1], len(results)), goal)
    line("constant JSON (HTTP floor)", [cell(r.floor, spread=True) for r in results])
    for name in dict.fromkeys(row.name for r in results for row in r.rows):
        rows = [next((row for row in r.rows if row.name == name), None) for r in results]
        low, top = rows[0], rows[-1]
        line(
            name,
            [cell(row, spread=True) for row in rows],
            _flat(low.rate if low else None, top.rate if top else None, len(results)),
            top.target_text() if top is not None else "",
        )
    line("server peak RSS after the load, MB", [_mb(r.rss_after_load) for r in results])
    rss_goal = f"≤ {RSS_MB:.0f} MB at 1,000,000"
    if last.rss_peak is not None:
        rss_goal += f" ({'met' if last.rss_peak <= RSS_MB else '**missed**'} at {last.size:,})"
    line("server peak RSS under queries, MB", [_mb(r.rss_peak) for r in results], "", rss_goal)
    line(
        "disk bytes per entity (history and audit trail excluded)",
        [_bytes(r.per_entity) for r in results],
        "",
        _limit(last.per_entity, BYTES_PER_ENTITY),
    )
    line(
        "disk bytes per history instance",
        [f"{_bytes(r.per_instance)} ({r.instances:,} instances)" if r.instances else "-" for r in results],
        "",
        _limit(last.per_instance, BYTES_PER_INSTANCE),
    )
    line(
        "disk bytes per audit record (one per write)",
        [f"{_bytes(r.per_audit_record)} ({r.audit_records:,} records)" if r.audit_records else "-" for r in results],
    )
    line(
        "disk bytes in all (SQLite: file + WAL), per entity",
        [_bytes(r.bytes_total / r.stored) if r.bytes_total and r.stored else "-" for r in results],
    )
    notes = [f"{label} {r.size:,}: {r.note}" for r in results if r.note]
    return [*lines, "", *notes, *([""] if notes else [])]


def _limit(value: float | None, limit: float) -> str:
    if value is None:
        return f"≤ {limit:,.0f}"
    return f"≤ {limit:,.0f} {'met' if value <= limit else '**missed**'}"
