"""`cityos backup`, `cityos backup --verify` and `cityos restore` on both back-ends: a backup taken
from a real server under write load holds every write acknowledged before it started, with the
history, subscriptions, keys, policies and audit trail; a restore refuses a database that holds
anything; --verify finds a changed audit record (SQLite; the chain's checks are audit/verify.py's)."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from backends import POSTGRES, admin, cli_env, db_rows, make_key
from server_process import LoggedServer

pytestmark = pytest.mark.slow(seconds=130)

ENTITIES = "/ngsi-ld/v1/entities"
POLICIES = "/cityos/v1/admin/policies"
POLICY = {
    "id": "public-reads-sensors",
    "effect": "allow",
    "principals": {"anonymous": True, "authenticated": True},
    "actions": ["read"],
    "resources": {"types": ["Sensor"]},
}
BASE_ID = "urn:ngsi-ld:Sensor:base"


def cityos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cityos", *args], env=cli_env(), capture_output=True, text=True, timeout=300
    )


def sensor(number: int) -> dict[str, object]:
    return {"id": f"urn:ngsi-ld:Sensor:s{number}", "type": "Sensor", "level": {"type": "Property", "value": number}}


def reading(value: float, second: int) -> dict[str, object]:
    return {"level": {"type": "Property", "value": value, "observedAt": f"2026-01-01T00:00:{second:02d}Z"}}


@pytest.fixture
def empty_target(db_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty database to restore into: a new SQLite file, or a new PostgreSQL database (its schema
    named as the test's, which the archive creates), dropped after."""
    if not db_url.startswith("postgresql"):
        yield str(tmp_path / "restored.db")
        return
    import asyncio

    name = f"cityos_restore_{uuid.uuid4().hex[:10]}"
    schema = dict(parse_qsl(urlsplit(db_url).query))["search_path"]
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES.rsplit('/', 1)[0]}/{name}?search_path={schema}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_backup_under_write_load_then_restore(db_url: str, empty_target: str, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {make_key(db_url, '--name', 'admin', '--role', 'admin')}"}
    server = LoggedServer(
        tmp_path / "server.log", "--auth", "required", "--log-level", "warning", env={"CITYOS_DATABASE": db_url}
    )
    server.start()
    acknowledged: list[str] = []
    stop = threading.Event()
    try:
        with httpx.Client(base_url=server.base, headers=headers, timeout=30) as http:
            assert http.post(ENTITIES, json=sensor(0) | {"id": BASE_ID}).status_code == 201
            for second in range(5):  # history
                assert http.patch(f"{ENTITIES}/{BASE_ID}/attrs", json=reading(second, second)).status_code == 204
            subscription = {
                "id": "urn:ngsi-ld:Subscription:backup",
                "type": "Subscription",
                "entities": [{"type": "Sensor"}],
                "notification": {"endpoint": {"uri": "https://notify.example.org/never", "accept": "application/json"}},
            }
            for path, document in (("/ngsi-ld/v1/subscriptions", subscription), (POLICIES, POLICY)):
                answer = http.post(path, json=document)
                assert answer.status_code == 201, answer.text

        def write(first: int) -> None:
            with httpx.Client(base_url=server.base, headers=headers, timeout=30) as http:
                number = first
                while not stop.is_set():
                    answer = http.post(ENTITIES, json=sensor(number))
                    assert answer.status_code == 201, answer.text
                    acknowledged.append(f"urn:ngsi-ld:Sensor:s{number}")
                    number += 2

        writers = [threading.Thread(target=write, args=(first,)) for first in (1, 2)]
        for writer in writers:
            writer.start()
        while len(acknowledged) < 100:  # the load is on before the backup starts
            stop.wait(0.05)
        before = set(acknowledged)
        made = cityos("backup", "--database", db_url, str(tmp_path / "city.backup"))
        after_backup = len(acknowledged)
        stop.set()
        for writer in writers:
            writer.join()
    finally:
        stop.set()
        server.stop()
    assert made.returncode == 0, made.stderr
    assert after_backup > len(before)  # the server kept writing while the backup ran
    verified = cityos("backup", "--verify", str(tmp_path / "city.backup"), "--database", db_url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK:") and " 0 audit records" not in verified.stdout, verified.stdout
    assert cityos("backup", "--database", db_url, str(tmp_path / "city.backup")).returncode == 1  # never overwritten
    if not db_url.startswith("postgresql"):  # a changed audit record shows (PostgreSQL's chain: test_audit.py)
        tampered = tmp_path / "tampered.backup"
        shutil.copyfile(tmp_path / "city.backup", tampered)
        with contextlib.closing(sqlite3.connect(tampered)) as connection:
            connection.execute("UPDATE audit_log SET principal = 'someone-else' WHERE seq = 3")
            connection.commit()
        bad = cityos("backup", "--verify", str(tampered))
        assert bad.returncode == 1 and "seq 3" in bad.stdout and "DAMAGED" in bad.stdout, bad.stdout

    restored = cityos("restore", str(tmp_path / "city.backup"), "--database", empty_target)
    assert restored.returncode == 0, restored.stderr
    ids = {row[0] for row in db_rows(empty_target, "SELECT id FROM entities")}
    assert before <= ids, f"{len(before - ids)} acknowledged writes are missing"
    again = cityos("restore", str(tmp_path / "city.backup"), "--database", empty_target)
    assert again.returncode == 1 and "empty" in again.stderr

    # the restored database serves: same key, policy, subscription, history
    copy = LoggedServer(
        tmp_path / "restored.log", "--auth", "required", "--log-level", "warning", env={"CITYOS_DATABASE": empty_target}
    )
    copy.start()
    try:
        with httpx.Client(base_url=copy.base, headers=headers, timeout=30) as http:
            assert http.get(f"{POLICIES}/{POLICY['id']}").json()["policy"] == POLICY
            assert http.get("/ngsi-ld/v1/subscriptions/urn:ngsi-ld:Subscription:backup").status_code == 200
            history = http.get(f"/ngsi-ld/v1/temporal/entities/{BASE_ID}").json()
            assert len(history["level"]) >= 5
    finally:
        copy.stop()
