"""Metrics, the access log with its request id, JSON logs and traces (docs/operations.md), on both
back-ends: in-process for what a request records, real servers for the separate metrics port, the
workers' sums (prometheus-client multiprocess mode), the Grafana dashboard and OTLP export."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import logging
import re
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route
from starlette.testclient import TestClient

from backends import cli_env, make_key
from cityos.app import create_app
from cityos.auth.middleware import request_id_of
from cityos.logs import JsonFormatter
from cityos.observe.access import AccessLog
from cityos.observe.metrics import HTTP_BUCKETS, HTTP_INDEX, HTTP_UNIT, Metrics, StoreTimer
from cityos.settings import Settings
from notify_helpers import free_port, stop_process, wait_serving

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
ENTITY = {"id": "urn:ngsi-ld:Thing:m1", "type": "Thing", "temperature": {"type": "Property", "value": 21}}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape by (name, labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def exposed_names(text: str) -> set[str]:
    """The series names a query may use, from the scrape's TYPE lines (families without samples too)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            name = name.removesuffix("_total")  # a counter without samples is declared with it
            suffixes = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",)}.get(kind, ("",))
            names.update(name + suffix for suffix in suffixes)
    return names


@pytest.fixture
def observed(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        database=db_url,
        access_log=True,
        allow_private_networks=True,
        notification_max_attempts=1,
        audit_key=str(tmp_path / "audit.key"),
    )
    access = logging.getLogger("cityos.access")
    access.setLevel(logging.INFO)  # as `cityos serve` at the default level, info
    try:
        with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
            yield client
    finally:
        access.setLevel(logging.NOTSET)


def test_requests_are_counted_by_route_template_method_and_status(observed: TestClient) -> None:
    assert observed.post("/ngsi-ld/v1/entities", json=ENTITY).status_code == 201
    for _ in range(3):
        assert observed.get(f"/ngsi-ld/v1/entities/{ENTITY['id']}").status_code == 200
    assert observed.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Thing:none").status_code == 404
    assert observed.get("/no/such/route").status_code == 404
    answer = observed.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    found = samples(answer.text)
    count = "cityos_http_request_duration_seconds_count"
    by_id = "/ngsi-ld/v1/entities/{entity_id}"
    assert value(found, count, route=by_id, method="GET", status="200") == 3  # the template, not 3 paths
    assert value(found, count, route=by_id, method="GET", status="404") == 1
    assert value(found, count, route="/ngsi-ld/v1/entities", method="POST", status="201") == 1
    assert value(found, count, route="unmatched", method="GET", status="404") == 1
    assert not any("urn:ngsi-ld:Thing" in dict(labels).get("route", "") for _, labels in found)
    assert value(found, "cityos_store_operation_duration_seconds_count", operation="mutate") >= 1
    assert value(found, "cityos_store_operation_duration_seconds_count", operation="get_stored") >= 3
    assert value(found, "cityos_history_rows_total") >= 1  # the entity's temperature instance
    assert value(found, "cityos_process_resident_memory_bytes") > 10_000_000
    assert value(found, "cityos_process_open_files") > 3
    assert value(found, "cityos_up") == 1


