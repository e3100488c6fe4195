"""A failure that repeats with every request never floods the log (issue 13: "never log unbounded
tracebacks per request"). A faulty subscription (one whose matching raises) is met by every write
it matches: the first failure is logged with its traceback, cut; later ones are counted, in one
line a minute at most. Tracebacks anywhere are cut by the log formatter."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from cityos.errors import MAX_LOGGED_TRACEBACK, FailureLog
from cityos.logs import SafeFormatter
from cityos.store import is_postgres
from server_process import LoggedServer

BASE = "/ngsi-ld/v1"
TARGET = "urn:ngsi-ld:Target:1"
THING = "urn:ngsi-ld:Thing:1"
WRITES = 40


def damage(database: str, entity_id: str) -> None:
    """Replace an entity's stored document by `[]`, valid JSON but no entity (either back-end)."""
    sql = "UPDATE entities SET doc = '[]' WHERE id = "
    if not is_postgres(database):
        with closing(sqlite3.connect(database)) as db, db:
            db.execute(sql + "?", (entity_id,))
        return
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(database, timeout=5)
        try:
            await connection.execute(sql + "$1", entity_id)
        finally:
            await connection.close()

    asyncio.run(run())


def test_a_faulty_subscription_logs_a_bounded_number_of_lines(db_url: str, tmp_path: Path) -> None:
    """The subscription's q follows a relationship to an entity whose stored document is damaged
    (written by hand, as a broken older version or a hand edit would leave it): matching it
    raises on every write of the subject. The writes succeed; the log holds one traceback."""
    server = LoggedServer(tmp_path / "server.log", "--log-level", "info", env={"CITYOS_DATABASE": db_url})
    server.start()
    try:
        with httpx.Client(base_url=server.base + BASE, timeout=30) as api:
            assert api.post("/entities", json={"id": TARGET, "type": "Target"}).status_code == 201
            thing = {"id": THING, "type": "Thing", "rel": {"type": "Relationship", "object": TARGET}}
            assert api.post("/entities", json=thing).status_code == 201
            subscription = {
                "id": "urn:ngsi-ld:Subscription:faulty",
                "type": "Subscription",
                "entities": [{"type": "Thing"}],
                "q": 'rel{name}=="x"',
                "notification": {"endpoint": {"uri": "https://example.org/notify"}},
            }
            assert api.post("/subscriptions", json=subscription).status_code == 201, "subscription"
            damage(db_url, TARGET)
            for n in range(WRITES):
                answer = api.patch(f"/entities/{THING}/attrs", json={"n": {"type": "Property", "value": n}})
                assert answer.status_code == 204, answer.text
    finally:
        server.stop()
    log = server.log()
    about = [line for line in log.splitlines() if "matching subscription" in line]
    assert 1 <= len(about) <= 2, log[-5000:]  # the first failure (and at most one count)
    assert log.count("Traceback") == 1, log[-5000:]


def test_failure_log_counts_repeats_and_says_them_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("cityos.test.failures")
    failures = FailureLog(logger, interval=0.3, max_keys=2)

    def fail(key: str, error: Exception) -> None:
        try:
            raise error
        except Exception:
            failures.failed(key, "doing %s failed", key)

    with caplog.at_level(logging.INFO, logger="cityos.test.failures"):
        for _ in range(50):
            fail("a", ValueError("bad"))
        fail("a", KeyError("other kind"))  # another kind of failure: its own first line
        time.sleep(0.35)
        fail("a", ValueError("bad"))  # due: the count of the ones since
        for _ in range(5):
            fail("a", ValueError("bad"))
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "doing a failed",
        "doing a failed",
        "doing a failed: failed 50 more times in the last 0 s (ValueError: bad)",
    ]
    assert caplog.records[0].exc_info is not None and caplog.records[1].exc_info is not None
    assert caplog.records[2].exc_info is None
    for key in ("b", "c", "d"):  # keys beyond max_keys push the oldest out: memory stays bounded
        fail(key, ValueError("bad"))
    assert len(failures._seen) == 2


def test_the_formatter_cuts_long_tracebacks() -> None:
    """A RecursionError's traceback ran to 255 kB for a 1.3 kB request; an exception message can
    be as long. The formatter keeps the start and the end (where the error is named)."""
    try:
        raise RuntimeError("x" * 100_000 + " at the end")
    except RuntimeError:
        record = logging.LogRecord("cityos", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = SafeFormatter().format(record)
    assert len(text) < MAX_LOGGED_TRACEBACK + 1000
    assert "characters left out" in text and text.endswith(" at the end")
    assert text.splitlines()[1] == "Traceback (most recent call last):"
