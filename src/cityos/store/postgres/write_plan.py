"""A write's entities worked out in Python, then written with one statement for all of them.

mutate (and the expiry sweep) used to run each operation against the database in turn: a
SAVEPOINT, a SELECT, the INSERT or UPDATE, the side-table deletes and inserts, the listeners,
the history; some ten round trips per entity. Now the stored rows of the whole write are read once
(locked), every mutator and change listener runs in Python against a WritePlan that holds each
entity's current document (so a later operation, and a listener's lookup, see what an earlier one
wrote, as they saw the rows before), and `statement` turns the plan into one statement of
data-modifying CTEs: the deletes, updates and inserts of `entities` and the side rows that
changed. An operation that fails (its mutator or a listener raised) is undone in the plan alone,
so no SAVEPOINT is needed: nothing of it reached the database.

The plan keeps the database's observable effects exactly: a new row's pk follows the order of
the operations that created it; an entity deleted and created again in one write gets a new row
(and pk), as before; side rows are rewritten only when what they index changed (an update of an
unindexed attribute touches `entities` alone; of an indexed one, that attribute's attr_values
rows, updated in place when it had one and keeps one). The rows go to PostgreSQL as JSON
(`recordset`). The side rows of a stored document always match it, expired parts included, so the
comparison is with the stored document, not its visible form.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from cityos.entities.expiry import next_expiry, visible
from cityos.entities.model import Entity
from cityos.store.postgres.sql import Params
from cityos.store.side_rows import changed_values, geo_boxes, geo_untouched, indexed_values, own_expiry

Key = tuple[str, str]  # (tenant, entity id)


@dataclass(slots=True)
class _Slot:
    """One entity of a write: the row it started from and where the write has taken it."""

    pk: int | None  # the stored row (None: none when the write began)
    stored: Entity | None  # that row's document, decoded once (expired parts included)
    text: str | None  # the current document as stored JSON (None: no row now)
    entity: Entity | None = None  # the current document, when the write changed it
    dropped: bool = False  # the stored row was deleted
    created: int | None = None  # the order of the operation that made the current row, if new
    # the attributes whose lists may differ between `stored` and `entity` (Outcome.relisted), when the
    # write's one operation on it started from `stored` itself; None: any (side_rows compares all)
    relisted: tuple[str, ...] | None = None


@dataclass(slots=True)
class WritePlan:
    """The entities one write reads and changes, keyed by (tenant, id)."""

    slots: dict[Key, _Slot] = field(default_factory=dict)
    _order: int = 0

    def load(self, tenant: str, entity_id: str, pk: int | None, text: str | None) -> None:
        """An entity's stored row (pk and text None: it has none), read under its lock."""
        stored = orjson.loads(text) if text is not None else None
        self.slots[(tenant, entity_id)] = _Slot(pk, stored, text)

    def holds(self, key: Key) -> bool:
        return key in self.slots

    def current(self, key: Key) -> Entity | None:
        """The entity as a read inside the write would see it now (a fresh copy)."""
        slot = self.slots[key]
        return visible(orjson.loads(slot.text)) if slot.text is not None else None

    def before(self, key: Key) -> Entity | None:
        """What a mutator starts from: the stored document as decoded when loaded, while unchanged."""
        slot = self.slots[key]
        if slot.entity is None and not slot.dropped and slot.created is None:
            return visible(slot.stored)
        return self.current(key)

    def mark(self, key: Key) -> _Slot:
        """The slot as it is, for `undo` when the operation about to change it fails."""
        return copy.copy(self.slots[key])

    def undo(self, key: Key, saved: _Slot) -> None:
        self.slots[key] = saved

    def stage(
        self, key: Key, after: Entity | None, before: Entity | None = None, relisted: tuple[str, ...] | None = None
    ) -> None:
        """An operation's result: the entity's new document, or None to delete it. `relisted`
        (Outcome.relisted) holds against `before`, what the mutator started from: kept for the side
        rows' comparison when that is the stored document itself and nothing changed it before."""
        slot = self.slots[key]
        first = slot.entity is None and not slot.dropped and slot.created is None
        slot.relisted = relisted if first and before is not None and before is slot.stored else None
        self._order += 1
        if after is None:
            if slot.text is not None and slot.created is None:
                slot.dropped = slot.pk is not None
            slot.text, slot.entity, slot.created = None, None, None
            return
        if slot.text is None:  # a new row (after none, or after a delete in this write)
            slot.created = self._order
        slot.text = orjson.dumps(after).decode()
        slot.entity = after

    def new_rows(self) -> int:
        """How many rows the plan inserts (each needs a pk from the entities' sequence)."""
        return len(self._new())

    def replaced(self) -> list[int]:
        """The stored rows deleted and then created again: deleted by a statement before
        `statement`, whose insert of the new row would otherwise meet the old one's (tenant, id)."""
        return [s.pk for s in self.slots.values() if s.dropped and s.created is not None and s.pk is not None]

    def ctes(self, pks: list[int], p: Params) -> list[str]:
        """The data-modifying CTEs that bring `entities` and its side tables to the plan (none: no
        change), for one statement with what else the write inserts; `pks` are drawn from the
        entities' sequence, one for each new row."""
        ctes: list[str] = []
        gone = [s.pk for s in self.slots.values() if s.dropped and s.created is None]
        if gone:
            ctes.append(f"gone AS (DELETE FROM entities WHERE pk = ANY({p(gone)}::bigint[]))")
        changed = [
            (s.pk, s, s.entity)
            for s in self.slots.values()
            if s.pk is not None and not s.dropped and s.entity is not None and s.created is None
        ]
        added = [
            (pk, key, s.entity)
            for pk, (key, s) in zip(pks, sorted(self._new(), key=lambda item: item[1].created or 0), strict=True)
            if s.entity is not None
        ]
        if changed:
            ctes.append(_update([(pk, s.text, entity) for pk, s, entity in changed], p))
        if added:
            ctes.append(_insert([(pk, key, self.slots[key].text, entity) for pk, key, entity in added], p))
        values: list[dict[str, Any]] = []
        boxes: list[dict[str, Any]] = []
        stale_values: list[dict[str, Any]] = []
        moved: list[dict[str, Any]] = []  # an attribute's one row, its values changed in place
        stale_boxes: list[int] = []
        moved_boxes: list[dict[str, Any]] = []  # a box row per attribute before and after, changed in place
        retyped: list[dict[str, Any]] = []  # entities whose first type changed, their boxes kept
        for pk, slot, entity in changed:
            assert slot.stored is not None
            for attr, rows, had in changed_values(slot.stored["attrs"], entity["attrs"], slot.relisted):
                if had == 1 and len(rows) == 1:
                    moved.append(_value(pk, rows[0]))
                    continue
                stale_values.append({"pk": pk, "attr": attr})
                values.extend(_value(pk, row) for row in rows)
            retype = entity["type"][0] != slot.stored["type"][0]
            if geo_untouched(slot.stored["attrs"], entity["attrs"], slot.relisted):  # its boxes are those stored
                if retype and geo_boxes(entity):
                    retyped.append({"pk": pk, "type": entity["type"][0]})
                continue
            new_boxes = geo_boxes(entity)
            old_boxes = geo_boxes(slot.stored)
            if new_boxes != old_boxes and _one_each(old_boxes, new_boxes):
                moved_boxes.extend(
                    _box(pk, box, entity["type"][0])
                    for box, old in zip(new_boxes, old_boxes, strict=True)
                    if box != old or retype
                )
            elif new_boxes != old_boxes:
                stale_boxes.append(pk)
                boxes.extend(_box(pk, box, entity["type"][0]) for box in new_boxes)
            elif new_boxes and retype:
                retyped.append({"pk": pk, "type": entity["type"][0]})
        for pk, _, entity in added:
            values.extend(_value(pk, row) for row in indexed_values(entity))
            boxes.extend(_box(pk, box, entity["type"][0]) for box in geo_boxes(entity))
        if stale_values:
            pairs = recordset(p, stale_values, "g", "pk bigint, attr text")
            # the pks as an array too: a DELETE ... USING the pairs alone measured 3 ms more
            # PostgreSQL CPU per update (in-process, paired) than this probe of attr_values_pk
            stale_pks = sorted({row["pk"] for row in stale_values})
            ctes.append(
                f"values_gone AS (DELETE FROM attr_values v WHERE v.pk = ANY({p(stale_pks)}::bigint[])"
                f" AND (v.pk, v.attr) IN (SELECT g.pk, g.attr FROM {pairs}))"
            )
        if moved:
            # the attribute's one row (pk, attr) rewritten in place: no delete and insert, so no
            # foreign-key check of the new row and one data-modifying CTE fewer (a sensor reading)
            source = recordset(p, moved, "m", "pk bigint, attr text, num float8, txt text")
            moved_pks = sorted({row["pk"] for row in moved})
            ctes.append(
                f"values_moved AS (UPDATE attr_values v SET num = m.num, txt = m.txt FROM {source}"
                f" WHERE v.pk = ANY({p(moved_pks)}::bigint[]) AND v.pk = m.pk AND v.attr = m.attr)"
            )
        if moved_boxes:
            # as values_moved: the (pk, attr) rows rewritten in place, no delete and insert (whose
            # inserted rows each fired the entity_geo_pk_fkey check); a moved sensor's location
            source = recordset(p, moved_boxes, "r", _BOX_COLUMNS)
            moved_pks = sorted({row["pk"] for row in moved_boxes})
            ctes.append(
                "boxes_moved AS (UPDATE entity_geo g SET min_x = r.x0, max_x = r.x1, min_y = r.y0, max_y = r.y1,"
                " box = ST_MakeEnvelope(r.x0, r.y0, r.x1, r.y1, 4326), point = r.point, type = r.type"
                f" FROM {source} WHERE g.pk = ANY({p(moved_pks)}::bigint[]) AND g.pk = r.pk AND g.attr = r.attr)"
            )
        if stale_boxes:
            ctes.append(f"boxes_gone AS (DELETE FROM entity_geo WHERE pk = ANY({p(stale_boxes)}::bigint[]))")
        if values:
            source = recordset(p, values, "r", "pk bigint, attr text, num float8, txt text")
            ctes.append(
                "values_added AS (INSERT INTO attr_values (pk, attr, num, txt)"
                f" SELECT r.pk, r.attr, r.num, r.txt FROM {source})"
            )
        if boxes:
            source = recordset(p, boxes, "r", _BOX_COLUMNS)
            ctes.append(
                "boxes_added AS (INSERT INTO entity_geo (pk, attr, min_x, max_x, min_y, max_y, box, point, type)"
                " SELECT r.pk, r.attr, r.x0, r.x1, r.y0, r.y1, ST_MakeEnvelope(r.x0, r.y0, r.x1, r.y1, 4326),"
                f" r.point, r.type FROM {source})"
            )
        if retyped:  # the boxes stay; their rows carry the entity's first type (map clusters, grid.py)
            source = recordset(p, retyped, "r", "pk bigint, type text")
            ctes.append(f"boxes_retyped AS (UPDATE entity_geo g SET type = r.type FROM {source} WHERE g.pk = r.pk)")
        return ctes

    def _new(self) -> list[tuple[Key, _Slot]]:
        return [(key, s) for key, s in self.slots.items() if s.created is not None and s.entity is not None]


