"""/health/live and /health/ready (ops/health.py): each readiness check made to fail for real (a
database at another schema version, the SQLite writer thread held, the PostgreSQL server cut off
behind a TCP relay, an MQTT broker nobody listens for, the outbox follower gone), answered 503
with the failing check named, and 200 again once the cause is gone."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from backends import sqlite_only
from cityos.app import create_app
from cityos.settings import Settings
from notify_helpers import free_port, mosquitto, wait_for


def ready(client: TestClient) -> tuple[int, dict[str, Any]]:
    answer = client.get("/health/ready")
    return answer.status_code, answer.json()


def test_live_and_ready_answer_without_credentials(db_url: str) -> None:
    with TestClient(create_app(Settings(database=db_url, auth="required"))) as client:
        live = client.get("/health/live")
        assert live.status_code == 200 and live.json() == {"status": "ok", "checks": {}}
        status, body = ready(client)
        assert status == 200, body
        assert body == {"status": "ok", "checks": {"database": True, "writer": True, "outbox": True}}
        assert client.get("/ngsi-ld/v1/types").status_code == 401  # the rest still asks who is calling


@sqlite_only
def test_a_database_at_another_schema_version_is_not_ready(db_url: str) -> None:
    path = Path(db_url)
    with TestClient(create_app(Settings(database=str(path)))) as client:
        assert ready(client)[0] == 200
        other = sqlite3.connect(path, isolation_level=None)
        try:
            (version,) = other.execute("SELECT version FROM schema_version").fetchone()
            other.execute("UPDATE schema_version SET version = 99")
            status, body = ready(client)
            assert status == 503
            assert body["status"] == "failing"
            assert body["checks"]["database"] == f"schema version 99, not {version}"
            assert body["checks"]["writer"] is True
            other.execute("UPDATE schema_version SET version = ?", (version,))
            assert ready(client)[0] == 200
        finally:
            other.close()


@sqlite_only
def test_a_held_writer_thread_is_not_ready(db_url: str) -> None:
    settings = Settings(database=db_url, health_timeout=0.3)
    with TestClient(create_app(settings)) as client:
        store: Any = client.app.state.services.store  # type: ignore[attr-defined]
        held, release = threading.Event(), threading.Event()

        def hold() -> None:  # a write transaction that does not end, on the writer thread itself
            held.set()
            release.wait(30)

        store._writer_pool.submit(hold)
        try:
            assert held.wait(10)
            status, body = ready(client)
            assert status == 503
            assert body["checks"]["writer"] == "the writer thread did not answer within 0.3 s"
            assert body["checks"]["database"] is True  # reads go on beside it (WAL)
        finally:
            release.set()
        assert wait_for(lambda: ready(client)[0] == 200)


class Relay:
    """A TCP relay on 127.0.0.1 to a server, which can be cut (every connection closed, nothing
    listening) and restored on the same port: the database going away for real."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:  # shut down first: that ends the accept() under way
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()


@pytest.fixture
def relayed_postgres(fresh_postgres: str) -> Iterator[tuple[str, Relay]]:
    relay = Relay(("127.0.0.1", 5432))
    relay.start()
    try:
        yield fresh_postgres.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}", 1), relay
    finally:
        relay.cut()


def test_postgresql_out_of_reach_is_not_ready(relayed_postgres: tuple[str, Relay]) -> None:
    url, relay = relayed_postgres
    assert f":{relay.port}/" in url
    with TestClient(create_app(Settings(database=url, health_timeout=1.0))) as client:
        assert ready(client)[0] == 200
        relay.cut()
        status, body = ready(client)
        assert status == 503
        assert str(body["checks"]["database"]).startswith(("unreachable", "no connection")), body
        relay.start()  # the server is back: the pool connects again
        assert wait_for(lambda: ready(client)[0] == 200, timeout=20)


def test_an_unreachable_mqtt_broker_is_not_ready(tmp_path: Path) -> None:
    nobody = free_port()  # nothing listens there
    settings = Settings(database=str(tmp_path / "city.db"), iot_mqtt_url=f"mqtt://127.0.0.1:{nobody}")
    with TestClient(create_app(settings)) as client:
        status, body = ready(client)
        assert status == 503
        assert body["checks"]["mqtt"].startswith("not connected to the MQTT broker")
        assert body["checks"]["database"] is True and body["checks"]["outbox"] is True


def test_a_connected_mqtt_broker_is_ready(tmp_path: Path) -> None:
    with mosquitto() as port:
        settings = Settings(database=str(tmp_path / "city.db"), iot_mqtt_url=f"mqtt://127.0.0.1:{port}")
        with TestClient(create_app(settings)) as client:
            assert wait_for(lambda: ready(client)[1]["checks"].get("mqtt") is True)
            assert ready(client)[0] == 200


def test_a_stopped_outbox_follower_is_not_ready(db_url: str) -> None:
    with TestClient(create_app(Settings(database=db_url))) as client:
        assert ready(client)[0] == 200
        dispatcher: Any = client.app.state.subscriptions._dispatcher  # type: ignore[attr-defined]

        async def end_follower() -> None:  # as a crash of the follower task would
            dispatcher._pump.cancel()
            await asyncio.gather(dispatcher._pump, return_exceptions=True)

        assert client.portal is not None
        client.portal.call(end_follower)
        status, body = ready(client)
        assert status == 503
        assert body["checks"]["outbox"] == "the outbox follower is not running"


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_stopped_postgresql_worker_heartbeat_is_not_ready(db_url: str) -> None:
    """On PostgreSQL no thread writes: "writer" is the worker's heartbeat, which keeps its outbox
    claims (a worker without it is taken for dead by the others)."""
    with TestClient(create_app(Settings(database=db_url))) as client:
        store: Any = client.app.state.services.store  # type: ignore[attr-defined]

        async def end_heartbeat() -> None:
            store._heartbeat_task.cancel()
            await asyncio.gather(store._heartbeat_task, return_exceptions=True)

        assert client.portal is not None
        client.portal.call(end_heartbeat)
        status, body = ready(client)
        assert status == 503
        assert body["checks"]["writer"] == "the worker heartbeat stopped"
        assert body["checks"]["database"] is True
