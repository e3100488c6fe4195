"""Alert rules with several server processes on one PostgreSQL database (`cityos serve --workers N`;
SQLite is served by one process). Each worker judges the changes it writes, with the rule states in
its memory; the states that move are told to the other workers through the store's events, and the
Alert itself is written by a conditional mutator, so: one alert for one condition whichever workers
see it (also at the same moment), hysteresis and resolution by a worker that did not open it, a
`for` duration that runs on across workers, and an `absent` clock that hears the readings the other
workers wrote. Real servers: A with --workers 2, and B, a third process, so that the requests sent
to B are certainly judged by another process than A's."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends import cli_env
from notify_helpers import free_port, wait_for

pytestmark = pytest.mark.slow(seconds=60)

ENTITIES = "/ngsi-ld/v1/entities"
RULES = {
    "hot": 'id = "hot"\nname = "hot"\ntype = "T"\nseverity = "low"\ncategory = "weather"\n'
    '[when]\nattribute = "temperature"\nabove = 30\nclear = 25\n',
    "humid-2h": 'id = "humid-2h"\nname = "humid"\ntype = "T"\nseverity = "low"\ncategory = "weather"\nfor = "2h"\n'
    '[when]\nattribute = "humidity"\nabove = 80\n',
    "quiet": 'id = "quiet"\nname = "quiet"\ntype = "T"\nseverity = "low"\ncategory = "security"\n'
    '[when]\nattribute = "pressure"\nabsent = "2s"\n',
}
# the other workers hear of a state through PostgreSQL NOTIFY, a few ms after the write that moved
# it; nothing outside the servers can await that, so the steps that rely on it leave this much time
HEAR = 0.5


def _serve(database: str, rules: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [sys.executable, "-m", "cityos", "serve", "--database", database, "--rules-dir", str(rules)]
    args += ["--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    process = subprocess.Popen(args, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return process, f"http://127.0.0.1:{port}"


def _ready(process: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base}/version", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)


@pytest.fixture
def servers(db_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A (two workers) and B (one), on the same database and rules."""
    if not db_url.startswith("postgresql"):
        pytest.skip("several workers need PostgreSQL: a SQLite file is served by one process")
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in RULES.items():
        (rules / f"{name}.toml").write_text(text)
    started = [_serve(db_url, rules, 2), _serve(db_url, rules, 1)]
    try:
        for process, base in started:
            _ready(process, base)
        yield started[0][1], started[1][1]
    finally:
        for process, _ in started:
            process.terminate()
        for process, _ in started:
            process.communicate(timeout=20)


def _write(base: str, entity_id: str, attr: str, value: float, observed: str = "") -> None:
    """One reading, on a connection of its own (the workers of A share its port)."""
    body: dict[str, Any] = {"type": "Property", "value": value}
    if observed:
        body["observedAt"] = observed
    response = httpx.patch(f"{base}{ENTITIES}/{entity_id}/attrs", json={attr: body}, timeout=10)
    assert response.status_code == 204, response.text


def _alert(base: str, rule: str, entity_id: str) -> dict[str, Any] | None:
    response = httpx.get(f"{base}{ENTITIES}/urn:ngsi-ld:Alert:{rule}:{entity_id}", timeout=10)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def _status(base: str, rule: str, entity_id: str) -> str | None:
    alert = _alert(base, rule, entity_id)
    return alert["status"]["value"] if alert else None


def _episodes(base: str, rule: str, entity_id: str) -> list[str]:
    """Every status the Alert had, in order (its history)."""
    response = httpx.get(
        f"{base}/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Alert:{rule}:{entity_id}",
        params={"attrs": "status", "timerel": "after", "timeAt": "2000-01-01T00:00:00Z"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    instances = response.json()["status"]
    instances = instances if isinstance(instances, list) else [instances]
    return [i["value"] for i in sorted(instances, key=lambda i: i["observedAt"])]


def _create(base: str, entity_id: str, **attrs: float) -> None:
    body = {"id": entity_id, "type": "T", **{k: {"type": "Property", "value": v} for k, v in attrs.items()}}
    response = httpx.post(f"{base}{ENTITIES}", json=body, timeout=10)
    assert response.status_code == 201, response.text


def test_rule_state_is_shared_by_the_workers(servers: tuple[str, str]) -> None:
    a, b = servers

    # hysteresis and resolution by a process that did not open the alert
    one = "urn:ngsi-ld:T:one"
    _create(a, one, temperature=20)
    _write(a, one, "temperature", 35)
    wait_for(lambda: _status(a, "hot", one) == "open")
    time.sleep(HEAR)
    _write(b, one, "temperature", 36)  # B knows it is open: no second episode
    _write(b, one, "temperature", 28)  # between clear and above: still open (hysteresis)
    _write(b, one, "temperature", 20)  # at or below clear: B resolves what A opened
    wait_for(lambda: _status(b, "hot", one) == "resolved")
    assert _episodes(a, "hot", one) == ["open", "resolved"]

    # the same condition seen at once by every process: one alert, one episode
    two = "urn:ngsi-ld:T:two"
    _create(b, two, temperature=20)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: _write((a, b)[i % 2], two, "temperature", 40 + i), range(6)))
    wait_for(lambda: _status(a, "hot", two) == "open")
    time.sleep(HEAR)  # any second decision would be written by now
    assert _episodes(b, "hot", two) == ["open"]

    # `for` runs on across processes: since A's reading, two hours of reading time at B's
    three = "urn:ngsi-ld:T:three"
    _create(a, three, humidity=50)
    _write(a, three, "humidity", 90, "2024-03-01T00:00:00Z")
    time.sleep(HEAR)
    assert _alert(a, "humid-2h", three) is None
    _write(b, three, "humidity", 91, "2024-03-01T01:00:00Z")
    time.sleep(HEAR)
    assert _alert(a, "humid-2h", three) is None  # one hour only
    _write(b, three, "humidity", 92, "2024-03-01T02:00:00Z")
    alert = wait_for(lambda: _alert(b, "humid-2h", three))
    assert alert["status"]["value"] == "open" and alert["triggerValues"]["value"] == {"humidity": 92.0}

    # an absent clock of A hears that B wrote readings: no alert while they come, one when they stop
    four = "urn:ngsi-ld:T:four"
    _create(a, four, pressure=1000)
    _write(a, four, "pressure", 1001)
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 3.5:  # past A's clock (2 s), readings at B only
        n += 1
        _write(b, four, "pressure", 1001 + n)
        time.sleep(0.3)
    assert _alert(a, "quiet", four) is None
    alert = wait_for(lambda: _alert(a, "quiet", four), timeout=10)
    assert alert["status"]["value"] == "open" and time.monotonic() - started >= 3.5
    time.sleep(HEAR)
    assert _episodes(b, "quiet", four) == ["open"]
