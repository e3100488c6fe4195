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

import orjson
import pytest

from backends import sqlite_only
from cityos.entities import update
from cityos.entities.model import Entity
from cityos.errors import BadRequestData, ResourceNotFound
from cityos.query.pushdown import ValueFilter
from cityos.store.base import EntityChange, EntityLookup, EntityQuery, HistoryRow, OutboxRow
from cityos.store.side_rows import geo_untouched
from cityos.store.sqlite import SQLiteStore
from cityos.store.sqlite_writes import MULTI_ROWS
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


def entity(name: str, attrs: dict[str, list[dict[str, Any]]]) -> Entity:
    stamped = {
        V + attr: [{**i, "createdAt": STAMP, "modifiedAt": STAMP} for i in instances]
        for attr, instances in attrs.items()
    }
    return {"id": f"urn:x:{name}", "type": [V + "Thing"], "attrs": stamped, "createdAt": STAMP, "modifiedAt": STAMP}


def point(x: float, y: float, dataset: str | None = None) -> dict[str, Any]:
    instance = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [x, y]}}
    return instance if dataset is None else {**instance, "datasetId": dataset}


def prop(value: Any, kind: str = "Property") -> dict[str, Any]:
    return {"type": kind, "languageMap" if kind == "LanguageProperty" else "value": value}


# (before, after) of each entity: what a replace may keep in place and what it must rewrite (1 and
# true are equal in Python, not as indexed values: true is not indexed)
CHANGES = {
    "moved": ({"location": [point(1, 2)]}, {"location": [point(3, 4)]}),
    "listed": ({"tags": [prop([1, "a"])], "same": [prop(["x"])]}, {"tags": [prop([True, "a"])], "same": [prop(["x"])]}),
    "object": ({"address": [prop({"a": 1})]}, {"address": [prop({"a": 2, "b": "c"})]}),
    "lang": ({"label": [prop({"en": "x"}, "LanguageProperty")]}, {"label": [prop({"en": "y"}, "LanguageProperty")]}),
    "scalar": (
        {"n": [prop(1)], "s": [prop("a")], "f": [prop(1)]},
        {"n": [prop(1.5)], "s": [prop("a")], "f": [prop(True)]},
    ),
    # as many rows as before: rewritten in place (a number becoming a text, a list's items changing)
    "in place": ({"n": [prop(1)], "m": [prop([1, 2])]}, {"n": [prop("one")], "m": [prop([3, "b"])]}),
    "more geo": ({"location": [point(1, 2)]}, {"location": [point(1, 3)], "area": [point(5, 6)]}),
    "datasets": (
        {"location": [point(1, 2, "urn:d:1"), point(2, 2, "urn:d:2")]},
        {"location": [point(1, 4, "urn:d:1"), point(9, 9, "urn:d:2")]},
    ),
    "to a line": (
        {"location": [point(1, 2)]},
        {"location": [{"type": "GeoProperty", "value": {"type": "LineString", "coordinates": [[0, 0], [2, 3]]}}]},
    ),
}


