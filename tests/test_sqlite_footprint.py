"""Issue 15's footprint at city scale on SQLite: the page caches and the render cache are settings that
reach every connection (validated like the others), the audit trail's rows are stored compactly and
read back as before (also rows written by an older CityOS), and the geo tables hold interned attribute
ids (a file of layout 3, with IRIs, is converted when opened and answers the same)."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from backends import sqlite_only
from cityos.app import create_app
from cityos.audit.chain import GENESIS, AuditQuery
from cityos.entities import render_cache
from cityos.settings import Settings
from cityos.store.sqlite import SQLiteStore
from cityos.store.sqlite_schema import LATEST as LAYOUT  # the file version after open

ENTITIES = "/ngsi-ld/v1/entities"


def _place(number: int) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Place:p{number}",
        "type": "Place",
        "spots": {"type": "Property", "value": number},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [2.0 + number / 1000, 41.0]}},
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [("sqlite_writer_cache_mb", 0), ("sqlite_reader_cache_mb", 0), ("render_cache_mb", -1)],
)
def test_cache_settings_are_validated(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=name):
        Settings(**{name: value}).validate()


@sqlite_only
def test_cache_settings_reach_every_connection(db_url: str) -> None:
    settings = Settings(database=db_url, sqlite_writer_cache_mb=16, sqlite_reader_cache_mb=3, render_cache_mb=1)
    try:
        with TestClient(create_app(settings)) as client:
            assert client.post(ENTITIES, json=_place(1)).status_code == 201
            assert client.get(ENTITIES, params={"type": "Place"}).status_code == 200
            assert client.get(f"{ENTITIES}/urn:ngsi-ld:Place:p1").status_code == 200
            store: Any = client.app.state.services.store  # type: ignore[attr-defined]
            assert store._writer.execute("PRAGMA cache_size").fetchone() == (-16 * 1024,)
            with store._lock:
                readers = list(store._connections)
            assert len(readers) >= 2  # a reader thread's and the event loop's
            assert {connection.execute("PRAGMA cache_size").fetchone()[0] for connection in readers} == {-3 * 1024}
            assert render_cache.CACHE.budget == 1024 * 1024
    finally:
        render_cache.CACHE.resize(render_cache.BUDGET)


def test_render_cache_resize_drops_the_oldest() -> None:
    cache = render_cache.RenderCache(budget=100_000)
    for number in range(10):
        cache.render(1, b"stored-%d" % number, lambda stored: b"x" * 1000)
    assert len(cache._entries) == 10
    cache.resize(3 * (1000 + 8 + render_cache.ENTRY_OVERHEAD))
    assert [key[1] for key in cache._entries] == [b"stored-7", b"stored-8", b"stored-9"]
    cache.resize(0)
    assert cache.size == 0 and not cache._entries
    assert cache.render(1, b"stored-1", lambda stored: b"y") == b"y"  # nothing kept, still rendered
    assert not cache._entries


def _audit(path: str) -> list[Any]:
    async def read() -> list[Any]:
        store = SQLiteStore(path)
        await store.open()
        try:
            return await store.read_audit(AuditQuery())
        finally:
            await store.close()

    return asyncio.run(read())


@sqlite_only
def test_audit_rows_are_compact_and_read_as_before(db_url: str, tmp_path: Path) -> None:
    with TestClient(create_app(Settings(database=db_url, audit_key=str(tmp_path / "audit.key")))) as client:
        for number in range(5):
            assert client.post(ENTITIES, json=_place(number)).status_code == 201
        batch = [_place(number) for number in range(5, 9)]
        assert client.post("/ngsi-ld/v1/entityOperations/upsert", json=batch).status_code == 201
    with closing(sqlite3.connect(db_url)) as db:
        stored = db.execute("SELECT seq, prev, hash FROM audit_log ORDER BY seq").fetchall()
    assert len(stored) >= 9
    assert stored[0][1] == GENESIS and all(prev == "" for _, prev, _ in stored[1:])
    assert all(isinstance(digest, bytes) and len(digest) == 32 for _, _, digest in stored)
    records = _audit(db_url)
    assert [record.seq for record in records] == [seq for seq, _, _ in stored]
    assert [record.hash for record in records] == [digest.hex() for _, _, digest in stored]
    assert records[0].prev == GENESIS
    assert all(after.prev == before.hash for before, after in itertools.pairwise(records))
    with closing(sqlite3.connect(db_url)) as db, db:  # rows as an older CityOS wrote them: hex text
        db.execute(
            "UPDATE audit_log SET prev = (SELECT prev FROM audit_records r WHERE r.seq = audit_log.seq),"
            " hash = lower(hex(hash)) WHERE seq % 2 = 0"
        )
    assert _audit(db_url) == records
    with TestClient(create_app(Settings(database=db_url, audit_key=str(tmp_path / "audit.key")))) as client:
        assert client.post(ENTITIES, json=_place(20)).status_code == 201  # the chain goes on after them
    after = _audit(db_url)
    assert after[: len(records)] == records and after[len(records)].prev == records[-1].hash


def _near(client: TestClient) -> list[str]:
    params = {"type": "Place", "georel": "near;maxDistance==2000", "geometry": "Point", "coordinates": "[2.0,41.0]"}
    answer = client.get(ENTITIES, params={**params, "limit": "100"})
    assert answer.status_code == 200
    return sorted(entity["id"] for entity in answer.json())


@sqlite_only
def test_a_file_with_geo_iris_is_converted(db_url: str) -> None:
    with TestClient(create_app(Settings(database=db_url))) as client:
        for number in range(0, 60, 3):
            assert client.post(ENTITIES, json=_place(number)).status_code == 201
        before = _near(client)
    assert len(before) >= 5
    with closing(sqlite3.connect(db_url)) as db, db:  # back to layout 3: the attribute's IRI in both tables
        db.execute("ALTER TABLE entity_geo_attrs RENAME TO ids")
        db.execute("CREATE TABLE entity_geo_attrs (gid INTEGER PRIMARY KEY, pk INTEGER NOT NULL, attr TEXT NOT NULL)")
        db.execute(
            "INSERT INTO entity_geo_attrs SELECT g.gid, g.pk, n.name FROM ids g JOIN temporal_names n ON n.id = g.attr"
        )
        db.execute("DROP TABLE ids")
        db.execute("CREATE INDEX entity_geo_attrs_pk ON entity_geo_attrs (pk)")
        db.execute("UPDATE entity_geo_walk SET attr = (SELECT name FROM temporal_names WHERE id = attr)")
        db.execute("PRAGMA user_version = 3")
    with TestClient(create_app(Settings(database=db_url))) as client:
        assert _near(client) == before
        assert client.post(ENTITIES, json=_place(1)).status_code == 201  # written as the new layout
        assert _near(client) == sorted([*before, "urn:ngsi-ld:Place:p1"])
    with closing(sqlite3.connect(db_url)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (LAYOUT,)
        assert db.execute("SELECT DISTINCT typeof(attr) FROM entity_geo_attrs").fetchall() == [("integer",)]
        assert db.execute("SELECT DISTINCT typeof(attr) FROM entity_geo_walk").fetchall() == [("integer",)]
