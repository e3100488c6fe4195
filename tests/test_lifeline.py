"""A worker ends with its supervisor through the portable parent watch alone (no prctl): a real
supervisor process starts a worker with multiprocessing (spawn, as uvicorn does) and is SIGKILLed;
the worker is gone within seconds. A process with no multiprocessing parent is left alone.
(The whole path, prctl included, is tested with `cityos serve --workers 2` in test_many_workers.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cityos.lifeline import exit_with_supervisor
from server_process import alive

SUPERVISOR = r"""
import multiprocessing, sys, time

def worker() -> None:
    from cityos.lifeline import exit_with_supervisor
    assert exit_with_supervisor(grace=2.0, use_prctl=False)
    time.sleep(60)

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=worker)
    child.start()
    print(child.pid, flush=True)
    time.sleep(60)
"""


def test_the_parent_watch_alone_ends_an_orphaned_worker(tmp_path: Path) -> None:
    script = tmp_path / "supervisor.py"
    script.write_text(SUPERVISOR)
    supervisor = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert supervisor.stdout is not None
    worker = int(supervisor.stdout.readline())
    try:
        time.sleep(1.0)  # the worker has set up its watch
        assert alive(worker)
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait()
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(worker)
    finally:
        supervisor.stdout.close()
        if alive(worker):
            os.kill(worker, signal.SIGKILL)


def test_a_process_without_a_supervisor_is_left_alone() -> None:
    assert exit_with_supervisor() is False  # pytest's own process: nothing is watched
