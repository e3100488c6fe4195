"""The benchmark harness runs end to end in smoke mode (tiny sizes), so it cannot rot unnoticed.

Only that every scenario ran without errors is asserted: rates are printed, never checked, because
this machine is shared and noisy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = (
    "raw SQLite write",
    "raw SQLite read",
    "constant JSON",
    "1. create one entity",
    "2. partial attribute update",
    "3. batch upsert",
    "4. retrieve entity by id",
    "5a. query type",
    "5b. query q filter",
    "5c. query geoQ near",
    "6a. notifications delivered",
    "6b. temporal avg per day",
    "6c. temporal lastN",
)


def test_benchmark_smoke_mode_runs_every_scenario_without_errors(tmp_path: Path) -> None:
    results = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| Scenario |" in run.stdout
    rows = json.loads(results.read_text())["rows"]
    names = [row["name"] for row in rows]
    for expected in EXPECTED:
        assert any(name.startswith(expected) for name in names), f"no row for {expected}: {names}"
    for row in rows:
        if row["skipped"]:
            # allowed only for endpoints the broker does not have yet (scenario 6)
            assert row["skipped"] == "skipped: not implemented yet", row
            assert row["name"].startswith("6"), row
            continue
        assert row["errors"] == 0, f"{row['name']}: {row['error_sample']}"
        assert row["rate"] > 0, row["name"]
