"""Scenario 12: what alert rules cost a served partial update (issue 17: "rule evaluation adds at most
10% to the partial-update rate with 100 rules loaded"). The scenario-2 partial update (value and
observedAt of `availableSpotNumber`) against a server started with `--rules-dir` holding 100 rules
over that attribute, repeat by repeat paired with the same workload on a server started alike with
an empty `--rules-dir`, both on the benchmark's database and started after its load (the ratio is
the 100-rule rate over the 0-rule rate in the same repeat, the pair's order alternating from one
repeat to the next; target 90%). Why two new servers, and why alternate: in the first trials
(2026-12-07) the baseline ran first in every pair, and was at first the main server, which had made
the batch upsert; the 100-rule server then came out faster in four runs of five (median ratios 0.86
to 1.23) and used less server CPU per request in most pairs: biases, in favour of the rules. The
rules are those of the instruction count (benchmarks.instructions.write_rules): thresholds with a
clear level, rates, thresholds combined with a polygon and `absent` timers, in turns, none firing
on the benchmark's values (a firing rule writes an Alert, a write of its own). The row is skipped
while this CityOS has no alert rules (`--rules-dir`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.entities import ENTITY_TYPE
from benchmarks.future import NOT_YET, log
from benchmarks.report import Row
from benchmarks.servers import ServerProcess, cityos_server
from benchmarks.targets import Target
from benchmarks.workloads import Workload

if TYPE_CHECKING:
    from benchmarks.runner import Bench

TARGET = Target(ratio=0.90)
RULES = 100
ATTRIBUTE = "availableSpotNumber"  # what the scenario-2 update writes (workloads.py)
NAME = f"12. partial attribute update, {RULES} alert rules"


def has_rules() -> bool:
    """True if the served CityOS takes --rules-dir (issue 17, part 2)."""
    done = subprocess.run(
        [sys.executable, "-m", "cityos", "serve", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    return "--rules-dir" in done.stdout


def rules_rows(bench: Bench, backend: str, url: str | None, stored: int) -> list[Row]:
    """The 0-rule row and the 100-rule row, each on a server of its own, side by side."""
    off_row = Row(NAME.replace(f"{RULES} alert rules", "0 alert rules"), backend=backend)
    row = Row(NAME, baseline=off_row.name, target=TARGET, backend=backend)
    if not has_rules():
        row.skipped = off_row.skipped = NOT_YET
        return [off_row, row]
    from benchmarks.instructions import write_rules  # imports the app: only when the row runs

    folder, empty = Path(bench.workdir) / "bench-rules", Path(bench.workdir) / "bench-no-rules"
    for made in (folder, empty):
        shutil.rmtree(made, ignore_errors=True)
    write_rules(folder, RULES, ENTITY_TYPE, ATTRIBUTE)
    empty.mkdir()
    sqlite_file = None if url else Path(bench.workdir) / "bench.db"
    with (
        cityos_server(
            bench.workdir, url, name="rules-0", extra=["--rules-dir", str(empty)], database=sqlite_file
        ) as server,
        cityos_server(
            bench.workdir, url, name="rules", extra=["--rules-dir", str(folder)], database=sqlite_file
        ) as ruled,
    ):

        def workload(index: int) -> Workload:
            return Workload("update", stored=stored, start=stored, tag=f"rules-update{index}")

        def sample(target: ServerProcess, into: Row, index: int) -> float:
            cpu_before = target.cpu_seconds()  # CPU per request: the fair comparison on a loaded machine
            result = bench.load(target, workload(index), seed=index)
            if result.ops:
                into.cpu_ms.append((target.cpu_seconds() - cpu_before) * 1000 / result.ops)
            bench.record(into, result)
            return result.rate

        log(f"  {row.name} …")
        for warm in (server, ruled):
            bench.load(warm, workload(-1), duration=1.0)
        for index in range(bench.config.repeat):
            # the order alternates: the second run of a pair met a checkpoint or a cache the first left
            order = ((server, off_row), (ruled, row)) if index % 2 == 0 else ((ruled, row), (server, off_row))
            rates = {id(into): sample(target, into, index) for target, into in order}
            bench.sample_load()
            if rates[id(off_row)]:
                row.ratios.append(rates[id(row)] / rates[id(off_row)])
        off_row.rss_mb = server.peak_rss_mb()
        row.rss_mb = ruled.peak_rss_mb()
    return [off_row, row]
