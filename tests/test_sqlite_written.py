"""The SQLite writer's kept documents (store/sqlite_written.py): an entity written again is handed to
its next mutator as the very document the writer wrote last, but only while its row still holds
the bytes written then; any other change of the row (another connection, a rolled-back write, a
delete and a create, an expiry) gives the document the row holds. Bounded in entries and admitted
from an entity's second write."""

from __future__ import annotations

import asyncio
import copy
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from backends import sqlite_only
from cityos.entities import update
from cityos.entities.model import Entity
from cityos.errors import BadRequestData
from cityos.store.base import EntityChange, EntityLookup
from cityos.store.sqlite import SQLiteStore
from cityos.store.sqlite_layout import deflate, inflate
from cityos.store.sqlite_written import WrittenDocuments
from cityos.temporal.history import HistoryRecorder

pytestmark = sqlite_only
V = "https://example.org/"
ID = "urn:x:s1"


def reading(value: Any, stamp: str, **more: Any) -> Entity:
    instance = {"type": "Property", "value": value, "createdAt": stamp, "modifiedAt": stamp, **more}
    return {"id": ID, "type": [V + "Sensor"], "createdAt": stamp, "modifiedAt": stamp, "attrs": {V + "t": [instance]}}


def named(entity: Entity) -> Entity:
    """The entity with a second attribute, which the readings leave alone."""
    name = {"type": "Property", "value": "north", "createdAt": stamp(0), "modifiedAt": stamp(0)}
    return {**entity, "attrs": {**entity["attrs"], V + "name": [name]}}


def stamp(n: int) -> str:
    return f"2026-01-01T00:00:{n:02d}.000Z"


class Seen:
    """Mutators that record the `before` they were given (a deep copy, and the object itself)."""

    def __init__(self) -> None:
        self.copies: list[Entity | None] = []
        self.objects: list[Entity | None] = []
        self.afters: list[Entity | None] = []

    def upsert(self, entity: Entity) -> update.Mutator:
        inner = update.upsert(entity, mode="update")

        def run(current: Entity | None) -> update.Outcome:
            self.copies.append(copy.deepcopy(current))
            self.objects.append(current)
            outcome = inner(current)
            self.afters.append(outcome.entity)
            return outcome

        return run


def stored_json(path: Path) -> Any:
    with sqlite3.connect(path) as db:
        return orjson.loads(inflate(db.execute("SELECT doc FROM entities WHERE id = ?", (ID,)).fetchone()[0]))


