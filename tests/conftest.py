"""Shared fixtures: a real SQLite file per test, the ASGI app in-process, and a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings

CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld"
DATA = Path(__file__).parent / "data"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database=str(tmp_path / "city.db"))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app in-process over a real SQLite file (lifespan included)."""
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A real `cityos serve` process on 127.0.0.1; yields its base URL and stops it by pid."""
    port = free_port()
    env = {**os.environ, "CITYOS_DATABASE": str(tmp_path / "server.db"), "CITYOS_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cityos", "serve", "--log-level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/version", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    raise RuntimeError(f"server did not start:\n{output}") from None
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
