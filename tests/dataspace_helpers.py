"""Two real cities for the data channel tests (tests/test_dataspace.py, the walkthrough test): ports
from the range these tests own, the CLI as an operator runs it, signed requests as a partner sends
them, and the audit records of either side."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

from backends import cli_env
from cityos.dataspace.service import ensure_key, load_key
from cityos.dataspace.signatures import SigningKey, sign_request
from cityos.store import open_store

PORTS = range(7720, 7750)  # the data channel tests' own ports (a server each, and a dead one)
FEDERATION_PORTS = range(7900, 7930)  # test_dataspace_federation.py's (it may run beside test_dataspace.py)


def free_ports(count: int, ports: range = PORTS) -> list[int]:
    """`count` ports of `ports` nothing listens on or holds now."""
    found: list[int] = []
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"fewer than {count} free ports in {ports}")


def cli(database: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`cityos ARGS --database DATABASE` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cityos", *args, "--database", database],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def signing_key(database: str, name: str | None = None, url: str | None = None) -> SigningKey:
    """A city's own signing key, read from its database (what its CLI and server sign with); made,
    or named and given its URL, as `cityos dataspace init --name NAME --url URL` does."""

    async def read() -> SigningKey:
        store = open_store(database)
        await store.open()
        try:
            return load_key(await ensure_key(store, name, url))
        finally:
            await store.close()

    return asyncio.run(read())


def signed(
    key: SigningKey,
    method: str,
    url: str,
    *,
    body: bytes = b"",
    agreement: str | None = None,
    purpose: str | None = None,
    now: float | None = None,
) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if body:
        headers["Content-Type"] = "application/json"
    if agreement is not None:
        headers["CityOS-Agreement"] = agreement
    if purpose is not None:
        headers["Purpose"] = purpose
    return sign_request(method, url, headers, body, key, now=now)


def audit(base: str, operation: str, token: str | None = None) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(f"{base}/cityos/v1/audit", params={"operation": operation, "limit": 1000}, headers=headers)
    assert answer.status_code == 200, answer.text
    records: list[dict[str, Any]] = answer.json()
    return records


def wait_for(what: str, test: Callable[[], Any], timeout: float = 20.0) -> Any:
    """test()'s first truthy value, polled (a notification arrives when it arrives)."""
    deadline = time.monotonic() + timeout
    while True:
        value = test()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
