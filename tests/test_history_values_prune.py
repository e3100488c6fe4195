"""Long history values (temporal_values, SQLite) go with the last row that refers to them: deleting an
instance, an attribute's history, an entity's history, or purging by age leaves no value behind, and
the id of a value deleted is never given to another (the readers' caches by id stay right)."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from typing import Any

import pytest
from starlette.testclient import TestClient

from backends import sqlite_only
from cityos.app import create_app
from cityos.settings import Settings
from cityos.store import open_store, sqlite_retention

TEMPORAL = "/ngsi-ld/v1/temporal/entities"
ORPHANS = "SELECT count(*) FROM temporal_values v WHERE NOT EXISTS (SELECT 1 FROM temporal_rows r WHERE r.vref = v.id)"


def _notes(entity: str, texts: list[str], day: int = 1) -> dict[str, Any]:
    return {
        "id": entity,
        "type": "Place",
        "note": [
            {"type": "Property", "value": text, "observedAt": f"2026-01-{day:02d}T{hour:02d}:00:00Z"}
            for hour, text in enumerate(texts)
        ],
    }


def _rows(path: str, sql: str) -> Any:  # one value
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchone()[0]


@sqlite_only
def test_long_values_go_with_their_last_row(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [f"a long note that two places share, number {n:03d}" for n in range(6)]
    with TestClient(create_app(Settings(database=db_url))) as client:
        for entity in ("urn:ngsi-ld:Place:a", "urn:ngsi-ld:Place:b", "urn:ngsi-ld:Place:c"):
            assert client.post(TEMPORAL, json=_notes(entity, texts)).status_code in (201, 204)
        stored = _rows(db_url, "SELECT count(*) FROM temporal_values")
        assert stored == 6 and _rows(db_url, "SELECT count(*) FROM temporal_rows WHERE vref IS NOT NULL") >= 6
        highest = _rows(db_url, "SELECT max(id) FROM temporal_values")

        # a value still referred to by another entity's rows stays
        assert client.delete(f"{TEMPORAL}/urn:ngsi-ld:Place:b").status_code == 204
        assert _rows(db_url, "SELECT count(*) FROM temporal_values") == 6
        assert (
            client.delete(f"{TEMPORAL}/urn:ngsi-ld:Place:c/attrs/note", params={"deleteAll": "true"}).status_code == 204
        )
        instance = client.get(f"{TEMPORAL}/urn:ngsi-ld:Place:a").json()["note"][0]
        assert client.delete(f"{TEMPORAL}/urn:ngsi-ld:Place:a/attrs/note/{instance['instanceId']}").status_code == 204
        assert _rows(db_url, ORPHANS) <= 1  # only the highest id may stay without a row
        left = [n["value"] for n in client.get(f"{TEMPORAL}/urn:ngsi-ld:Place:a").json()["note"]]
        assert sorted(left) == sorted(t for t in texts if t != instance["value"])

        # what the writer knew of a deleted value is forgotten: writing its text again stores it again
        assert client.post(TEMPORAL, json=_notes("urn:ngsi-ld:Place:d", [instance["value"]], 2)).status_code in (
            201,
            204,
        )
        assert client.post(TEMPORAL, json=_notes("urn:ngsi-ld:Place:e", [instance["value"]], 2)).status_code in (
            201,
            204,
        )
        again = client.get(f"{TEMPORAL}/urn:ngsi-ld:Place:e").json()["note"]
        assert [note["value"] for note in again] == [instance["value"]]
        assert (
            _rows(db_url, "SELECT min(id) FROM temporal_values WHERE value = '\"" + instance["value"] + "\"'") > highest
        )

    async def purge() -> int:
        store = open_store(db_url)
        await store.open()
        try:
            return await store.temporal_purge(2**62)  # everything
        finally:
            await store.close()

    monkeypatch.setattr(sqlite_retention, "PURGE_CHUNK", 2)  # several chunks, each a write of its own
    total = _rows(db_url, "SELECT count(*) FROM temporal_rows")
    assert total > 4 and asyncio.run(purge()) == total
    assert _rows(db_url, "SELECT count(*) FROM temporal_rows") == 0
    assert _rows(db_url, "SELECT count(*) FROM temporal_values") <= 1
