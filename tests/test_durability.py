"""The durability setting reaches the database connections: SQLite's PRAGMA synchronous (NORMAL
= 1, FULL = 2) on every connection of the store, PostgreSQL's synchronous_commit on every pooled
connection. Read through the store's own connections, in the app a server builds from its
settings (create_app), on a real SQLite file and a real PostgreSQL schema whose connections start
with synchronous_commit=off (as a server or role configured that way would give them)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings
from cityos.store import is_postgres


def _server_durability(database: str, durability: str) -> set[str]:
    """What the server's store connections say, after a write and a query went through them."""
    with TestClient(create_app(Settings(database=database, durability=durability))) as client:
        entity = {"id": "urn:ngsi-ld:Thing:d1", "type": "Thing", "p": {"type": "Property", "value": 1}}
        assert client.post("/ngsi-ld/v1/entities", json=entity).status_code == 201
        assert client.get("/ngsi-ld/v1/entities", params={"type": "Thing"}).status_code == 200
        store: Any = client.app.state.services.store  # type: ignore[attr-defined]
        if is_postgres(database):

            async def show() -> set[str]:
                seen = set()
                for _ in range(3):  # several pooled connections
                    async with store.pool.acquire() as connection:
                        seen.add(await connection.fetchval("SHOW synchronous_commit"))
                return seen

            return set(client.portal.call(show))  # type: ignore[union-attr]
        with store._lock:
            connections = list(store._connections)
        assert store._writer is not None and len(connections) >= 1
        return {
            str(connection.execute("PRAGMA synchronous").fetchone()[0]) for connection in [store._writer, *connections]
        }


@pytest.fixture
def database(db_url: str) -> str:
    if is_postgres(db_url):  # connections that start with the weaker setting, as a server may configure
        return f"{db_url}&synchronous_commit=off"
    return db_url


def test_full_durability_is_applied_to_every_connection(database: str) -> None:
    expected = {"on"} if is_postgres(database) else {"2"}  # FULL
    assert _server_durability(database, "full") == expected


def test_normal_durability_keeps_the_fast_setting(database: str) -> None:
    expected = {"off"} if is_postgres(database) else {"1"}  # NORMAL; PostgreSQL: as configured
    assert _server_durability(database, "normal") == expected


def test_an_unknown_durability_is_refused(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "cityos", "serve", "--durability", "none", "--database", str(tmp_path / "x.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "durability must be normal or full" in run.stderr


@pytest.mark.parametrize(("durability", "waits"), [("normal", False), ("full", True)])
def test_delivery_bookkeeping_waits_for_the_wal_flush_only_under_full(durability: str, waits: bool) -> None:
    """finish_outbox (a delivered notification's row deleted, its status saved) commits without
    waiting for the WAL flush unless --durability full: losing it in a database crash delivers the
    notification again, as any crash before it does. (Its SQL runs in test_store_contract.)"""
    from cityos.store.base import OutboxRow, SubscriptionRow
    from cityos.store.postgres import PostgresStore

    store = PostgresStore("postgresql://unused", durability=durability)
    sent: list[str] = []

    class Recorder:
        async def execute(self, sql: str, *args: Any) -> None:
            sent.append(sql)

    async def write(work: Any, *, autocommit: bool = False) -> None:
        assert autocommit
        await work(Recorder())

    store._write = write  # type: ignore[method-assign]
    row = OutboxRow("t", "urn:sub:1", "lane", {}, id=7)
    asyncio.run(store.finish_outbox(row, done=True))
    asyncio.run(store.finish_outbox(row, done=False, status=SubscriptionRow("t", "urn:sub:1", {}, {"timesSent": 1})))
    relaxed = ["set_config('synchronous_commit', 'off', true)" in sql for sql in sent]
    assert relaxed == [not waits, not waits]
