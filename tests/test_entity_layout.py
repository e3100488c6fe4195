"""The entity tables' layout of SQLite files (store/sqlite_layout.py): a file written by the CityOS
of before (tests/data/entity-layout-1, made by main at e660699 with its make.py: side tables keyed by
IRIs, documents as JSON) is migrated when opened, gives the same answers to entity, discovery and
temporal questions, and keeps taking writes; documents are stored deflated and come back byte for
byte; a file of a newer layout is refused."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient

from backends import sqlite_only
from cityos.store.sqlite import SQLiteStore
from cityos.store.sqlite_layout import DEFLATED, SMALL_DOCUMENT, deflate, inflate
from cityos.store.sqlite_schema import LATEST as LAYOUT
from layout_files import app_over_copy, rows

DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"

OLD = Path(__file__).parent / "data" / "entity-layout-1"
API = "/ngsi-ld/v1"
pytestmark = sqlite_only


@pytest.fixture
def migrated(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    """The app over a copy of the old file."""
    yield from app_over_copy(OLD, tmp_path)


def test_an_old_file_answers_as_before(migrated: TestClient, tmp_path: Path) -> None:
    expected = orjson.loads((OLD / "answers.json").read_bytes())
    for question in expected:  # the questions make.py asked, with the old answers
        response = migrated.get(API + question)
        assert response.status_code == 200, question
        answer, before = response.json(), expected[question]
        if question in ("/types", "/attributes"):  # a list's id is made anew for each answer
            assert answer.pop("id") != before.pop("id")
        assert orjson.dumps(answer) == orjson.dumps(before), question
    database = tmp_path / "cityos.db"
    assert rows(database, "PRAGMA user_version") == [(LAYOUT,)]
    old = dict(rows(OLD / "cityos.db", "SELECT pk, doc FROM entities"))
    new = dict(rows(database, "SELECT pk, doc FROM entities"))
    assert new.keys() == old.keys()
    for pk, doc in new.items():  # deflated, and the very same JSON once inflated
        assert doc[:1] == DEFLATED and inflate(doc) == old[pk]
    # the side tables hold interned names: every row's attribute is a known name
    assert rows(database, "SELECT typeof(attr), count(*) FROM attr_values GROUP BY 1")[0][0] == "integer"
    unknown = "SELECT count(*) FROM entity_attrs WHERE attr NOT IN (SELECT id FROM temporal_names)"
    assert rows(database, unknown) == [(0,)]


def test_an_old_file_keeps_taking_writes(migrated: TestClient) -> None:
    patch = {"value": 99}
    assert migrated.patch(f"{API}/entities/urn:ngsi-ld:Station:2/attrs/temperature", json=patch).status_code == 204
    new = {"id": "urn:ngsi-ld:Station:9", "type": "Station", "depth": {"type": "Property", "value": "deep"}}
    assert migrated.post(f"{API}/entities", json=new).status_code == 201
    hot = migrated.get(f"{API}/entities", params={"q": "temperature>90", "count": "true"})
    assert [e["id"] for e in hot.json()] == ["urn:ngsi-ld:Station:2"]
    assert hot.headers["NGSILD-Results-Count"] == "1"
    deep = migrated.get(f"{API}/entities", params={"q": 'depth=="deep"', "type": "Station"})
    assert [e["id"] for e in deep.json()] == ["urn:ngsi-ld:Station:9"]
    # names learned before the migration and after it, side by side
    assert "depth" in migrated.get(f"{API}/attributes").json()["attributeList"]
    assert migrated.get(f"{API}/types/Station").json()["entityCount"] == 8


def test_documents_come_back_byte_for_byte(db_url: str) -> None:
    documents = [b"{}", orjson.dumps({"id": "urn:x", "attrs": {"https://uri.etsi.org/ngsi-ld/x": [{"v": "é" * 900}]}})]
    # either side of SMALL_DOCUMENT (a primed compressor's copy with a 4 KiB window, or a full one)
    attrs = {
        f"{DEFAULT}a{n}": [{"type": "Property", "value": n, "observedAt": "2026-01-01T00:00:00Z"}] for n in range(300)
    }
    whole = orjson.dumps({"id": "urn:ngsi-ld:X:1", "type": [f"{DEFAULT}X"], "attrs": attrs})
    for size in (SMALL_DOCUMENT - 1, SMALL_DOCUMENT, SMALL_DOCUMENT + 1, 9000, len(whole)):
        documents.append(whole[:size])
    for document in documents:
        stored = deflate(document)
        assert stored[:1] == DEFLATED and inflate(stored) == document
        assert inflate(document) == document  # a document of before is plain JSON


def test_a_file_of_a_newer_layout_is_refused(tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "newer.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {LAYOUT + 1}")
    with pytest.raises(RuntimeError, match="newer CityOS"):
        asyncio.run(SQLiteStore(str(path)).open())
