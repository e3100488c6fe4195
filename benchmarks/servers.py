"""Server processes under test: a real `cityos serve` on a fresh SQLite file, and the constant-JSON
app on the same stack. Each is its own process, started and stopped by pid, with its peak RSS read
from /proc (Linux)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a process (its peak resident set since start), in MiB; None off Linux."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


class ServerProcess:
    """A server subprocess; `with` waits until `ready_path` answers and stops it by pid on exit."""

    def __init__(self, name: str, args: Sequence[str], port: int, ready_path: str, log: Path) -> None:
        self.name, self.args, self.port, self.ready_path, self.log = name, list(args), port, ready_path, log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.pid)

    def __enter__(self) -> ServerProcess:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=1)
                return self
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()}") from None
                time.sleep(0.1)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def cityos_server(workdir: Path) -> ServerProcess:
    """`cityos serve` as a user runs it, on a new database file; private networks are allowed so a
    local notification receiver can be reached once subscriptions exist."""
    port = free_port()
    database = workdir / "bench.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    args = [sys.executable, "-m", "cityos", "serve", "--port", str(port), "--database", str(database)]
    args += ["--log-level", "warning", "--allow-private-networks"]
    return ServerProcess("cityos serve", args, port, "/version", workdir / "cityos.log")


def constant_server(workdir: Path, *options: str) -> ServerProcess:
    port = free_port()
    args = [sys.executable, "-m", "benchmarks.constant_app", "--port", str(port), *options]
    env_name = "-".join(o.lstrip("-") for o in options) or "default"
    return ServerProcess("constant-JSON app", args, port, "/constant", workdir / f"constant-{env_name}.log")


def machine() -> str:
    """nproc, memory and CPU model: enough to compare two tables."""
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    except OSError:
        cpu = ""
    return f"{os.cpu_count()} CPUs{memory}{', ' + cpu if cpu else ''}, Python {sys.version.split()[0]}"
