"""The SQLite write path (store/sqlite_writes.py): rows buffered during a write and inserted in bulk
at its end stand exactly when the write stands. An entity of a batch that fails after its writes
began (here: a change listener refuses it) is undone alone, the batch being redone with a savepoint
per entity; an entity named twice in a batch, and a refused atomic write, leave the side tables and
the history as the documents say."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from backends import sqlite_only
from cityos.entities import update
from cityos.entities.model import Entity
from cityos.errors import BadRequestData, ResourceNotFound
from cityos.query.pushdown import ValueFilter
from cityos.store.base import EntityChange, EntityLookup, EntityQuery, HistoryRow, OutboxRow
from cityos.store.sqlite import SQLiteStore
from cityos.temporal.history import HistoryRecorder

V = "https://example.org/"
STAMP = "2026-01-01T00:00:00.000Z"
pytestmark = sqlite_only


def sensor(name: str, value: float) -> Entity:
    instance = {"type": "Property", "value": value, "createdAt": STAMP, "modifiedAt": STAMP}
    return {
        "id": f"urn:x:{name}",
        "type": [V + "Sensor"],
        "attrs": {V + "temperature": [instance]},
        "createdAt": STAMP,
        "modifiedAt": STAMP,
    }


def refusing(change: EntityChange, lookup: EntityLookup) -> Sequence[OutboxRow | HistoryRow]:
    """A listener that refuses one entity, after its document and side rows were written."""
    if change.entity_id == "urn:x:bad":
        raise BadRequestData("refused by a listener")
    return []


async def written(path: Path, operations: list[Any], *, atomic: bool, refuse: bool = False) -> list[Any]:
    store = SQLiteStore(str(path))
    await store.open()
    try:
        store.set_change_listener(HistoryRecorder(), None, name="history")
        if refuse:
            store.set_change_listener(refusing, None, name="refusing")
        return await store.mutate("", operations, atomic=atomic)
    finally:
        await store.close()


def warm(path: Path) -> list[tuple[Any, ...]]:
    """(entity id, its temperatures in attr_values, its history values) of every stored entity."""
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT e.id, (SELECT sum(num) FROM attr_values v WHERE v.pk = e.pk),"
            " (SELECT group_concat(i.vtext) FROM temporal_instances i JOIN temporal_entities t ON t.pk = i.epk"
            "  WHERE t.id = e.id) FROM entities e ORDER BY e.pk"
        ).fetchall()


def test_an_entity_failing_after_its_writes_is_undone_alone(tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "city.db"
    batch = [(e["id"], update.upsert(e, mode="replace")) for e in (sensor("a", 1), sensor("bad", 2), sensor("c", 3))]
    results = asyncio.run(written(path, batch, atomic=False, refuse=True))
    assert [(r.entity_id, type(r.error)) for r in results] == [
        ("urn:x:a", type(None)),
        ("urn:x:bad", BadRequestData),
        ("urn:x:c", type(None)),
    ]
    assert warm(path) == [("urn:x:a", 1.0, "1"), ("urn:x:c", 3.0, "3")]


def test_an_entity_named_twice_in_a_batch_ends_as_its_last_write(tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "city.db"
    first = [(e["id"], update.upsert(e, mode="replace")) for e in (sensor("a", 1), sensor("b", 2))]
    asyncio.run(written(path, first, atomic=False))
    again = [
        ("urn:x:a", update.upsert(sensor("a", 5), mode="replace")),
        ("urn:x:b", update.delete("urn:x:b")),
        ("urn:x:a", update.upsert(sensor("a", 6), mode="replace")),
        ("urn:x:b", update.create(sensor("b", 7))),
        ("urn:x:none", update.delete("urn:x:none")),
    ]
    results = asyncio.run(written(path, again, atomic=False))
    assert [type(r.error) for r in results] == [type(None)] * 4 + [ResourceNotFound]
    # b was deleted and made again: a new row, after a
    assert [(i, v) for i, v, _ in warm(path)] == [("urn:x:a", 6.0), ("urn:x:b", 7.0)]

    async def hits(value: float) -> list[str]:
        store = SQLiteStore(str(path))
        await store.open()
        try:
            found = await store.query_entities(
                "", EntityQuery(value_filters=[ValueFilter(V + "temperature", "==", (value,))])
            )
            return [e["id"] for e in found.entities]
        finally:
            await store.close()

    assert [asyncio.run(hits(v)) for v in (1.0, 5.0, 6.0, 2.0, 7.0)] == [[], [], ["urn:x:a"], [], ["urn:x:b"]]


def test_a_refused_atomic_write_leaves_no_rows(tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "city.db"
    batch = [("urn:x:a", update.create(sensor("a", 1))), ("urn:x:a", update.create(sensor("a", 2)))]
    with pytest.raises(Exception, match="already exists"):
        asyncio.run(written(path, batch, atomic=True))
    with sqlite3.connect(path) as db:
        counts = [
            db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("entities", "attr_values", "temporal_rows")
        ]
    assert counts == [0, 0, 0]
