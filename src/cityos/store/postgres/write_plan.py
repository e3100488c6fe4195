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
unindexed attribute touches `entities` alone). The side rows of a stored document always match it,
expired parts included, so the comparison is with the stored document, not its visible form.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import orjson

from cityos.entities.expiry import next_expiry, visible
from cityos.entities.model import Entity
from cityos.store.postgres.sql import Params
from cityos.store.side_rows import geo_boxes, indexed_values, own_expiry

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

    def stage(self, key: Key, after: Entity | None) -> None:
        """An operation's result: the entity's new document, or None to delete it."""
        slot = self.slots[key]
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
        values: list[tuple[int, str, float | None, str | None]] = []
        boxes: list[tuple[int, str, tuple[float, float, float, float], bool]] = []
        stale_values: list[int] = []
        stale_boxes: list[int] = []
        for pk, slot, entity in changed:
            assert slot.stored is not None
            new_values = list(indexed_values(entity))
            if new_values != list(indexed_values(slot.stored)):
                stale_values.append(pk)
                values.extend((pk, a, n, t) for a, n, t in new_values)
            new_boxes = geo_boxes(entity)
            if new_boxes != geo_boxes(slot.stored):
                stale_boxes.append(pk)
                boxes.extend((pk, a, b, point) for a, b, point in new_boxes)
        for pk, _, entity in added:
            values.extend((pk, a, n, t) for a, n, t in indexed_values(entity))
            boxes.extend((pk, a, b, point) for a, b, point in geo_boxes(entity))
        if stale_values:
            ctes.append(f"values_gone AS (DELETE FROM attr_values WHERE pk = ANY({p(stale_values)}::bigint[]))")
        if stale_boxes:
            ctes.append(f"boxes_gone AS (DELETE FROM entity_geo WHERE pk = ANY({p(stale_boxes)}::bigint[]))")
        if values:
            columns = [p([v[i] for v in values]) for i in range(4)]
            ctes.append(
                "values_added AS (INSERT INTO attr_values (pk, attr, num, txt)"
                f" SELECT * FROM unnest({columns[0]}::bigint[], {columns[1]}::text[], {columns[2]}::float8[],"
                f" {columns[3]}::text[]))"
            )
        if boxes:
            corners = ", ".join(f"{p([b[2][i] for b in boxes])}::float8[]" for i in range(4))
            ctes.append(
                "boxes_added AS (INSERT INTO entity_geo (pk, attr, min_x, max_x, min_y, max_y, box, point)"
                " SELECT r.pk, r.attr, r.x0, r.x1, r.y0, r.y1, ST_MakeEnvelope(r.x0, r.y0, r.x1, r.y1, 4326), r.point"
                f" FROM unnest({p([b[0] for b in boxes])}::bigint[], {p([b[1] for b in boxes])}::text[], {corners},"
                f" {p([b[3] for b in boxes])}::boolean[]) AS r(pk, attr, x0, x1, y0, y1, point))"
            )
        return ctes

    def _new(self) -> list[tuple[Key, _Slot]]:
        return [(key, s) for key, s in self.slots.items() if s.created is not None and s.entity is not None]


def _columns(entity: Entity) -> tuple[str, str, str, str | None, str | None]:
    """types and attrs as JSON arrays (unnest cannot carry arrays), modifiedAt, the expiries."""
    return (
        orjson.dumps(entity["type"]).decode(),
        orjson.dumps(list(entity["attrs"])).decode(),
        entity["modifiedAt"],
        own_expiry(entity),
        next_expiry(entity),
    )


_ARRAY = "ARRAY(SELECT x FROM json_array_elements_text(r.{c}) WITH ORDINALITY AS j(x, n) ORDER BY n)"


def _update(rows: list[tuple[int, str | None, Entity]], p: Params) -> str:
    columns = [(pk, text, *_columns(entity)) for pk, text, entity in rows]
    arrays = [p([row[i] for row in columns]) for i in range(7)]
    return (
        f"changed AS (UPDATE entities e SET doc = r.doc, types = {_ARRAY.format(c='types')},"
        f" attrs = {_ARRAY.format(c='attrs')}, modified_at = r.modified_at, expires_at = r.expires_at,"
        f" next_expiry = r.next_expiry FROM unnest({arrays[0]}::bigint[], {arrays[1]}::json[], {arrays[2]}::json[],"
        f" {arrays[3]}::json[], {arrays[4]}::text[], {arrays[5]}::text[], {arrays[6]}::text[])"
        " AS r(pk, doc, types, attrs, modified_at, expires_at, next_expiry) WHERE e.pk = r.pk)"
    )


def _insert(rows: list[tuple[int, Key, str | None, Entity]], p: Params) -> str:
    columns = [(pk, key[0], key[1], text, *_columns(entity)) for pk, key, text, entity in rows]
    arrays = [p([row[i] for row in columns]) for i in range(9)]
    return (
        "added AS (INSERT INTO entities (pk, tenant, id, doc, types, attrs, modified_at, expires_at, next_expiry)"
        f" SELECT r.pk, r.tenant, r.id, r.doc, {_ARRAY.format(c='types')}, {_ARRAY.format(c='attrs')},"
        f" r.modified_at, r.expires_at, r.next_expiry FROM unnest({arrays[0]}::bigint[], {arrays[1]}::text[],"
        f" {arrays[2]}::text[], {arrays[3]}::json[], {arrays[4]}::json[], {arrays[5]}::json[], {arrays[6]}::text[],"
        f" {arrays[7]}::text[], {arrays[8]}::text[])"
        " AS r(pk, tenant, id, doc, types, attrs, modified_at, expires_at, next_expiry))"
    )
