"""WAL checkpoints off the commit path.

SQLite's own autocheckpoint runs inside the COMMIT that passes 1,000 WAL pages: that commit copies
the pages into the database file and syncs it, while every write queued behind it waits (the writer
thread is the one serial resource of the write path). A thread of its own, on its own connection,
runs a PASSIVE checkpoint (it blocks neither the writer nor the readers) at most every PAUSE seconds
while writes go on. The writer keeps an autocheckpoint at BACKSTOP_PAGES, should this thread ever
fall that far behind.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

PAUSE = 0.2  # seconds between checkpoints under a steady stream of writes
STOP_WAIT = 2.0  # seconds a close waits for a checkpoint under way (the thread is a daemon)
BACKSTOP_PAGES = 10_000  # the writer's own wal_autocheckpoint (SQLite's default is 1,000)

logger = logging.getLogger(__name__)


class Checkpointer:
    """Checkpoints the WAL on a thread of its own, woken by the writer after its commits."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """At the store's open (again after a close: a new thread)."""
        if self._thread is None or not self._thread.is_alive():
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="cityos-checkpoint", daemon=True)
            self._thread.start()

    def written(self) -> None:
        """Writer thread, after a commit: a checkpoint is owed (already owed: no lock to take)."""
        if not self._wake.is_set():
            self._wake.set()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:  # a daemon: a checkpoint still running must not hold up a shutdown
            self._thread.join(timeout=STOP_WAIT)
            self._thread = None

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while True:
                self._wake.wait()
                if self._stopped.wait(PAUSE):  # commits made meanwhile share this checkpoint
                    return
                self._wake.clear()
                try:
                    connection = connection or self._connect()
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as error:  # busy or locked: the next one (or the backstop) does it
                    logger.debug("WAL checkpoint skipped: %s", error)
        finally:
            if connection is not None:
                connection.close()
