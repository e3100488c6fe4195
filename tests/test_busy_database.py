"""A database held by another process: requests that cannot get it within db_busy_timeout answer
503 with Retry-After and write nothing, reads go on, background sweeps log one line without a
traceback, and the CLI prints one line and exits non-zero. The lock is held by a real second
process (SQLite: BEGIN IMMEDIATE; PostgreSQL: LOCK TABLE entities IN EXCLUSIVE MODE)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from backends import db_rows, sqlite_only, stored_json
from cityos.store.sqlite import SQLiteStore
from notify_helpers import free_port
from server_process import LoggedServer

ENTITY = "urn:ngsi-ld:Sensor:busy-1"
BUSY_TIMEOUT = 1.5  # Retry-After is this, rounded up: 2
HOLDER = r"""
import asyncio, sqlite3, sys
url = sys.argv[1]
if url.startswith("postgres"):
    import asyncpg

    async def hold() -> None:
        connection = await asyncpg.connect(url)
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("LOCK TABLE entities IN EXCLUSIVE MODE")  # writes wait, reads go on
        print("locked", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await transaction.rollback()
        await connection.close()

    asyncio.run(hold())
else:
    connection = sqlite3.connect(url, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")  # the write lock: other writers wait, readers go on
    print("locked", flush=True)
    sys.stdin.read()
    connection.rollback()
"""


@contextmanager
def locked(database: str) -> Iterator[None]:
    """The database's write lock held by another process until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()


def stored_value(database: str) -> object:

    (doc,) = db_rows(database, "SELECT doc FROM entities WHERE id = ?", ENTITY)[0]
    attrs = stored_json(doc)["attrs"]
    (instance,) = next(value for name, value in attrs.items() if name.endswith("temperature"))
    return instance["value"]


def test_a_write_on_a_locked_database_is_a_503_and_applies_once_free(db_url: str, tmp_path: Path) -> None:
    server = LoggedServer(
        tmp_path / "server.log",
        "--log-level",
        "info",
        "--db-busy-timeout",
        str(BUSY_TIMEOUT),
        env={"CITYOS_DATABASE": db_url},
    )
    server.start()
    try:
        api = server.base + "/ngsi-ld/v1"
        created = httpx.post(
            api + "/entities",
            json={"id": ENTITY, "type": "Sensor", "temperature": {"type": "Property", "value": 1}},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        patch = {"temperature": {"type": "Property", "value": 2}, "humidity": {"type": "Property", "value": 50}}
        with locked(db_url):
            started = time.monotonic()
            answer = httpx.patch(f"{api}/entities/{ENTITY}/attrs", json=patch, timeout=30)
            took = time.monotonic() - started
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "2"  # the busy timeout, rounded up (RFC 9110: whole seconds)
            problem = answer.json()
            assert problem["status"] == 503 and problem["type"].endswith("DatabaseBusy")
            assert "busy" in problem["detail"]
            assert took < BUSY_TIMEOUT * 2 + 1.5, f"the 503 took {took:.1f} s"
            # reads are served meanwhile, and see nothing of the refused write
            read = httpx.get(f"{api}/entities/{ENTITY}", params={"options": "keyValues"}, timeout=5)
            assert read.status_code == 200
            assert read.json()["temperature"] == 1 and "humidity" not in read.json()
            time.sleep(SWEEPS_WHILE_LOCKED)  # the expiry sweep meets the lock several times
        assert stored_value(db_url) == 1
        again = httpx.patch(f"{api}/entities/{ENTITY}/attrs", json=patch, timeout=30)
        assert again.status_code == 204, again.text
        after = httpx.get(f"{api}/entities/{ENTITY}", params={"options": "keyValues"}, timeout=5).json()
        assert after["temperature"] == 2 and after["humidity"] == 50
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log, log
    # no 500: its one log line (last_resort.py), or an access-log status (a timestamp's ",500" is not one)
    assert not re.search(r"unhandled error|\b500 Internal Server Error", log), log
    sweep_lines = [line for line in log.splitlines() if "expiry sweep" in line]
    assert len(sweep_lines) == 1, log  # one line for the whole time the lock was held
    assert "busy" in sweep_lines[0]


SWEEPS_WHILE_LOCKED = 3.0


def make_database(path: str) -> None:
    """A database with its tables, made by the store itself before another process locks it."""

    async def made() -> None:
        store = SQLiteStore(path)
        await store.open()
        await store.close()

    asyncio.run(made())


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
    return {**env, **extra}


@sqlite_only
def test_the_cli_says_the_database_is_busy_in_one_line(db_url: str) -> None:
    make_database(db_url)
    with locked(db_url):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "cityos", "demo", "--database", db_url],
            capture_output=True,
            text=True,
            env=cli_env(CITYOS_DB_BUSY_TIMEOUT="0.5"),
            timeout=60,
            check=False,
        )
        took = time.monotonic() - started
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "busy or locked" in lines[0] and "CITYOS_DB_BUSY_TIMEOUT" in lines[0]
    assert took < 20


@sqlite_only
def test_serve_on_a_locked_database_says_so_without_a_traceback(db_url: str) -> None:
    make_database(db_url)
    with locked(db_url):
        result = subprocess.run(
            [sys.executable, "-m", "cityos", "serve", "--port", str(free_port()), "--db-busy-timeout", "0.5"],
            capture_output=True,
            text=True,
            env=cli_env(CITYOS_DATABASE=db_url),
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "cannot start: the database" in result.stderr and "busy or locked" in result.stderr


@sqlite_only
def test_a_burst_of_writes_on_a_locked_database_is_refused_within_the_timeout(db_url: str) -> None:
    """Writes queued behind one that met the lock have waited as long: they are refused with it,
    not one group of writes after another, each waiting the whole timeout again."""
    from cityos.entities.update import Outcome
    from cityos.errors import DatabaseBusy
    from cityos.store import open_store

    make_database(db_url)

    def create(entity_id: str) -> Outcome:
        raise AssertionError("no write may run while the database is locked")

    async def burst() -> tuple[list[BaseException | object], float]:
        store = open_store(db_url, busy_timeout=0.5)
        await store.open()
        try:
            started = time.monotonic()
            writes = [
                store.mutate("", [(f"urn:ngsi-ld:T:{n}", lambda _, n=n: create(str(n)))], atomic=True)
                for n in range(300)  # several group commits' worth
            ]
            outcomes = await asyncio.gather(*writes, return_exceptions=True)
            return list(outcomes), time.monotonic() - started
        finally:
            await store.close()

    with locked(db_url):
        outcomes, took = asyncio.run(burst())
    assert all(isinstance(outcome, DatabaseBusy) for outcome in outcomes), outcomes[:3]
    assert took < 1.4, f"300 writes were refused in {took:.2f} s with a 0.5 s busy timeout"
