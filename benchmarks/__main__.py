"""`python -m benchmarks`: run every scenario and print one Markdown table (progress goes to stderr)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from benchmarks.report import format_table
from benchmarks.runner import RSS_TARGET_MB, Config, Outcome, run
from benchmarks.servers import ROOT, machine

STACK = ("uvicorn", "uvloop", "httptools", "starlette", "orjson")


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() + (" (src/ modified)" if dirty.stdout.strip() else "") or "unknown"


def build_parser() -> argparse.ArgumentParser:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark a real `cityos serve` process against the constant-JSON and raw-SQLite baselines.",
        epilog="Example: python -m benchmarks --connections 16 --duration 3 --repeat 3 --json results.json",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks the harness runs")
    parser.add_argument("--connections", type=int, help=f"concurrent connections [{defaults.connections}]")
    parser.add_argument("--duration", type=float, help=f"seconds per repeat [{defaults.duration}]")
    parser.add_argument("--repeat", type=int, help=f"repeats per scenario [{defaults.repeat}]")
    parser.add_argument("--entities", type=int, help=f"entities loaded by batch upsert [{defaults.entities}]")
    parser.add_argument("--client", choices=("raw", "httpx"), help="load-generating client [raw]")
    parser.add_argument("--no-alternatives", action="store_true", help="skip the alternative-stack rows")
    parser.add_argument("--json", type=Path, help="also write every row as JSON to this file")
    return parser


def render(outcome: Outcome, config: Config, started: datetime, revision: str) -> str:
    versions = ", ".join(f"{name} {version(name)}" for name in STACK)
    rss, peak = outcome.rss_after_load, outcome.rss_peak
    rss_line = "n/a" if rss is None else f"{rss:.0f} MB (target ≤ {RSS_TARGET_MB:.0f} MB: "
    if rss is not None:
        rss_line += "met)" if outcome.rss_met else "**missed**)"
    if peak is not None:
        rss_line += f"; peak over the whole run (queries included): {peak:.0f} MB"
    lines = [
        f"CityOS benchmark, {started:%Y-%m-%d %H:%M} UTC, commit {revision}",
        f"Machine: {machine()}",
        f"Stack: {versions}",
        f"Load: {config.client} client in its own process, {config.connections} connections "
        f"(batch upsert: {min(2, config.connections)}), {config.repeat} x {config.duration:g} s per scenario "
        f"after {config.warmup:g} s warm-up, each repeat paired with a baseline repeat; "
        f"{outcome.stored:,} entities stored",
        "",
        format_table(outcome.rows),
        "",
        f"Server peak RSS (VmHWM) once {outcome.stored:,} entities are stored: {rss_line}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = Config.smoke() if args.smoke else Config()
    overrides = {
        "connections": args.connections,
        "duration": args.duration,
        "repeat": args.repeat,
        "entities": args.entities,
        "client": args.client,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_alternatives:
        config = replace(config, alternatives=False)
    started, revision = datetime.now(UTC), commit()  # the code the server loads at its start
    outcome = run(config)
    print(render(outcome, config, started, revision))
    if args.json:
        payload = {
            "started": started.isoformat(),
            "commit": revision,
            "config": config.__dict__,
            "stored": outcome.stored,
            "rss_after_load_mb": outcome.rss_after_load,
            "rss_peak_mb": outcome.rss_peak,
            "rows": [row.as_json() for row in outcome.rows],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
