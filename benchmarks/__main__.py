"""`python -m benchmarks`: run every scenario on each back-end and print the Markdown tables (progress
goes to stderr). Exit status 1 when a selected back-end could not run."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.postgres import URL_ENV, redact, required
from benchmarks.report import format_side_by_side, format_table, sqlite_rates
from benchmarks.runner import BACKENDS, RSS_TARGET_MB, Backend, Config, Outcome, run
from benchmarks.scale import SizeResult, format_scale
from benchmarks.servers import ROOT, SERVER_CPUS_ENV, SERVER_SRC_ENV, load_average, machine, parse_cpus

STACK = ("uvicorn", "uvloop", "httptools", "starlette", "orjson")


def commit(checkout: Path = ROOT) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=checkout, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() + (" (src/ modified)" if dirty.stdout.strip() else "") or "unknown"


def build_parser() -> argparse.ArgumentParser:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark a real `cityos serve` process, on SQLite and on PostgreSQL, against the constant-JSON "
        "and raw-database baselines.",
        epilog="Example: python -m benchmarks --connections 16 --duration 3 --repeat 3 --json results.json",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks the harness runs")
    parser.add_argument("--connections", type=int, help=f"concurrent connections [{defaults.connections}]")
    parser.add_argument("--duration", type=float, help=f"seconds per repeat [{defaults.duration}]")
    parser.add_argument("--repeat", type=int, help=f"repeats per scenario [{defaults.repeat}]")
    parser.add_argument("--entities", type=int, help=f"entities loaded by batch upsert [{defaults.entities}]")
    parser.add_argument("--client", choices=("raw", "httpx"), help="load-generating client [raw]")
    parser.add_argument("--no-alternatives", action="store_true", help="skip the alternative-stack rows")
    parser.add_argument(
        "--backend",
        choices=(*BACKENDS, "both"),
        default="both",
        help="store(s) to run every scenario on; with `both`, PostgreSQL is skipped (with a note) when it "
        "cannot be reached, unless CITYOS_TEST_REQUIRE_POSTGRES=1 [both]",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help=f"PostgreSQL server with PostGIS; a throw-away schema is created in it [env {URL_ENV}, "
        f"default {defaults.postgres}]",
    )
    parser.add_argument(
        "--workers",
        type=_sizes,
        metavar="N,N",
        help="server worker counts of the read rows; counts above 1 run on PostgreSQL only (SQLite serves one "
        f"process) [{_counts(defaults.workers)}]",
    )
    parser.add_argument(
        "--scale",
        type=_sizes,
        metavar="N,N,...",
        help="the scaling table only, on these entity counts: for each, a fresh database loaded by batch upsert "
        "(timed), every read and write scenario, RSS, disk bytes per entity and per history instance, and the "
        f"flatness [without --scale: the main table, then the scaling table on {_counts(defaults.scale)}]",
    )
    parser.add_argument("--no-scale", action="store_true", help="the main table only, without the scaling table")
    parser.add_argument(
        "--server-cpus",
        metavar="LIST",
        help="pin every server (cityos, the constant-JSON app, mosquitto) to these CPUs with taskset (e.g. 0-7) "
        "and the load generators to the others",
    )
    parser.add_argument(
        "--clients",
        type=int,
        help=f"load-generating processes, the connections split among them (one is ~15k req/s) [{defaults.clients}]",
    )
    parser.add_argument(
        "--url",
        metavar="URL",
        help="load a cityos server started elsewhere (http://host:port) instead of starting one: the scaling "
        "scenarios at one size (--scale N, else --entities), rates only",
    )
    parser.add_argument(
        "--floor-url",
        metavar="URL",
        help="with --url: the constant-JSON app running next to that server "
        "(python -m benchmarks.constant_app --host 0.0.0.0 --port P), the floor its rows are paired with",
    )
    parser.add_argument("--no-mqtt", action="store_true", help="skip scenario 9 (IoT Agent over Mosquitto)")
    parser.add_argument(
        "--server-src",
        type=Path,
        metavar="DIR",
        help="run the cityos servers from another checkout's src/ (e.g. a `git worktree` of an older commit), "
        "so two commits are measured by the same harness; compare their CPU ms/op on a loaded machine",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NUMBER",
        help="run only the scenarios whose number starts so (e.g. --only 8 for the auth rows 8a-8d, --only 5a, "
        "--only 12 for the alert rules pair); repeatable; the batch upsert (3) always runs, since the others "
        "read its entities; no scaling table [all]",
    )
    parser.add_argument("--json", type=Path, help="also write every row as JSON to this file")
    parser.add_argument("--logs", type=Path, help="copy the servers' logs to this directory at the end")
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="PostgreSQL: no VACUUM (ANALYZE) of the schema after each bulk load (as on a server without autovacuum)",
    )
    return parser


def _counts(sizes: tuple[int, ...]) -> str:
    return ",".join(str(size) for size in sizes)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected counts of at least 1, got {text!r}")
    return sizes


def load_line(samples: list[float]) -> str:
    """The machine's load average during a table's runs (sampled after each repeat) and now."""
    now = ", ".join(f"{value:.2f}" for value in load_average())
    if not samples:
        return f"Machine load average (1, 5, 15 min) at the end: {now}"
    low, high = min(samples), max(samples)
    middle = sorted(samples)[len(samples) // 2]
    return (
        f"Machine load average (1 min) during this table's runs: median {middle:.2f} ({low:.2f}-{high:.2f}, "
        f"{len(samples)} samples, {os.cpu_count()} CPUs); at the end (1, 5, 15 min): {now}"
    )


def _rss_line(backend: Backend) -> str:
    rss, peak = backend.rss_after_load, backend.rss_peak
    if rss is None:
        return f"{backend.label}: n/a"
    verdict = "met" if backend.rss_met else "**missed**"
    line = f"{backend.label}: {rss:.0f} MB (target ≤ {RSS_TARGET_MB:.0f} MB: {verdict})"
    if peak is not None:
        line += f"; peak over the whole run (queries included): {peak:.0f} MB"
    return line


def render(outcome: Outcome, config: Config, started: datetime, revision: str) -> str:
    versions = ", ".join(f"{name} {version(name)}" for name in STACK)
    ran = [backend for backend in outcome.backends if backend.ran]
    stored = ", ".join(f"{backend.label} {backend.stored:,}" for backend in ran if config.main) or "see below"
    lines = [
        f"CityOS benchmark, {started:%Y-%m-%d %H:%M} UTC, commit {revision}",
        f"Machine: {machine()}",
        f"Stack: {versions}",
        f"Back-ends: {', '.join(backend.label for backend in outcome.backends)}"
        + (f" at {config.url}" if config.url else "")
        + (
            f" (PostgreSQL at {redact(config.postgres)}, schema "
            + ("vacuumed and analyzed after each bulk load)" if config.analyze else "never vacuumed nor analyzed)")
            if "postgres" in config.backends and not config.url
            else ""
        ),
        f"Load: {config.client} client in its own process, {config.connections} connections "
        f"(batch upsert: {min(2, config.connections)}), {config.repeat} x {config.duration:g} s per scenario "
        f"after {config.warmup:g} s warm-up, each repeat paired with a baseline repeat; entities stored: {stored}",
    ]
    if config.clients > 1 or os.environ.get(SERVER_CPUS_ENV):
        cpus = os.environ.get(SERVER_CPUS_ENV)
        lines.append(
            f"Load generators: {config.clients} processes"
            + (f"; servers pinned to CPUs {cpus}, load generators to the others" if cpus else "")
        )
    lines += [f"**{backend.label} {backend.note}**" for backend in outcome.backends if backend.note]
    if config.main and not config.url:
        main_loads = [value for key, samples in outcome.loads.items() if key.startswith("main") for value in samples]
        lines += ["", load_line(main_loads), "", format_table(outcome.rows), ""]
    if outcome.sizes:
        scale_loads = [value for key, samples in outcome.loads.items() if key.startswith("scale") for value in samples]
        where = "the remote server loaded" if config.url else "per size a fresh database loaded"
        lines += [
            f"Scaling: {where} by batch upsert through the API; each cell the median rate (min-max over repeats) "
            "and its paired share of the constant-JSON floor:",
            "",
            load_line(scale_loads),
            "",
            format_scale(outcome.sizes),
            "",
        ]
    if config.main and len({(row.backend, row.workers) for row in outcome.rows if row.kind == "scenario"}) > 1:
        lines += [
            "Side by side: median rate (ratio to the scenario's baseline: the constant-JSON floor, or for batch "
            "upsert the raw write of the same database), then the rate over SQLite's:",
            "",
            format_side_by_side(outcome.rows),
            "",
        ]
    if ran and config.main and not config.url:
        lines.append("Server peak RSS (VmHWM; summed over the workers) once the entities are stored:")
        lines += [f"- {_rss_line(backend)}" for backend in ran]
    for backend in outcome.backends:
        if backend.problems:
            lines.append(f"{backend.label} server log: {len(backend.problems)} error lines, the first ones:")
            lines += [f"    {line[:400]}" for line in backend.problems[:5]]
    return "\n".join(lines)


def _size_json(size: SizeResult) -> dict[str, Any]:
    return {
        **{k: v for k, v in asdict(size).items() if k not in ("rows", "load", "floor")},
        "load": size.load.as_json(),
        "floor": size.floor.as_json(),
        "per_entity": size.per_entity,
        "per_instance": size.per_instance,
        "per_audit_record": size.per_audit_record,
        "rows": [row.as_json() for row in size.rows],
    }


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C: servers are stopped and the PostgreSQL schema is dropped."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = Config.smoke() if args.smoke else Config()
    overrides = {
        "connections": args.connections,
        "duration": args.duration,
        "repeat": args.repeat,
        "entities": args.entities,
        "client": args.client,
        "postgres": args.postgres,
        "workers": args.workers,
        "logs": str(args.logs) if args.logs else None,
        "clients": args.clients,
        "url": args.url,
        "floor_url": args.floor_url,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_alternatives:
        config = replace(config, alternatives=False)
    if args.no_analyze:
        config = replace(config, analyze=False)
    if args.only:  # some of the main table's scenarios: no scaling table (unless --scale asks for it)
        config = replace(config, only=tuple(args.only), scale=())
    if args.no_mqtt:
        config = replace(config, mqtt=False)
    if args.scale:  # the scaling table only
        config = replace(config, scale=args.scale, main=False)
    elif args.no_scale:
        config = replace(config, scale=())
    if args.url:
        config = replace(config, main=False, alternatives=False)
    if args.server_cpus:
        try:
            parse_cpus(args.server_cpus)
        except ValueError:
            build_parser().error(f"--server-cpus: expected a CPU list such as 0-3,6, got {args.server_cpus!r}")
        os.environ[SERVER_CPUS_ENV] = args.server_cpus
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    # asked for by name, or by CI: an unreachable PostgreSQL is then a failure, not a skip
    config = replace(config, backends=backends, require_postgres=args.backend == "postgres" or required())
    signal.signal(signal.SIGTERM, _terminated)
    started, revision = datetime.now(UTC), commit()  # the code the server loads at its start
    if args.server_src:
        os.environ[SERVER_SRC_ENV] = str(args.server_src.resolve())
        revision = f"{commit(args.server_src.resolve().parent)} (server from {args.server_src}; harness {revision})"
    outcome = run(config)
    print(render(outcome, config, started, revision))
    if args.json:
        versus = sqlite_rates(outcome.rows)
        payload = {
            "started": started.isoformat(),
            "commit": revision,
            "config": {**config.__dict__, "postgres": redact(config.postgres)},
            "backends": [{**asdict(b), "label": b.label, "ran": b.ran} for b in outcome.backends],
            "rows": [row.as_json(versus.get(row.name)) for row in outcome.rows],
            "scale": [_size_json(size) for size in outcome.sizes],
            "loads": outcome.loads,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main())