def test_access_line_and_audit_record_carry_the_request_id(
    observed: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = observed.post("/ngsi-ld/v1/entities", json=ENTITY, headers={"X-Request-Id": "op-42.a"})
    refused = observed.get("/version", headers={"X-Request-Id": "bad id\twith spaces", "NGSILD-Tenant": "t1"})
    assert observed.get("/ngsi-ld/v1/entities/urn:x:%0Aforged").status_code == 400  # an invalid id
    assert answer.headers["x-request-id"] == "op-42.a"
    made = refused.headers["x-request-id"]
    assert made != "bad id\twith spaces" and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", made)
    written = ""
    deadline = time.monotonic() + 5
    while "forged 400" not in written and time.monotonic() < deadline:  # written 50 ms later at most
        time.sleep(0.02)
        written += capsys.readouterr().err
    lines = [line for line in written.splitlines() if "cityos.access" in line]
    post = next(line for line in lines if "rid=op-42.a" in line)
    assert " INFO cityos.access: POST /ngsi-ld/v1/entities 201 " in post
    assert "route=/ngsi-ld/v1/entities rid=op-42.a principal=open tenant=-" in post
    version = next(line for line in lines if f"rid={made}" in line)
    assert "route=/version" in version and "tenant=t1" in version
    assert any("urn:x:\\nforged 400" in line for line in lines)  # one line, the newline escaped
    records = observed.get("/cityos/v1/audit").json()
    assert any(r["request_id"] == "op-42.a" and r["operation"] == "entity.create" for r in records), records


def test_a_request_id_with_a_final_newline_is_not_kept() -> None:
    # the access log writes request ids unchecked: request_id_of must keep only [A-Za-z0-9._:-]
    assert request_id_of(b"op-42.a") == "op-42.a"
    assert request_id_of(b"op-42\n") != "op-42\n" and "\n" not in request_id_of(b"op-42\n")
    assert request_id_of(b'op"1') != 'op"1'


def test_access_lines_in_json() -> None:
    written = io.StringIO()
    access = AccessLog("json", written)
    route = Route("/e/{id}", print)
    logging.getLogger("cityos.access").setLevel(logging.INFO)
    try:
        access.record(
            "op-1",
            "key:abc",
            "t1",
            "GET",
            "/ngsi-ld/v1/entities/urn:x:\n1",
            route,
            200,
            time.perf_counter_ns(),
            1_200_000,
        )
        access.record(
            "op-2", "open", "", "GET", "/ngsi-ld/v1/entities/urn:x:1", route, 404, time.perf_counter_ns(), 400
        )
        access.flush()  # a batch with a value to escape, then a plain one (written as it is)
        access.record(
            "op-3",
            'a "b" \\ c',
            "t\u00e9",
            "GET",
            "/ngsi-ld/v1/entities/urn:x:1",
            None,
            500,
            time.perf_counter_ns(),
            12_345_678_900,
        )
        access.flush()
        access.record(
            "op-4", "open", "", "GET", "/ngsi-ld/v1/entities/urn:x:1", route, 200, time.perf_counter_ns(), 250_000_000
        )
        access.flush()
    finally:
        logging.getLogger("cityos.access").setLevel(logging.NOTSET)
    lines = [json.loads(line) for line in written.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["op-1", "op-2", "op-3", "op-4"]
    line = lines[0]
    assert line["request_id"] == "op-1" and line["principal"] == "key:abc" and line["tenant"] == "t1"
    assert line["route"] == "/e/{id}" and line["status"] == 200 and line["duration_ms"] == 1.2
    assert line["path"] == "/ngsi-ld/v1/entities/urn:x:\n1" and line["logger"] == "cityos.access"
    assert line["message"] == "GET /ngsi-ld/v1/entities/urn:x:\n1 200" and line["level"] == "INFO"
    assert lines[1]["duration_ms"] == 0.0 and lines[1]["status"] == 404 and lines[1]["tenant"] == ""
    assert lines[2]["principal"] == 'a "b" \\ c' and lines[2]["tenant"] == "t\u00e9" and lines[2]["route"] == "-"
    assert lines[2]["duration_ms"] == 12345.679
    assert lines[3] == {
        **lines[1],
        "request_id": "op-4",
        "status": 200,
        "message": lines[3]["message"],
        "duration_ms": 250.0,
        "time": lines[3]["time"],
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[3]["time"])


def test_access_lines_in_text() -> None:
    written = io.StringIO()
    access = AccessLog("text", written)
    route = Route("/e/{id}", print)
    logging.getLogger("cityos.access").setLevel(logging.INFO)
    try:
        access.record("op-1", "open", "", "GET", "/e/urn:x:1", route, 200, time.perf_counter_ns(), 1_250_000)
        access.flush()
        access.record(
            "op-2",
            "key:k",
            "t1",
            "GET",
            "/e/http://u:secret@h/x\x1b[31m",
            route,
            400,
            time.perf_counter_ns(),
            500_000_000,
        )
        access.flush()
        access.record("op-3", "open", "", "GET", "/e/urn:x:1", route, 200, time.perf_counter_ns(), 1_250_000)
        access.flush()
        logging.getLogger("cityos.access").setLevel(logging.WARNING)  # read at the write: op-4 is not written
        access.record("op-4", "open", "", "GET", "/e/urn:x:1", route, 200, time.perf_counter_ns(), 1_250_000)
        access.flush()
    finally:
        logging.getLogger("cityos.access").setLevel(logging.NOTSET)
    lines = written.getvalue().splitlines()
    assert len(lines) == 3
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO cityos.access: GET /e/urn:x:1 200 1.3ms route=/e/{id} rid=op-1"
        r" principal=open tenant=-",
        lines[0],
    ), lines[0]
    assert "secret" not in lines[1] and "\\x1b[31m 400 500.0ms" in lines[1] and "tenant=t1" in lines[1]
    assert lines[2].endswith("rid=op-3 principal=open tenant=-")


def test_access_batches_check_every_value_from_outside() -> None:
    """A batch's principals and tenants are checked when they change from a line to the next, its
    paths on every line, and a method that is not a known one sends its batch to the escaped path
    (docs/performance.md, "Fourth pass")."""
    route = Route("/e/{id}", print)
    for log_format in ("json", "text"):
        written = io.StringIO()
        access = AccessLog(log_format, written)
        logging.getLogger("cityos.access").setLevel(logging.INFO)
        try:
            now = time.perf_counter_ns()
            access.record("op-1", "open", "", "GET", "/e/urn:x:1", route, 200, now, 1_000_000)
            access.record("op-2", "open", "", "GET", "/e/urn:x:2", route, 200, now + 1, 1_000_000)
            access.record("op-3", 'k"\\\x01', "t", "GET", "/e/urn:x:3", route, 200, now + 2, 1_000_000)
            access.record("op-4", "open", "", "GET", "/e/urn:x:4", route, 200, now + 3, 1_000_000)
            access.flush()
            access.record("op-5", "open", "", "GET", "/e/urn:x:5", route, 200, now + 4, 1_000_000)
            access.record("op-6", "open", "", 'BR"EW\n', "/e/urn:x:6", route, 200, now + 5, 1_000_000)
            access.flush()
            access.record("op-7", "open", "", "GET", "/e/urn:x:\x7f", route, 200, now + 6, 1_000_000)
            access.flush()
        finally:
            logging.getLogger("cityos.access").setLevel(logging.NOTSET)
        lines = written.getvalue().splitlines()
        assert len(lines) == 7
        if log_format == "json":
            parsed = [json.loads(line) for line in lines]
            assert [line["principal"] for line in parsed][1:4] == ["open", 'k"\\\x01', "open"]
            assert parsed[5]["method"] == 'BR"EW\n' and parsed[5]["message"] == 'BR"EW\n /e/urn:x:6 200'
            assert parsed[6]["path"] == "/e/urn:x:\x7f"
        else:
            assert all("\x01" not in line and "\n" not in line and "\x7f" not in line for line in lines)
            assert "principal=k" in lines[2] and "tenant=t" in lines[2] and lines[3].endswith("tenant=-")
            assert "\\x7f" in lines[6]


def test_the_request_buckets_by_index_are_the_bisect_ones() -> None:
    bounds = [round(bound * 1e9) for bound in HTTP_BUCKETS] + [1 << 62]
    edges = [0, 1, HTTP_UNIT - 1, HTTP_UNIT, HTTP_UNIT + 1]
    edges += [bound + delta for bound in bounds[:-1] for delta in (-1, 0, 1)]
    for nanos in edges:
        if (nanos + HTTP_UNIT - 1) // HTTP_UNIT < len(HTTP_INDEX):
            assert HTTP_INDEX[(nanos + HTTP_UNIT - 1) // HTTP_UNIT] == bisect_left(bounds, nanos), nanos
    assert len(HTTP_INDEX) - 1 == round(HTTP_BUCKETS[-1] * 1e9) // HTTP_UNIT  # past 10 s: bisect


def test_store_operations_are_all_counted_and_some_timed() -> None:
    """StoreTimer counts every call in C and times the first after each SAMPLE_SECONDS: the
    histogram's count is exact."""

    class Store:
        async def get_stored(self, number: int) -> int:
            return number

    async def run() -> None:
        store = Store()
        metrics = Metrics(multiproc_dir="")
        StoreTimer.install(store, metrics)
        assert [await store.get_stored(n) for n in range(50)] == list(range(50))
        metrics.sample()
        await asyncio.sleep(0.05)  # the timing wrapper is back after SAMPLE_SECONDS
        for n in range(7):
            await store.get_stored(n)
        metrics.sample()
        found = samples(metrics.exposition()[0].decode())
        assert value(found, "cityos_store_operation_duration_seconds_count", operation="get_stored") == 57

    asyncio.run(run())


def test_a_wrapper_put_on_a_timed_store_operation_stays_in_place() -> None:
    """The timer swaps itself for the plain counter and back: it must never undo a wrapper that
    something else (a test's monkeypatch, another instrumentation) put on the operation since."""

    class Store:
        async def get_stored(self, number: int) -> int:
            return number

    async def run() -> None:
        store = Store()
        StoreTimer.install(store, Metrics(multiproc_dir=""))
        timed = store.get_stored
        seen: list[int] = []

        async def wrapper(number: int) -> int:
            seen.append(number)
            return int(await timed(number))

        store.get_stored = wrapper  # type: ignore[method-assign]
        for n in range(3):
            assert await store.get_stored(n) == n
            await asyncio.sleep(0.02)  # past SAMPLE_SECONDS: a swap back would be due
        assert store.get_stored is wrapper and seen == [0, 1, 2]

    asyncio.run(run())


def test_a_notification_logs_the_request_id_of_its_write(
    observed: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/nobody"  # connection refused: given up at once
    subscription = {
        "id": "urn:ngsi-ld:Subscription:obs",
        "type": "Subscription",
        "entities": [{"type": "Thing"}],
        "notification": {"endpoint": {"uri": closed}},
    }
    assert observed.post("/ngsi-ld/v1/subscriptions", json=subscription).status_code == 201
    written = io.StringIO()
    handler = logging.StreamHandler(written)  # as --log-format json sets up: formatted as it is logged
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cityos.subscriptions")
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger="cityos.subscriptions"):
            headers = {"X-Request-Id": "write-7"}
            assert observed.post("/ngsi-ld/v1/entities", json=ENTITY, headers=headers).status_code == 201
            deadline = time.monotonic() + 20
            while "giving up" not in written.getvalue() and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        logger.removeHandler(handler)
    line = json.loads(next(line for line in written.getvalue().splitlines() if "giving up" in line))
    assert "(request write-7)" in line["message"]
    assert line["request_id"] == "write-7"  # set while delivering
    found = samples(observed.get("/metrics").text)
    assert value(found, "cityos_notification_deliveries_total", subscription=subscription["id"], outcome="failed") == 1


def test_json_log_lines_are_one_object_each() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("cityos", logging.ERROR, __file__, 1, "db %s\nx", ("postgresql://u:pw@h/db",), None)
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "ERROR" and out["logger"] == "cityos"
    assert "pw" not in out["message"] and out["message"].endswith("\nx")
    assert "ValueError: boom" in out["exception"]


def test_opentelemetry_is_not_imported_by_default(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from starlette.testclient import TestClient\n"
        "from cityos.app import create_app\n"
        "from cityos.settings import Settings\n"
        f"with TestClient(create_app(Settings(database={str(tmp_path / 'c.db')!r}))) as c:\n"
        "    assert c.get('/version').status_code == 200\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_traces_are_exported_over_otlp(tmp_path: Path) -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    try:
        settings = Settings(database=str(tmp_path / "t.db"), otlp_endpoint=endpoint)
        with TestClient(create_app(settings)) as client:
            client.get("/ngsi-ld/v1/entities/urn:x:1", headers={"X-Request-Id": "traced-1"})
    finally:  # the stop exported the batch
        receiver.shutdown()
        receiver.server_close()
    sent = b"".join(_Receiver.bodies)
    assert b"GET /ngsi-ld/v1/entities/{entity_id}" in sent and b"traced-1" in sent


# -- real servers ----------------------------------------------------------------------------------


def serve(*args: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cityos", "serve", "--port", str(port), *args],
            env=cli_env(**env),
            stdout=out,
            stderr=out,
        )
    base = f"http://127.0.0.1:{port}"
    wait_serving(process, base, 60, lambda: log.read_text(errors="replace"))
    return process, base


def test_dashboard_queries_name_metrics_a_server_exposes(tmp_path: Path) -> None:
    """A real server configured by a file (metrics on a port of their own, JSON logs): every query
    of every panel of docs/grafana-dashboard.json names a metric the scrape declares."""
    metrics_port = free_port()
    config = tmp_path / "city.toml"
    config.write_text(
        f'database = "{tmp_path / "city.db"}"\nlog-format = "json"\naccess_log = true\nmetrics_port = {metrics_port}\n'
    )
    log = tmp_path / "server.log"
    process, base = serve("--config", str(config), env={}, log=log)
    try:
        assert httpx.post(f"{base}/ngsi-ld/v1/entities", json=ENTITY).status_code == 201
        assert httpx.get(f"{base}/metrics").status_code == 404  # not on the API port
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scrape.status_code == 200
    finally:
        stop_process(process)
    names = exposed_names(scrape.text)
    dashboard = json.loads(DASHBOARD.read_text())
    assert len(dashboard["panels"]) >= 15
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used = set(re.findall(r"\bcityos_[a-z_]+", target["expr"]))
            assert used, panel["title"]
            assert used <= names, (panel["title"], used - names)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("route") == "/ngsi-ld/v1/entities" and line.get("status") == 201 for line in lines)


def test_workers_metrics_add_up(fresh_postgres: str, tmp_path: Path) -> None:
    """`--workers 2`: whichever worker answers the scrape, it counts every worker's requests; the
    separate port (served by the supervisor) says the same."""
    subprocess.run(
        [sys.executable, "-m", "cityos", "db", "upgrade", "--database", fresh_postgres],
        env=cli_env(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    metrics_port = free_port()
    process, base = serve(
        "--workers",
        "2",
        "--metrics-port",
        str(metrics_port),
        "--metrics-interval",
        "0.2",
        env={"CITYOS_DATABASE": fresh_postgres},
        log=tmp_path / "workers.log",
    )
    try:
        requests = 40
        for _ in range(requests):  # a new connection each: both workers answer
            assert httpx.get(f"{base}/ngsi-ld/v1/types").status_code == 200
        time.sleep(0.5)  # two sampling rounds: the live gauges of both workers are in their files
        found = samples(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
        count = value(
            found, "cityos_http_request_duration_seconds_count", route="/ngsi-ld/v1/types", method="GET", status="200"
        )
        assert count == requests
        pids = {dict(labels)["pid"] for name, labels in found if name == "cityos_process_resident_memory_bytes"}
        assert len(pids) == 2, pids
        assert value(found, "cityos_up") == 2  # one per live worker
    finally:
        stop_process(process)


def test_metrics_are_for_admins_with_auth_required(tmp_path: Path) -> None:
    database = str(tmp_path / "auth.db")
    admin = make_key(database, "--name", "ops", "--role", "admin")
    reader = make_key(database, "--name", "dash", "--role", "reader")
    settings = Settings(database=database, auth="required", audit_key=str(tmp_path / "audit.key"))
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
        scrape = client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
        assert scrape.status_code == 200 and "cityos_http_request_duration_seconds" in scrape.text


def test_context_cache_hits_and_misses_are_counted(observed: TestClient) -> None:
    context = {"temperature": "https://example.org/temperature"}
    headers = {"Content-Type": "application/ld+json"}
    for n in range(3):  # the same inline @context: compiled once, then found
        entity = {**ENTITY, "id": f"urn:ngsi-ld:Thing:c{n}", "@context": context}
        assert observed.post("/ngsi-ld/v1/entities", json=entity, headers=headers).status_code == 201
    found = samples(observed.get("/metrics").text)
    assert value(found, "cityos_context_cache_total", result="miss") == 1
    assert value(found, "cityos_context_cache_total", result="hit") == 2
    assert value(found, "cityos_context_cache_total", result="fetch_failure") == 0