def recordset(p: Params, rows: list[dict[str, Any]], alias: str, columns: str, docs: list[str] | None = None) -> str:
    """A FROM item of `rows` sent as one JSON parameter (json_to_recordset), numbered by `n` in
    their order: asyncpg encodes array parameters element by element (an ABC isinstance test or two
    for each), which cost more than the rest of a single write's statement; one JSON text costs an
    orjson call. `docs`: one document per row (its stored JSON text), sent beside the recordset as
    a text[] and zipped with it by ROWS FROM as a last column `doc` (text: cast it to json where it
    is stored), so that PostgreSQL lexes each document once, by json_in; inside the recordset's JSON
    json_to_recordset lexed it and json_in again (2-4 KB each, most of a batch's 4 MB parameter).
    The LIMIT (the row count) is for the planner, which reads a set-returning function as 100 rows
    and would join them by scanning a whole table (temporal_entities, attr_values) instead of
    probing its index."""
    names = ", ".join(column.split()[0] for column in columns.split(", "))
    source = f"json_to_recordset({p(orjson.dumps(rows).decode())}::json) AS ({columns})"
    if docs is not None:
        source += f", unnest({p(docs)}::text[])"
        names += ", doc"
    limit = p(len(rows))
    return f"(SELECT * FROM ROWS FROM ({source}) WITH ORDINALITY AS {alias}({names}, n) LIMIT {limit}) AS {alias}"


