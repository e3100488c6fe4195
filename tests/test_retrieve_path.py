"""GET /entities/{id} through the render cache (issue 15, fourth pass): the same bytes and headers as
the path that decodes and renders the entity, under every representation, on a hit as on a miss,
never stale after a write or past an attribute's expiry, on both back-ends; and SQLite's loop-side
point read, which never waits for a lock, falls back to a reader thread when the database is busy."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from cityos.store.sqlite import SQLiteStore

ENTITIES = "/ngsi-ld/v1/entities"
CAR = "urn:ngsi-ld:Car:r1"


def car(speed: int = 1) -> dict[str, Any]:
    return {
        "id": CAR,
        "type": "Car",
        "speed": {"type": "Property", "value": speed, "observedAt": "2026-01-01T00:00:00Z"},
        "name": {"type": "Property", "value": "r"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [2.0, 48.0]}},
    }


def answer(client: TestClient, query: str, accept: str) -> tuple[int, bytes, str | None, str | None]:
    response = client.get(f"{ENTITIES}/{CAR}{query}", headers={"Accept": accept})
    return response.status_code, response.content, response.headers.get("link"), response.headers.get("content-type")


@pytest.mark.parametrize("accept", ["application/json", "application/ld+json"])
@pytest.mark.parametrize(
    "query",
    ["", "?options=keyValues", "?options=concise", "?options=sysAttrs", "?format=keyValues", "?omit=name", "?lang=en"],
)
def test_the_cached_answer_is_the_decoding_paths(client: TestClient, query: str, accept: str) -> None:
    """`type=Car` sends the same read through the path that decodes the entity (it needs its type):
    both answers, and a second (cached) one, are the same bytes and headers."""
    assert client.post(ENTITIES, json=car()).status_code == 201
    decoded = answer(client, query + ("&" if query else "?") + "type=Car", accept)
    assert decoded[0] == 200
    assert answer(client, query, accept) == decoded  # a miss
    assert answer(client, query, accept) == decoded  # a hit


def test_a_write_is_seen_and_nothing_left_is_a_404(client: TestClient) -> None:
    assert client.post(ENTITIES, json=car(1)).status_code == 201
    assert client.get(f"{ENTITIES}/{CAR}").json()["speed"]["value"] == 1
    patch = client.patch(f"{ENTITIES}/{CAR}/attrs/speed", json={"type": "Property", "value": 7})
    assert patch.status_code == 204
    assert client.get(f"{ENTITIES}/{CAR}").json()["speed"]["value"] == 7
    emptied = client.get(f"{ENTITIES}/{CAR}?pick=speed&omit=speed")
    assert emptied.status_code == 400  # pick and omit together: still the parameter check
    assert client.get(f"{ENTITIES}/urn:ngsi-ld:Car:none").status_code == 404


def test_an_expired_attribute_leaves_the_cached_answer(client: TestClient) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    entity = car()
    entity["brief"] = {"type": "Property", "value": 2, "expiresAt": soon.isoformat().replace("+00:00", "Z")}
    assert client.post(ENTITIES, json=entity).status_code == 201
    assert "brief" in client.get(f"{ENTITIES}/{CAR}").json()
    assert "brief" in client.get(f"{ENTITIES}/{CAR}").json()  # cached
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    assert "brief" not in client.get(f"{ENTITIES}/{CAR}").json()


def _sqlite(client: TestClient) -> SQLiteStore:
    store = client.app.state.services.store  # type: ignore[attr-defined]
    if not isinstance(store, SQLiteStore):
        pytest.skip("SQLite's loop-side read")
    return store


def test_a_busy_loop_read_is_done_on_a_reader_thread(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's connection answers SQLITE_BUSY at once (busy timeout 0): the read is done again on
    a reader thread, with the same answer."""
    store = _sqlite(client)
    assert client.post(ENTITIES, json=car()).status_code == 201
    expected = client.get(f"{ENTITIES}/{CAR}").content

    class Busy:
        def execute(self, *args: Any) -> Any:
            error = sqlite3.OperationalError("database is locked")
            error.sqlite_errorcode = 5  # type: ignore[attr-defined]
            raise error

    threads: list[str] = []
    read = store._read

    async def counted(fn: Any) -> Any:
        def run(connection: sqlite3.Connection) -> Any:
            threads.append(threading.current_thread().name)
            return fn(connection)

        return await read(run)

    monkeypatch.setattr(store, "_loop_reader", lambda: Busy())
    monkeypatch.setattr(store, "_read", counted)
    assert client.get(f"{ENTITIES}/{CAR}").content == expected
    assert client.get(f"{ENTITIES}/{CAR}?type=Car").content == expected  # get_entity too
    # the tenant's registrations (distributed operations) were kept by the first read: entity reads only
    assert len(threads) == 2 and all(name.startswith("cityos-reader") for name in threads)


def test_the_loop_connection_never_waits_for_a_lock(client: TestClient) -> None:
    """Its busy timeout is 0 (a lock another process holds is not waited for on the event loop);
    the reader threads' connections wait busy_timeout as before."""
    store = _sqlite(client)
    assert client.post(ENTITIES, json=car()).status_code == 201
    assert client.get(f"{ENTITIES}/{CAR}").status_code == 200
    assert store._loop_reader().execute("PRAGMA busy_timeout").fetchone()[0] == 0
    assert client.portal is not None
    waits = client.portal.call(store._read, lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0])
    assert waits == int(store.busy_timeout * 1000)
