"""A real `cityos serve` process whose output is kept in a file, for the tests about what an
operator sees: the log, the exit code, the start-up lines. Stopped by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from notify_helpers import free_port, stop_process, wait_serving


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class LoggedServer:
    def __init__(self, log_path: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
        self.env = {**clean, "CITYOS_PORT": str(self.port), **(env or {})}
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True, timeout: float = 60) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cityos", "serve", *self.args], env=self.env, stdout=log, stderr=log
            )
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.process is not None
        wait_serving(self.process, self.base, timeout, self.log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def interrupt(self) -> None:
        """SIGINT, as Ctrl-C sends it."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGINT)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
