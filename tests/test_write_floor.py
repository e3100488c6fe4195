"""The write floor of benchmarks/write_floor.py answers every kind it measures (docs/performance.md,
issue 15's fourth pass compares CityOS's single-entity writes with it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind", ["constant", "update", "create"])
def test_the_write_floor_measures_each_kind(kind: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.write_floor", kind, "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"{kind}: ") and "ms CPU per request" in run.stdout
