"""Real notification receivers for the subscription tests: an HTTP server on 127.0.0.1 and a
Mosquitto broker (the one already listening on 1883, or one started on a free port)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # as sent, with the sender's header-name case
    raw: bytes
    at: float  # time.monotonic() on arrival

    @property
    def body(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Receiver:
    """An HTTP/1.1 receiver in a thread. `answer(request_number)` gives the status of each reply
    (200 by default); `delay` seconds pass before answering."""

    delay: float = 0.0
    answer: Callable[[int], int] = lambda _: 200
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._changed:
                    number = len(receiver.requests)
                    receiver.requests.append(Received(self.path, dict(self.headers.items()), raw, time.monotonic()))
                    receiver._changed.notify_all()
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(receiver.answer(number))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/notify"

    def wait(self, count: int, timeout: float = 5.0) -> list[Received]:
        """The first `count` requests, once they have arrived (fails after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.requests)} notifications arrived, {count} expected")
                self._changed.wait(left)
            return list(self.requests[:count])

    def bodies(self) -> list[Any]:
        with self._changed:
            return [r.body for r in self.requests]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class JsonSource(BaseHTTPRequestHandler):
    """A handler base for stand-in context sources: answers JSON bodies, logs nothing."""

    def answer_json(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A plain HTTP server with `handler` on 127.0.0.1 in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # quick shutdown
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def receiving(**options: Any) -> Iterator[Receiver]:
    receiver = Receiver(**options)
    try:
        yield receiver
    finally:
        receiver.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def mosquitto(private: bool = False) -> Iterator[int]:
    """The port of a Mosquitto broker on 127.0.0.1: the one on 1883 if it runs, else one started
    for the test on a free port (always, when `private`: a test that counts every message on the
    broker must not see the other tests' ones). Skips only when there is no mosquitto binary at all."""
    if listening(1883) and not private:
        yield 1883
        return
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        pytest.skip("no MQTT broker: nothing listens on 1883 and the mosquitto binary is not installed")
    port = free_port()
    process = subprocess.Popen([binary, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Call `check` until it returns something true (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def wait_serving(
    process: subprocess.Popen[bytes], base: str, timeout: float = 20.0, log: Callable[[], str] = lambda: ""
) -> None:
    """Until the server at `base` answers /version; RuntimeError (with its log) if the process
    exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(base + "/version", timeout=1)
            return
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {base} did not start:\n{log()}") from None
            time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still running after `timeout` seconds (by its pid)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def cityos_serving(db_url: str, timeout: float = 20.0, **env: str) -> Iterator[str]:
    """A real `cityos serve` process on 127.0.0.1 over `db_url` (more settings as CITYOS_* `env`);
    yields its base URL, and stops it by pid."""
    port = free_port()
    environ = {**os.environ, "CITYOS_DATABASE": db_url, "CITYOS_PORT": str(port), **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "cityos", "serve", "--log-level", "warning"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_serving(process, base, timeout, lambda: process.stdout.read().decode() if process.stdout else "")
        yield base
    finally:
        stop_process(process)
        if process.stdout:
            process.stdout.close()


class BrokerProcess:
    """A real `cityos serve` process that can be killed with SIGKILL and started again on the
    same database file and port (notifications may reach 127.0.0.1)."""

    def __init__(self, database: str | Path, **settings: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CITYOS_DATABASE": str(database),
            "CITYOS_PORT": str(self.port),
            "CITYOS_ALLOW_PRIVATE_NETWORKS": "true",
            **{"CITYOS_" + k.upper(): v for k, v in settings.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cityos", "serve", "--log-level", "warning"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_serving(self.process, self.base)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