def test_the_cache_admits_on_the_second_write_matches_bytes_and_stays_bounded(
    monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    monkeypatch.setattr(WrittenDocuments, "check", False)  # the bytes here are no documents
    kept = WrittenDocuments(capacity=2, seen=3)
    doc = {"id": "a"}
    kept.put(("", "a"), b"1", doc)
    assert kept.get(("", "a"), b"1") is None and len(kept) == 0  # first write: the key alone
    kept.put(("", "a"), b"2", doc)
    assert kept.get(("", "a"), b"2") is doc
    assert kept.get(("", "a"), b"1") is None  # other bytes in the row: not this document
    assert kept.get(("t", "a"), b"2") is None  # another tenant's entity of the same id
    for name in "bc":
        kept.put(("", name), b"1", {"id": name})
        kept.put(("", name), b"1", {"id": name})
    assert len(kept) == 2  # capacity: the oldest written ("a") went
    assert kept.get(("", "a"), b"2") is None and kept.get(("", "c"), b"1") == {"id": "c"}
    kept.put(("", "b"), b"3", {"id": "b"})  # written again: kept, moved to the end
    kept.put(("", "d"), b"1", {"id": "d"})
    kept.put(("", "d"), b"1", {"id": "d"})
    assert kept.get(("", "c"), b"1") is None and kept.get(("", "b"), b"3") == {"id": "b"}
    for name in "wxyz":  # more keys seen than remembered: the oldest is forgotten
        kept.put(("", name), b"1", {})
    kept.put(("", "w"), b"1", {})
    assert kept.get(("", "w"), b"1") is None


def test_check_mode_finds_a_document_changed_in_place(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    monkeypatch.setattr(WrittenDocuments, "check", True)
    kept = WrittenDocuments()
    doc = {"id": "a", "n": 1}
    stored = deflate(orjson.dumps(doc))
    kept.put(("", "a"), stored, doc)
    kept.put(("", "a"), stored, doc)
    assert kept.get(("", "a"), stored) is doc
    doc["n"] = 2
    with pytest.raises(AssertionError, match="changed in place"):
        kept.get(("", "a"), stored)


async def _writes(path: Path, seen: Seen, between: Any = None, count: int = 4) -> SQLiteStore:
    store = SQLiteStore(str(path))
    await store.open()
    store.set_change_listener(HistoryRecorder(), None, name="history")
    await store.mutate("", [(ID, update.create(named(reading(0, stamp(0)))))], atomic=True)
    for n in range(1, count + 1):
        if between is not None:
            await between(store, n)
        await store.mutate("", [(ID, seen.upsert(reading(n, stamp(n))))], atomic=True)
    return store


def test_a_sensor_written_again_gets_the_document_written_last(tmp_path: Path, db_url: str) -> None:
    seen = Seen()

    async def run() -> None:
        store = await _writes(tmp_path / "city.db", seen)
        await store.close()

    asyncio.run(run())
    values = [c["attrs"][V + "t"][0]["value"] for c in seen.copies if c is not None]
    assert values == [0, 1, 2, 3]
    # the create writes a whole entity (not kept, its key seen), the first reading is kept: each
    # later write's `before` is the very object the write before it made
    assert seen.objects[0] is not None
    assert all(seen.objects[n] is seen.afters[n - 1] for n in (1, 2, 3))
    assert stored_json(tmp_path / "city.db")["attrs"][V + "t"][0]["value"] == 4


def test_whole_entities_written_again_are_not_kept(tmp_path: Path, db_url: str) -> None:
    """A bulk refresh rewrites every attribute: not kept (and a kept document is let go)."""
    seen = Seen()

    async def run() -> None:
        store = await _writes(tmp_path / "city.db", seen, count=3)
        assert len(store._written) == 1  # the readings' entity
        whole = named(reading(8, stamp(50)))
        for _ in range(3):
            await store.mutate("", [(ID, update.upsert(whole, mode="update"))], atomic=True)
        assert len(store._written) == 0
        await store.close()

    asyncio.run(run())
    assert stored_json(tmp_path / "city.db")["attrs"][V + "t"][0]["value"] == 8


def test_a_row_changed_by_another_connection_is_read_again(tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "city.db"
    seen = Seen()

    async def between(store: SQLiteStore, n: int) -> None:
        if n == 4:  # the writer holds the document of write 3; another process changes the row
            other = reading(99, stamp(30))
            with sqlite3.connect(path) as db:
                db.execute("UPDATE entities SET doc = ? WHERE id = ?", (deflate(orjson.dumps(other)), ID))

    async def run() -> None:
        store = await _writes(path, seen, between)
        await store.close()

    asyncio.run(run())
    last = seen.copies[-1]
    assert last is not None and last["attrs"][V + "t"][0]["value"] == 99 and last["modifiedAt"] == stamp(30)


def test_a_rolled_back_write_leaves_the_committed_document(tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "city.db"
    seen = Seen()

    def refusing(change: EntityChange, lookup: EntityLookup) -> list[Any]:
        if change.after is not None and change.after["attrs"][V + "t"][0]["value"] == 50:
            raise BadRequestData("refused after the document was written")
        return []

    async def between(store: SQLiteStore, n: int) -> None:
        if n == 4:
            store.set_change_listener(refusing, None, name="refusing")
            with pytest.raises(BadRequestData):
                await store.mutate("", [(ID, update.upsert(reading(50, stamp(40)), mode="update"))], atomic=True)
            store.set_change_listener(None, None, name="refusing")

    async def run() -> None:
        store = await _writes(path, seen, between)
        await store.close()

    asyncio.run(run())
    last = seen.copies[-1]
    assert last is not None and last["attrs"][V + "t"][0]["value"] == 3  # not the refused 50


def test_a_deleted_and_created_again_entity_is_not_the_kept_one(tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "city.db"
    seen = Seen()

    async def between(store: SQLiteStore, n: int) -> None:
        if n == 4:
            await store.mutate("", [(ID, update.delete(ID))], atomic=True)
            again = reading(7, stamp(20))
            again["attrs"][V + "other"] = [
                {"type": "Property", "value": "x", "createdAt": stamp(20), "modifiedAt": stamp(20)}
            ]
            await store.mutate("", [(ID, update.create(again))], atomic=True)

    async def run() -> None:
        store = await _writes(path, seen, between)
        await store.close()

    asyncio.run(run())
    last = seen.copies[-1]
    assert last is not None and V + "other" in last["attrs"] and last["attrs"][V + "t"][0]["value"] == 7


def test_an_expired_attribute_swept_by_the_writer_is_not_handed_back(tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "city.db"
    seen = Seen()

    async def between(store: SQLiteStore, n: int) -> None:
        if n == 3:  # an attribute that expires, written twice (kept), then swept by purge_expired
            fading = reading(5, stamp(10))
            fading["attrs"][V + "gone"] = [
                {
                    "type": "Property",
                    "value": 1,
                    "createdAt": stamp(10),
                    "modifiedAt": stamp(10),
                    "expiresAt": "2026-01-01T00:01:00.000Z",
                }
            ]
            for _ in range(2):
                await store.mutate("", [(ID, update.upsert(fading, mode="update"))], atomic=True)
            await store.purge_expired("2026-01-01T00:02:00.000Z")

    async def run() -> None:
        store = await _writes(path, seen, between)
        await store.close()

    asyncio.run(run())
    assert all(c is not None and V + "gone" not in c["attrs"] for c in seen.copies[3:])
    assert V + "gone" not in stored_json(path)["attrs"]
