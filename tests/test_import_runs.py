"""The record of import runs (ingest/runs.py) on both back-ends: `cityos import csv` into a database
and through a running broker (--url) records its run with its counts and first rejects; a GTFS feed
with errors records a failed run; `cityos demo` a finished one; the admin API lists and validates
runs, keeps the newest only; the console's operations page shows them with their rejects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from backends import cli_env
from cityos.app import create_app
from cityos.settings import Settings
from cityos.store import sqlite_import_runs
from cityos.store.postgres import import_runs as postgres_import_runs

pytestmark = pytest.mark.slow(seconds=60)

CSV = Path(__file__).parent / "data" / "csv"
GTFS = Path(__file__).parent / "data" / "gtfs"
RUNS = "/cityos/v1/imports"


def cityos(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cityos", *args], env=cli_env(), capture_output=True, text=True, timeout=120, cwd=cwd
    )


def runs_of(database: str) -> list[dict[str, Any]]:
    with TestClient(create_app(Settings(database=database)), base_url="http://127.0.0.1:1026") as client:
        answer = client.get(RUNS)
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()
        return found


def test_a_csv_import_records_its_run_with_its_first_rejects(db_url: str, tmp_path: Path) -> None:
    source = tmp_path / "air-stations.csv"
    source.write_bytes((CSV / "air-stations.csv").read_bytes())
    done = cityos("import", "csv", str(source), "--mapping", str(CSV / "air-stations.yaml"), "--database", db_url)
    assert done.returncode == 0, done.stderr
    [run] = runs_of(db_url)
    assert run["kind"] == "csv" and run["source"] == "air-stations.csv" and run["tenant"] == ""
    assert run["status"] == "finished" and run["stored"] == 9 and run["rejected"] == 7
    assert run["started_at"] <= run["finished_at"]
    assert [r["where"] for r in run["rejects"]] == [f"line {n}" for n in (4, 6, 8, 9, 10, 11, 17)]
    assert run["rejects"][0]["reason"].startswith("no2: 'abc' is not a valid number")
    assert "9 loaded into 9 entities, 7 rejected" in run["message"]
    with TestClient(create_app(Settings(database=db_url)), base_url="http://127.0.0.1:1026") as client:
        assert client.get(f"{RUNS}/{run['id']}").json() == run
        page = client.get("/console/operations")
        assert page.status_code == 200 and 'id="import-runs"' in page.text
        assert f'data-run="{run["id"]}"' in page.text and "First 7 of 7 rejects" in page.text
        assert "<code>line 4</code>: no2: &#39;abc&#39; is not a valid number" in page.text
        assert "导入记录" in client.get("/console/operations", params={"lang": "zh"}).text


def test_a_gtfs_feed_with_errors_records_a_failed_run(db_url: str) -> None:
    done = cityos("import", "gtfs", str(GTFS / "invalid" / "missing_stops.zip"), "--database", db_url)
    assert done.returncode == 1
    [run] = runs_of(db_url)
    assert run["kind"] == "gtfs" and run["status"] == "failed" and run["stored"] == 0
    assert run["rejected"] >= 1 and run["message"] == "not imported"
    assert any("stops.txt" in r["reason"] for r in run["rejects"]), run["rejects"]


def test_an_import_through_a_broker_is_recorded_there(server: str, tmp_path: Path) -> None:
    source = tmp_path / "air-stations.csv"
    source.write_bytes((CSV / "air-stations.csv").read_bytes())
    mapping = str(CSV / "air-stations.yaml")
    done = cityos("import", "csv", str(source), "--mapping", mapping, "--url", server, "--tenant", "madrid")
    assert done.returncode == 0, done.stderr
    [run] = httpx.get(server + RUNS, timeout=10).json()
    assert run["tenant"] == "madrid" and run["status"] == "finished"
    assert run["stored"] == 9 and run["rejected"] == 7 and len(run["rejects"]) == 7


def test_the_api_validates_runs_and_keeps_the_newest(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_import_runs, "KEEP", 3)
    monkeypatch.setattr(postgres_import_runs, "KEEP", 3)
    run = {"kind": "csv", "source": "https://user:secret@example.org/x.csv", "started_at": "2026-01-01T00:00:00Z"}
    for n in range(5):
        assert client.put(f"{RUNS}/run{n:08d}", json={**run, "stored": n}).status_code == 204
    listed = client.get(RUNS).json()
    assert [r["id"] for r in listed] == ["run00000004", "run00000003", "run00000002"]  # newest first, 3 kept
    assert listed[0]["source"] == "https://user:***@example.org/x.csv"  # no credentials kept
    finished = {**run, "status": "finished", "finished_at": "2026-01-01T00:01:00Z", "stored": 40}
    assert client.put(f"{RUNS}/run00000004", json=finished).status_code == 204  # replaced, not added
    assert client.get(f"{RUNS}/run00000004").json()["stored"] == 40
    assert [r["id"] for r in client.get(RUNS, params={"limit": 1, "offset": 1}).json()] == ["run00000003"]
    assert client.get(f"{RUNS}/run00000000").status_code == 404
    for wrong in (
        {**run, "kind": "fax"},
        {**run, "stored": -1},
        {**run, "status": "paused"},
        {**run, "id": "another0"},
        {**run, "rejects": [{"where": "x", "reason": "y", "extra": 1}]},
        {**run, "rejects": [{"reason": "r"}] * 21},
        {"kind": "csv"},
        [],
    ):
        answer = client.put(f"{RUNS}/run00000009", json=wrong)
        assert answer.status_code == 400, wrong
    assert client.put(f"{RUNS}/bad-id!", json=run).status_code == 400
    assert client.get(RUNS, params={"limit": 0}).status_code == 400
    assert client.get(RUNS, params={"since": "x"}).status_code == 400