def number(value: float | None) -> float | str | None:
    """A float8 for json_to_recordset: JSON has no infinities or NaN, whose text float8 reads."""
    return value if value is None or math.isfinite(value) else repr(value)


def _value(pk: int, row: tuple[str, float | None, str | None]) -> dict[str, Any]:
    return {"pk": pk, "attr": row[0], "num": number(row[1]), "txt": row[2]}


# a coordinate smaller than this (in degrees: 1e-300 of a degree is no distance) is indexed as 0:
# PostgreSQL refuses an underflow in float8 arithmetic, and the map's cell key (migration 16) takes
# radians() of a box's middle, so a subnormal coordinate (5e-324) made the write fail; the entity's
# document keeps the value as given
TINY_DEGREES = 1e-300


_BOX_COLUMNS = "pk bigint, attr text, x0 float8, x1 float8, y0 float8, y1 float8, point boolean, type text"


def _one_each(old: list[Any], new: list[Any]) -> bool:
    """Whether two geo_boxes answers box the same attributes, one box each, in the same order: each
    (pk, attr) row of entity_geo can then be rewritten in place."""
    attrs = [box[0] for box in new]
    return [box[0] for box in old] == attrs and len(set(attrs)) == len(attrs)


def _corner(value: float) -> float | str | None:
    return 0.0 if -TINY_DEGREES < value < TINY_DEGREES else number(value)


