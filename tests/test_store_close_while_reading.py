"""Closing the SQLite store while reads still run in their threads (a cancelled task's query goes
on after the task is gone: the snapshot sweeper at shutdown did this) must stop those reads before
their connections close: closing a connection under a running query crashed the process (CI, a
segmentation fault; this script crashed every time before the fix)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, time
    from cityos.store.sqlite import SQLiteStore

    QUERY = ("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 200)"
             " SELECT count(*) FROM r")

    async def main(path):
        store = SQLiteStore(path)
        await store.open()

        def busy(connection):  # short queries one after another for 30 s
            end = time.monotonic() + 30
            while time.monotonic() < end:
                connection.execute(QUERY).fetchall()

        reads = [asyncio.ensure_future(store._read(busy)) for _ in range(4)]
        await asyncio.sleep(0.3)
        for read in reads:
            read.cancel()  # as the app's shutdown cancels its background tasks
        await store.close()
        print("closed")

    asyncio.run(main(sys.argv[1]))
    """
)


def test_close_stops_reads_still_running_before_closing_their_connections(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "close.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "closed"
    assert time.monotonic() - started < 20  # the reads were interrupted, not waited out (30 s)
