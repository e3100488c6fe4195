"""Concurrent single-entity writes (issue 15): SQLite commits the writes queued behind one another
as one transaction, a savepoint each. A write that fails among them fails alone, with its own error,
and takes nothing of the others with it; the history records the writes in the order they were
applied. The HTTP test runs on both back-ends (PostgreSQL commits each write on its own)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

import httpx
import orjson

from backends import sqlite_only
from cityos.app import create_app
from cityos.entities import update
from cityos.entities.model import Entity
from cityos.errors import BadRequestData
from cityos.settings import Settings
from cityos.store.base import EntityChange
from cityos.store.sqlite import SQLiteStore

API = "/ngsi-ld/v1"
JSON = {"Content-Type": "application/json"}
COUNT = 30


def _hold_writer(store: Any) -> tuple[threading.Event, asyncio.Future[Any] | None]:
    """On SQLite, a write that keeps the writer busy until released, so the writes sent meanwhile
    queue up and are committed as one group (nothing to hold elsewhere)."""
    gate = threading.Event()
    if not isinstance(store, SQLiteStore):
        gate.set()
        return gate, None
    return gate, asyncio.ensure_future(store._write(lambda connection: gate.wait(10)))


def test_a_failing_write_among_concurrent_ones_fails_alone_and_history_keeps_their_order(settings: Settings) -> None:
    app = create_app(settings)

    async def scenario() -> tuple[list[int], dict[str, Any], dict[str, Any]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://city") as client:
                entity = {"id": "urn:x:a", "type": "T", "n": {"type": "Property", "value": 0}}
                assert (
                    await client.post(f"{API}/entities", content=orjson.dumps(entity), headers=JSON)
                ).status_code == 201
                gate, held = _hold_writer(app.state.services.store)
                await asyncio.sleep(0.05)  # the writer is in the held write

                def send(number: int) -> Any:
                    target = "urn:x:missing" if number == COUNT // 2 else "urn:x:a"
                    body = orjson.dumps({"value": number})
                    return client.patch(f"{API}/entities/{target}/attrs/n", content=body, headers=JSON)

                sent = [asyncio.ensure_future(send(number)) for number in range(1, COUNT + 1)]
                await asyncio.sleep(0.2)  # every request queued behind the held write
                gate.set()
                answers = await asyncio.gather(*sent)
                if held is not None:
                    await held
                current = (await client.get(f"{API}/entities/urn:x:a", params={"options": "keyValues"})).json()
                history = await client.get(
                    f"{API}/temporal/entities/urn:x:a",
                    params={"timeproperty": "modifiedAt", "options": "temporalValues"},
                )
                return [answer.status_code for answer in answers], current, history.json()

    statuses, current, history = asyncio.run(scenario())
    failing = COUNT // 2
    assert statuses == [404 if number == failing else 204 for number in range(1, COUNT + 1)]
    values = [value for value, _ in history["n"]["values"]]
    expected = [0, *(number for number in range(1, COUNT + 1) if number != failing)]
    if isinstance(app.state.services.store, SQLiteStore):  # one writer, the group in the order queued
        assert current["n"] == COUNT
        assert values == expected
    else:  # each write locks the row and commits on its own: concurrent ones in no set order
        assert current["n"] in expected[1:]
        assert sorted(values) == expected


@sqlite_only
def test_a_write_that_fails_after_writing_is_undone_alone_in_its_group(tmp_path: Any, db_url: str) -> None:
    """A change listener refuses one write after its document and side rows were written: its
    savepoint is rolled back with its own error; the writes before and after it in the same
    transaction stand."""

    def entity(entity_id: str, n: int) -> Entity:
        stamp = "2026-01-01T00:00:00.000Z"
        return {
            "id": entity_id,
            "type": ["https://example.org/T"],
            "createdAt": stamp,
            "modifiedAt": stamp,
            "attrs": {
                "https://example.org/n": [{"type": "Property", "value": n, "createdAt": stamp, "modifiedAt": stamp}]
            },
        }

    def refuse_b(change: EntityChange, lookup: Any) -> list[Any]:
        if change.entity_id == "urn:x:b":
            raise BadRequestData("refused after writing")
        return []

    async def scenario() -> tuple[list[Any], list[str], int]:
        store = SQLiteStore(str(tmp_path / "group.db"))
        await store.open()
        commits: list[str] = []
        try:
            store.set_change_listener(refuse_b, None, name="refuse")
            assert store._writer is not None
            store._writer.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
            gate, held = _hold_writer(store)
            await asyncio.sleep(0.05)
            writes = [
                store.mutate("", [(entity_id, update.create(entity(entity_id, n)))], atomic=True)
                for n, entity_id in enumerate(("urn:x:a", "urn:x:b", "urn:x:c"))
            ]
            pending = [asyncio.ensure_future(write) for write in writes]
            await asyncio.sleep(0.1)
            gate.set()
            outcomes = await asyncio.gather(*pending, return_exceptions=True)
            assert held is not None
            await held
            stored = [e for e in ("urn:x:a", "urn:x:b", "urn:x:c") if await store.get_entity("", e) is not None]
            return outcomes, stored, len(commits)
        finally:
            await store.close()

    outcomes, stored, commits = asyncio.run(scenario())
    assert isinstance(outcomes[1], BadRequestData) and str(outcomes[1]) == "refused after writing"
    assert not isinstance(outcomes[0], BaseException) and not isinstance(outcomes[2], BaseException)
    assert stored == ["urn:x:a", "urn:x:c"]
    assert commits == 2  # the held write's, and one for the three writes queued behind it
    with sqlite3.connect(tmp_path / "group.db") as db:  # side rows of the two that stand, none of b's
        assert db.execute("SELECT count(*) FROM entity_types").fetchone() == (2,)
        assert db.execute("SELECT count(*) FROM attr_values").fetchone() == (2,)