def _box(pk: int, box: tuple[str, tuple[float, float, float, float], bool], first_type: str) -> dict[str, Any]:
    corners = [_corner(c) for c in box[1]]
    return {
        "type": first_type,
        "pk": pk,
        "attr": box[0],
        "x0": corners[0],
        "x1": corners[1],
        "y0": corners[2],
        "y1": corners[3],
        "point": box[2],
    }


def _columns(entity: Entity) -> dict[str, Any]:
    """The row of `entities` beside its key and document: types and attrs, modifiedAt, the expiries."""
    return {
        "types": entity["type"],
        "attrs": list(entity["attrs"]),
        "modified_at": entity["modifiedAt"],
        "expires_at": own_expiry(entity),
        "next_expiry": next_expiry(entity),
    }


_ENTITY_COLUMNS = "types text[], attrs text[], modified_at text, expires_at text, next_expiry text"


def _docs(texts: list[str | None], p: Params) -> tuple[str, list[str] | None]:
    """The `doc` expression of the entity rows and the documents to zip with their recordset: one
    row's document (most writes) as a parameter of its own; else every row's beside the recordset
    (`recordset`'s `docs`). Either way PostgreSQL lexes each document once, by json_in."""
    docs: list[str] = []
    for text in texts:
        assert text is not None  # a row written has its document
        docs.append(text)
    if len(docs) == 1:
        return f"{p(docs[0])}::json", None
    return "r.doc::json", docs


def _update(rows: list[tuple[int, str | None, Entity]], p: Params) -> str:
    records = [{"pk": pk, **_columns(entity)} for pk, _, entity in rows]
    doc, docs = _docs([text for _, text, _ in rows], p)
    source = recordset(p, records, "r", f"pk bigint, {_ENTITY_COLUMNS}", docs)
    return (
        f"changed AS (UPDATE entities e SET doc = {doc}, types = r.types, attrs = r.attrs,"
        " modified_at = r.modified_at, expires_at = r.expires_at, next_expiry = r.next_expiry"
        f" FROM {source} WHERE e.pk = r.pk)"
    )


def _insert(rows: list[tuple[int, Key, str | None, Entity]], p: Params) -> str:
    records = [{"pk": pk, "tenant": key[0], "id": key[1], **_columns(entity)} for pk, key, _, entity in rows]
    doc, docs = _docs([text for _, _, text, _ in rows], p)
    source = recordset(p, records, "r", f"pk bigint, tenant text, id text, {_ENTITY_COLUMNS}", docs)
    return (
        "added AS (INSERT INTO entities (pk, tenant, id, doc, types, attrs, modified_at, expires_at, next_expiry)"
        f" SELECT r.pk, r.tenant, r.id, {doc}, r.types, r.attrs, r.modified_at, r.expires_at, r.next_expiry"
        f" FROM {source})"
    )
