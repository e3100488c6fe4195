"""The entity tables' layout of SQLite files (store/sqlite_layout.py): a file written by the CityOS
of before (tests/data/entity-layout-1, made by main at e660699 with its make.py: side tables keyed by
IRIs, documents as JSON) is migrated when opened, gives the same answers to entity, discovery and
temporal questions, and keeps taking writes; documents are stored compressed (zstd with the shipped
dictionary) and come back byte for byte; documents deflated by the CityOS of before are still read
and rewritten in the new format when their entity changes; a file of a newer layout is refused."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient

from backends import sqlite_only
from cityos.app import create_app
from cityos.settings import Settings
from cityos.store.sqlite import SQLiteStore
from cityos.store.sqlite_layout import DEFLATED, DICTIONARY, ZSTD_1, deflate, inflate
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
    for pk, doc in new.items():  # compressed, and the very same JSON once inflated
        assert doc[:1] == ZSTD_1 and inflate(doc) == old[pk]
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
    attrs = {
        f"{DEFAULT}a{n}": [{"type": "Property", "value": n, "observedAt": "2026-01-01T00:00:00Z"}] for n in range(300)
    }
    whole = orjson.dumps({"id": "urn:ngsi-ld:X:1", "type": [f"{DEFAULT}X"], "attrs": attrs})
    for size in (1, 100, 4095, 4096, 4097, 9000, 70000, len(whole)):
        documents.append(whole[:size])
    documents.append(bytes(range(256)) * 300)  # nothing the dictionary knows, 76 KB
    for document in documents:
        stored = deflate(document)
        assert stored[:1] == ZSTD_1 and inflate(stored) == document
        assert inflate(document) == document  # a document of before layout 2 is plain JSON
        assert inflate(_deflated(document)) == document  # and one of before this format deflated


def _deflated(document: bytes) -> bytes:
    """A document as the CityOS of before stored it (raw DEFLATE with DICTIONARY, level 1)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, -15, 6, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    return DEFLATED + packer.compress(document) + packer.flush()


PAGE = {"type": "OffStreetParking", "limit": "3", "offset": "1"}


def _parking(n: int) -> dict[str, object]:
    return {
        "id": f"urn:ngsi-ld:OffStreetParking:{n}",
        "type": "OffStreetParking",
        "name": {"type": "Property", "value": f"Parque {n}"},
        "availableSpotNumber": {"type": "Property", "value": n * 10, "observedAt": "2026-12-07T10:00:00Z"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [-8.6 + n / 100, 41.15]}},
    }


def test_deflated_documents_are_read_and_rewritten(tmp_path: Path, db_url: str) -> None:
    """A file whose documents were deflated by the CityOS of before answers as it did; a write turns
    the entity's document into the new format, and leaves the others as they were."""
    database = tmp_path / "deflated.db"
    with TestClient(create_app(Settings(database=str(database)))) as client:
        for n in range(5):
            assert client.post(f"{API}/entities", json=_parking(n)).status_code == 201
        answers = {n: client.get(f"{API}/entities/urn:ngsi-ld:OffStreetParking:{n}").json() for n in range(5)}
        page = client.get(f"{API}/entities", params=PAGE).json()
    with sqlite3.connect(database) as db:  # every document as the CityOS of before wrote it
        documents = {pk: inflate(doc) for pk, doc in db.execute("SELECT pk, doc FROM entities")}
        assert all(stored[:1] == b"{" for stored in documents.values())
        db.executemany("UPDATE entities SET doc = ? WHERE pk = ?", [(_deflated(d), pk) for pk, d in documents.items()])
    with TestClient(create_app(Settings(database=str(database)))) as client:
        for n, answer in answers.items():
            assert client.get(f"{API}/entities/urn:ngsi-ld:OffStreetParking:{n}").json() == answer
        assert (
            client.get(f"{API}/entities", params={"type": "OffStreetParking", "limit": 3, "offset": 1}).json() == page
        )
        hot = client.get(f"{API}/entities", params={"q": "availableSpotNumber>25"}).json()
        assert sorted(e["id"] for e in hot) == [f"urn:ngsi-ld:OffStreetParking:{n}" for n in (3, 4)]
        patch = {"availableSpotNumber": {"type": "Property", "value": 7}}
        assert client.patch(f"{API}/entities/urn:ngsi-ld:OffStreetParking:2/attrs", json=patch).status_code == 204
        patched = client.get(f"{API}/entities/urn:ngsi-ld:OffStreetParking:2").json()
        assert patched["availableSpotNumber"]["value"] == 7
        assert {k: v for k, v in patched.items() if k != "availableSpotNumber"} == {
            k: v for k, v in answers[2].items() if k != "availableSpotNumber"
        }
    stored = dict(rows(database, "SELECT id, doc FROM entities"))
    assert {doc[:1] for id_, doc in stored.items() if id_ != "urn:ngsi-ld:OffStreetParking:2"} == {DEFLATED}
    rewritten = stored["urn:ngsi-ld:OffStreetParking:2"]
    assert rewritten[:1] == ZSTD_1
    assert orjson.loads(inflate(rewritten))["attrs"][f"{DEFAULT}availableSpotNumber"][0]["value"] == 7


def test_the_dictionary_is_the_one_released(db_url: str) -> None:
    """Documents written with the dictionary can only be read with it: the file never changes."""
    from cityos.store import sqlite_layout

    shipped = sqlite_layout.ZSTD_1_DICTIONARY.as_bytes()
    assert hashlib.sha256(shipped).hexdigest() == "c3a017d91a7e7f51fd960d394f6cf7cd3b6992690015b5c7fe9be436492cbdff"


def test_a_file_of_a_newer_layout_is_refused(tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "newer.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {LAYOUT + 1}")
    with pytest.raises(RuntimeError, match="newer CityOS"):
        asyncio.run(SQLiteStore(str(path)).open())