def side_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every side row, keyed by entity id and attribute name (pk, gid and interned ids apart)."""
    queries = {
        "attr_values": "SELECT e.id, n.name, v.seq, v.num, v.txt FROM attr_values v JOIN entities e ON e.pk = v.pk"
        " JOIN temporal_names n ON n.id = v.attr",
        "entity_attrs": "SELECT e.id, n.name FROM entity_attrs a JOIN entities e ON e.pk = a.pk"
        " JOIN temporal_names n ON n.id = a.attr",
        "entity_geo": "SELECT e.id, n.name, r.min_x, r.max_x, r.min_y, r.max_y FROM entity_geo_attrs g"
        " JOIN entities e ON e.pk = g.pk JOIN entity_geo r ON r.gid = g.gid JOIN temporal_names n ON n.id = g.attr",
        "entity_geo_walk": "SELECT e.id, n.name, w.min_x, w.max_x, w.min_y, w.max_y, w.shapes FROM entity_geo_walk w"
        " JOIN entities e ON e.pk = w.pk JOIN temporal_names n ON n.id = w.attr",
    }
    with sqlite3.connect(path) as db:
        return {table: sorted(db.execute(sql).fetchall(), key=repr) for table, sql in queries.items()}


def test_a_replace_leaves_the_side_rows_of_a_fresh_write(tmp_path: Path, db_url: str) -> None:
    """Rows kept in place (an unchanged value, a moved point's R*Tree and walk rows updated by key)
    and rows rewritten end as the same entities written on a new file."""
    replaced, fresh = tmp_path / "replaced.db", tmp_path / "fresh.db"
    firsts = [entity(name, before) for name, (before, _) in CHANGES.items()]
    finals = [entity(name, after) for name, (_, after) in CHANGES.items()]
    asyncio.run(written(replaced, [(e["id"], update.upsert(e, mode="replace")) for e in firsts], atomic=False))
    asyncio.run(written(replaced, [(e["id"], update.upsert(e, mode="replace")) for e in finals], atomic=False))
    asyncio.run(written(fresh, [(e["id"], update.upsert(e, mode="replace")) for e in finals], atomic=False))
    assert side_rows(replaced) == side_rows(fresh)
    walk = side_rows(replaced)["entity_geo_walk"]
    assert ("urn:x:moved", V + "location", 3.0, 3.0, 4.0, 4.0, None) in walk


def history(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT t.id, i.attr, i.kind, i.vtext, i.created_us, i.modified_us FROM temporal_instances i"
            " JOIN temporal_entities t ON t.pk = i.epk ORDER BY i.pk"
        ).fetchall()


def test_history_rows_encoded_once_per_batch_keep_their_entity_and_attribute(tmp_path: Path, db_url: str) -> None:
    """The instances a batch's entities share are encoded once (sqlite_history.encode_row), each row
    still its own entity's and attribute's; names a rolled-back write made are not reused."""
    path = tmp_path / "city.db"
    same = prop("shared")
    batch = [entity(name, {"a": [same], "b": [same]}) for name in ("p", "q")]
    asyncio.run(written(path, [(e["id"], update.upsert(e, mode="replace")) for e in batch], atomic=False))
    # an atomic write that makes a new name, then fails: the name's id is given to another one next
    doomed = entity("r", {"fresh": [same]})
    with pytest.raises(Exception, match="already exists"):
        asyncio.run(written(path, [(doomed["id"], update.create(doomed))] * 2, atomic=True))
    after = [entity("s", {"other": [prop(1)]}), entity("r", {"fresh": [same]})]
    asyncio.run(written(path, [(e["id"], update.upsert(e, mode="replace")) for e in after], atomic=False))
    rows = [(entity_id, attr.removeprefix(V), vtext) for entity_id, attr, _, vtext, _, _ in history(path)]
    assert rows == [
        ("urn:x:p", "a", '"shared"'),
        ("urn:x:p", "b", '"shared"'),
        ("urn:x:q", "a", '"shared"'),
        ("urn:x:q", "b", '"shared"'),
        ("urn:x:s", "other", "1"),
        ("urn:x:r", "fresh", '"shared"'),
    ]


def test_the_temporal_entity_read_with_the_document_gains_new_types_and_is_never_doubled(
    tmp_path: Path, db_url: str
) -> None:
    """The history's temporal entity is read in the statement that reads the document
    (sqlite_writes.ENTITY_ROW): an entity's first write makes it, a write with a new type adds that
    type, and a delete and a create again in one batch keep the one temporal entity."""
    path = tmp_path / "city.db"
    first = sensor("a", 1.0)
    retyped = {**sensor("a", 2.0), "type": [V + "Other"]}
    asyncio.run(written(path, [(first["id"], update.upsert(first, mode="replace"))], atomic=False))
    asyncio.run(written(path, [(retyped["id"], update.replace(retyped))], atomic=True))
    again = sensor("a", 3.0)
    operations = [(first["id"], update.delete(first["id"])), (again["id"], update.create(again))]
    asyncio.run(written(path, operations, atomic=False))
    with sqlite3.connect(path) as db:
        names = dict(db.execute("SELECT id, name FROM temporal_names"))
        temporal = db.execute("SELECT id, types FROM temporal_entities").fetchall()
    assert [(entity_id, [names[t] for t in orjson.loads(types)]) for entity_id, types in temporal] == [
        ("urn:x:a", [V + "Sensor", V + "Other"])
    ]
    assert [vtext for _, _, _, vtext, _, _ in history(path)] == ["1.0", "2.0", '"urn:ngsi-ld:null"', "3.0"]


def test_geo_untouched_is_true_only_when_no_geoproperty_instance_was_replaced_added_or_removed(db_url: str) -> None:
    """side_rows.geo_untouched, the write path's and the map's shortcut past comparing geometries."""
    point = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1.0, 2.0]}}
    value = {"type": "Property", "value": 1}
    stored = {"location": [point], "speed": [value]}

    def updated(**attrs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        copied = {attr: list(instances) for attr, instances in stored.items()}  # as update._require does
        copied.update(attrs)
        return copied

    assert geo_untouched(stored, updated())
    assert geo_untouched(stored, updated(speed=[{**value, "value": 2}]))
    assert geo_untouched(stored, updated(name=[{"type": "Property", "value": "x"}]))
    assert geo_untouched(stored, {"location": [point]})  # a Property removed
    assert not geo_untouched(stored, updated(location=[dict(point)]))  # an equal copy: unsure, compare
    assert not geo_untouched(stored, updated(location=[point, dict(point)]))
    assert not geo_untouched(stored, updated(area=[point]))
    assert not geo_untouched(stored, {"speed": [value]})  # the GeoProperty removed
    assert not geo_untouched(stored, updated(speed=[point]))  # a Property replaced by a GeoProperty


def test_rows_drained_many_to_a_statement_are_those_of_one_write_each(tmp_path: Path, db_url: str) -> None:
    """A batch drains its inserts as multi-row statements of up to MULTI_ROWS rows (sqlite_writes._drain):
    the same rows, in the same order (the history's pks, hence instanceIds, in write order),
    as the same entities written one per transaction."""
    count = 2 * MULTI_ROWS + 5
    batched, alone = tmp_path / "batched.db", tmp_path / "alone.db"
    sensors = [entity(f"s{index}", {"t": [prop(index)], "u": [prop(f"u{index}")]}) for index in range(count)]
    asyncio.run(written(batched, [(e["id"], update.upsert(e, mode="replace")) for e in sensors], atomic=False))

    async def one_by_one() -> None:
        store = SQLiteStore(str(alone))
        await store.open()
        try:
            store.set_change_listener(HistoryRecorder(), None, name="history")
            for e in sensors:
                await store.mutate("", [(e["id"], update.upsert(e, mode="replace"))], atomic=True)
        finally:
            await store.close()

    asyncio.run(one_by_one())
    assert side_rows(batched) == side_rows(alone)
    assert history(batched) == history(alone)
    assert [(entity_id, attr.removeprefix(V)) for entity_id, attr, *_ in history(batched)] == [
        (f"urn:x:s{index}", name) for index in range(count) for name in ("t", "u")
    ]
    with sqlite3.connect(batched) as db:
        types = db.execute("SELECT count(*) FROM entity_types").fetchone()[0]
        assert types == count


def every_row(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (and the AUTOINCREMENT counters), rowids included, in rowid order;
    not the R*Tree's nodes, temporal_meta (a file's random instanceId prefix) nor tenants (made at
    the wall clock's second)."""
    with sqlite3.connect(path) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        kept = [t for t in tables if not t.startswith("entity_geo_") and t not in ("temporal_meta", "tenants")]
        return {t: db.execute(f'SELECT * FROM "{t}"').fetchall() for t in kept}


def test_inserts_drained_as_multi_row_statements_leave_the_rows_of_executemany(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite_writes._drain writes the buffered INSERTs as multi-row statements of MULTI_ROWS rows:
    a wide entity (more history rows than MULTI_ROWS, so two statements), a batch whose entities
    share rows, one whose entity is refused after its rows were buffered (the batch redone), and a
    create of a single attribute (one row: executemany) leave on the file every row, rowid, counter
    and trigger's effect that one execution a row leaves; so do history rows written without their
    four columns that are nearly always NULL (PLAIN_INSTANCE), and with them when one is not (an
    instance that expires)."""
    from cityos.store import sqlite_writes

    wide = entity("wide", {f"a{n}": [prop(n)] for n in range(sqlite_writes.MULTI_ROWS + 6)})
    wide["type"] = [V + "Thing", V + "Wide"]
    batch = [entity(name, {"a": [prop(1)], "b": [prop("x")], "c": [prop([1, 2, 3])]}) for name in "pqr"]
    refused = [sensor("a", 1), sensor("bad", 2), sensor("c", 3)]
    single = sensor("one", 5)
    expiring = sensor("expiring", 6)
    expiring["attrs"][V + "temperature"][0]["expiresAt"] = "2099-01-01T00:00:00Z"

    def write_all(path: Path) -> None:
        asyncio.run(written(path, [(wide["id"], update.create(wide))], atomic=True))
        asyncio.run(written(path, [(e["id"], update.upsert(e, mode="replace")) for e in batch], atomic=False))
        operations = [(e["id"], update.upsert(e, mode="replace")) for e in refused]
        asyncio.run(written(path, operations, atomic=False, refuse=True))
        asyncio.run(written(path, [(single["id"], update.create(single))], atomic=True))
        asyncio.run(written(path, [(expiring["id"], update.create(expiring))], atomic=True))

    def drained_one_by_one(self: Any, connection: sqlite3.Connection) -> None:
        """The drain before multi-row statements: one execution a row, every column bound."""
        for sql, rows in self._buffer.items():
            if rows:
                connection.executemany(sql, rows)
                rows.clear()
        self._buffered_pks.clear()
        self._epks.clear()

    multi, one_by_one = tmp_path / "multi.db", tmp_path / "one.db"
    write_all(multi)
    monkeypatch.setattr(sqlite_writes.SQLiteWrites, "_drain", drained_one_by_one)
    write_all(one_by_one)
    rows = every_row(multi)
    assert rows == every_row(one_by_one)
    assert len(rows["temporal_rows"]) == sqlite_writes.MULTI_ROWS + 6 + 9 + 3 + 1
    assert [r for r in rows["temporal_rows"] if r[9] is not None] == [rows["temporal_rows"][-1]]  # expires_us
    assert sqlite_writes.multi_row("INSERT INTO t (a, b) VALUES (?, ?)", 3) == (
        "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)"
    )
