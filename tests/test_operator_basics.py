"""What an operator meets first, on real `cityos serve` processes: a port already taken or a
database folder that does not exist (one line, before anything is created), CORS for browser apps,
the access log, a quiet log under notifications, and a demo load that reports progress and stops
at once on Ctrl-C, rolled back and loaded again at the next start."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from backends import sqlite_only
from notify_helpers import free_port, receiving
from server_process import LoggedServer

pytestmark = pytest.mark.slow(seconds=60)

API = "/ngsi-ld/v1"


def serve_once(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
    return subprocess.run(
        [sys.executable, "-m", "cityos", "serve", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


# -- start-up refusals -------------------------------------------------------------------------------
def test_a_port_in_use_is_one_line_before_anything_is_loaded(tmp_path: Path) -> None:
    database = tmp_path / "city.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = serve_once("--port", str(port), "--database", str(database), "--demo-on-empty")
        took = time.monotonic() - started
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port}" in lines[0] and "already in use" in lines[0] and "--port" in lines[0]
    assert not database.exists()  # no file made, no demo loaded
    assert took < 10


def test_a_database_in_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    database = tmp_path / "no-such-folder" / "city.db"
    result = serve_once("--port", str(free_port()), "--database", str(database))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(database.parent) in lines[0] and "does not exist" in lines[0]
    assert not database.parent.exists()


# -- CORS ----------------------------------------------------------------------------------------------
def test_cors_preflight_and_headers_for_the_configured_origin(tmp_path: Path) -> None:
    origin = "http://dashboard.example.org"
    server = LoggedServer(
        tmp_path / "cors.log",
        "--cors-origins",
        f"{origin},http://other.example",
        env={"CITYOS_DATABASE": str(tmp_path / "c.db")},
    )
    server.start()
    try:
        preflight = {
            "Origin": origin,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "content-type,link,ngsild-tenant",
        }
        # every route answers a preflight, batch routes and unknown entities included
        for path in (
            "/entities",
            "/entities/urn:ngsi-ld:Thing:1/attrs",
            "/entityOperations/upsert",
            "/subscriptions",
            "/temporal/entities",
        ):
            answer = httpx.options(server.base + API + path, headers=preflight, timeout=5)
            assert answer.status_code == 200, (path, answer.status_code, answer.text)
            assert answer.headers["access-control-allow-origin"] == origin
            assert "PATCH" in answer.headers["access-control-allow-methods"]
            allowed = answer.headers["access-control-allow-headers"].lower()
            assert {"content-type", "link", "ngsild-tenant", "accept"} <= {h.strip() for h in allowed.split(",")}
        created = httpx.post(
            server.base + API + "/entities",
            json={"id": "urn:ngsi-ld:Thing:1", "type": "Thing"},
            headers={"Origin": origin},
            timeout=5,
        )
        assert created.status_code == 201
        assert created.headers["access-control-allow-origin"] == origin
        exposed = {h.strip().lower() for h in created.headers["access-control-expose-headers"].split(",")}
        assert {"location", "link", "ngsild-results-count", "ngsild-tenant", "content-range"} <= exposed
        listed = httpx.get(
            server.base + API + "/entities", params={"type": "Thing", "count": "true"}, headers={"Origin": origin}
        )
        assert listed.headers["access-control-allow-origin"] == origin and listed.headers["ngsild-results-count"] == "1"
        # another origin gets no permission
        stranger = httpx.options(
            server.base + API + "/entities", headers={**preflight, "Origin": "http://evil.example"}, timeout=5
        )
        assert stranger.status_code == 400 and "access-control-allow-origin" not in stranger.headers
    finally:
        server.stop()


def test_no_cors_headers_by_default(tmp_path: Path) -> None:
    server = LoggedServer(tmp_path / "plain.log", env={"CITYOS_DATABASE": str(tmp_path / "p.db")})
    server.start()
    try:
        answer = httpx.get(
            server.base + API + "/entities", params={"type": "Thing"}, headers={"Origin": "http://a.example"}
        )
        assert answer.status_code == 200
        assert not any(name.startswith("access-control-") for name in answer.headers)
        preflight = httpx.options(
            server.base + API + "/entities",
            headers={"Origin": "http://a.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers
    finally:
        server.stop()


# -- the log ---------------------------------------------------------------------------------------------
def test_access_log_on_request_and_no_info_line_per_notification(tmp_path: Path) -> None:
    with receiving() as receiver, receiving(answer=lambda _: 500) as failing:
        server = LoggedServer(
            tmp_path / "access.log",
            "--access-log",
            "--allow-private-networks",
            "--notification-retry-delay",
            "0.2",
            env={"CITYOS_DATABASE": str(tmp_path / "a.db")},  # the default log level: info
        )
        server.start()
        try:
            for endpoint in (receiver.url, failing.url):
                subscription = {
                    "type": "Subscription",
                    "entities": [{"type": "Thing"}],
                    "notification": {"endpoint": {"uri": endpoint, "accept": "application/json"}},
                }
                assert httpx.post(server.base + API + "/subscriptions", json=subscription).status_code == 201
            for number in range(3):
                body = {
                    "id": f"urn:ngsi-ld:Thing:{number}",
                    "type": "Thing",
                    "n": {"type": "Property", "value": number},
                }
                assert httpx.post(server.base + API + "/entities", json=body).status_code == 201
            receiver.wait(3)
            failing.wait(3)  # the first notification, and retries of it
            assert httpx.get(server.base + "/version").status_code == 200
            time.sleep(0.5)
        finally:
            server.stop()
    log = server.log()
    assert "INFO cityos.access: GET /version 200 " in log  # the access log (observe/access.py)
    assert log.count("INFO cityos.access: POST /ngsi-ld/v1/entities 201 ") == 3
    # nothing per notification, sent or failed (the subscription's status counts them)
    assert receiver.url not in log and failing.url not in log and "HTTP Request" not in log, log


def test_no_access_log_by_default(tmp_path: Path) -> None:
    server = LoggedServer(tmp_path / "quiet.log", env={"CITYOS_DATABASE": str(tmp_path / "q.db")})
    server.start()
    try:
        assert httpx.get(server.base + "/version").status_code == 200
    finally:
        server.stop()
    assert "GET /version" not in server.log()


# -- the demo city at start-up -------------------------------------------------------------------------
def demo_counts(database: Path) -> tuple[int, int, int, int]:
    with closing(sqlite3.connect(database)) as db:
        return (
            db.execute("SELECT count(*) FROM entities").fetchone()[0],
            db.execute("SELECT count(*) FROM temporal_entities").fetchone()[0],
            db.execute("SELECT count(*) FROM temporal_instances").fetchone()[0],
            db.execute("SELECT count(*) FROM ingest_records WHERE kind = 'demo'").fetchone()[0],
        )


@sqlite_only
def test_ctrl_c_during_the_demo_load_stops_at_once_and_the_next_start_completes_it(db_url: str, tmp_path: Path) -> None:
    database = Path(db_url)
    server = LoggedServer(tmp_path / "demo.log", "--demo-on-empty", env={"CITYOS_DATABASE": str(database)})
    server.start(wait=False)
    try:
        deadline = time.monotonic() + 60
        while "history 10%" not in server.log():  # progress lines while it loads, at INFO
            assert time.monotonic() < deadline and server.process is not None and server.process.poll() is None, (
                server.log()
            )
            time.sleep(0.05)
        server.interrupt()
        started = time.monotonic()
        code = server.wait(timeout=10)
        took = time.monotonic() - started
    finally:
        server.stop()
    log = server.log()
    # "at once": well before the load would end (it has 90% to go); 4 s, not less, because a loaded
    # 2-core machine (the test suite's own workers, benchmarks beside it) took 1.9-2.2 s
    assert took < 4.0, f"Ctrl-C took {took:.2f} s"
    assert code != 0
    assert "Traceback" not in log, log
    assert "stopped while loading the demo city" in log
    entities, _, instances, marks = demo_counts(database)
    assert marks == 1 and entities > 0 and instances > 0  # a partial load, and its mark
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    restarted = LoggedServer(tmp_path / "again.log", "--demo-on-empty", env={"CITYOS_DATABASE": str(database)})
    restarted.start()
    restarted.stop()
    assert "stopped half-way" in restarted.log() and "Loaded the CityOS demo city" in restarted.log()
    fresh = tmp_path / "fresh.db"
    reference = LoggedServer(tmp_path / "fresh.log", "--demo-on-empty", env={"CITYOS_DATABASE": str(fresh)})
    reference.start()
    reference.stop()
    warnings = [line for line in reference.log().splitlines() if " WARNING " in line]
    assert all("auth is off" in line for line in warnings), warnings  # the summary is information, not a warning
    assert " INFO cityos.ingest: Loaded the CityOS demo city" in reference.log()
    assert demo_counts(database) == demo_counts(fresh)  # the same city, history included, nothing twice
    assert demo_counts(fresh)[3] == 0


def test_a_demo_load_left_half_done_is_redone_whole(db_url: str) -> None:
    """The rollback of a stopped demo load, on both back-ends: whatever the tenant holds when the
    next start finds the load's mark (here: the demo with a car park deleted, so its deletion is in
    the history, and an extra history instance) is replaced by exactly the demo a fresh load gives."""
    import asyncio

    from starlette.testclient import TestClient

    from backends import db_rows
    from cityos.app import create_app
    from cityos.ingest.service import DEMO_MARK
    from cityos.settings import Settings
    from cityos.store import open_store

    def counts() -> tuple[int, int, int]:
        return (
            db_rows(db_url, "SELECT count(*) FROM entities")[0][0],
            db_rows(db_url, "SELECT count(*) FROM temporal_entities")[0][0],
            db_rows(db_url, "SELECT count(*) FROM temporal_instances")[0][0],
        )

    settings = Settings(database=db_url, demo_on_empty=True)
    parking = f"{API}/entities/urn:ngsi-ld:OffStreetParking:beatty-airport"
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        loaded = counts()
        assert client.delete(parking).status_code == 204
        extra = {"id": "urn:ngsi-ld:Thing:stray", "type": "Thing", "n": {"type": "Property", "value": 1}}
        assert client.post(f"{API}/entities", json=extra).status_code == 201
    assert counts() != loaded

    async def mark() -> None:  # what a load stopped half-way leaves behind
        store = open_store(db_url)
        await store.open()
        try:
            await store.add_ingest_records([DEMO_MARK])
        finally:
            await store.close()

    asyncio.run(mark())
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        assert client.get(parking).status_code == 200
        assert client.get(f"{API}/entities/urn:ngsi-ld:Thing:stray").status_code == 404
    assert counts() == loaded
    assert db_rows(db_url, "SELECT count(*) FROM ingest_records WHERE kind = 'demo'")[0][0] == 0
