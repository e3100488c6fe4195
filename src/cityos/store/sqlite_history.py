"""The compact row of one history instance on SQLite (layout 1), and the migration to it.

An attribute instance is stored as typed columns, not as its JSON document: the attribute IRI, the
datasetId and the instance's shape (its attribute type and the order of its members) are interned
as integers (temporal_names), the five times are integer microseconds, a number is the REAL `num`
(`vkind` says int or float), any other value its JSON text `vtext`. What the columns cannot give
back exactly (a time written in another format, an object value, extra members such as unitCode)
stays in `rest`, a small orjson object, usually NULL. The instanceId is derived from the row's AUTOINCREMENT key and
the file's random prefix, so it costs nothing to make or store; an instanceId that came from
elsewhere (a file of the old layout) is kept in `instance_id`. A long value text that repeats is
kept once in `temporal_values` and the row refers to it (`vref`, layout 5 of sqlite_layout.py;
`Names.value_ref`).

The rows live in `temporal_rows`; the view `temporal_instances` shows them with the old layout's
columns (IRIs, datasetIds, types and instanceIds as text; no document), for SQL written against it.
Files written by CityOS before this layout (PRAGMA user_version 0, the document-per-row table
temporal_instances) are migrated when opened, in one transaction (`migrate`).
"""

from __future__ import annotations

import functools
import math
import secrets
import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from cityos.clock import second_text
from cityos.entities.model import VALUE_MEMBER, Instance
from cityos.entities.values import parse_datetime
from cityos.temporal.query import to_micros

LAYOUT = 1  # PRAGMA user_version of a file with this layout
TIME_KEYS = ("observedAt", "createdAt", "modifiedAt", "deletedAt", "expiresAt")
INSTANCE_PREFIX = "urn:ngsi-ld:Instance:"
# how the value member is stored (vkind): absent, an int in num (its text is CAST in SQL), a float
# in num (and its JSON text in vtext), exactly the JSON text in vtext, or in rest (vtext then holds
# its key-sorted text, for distinct counts and min/max)
ABSENT, INT, FLOAT, TEXT, IN_REST = 0, 1, 2, 3, 4
EXACT_INT = 2**53  # ints up to this are exact as REAL
INSTANCE_COLUMNS = (
    "epk, attr, dataset, shape, observed_us, created_us, modified_us, deleted_us, expires_us, num, vtext, vref,"
    " vkind, rest, instance_id"
)
INSERT_INSTANCE = f"INSERT INTO temporal_rows ({INSTANCE_COLUMNS}) VALUES ({', '.join('?' * 15)})"
VTEXT, VREF = 10, 11  # their places in an INSERT_INSTANCE row
# the columns decode() reads, after the pk (prefix them with a table alias as needed)
DECODED = (
    *("shape", "dataset", "observed_us", "created_us", "modified_us", "deleted_us", "expires_us"),
    *("num", "vtext", "vref", "vkind", "rest", "instance_id"),
)
# a value's JSON text this long or longer is stored once in temporal_values when it is seen again
# (Names.value_ref); shorter ones cost less inline than a reference and its row
VALUE_MIN = 24
VALUES_SCHEMA = "CREATE TABLE IF NOT EXISTS temporal_values (id INTEGER PRIMARY KEY, value TEXT NOT NULL UNIQUE)"
# the value text of a row `r` in SQL, wherever it is kept
VALUE_TEXT = (
    "CASE WHEN {r}.vref IS NULL THEN {r}.vtext ELSE (SELECT value FROM temporal_values WHERE id = {r}.vref) END"
)
LAYOUT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS temporal_names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)""",
    """CREATE TABLE IF NOT EXISTS temporal_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS temporal_rows (
    pk INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the instanceId is made from it
    epk INTEGER NOT NULL,               -- temporal_entities.pk: the tenant and entity
    attr INTEGER NOT NULL,              -- temporal_names.id of the attribute IRI
    dataset INTEGER NOT NULL DEFAULT 0, -- temporal_names.id of the datasetId; 0 is the default instance
    shape INTEGER NOT NULL,             -- temporal_names.id of "{type} {member order}" (encode)
    observed_us INTEGER, created_us INTEGER, modified_us INTEGER, deleted_us INTEGER, expires_us INTEGER,
                                        -- created_us is modified_us - createdAt when there is a modified_us
    num REAL,                           -- the value when it is a number
    vtext TEXT,                         -- any other value as JSON text (keys sorted)
    vkind INTEGER NOT NULL DEFAULT 0,   -- where the value member is (sqlite_history.py)
    rest BLOB,                          -- the members the columns cannot give back exactly, or NULL
    instance_id TEXT,                   -- an instanceId not derived from pk (kept from an older file)
    vref INTEGER                        -- temporal_values.id of the value's text when vtext is NULL (layout 5)
)""",
    VALUES_SCHEMA,
    """CREATE INDEX IF NOT EXISTS temporal_series_time ON temporal_rows (epk, attr, observed_us)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS temporal_instance_ids ON temporal_rows (instance_id)
    WHERE instance_id IS NOT NULL""",
    # the columns of the old layout, names and instanceIds spelled out, for SQL written against it
    """CREATE VIEW IF NOT EXISTS temporal_instances AS SELECT
    r.pk, r.epk, a.name AS attr, COALESCE(d.name, '') AS dataset,
    COALESCE(r.instance_id, (SELECT value FROM temporal_meta WHERE key = 'instance_prefix') || printf('%012x', r.pk))
        AS instance_id,
    substr(s.name, 1, instr(s.name, ' ') - 1) AS kind,
    r.observed_us, CASE WHEN r.modified_us IS NULL THEN r.created_us ELSE r.modified_us - r.created_us END
        AS created_us, r.modified_us, r.deleted_us, r.expires_us, r.num,
    COALESCE(r.vtext, (SELECT value FROM temporal_values WHERE id = r.vref),
        CASE WHEN r.vkind = 1 THEN CAST(CAST(r.num AS INTEGER) AS TEXT) END) AS vtext
    FROM temporal_rows r JOIN temporal_names a ON a.id = r.attr JOIN temporal_names s ON s.id = r.shape
    LEFT JOIN temporal_names d ON d.id = r.dataset""",
)


class Names:
    """Interned names (attribute IRIs, datasetIds, attribute types) <-> integers. Ids are never
    reused or renamed once committed. The readers share one instance (they only see committed
    rows); the writer has its own, which holds what it learns inside a transaction apart
    (`pending`) until that transaction commits (`committed`), and forgets it on a rollback."""

    def __init__(self, *, writer: bool = False) -> None:
        self.writer = writer
        self.ids: dict[str, int] = {}
        self.names: dict[int, str] = {}
        self.pending: dict[str, int] = {}
        self.pending_names: dict[int, str] = {}
        # the writer's encoded history rows of this transaction, by attribute and instance JSON
        # (encode_row): they hold ids that may be pending, so they go when the pending names go
        self.rows: dict[tuple[str, bytes], tuple[Any, ...]] = {}
        # long values stored once (temporal_values): the writer's ids by text (committed, and made in
        # this transaction), the texts it has seen once (their hashes, with the entity), everyone's texts by id
        self.value_ids: dict[str, int] = {}
        self.pending_values: dict[str, int] = {}
        self.seen: dict[int, int] = {}
        self.texts: dict[int, str] = {}
        # a temporal entity's `types` column -> its type IRIs, when every id in it is committed (so
        # never renamed): the writer reads the column for each history write of an entity
        self.type_lists: dict[bytes, list[str]] = {}

    def _learn(self, name: str, number: int) -> None:
        if self.writer:
            self.pending[name] = number
            self.pending_names[number] = name
        else:
            self.ids[name] = number
            self.names[number] = name

    def find(self, connection: sqlite3.Connection, name: str) -> int:
        """The id of a name as this connection sees it, -1 (matches nothing) if it is unknown."""
        found = self.ids.get(name)
        if found is None:
            found = self.pending.get(name)
        if found is None:
            row = connection.execute("SELECT id FROM temporal_names WHERE name = ?", (name,)).fetchone()
            if row is None:
                return -1
            found = row[0]
            self._learn(name, found)
        return found

    def id(self, connection: sqlite3.Connection, name: str) -> int:
        """The id of a name, created if new (writer thread, inside its transaction)."""
        found = self.find(connection, name)
        if found < 0:
            made = connection.execute("INSERT INTO temporal_names (name) VALUES (?)", (name,)).lastrowid
            assert made is not None
            found = made
            self._learn(name, found)
        return found

    def name(self, connection: sqlite3.Connection, number: int) -> str:
        found = self.names.get(number)
        if found is None:
            found = self.pending_names.get(number)
        if found is None:
            found = connection.execute("SELECT name FROM temporal_names WHERE id = ?", (number,)).fetchone()[0]
            self._learn(found, number)
        return found

    def value_ref(self, connection: sqlite3.Connection, text: str, epk: int) -> int | None:
        """The temporal_values id of a long value's text (writer thread, inside its transaction), or
        None to store it inline: a text stays in the row until this process sees it in a second
        entity; from then on it is stored once and referred to. A text seen once is remembered by its
        hash (and entity) among the last SEEN_LIMIT, so a value of one entity only (its name, its
        position, resent by every refresh) costs no row and no lookup, and the memory stays bounded
        whatever the file holds."""
        found = self.value_ids.get(text) or self.pending_values.get(text)
        if found is not None:
            return found
        key = hash(text)
        first = self.seen.get(key)
        if first is None or first == epk:
            if first is None:
                if len(self.seen) >= SEEN_LIMIT:
                    self.seen.clear()
                self.seen[key] = epk
            return None
        row = connection.execute("SELECT id FROM temporal_values WHERE value = ?", (text,)).fetchone()
        made = (
            row[0]
            if row is not None
            else connection.execute("INSERT INTO temporal_values (value) VALUES (?)", (text,)).lastrowid
        )
        assert made is not None
        self.pending_values[text] = made
        return int(made)

    def value_text(self, connection: sqlite3.Connection, number: int) -> str:
        """The text of a stored value. Readers keep the last TEXTS_LIMIT they read (ids are never
        reused: prune_values never deletes the highest); the writer may see a row of its own
        uncommitted transaction, so it does not keep them."""
        found = self.texts.get(number)
        if found is None:
            found = connection.execute("SELECT value FROM temporal_values WHERE id = ?", (number,)).fetchone()[0]
            if not self.writer:
                if len(self.texts) >= TEXTS_LIMIT:
                    self.texts.clear()
                self.texts[number] = found
        return found

    def forget_values(self, removed: set[int]) -> None:
        """Long values deleted from temporal_values (their last row went): the writer must not refer
        to them again. Its encoded rows of this transaction may hold them too. Ids are not reused
        (prune_values), so the readers' texts by id stay right."""
        self.value_ids = {text: number for text, number in self.value_ids.items() if number not in removed}
        self.pending_values = {text: number for text, number in self.pending_values.items() if number not in removed}
        self.rows = {}

    def committed(self) -> None:
        self.ids.update(self.pending)
        self.names.update(self.pending_names)
        if len(self.value_ids) + len(self.pending_values) > TEXTS_LIMIT:
            self.value_ids.clear()
        self.value_ids.update(self.pending_values)
        self.rolled_back()

    def rolled_back(self) -> None:
        self.pending = {}
        self.pending_names = {}
        self.pending_values = {}
        self.rows = {}


SEEN_LIMIT = 16_384  # hashes of long texts seen in one entity so far (Names.value_ref): about 1.5 MB
TEXTS_LIMIT = 4096  # long texts kept by id (readers) and by text (the writer)


def _canonical(micros: int) -> str:
    """How CityOS writes a time (entities/values.py now()): UTC, milliseconds, or microseconds when
    there are any."""
    second, fraction = divmod(micros, 1_000_000)
    if fraction % 1000 == 0:
        return f"{second_text(second)}.{fraction // 1000:03d}Z"
    return f"{second_text(second)}.{fraction:06d}Z"


def _seconds(micros: int) -> str:
    """A whole second as devices often write it: UTC, no fraction."""
    return second_text(micros // 1_000_000) + "Z"


OTHER, CANONICAL, SECONDS = 0, 1, 2  # how a time string is written (TimeCodec.encode)


class TimeCodec:
    """Time strings <-> microseconds, with the string kept only when neither the canonical form of
    its microseconds nor their whole-second form would give it back. Both directions are memoised:
    a batch shares its stamps."""

    LIMIT = 50_000

    def __init__(self) -> None:
        self.parsed: dict[str, tuple[int, int]] = {}
        self.formatted: dict[int, str] = {}

    def encode(self, value: str) -> tuple[int, int]:
        """(microseconds, CANONICAL or SECONDS if that form is this very string, else OTHER)."""
        found = self.parsed.get(value)
        if found is None:
            micros = to_micros(parse_datetime(value, "timestamp"))
            if self.decode(micros) == value:
                form = CANONICAL
            elif micros % 1_000_000 == 0 and _seconds(micros) == value:
                form = SECONDS
            else:
                form = OTHER
            found = (micros, form)
            if len(self.parsed) >= self.LIMIT:
                self.parsed.clear()
            self.parsed[value] = found
        return found

    def decode(self, micros: int) -> str:
        found = self.formatted.get(micros)
        if found is None:
            found = _canonical(micros)
            if len(self.formatted) >= self.LIMIT:
                self.formatted.clear()
            self.formatted[micros] = found
        return found

    def decode_seconds(self, micros: int) -> str:
        found = self.formatted.get(-micros - 1)  # apart from the canonical forms (-1: micros may be 0)
        if found is None:
            found = _seconds(micros)
            if len(self.formatted) >= self.LIMIT:
                self.formatted.clear()
            self.formatted[-micros - 1] = found
        return found


def _key_order(value: Any) -> Any:
    """The order of an object's keys as a template: an object of the same keys in the same order, each
    mapped to its member's template (0 for a value whose objects, if any, are in key order). None when
    a list holds an object out of key order (the template would have to spell out its place)."""
    if type(value) is dict:
        template = {}
        for key, member in value.items():
            inner = _key_order(member)
            if inner is None:
                return None
            template[key] = inner
        return template
    if type(value) is list and orjson.dumps(value) != orjson.dumps(value, option=orjson.OPT_SORT_KEYS):
        return None
    return 0


def _reordered(value: Any, template: Any) -> Any:
    """A key-sorted value given back its keys' order (_key_order's template)."""
    if type(template) is dict and type(value) is dict:
        return {key: _reordered(value[key], inner) for key, inner in template.items()}
    return value


@functools.lru_cache(maxsize=1024)
def _template(text: str) -> Any:
    return orjson.loads(text)


TIME_LETTERS = "ocmxe"  # a time in the canonical form; the capital letter: in the whole-second form
SECOND_LETTERS = TIME_LETTERS.upper()
CODE_TIMES = {code: index for index, code in enumerate(TIME_LETTERS)}
SECOND_TIMES = {code: index for index, code in enumerate(SECOND_LETTERS)}
CREATED, MODIFIED = 1, 2  # their indexes in TIME_KEYS and the stamps
ORDER_LIMIT = 200  # longest key-order template interned in a shape (_key_order)
TYPE, DATASET, INSTANCE_ID = -1, -2, -3
SLOTS = {key: index for index, key in enumerate(TIME_KEYS)} | {"type": TYPE, "datasetId": DATASET, "instanceId": -3}


def encode(
    connection: sqlite3.Connection, names: Names, times: TimeCodec, epk: int, attr: str, instance: Instance
) -> tuple[Any, ...]:
    """The INSERT_INSTANCE parameters of one instance. Its shape (interned like a name) is its
    attribute type and the order of its members, one letter each: t type, v the value member, d
    datasetId, o c m x e the times (O C M X E: written in whole seconds), r the next member of `rest`;
    then, for an object value whose keys are not in sorted order, that order (_key_order), so the
    value is stored once, key-sorted. createdAt is stored as its distance to modifiedAt when both
    are there (0 bytes when they are equal, as they are for every attribute a write replaces)."""
    rest: dict[str, Any] = {}
    order: list[str] = []
    stored = ABSENT
    declared = instance.get("type")
    kind = declared if isinstance(declared, str) and declared else "Property"
    member = VALUE_MEMBER.get(kind, "value")
    dataset = 0
    stamps: list[int | None] = [None, None, None, None, None]
    num = vtext = None
    explicit = None
    keys = ""
    parsed = times.parsed  # the memo of times.encode, read first without a call
    for key, value in instance.items():
        if key == member:
            kind_of_value = type(value)
            if kind_of_value is int and -EXACT_INT <= value <= EXACT_INT:
                num, stored = float(value), INT
            elif kind_of_value is float and (value or math.copysign(1.0, value) > 0):
                # its shortest text is not computable in SQL: kept for min/max and distinct counts
                num, vtext, stored = value, orjson.dumps(value).decode(), FLOAT
            elif kind_of_value is dict or kind_of_value is list:
                text = orjson.dumps(value)
                ordered = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
                vtext = ordered.decode()
                if text != ordered:  # keys out of order: their order goes in the shape, or the value in rest
                    template = _key_order(value)
                    keys = orjson.dumps(template).decode() if template is not None else ""
                    if not keys or len(keys) > ORDER_LIMIT:
                        keys = ""
                        stored = IN_REST
                        rest[key] = value
                        order.append("r")
                        continue
                stored = TEXT
            else:  # text, true/false, a huge int or -0.0: their JSON text gives them back
                if kind_of_value is int or kind_of_value is float:
                    num = float(value)
                vtext, stored = orjson.dumps(value).decode(), TEXT
            order.append("v")
            continue
        slot = SLOTS.get(key)
        if slot is not None:
            if slot >= 0:
                if type(value) is str:
                    micros, form = parsed.get(value) or times.encode(value)
                    stamps[slot] = micros
                    if form:
                        order.append(TIME_LETTERS[slot] if form == CANONICAL else SECOND_LETTERS[slot])
                        continue
            elif slot == TYPE:
                if value is declared and kind is declared:
                    order.append("t")
                    continue
            elif slot == DATASET:
                if type(value) is str and value:
                    dataset = names.id(connection, value)
                    order.append("d")
                    continue
            else:  # instanceId: derived from the row, or kept in its own column
                explicit = value
                continue
        rest[key] = value
        order.append("r")
    created, modified = stamps[CREATED], stamps[MODIFIED]
    if created is not None and modified is not None:
        stamps[CREATED] = modified - created
    vref = None
    if vtext is not None and num is None and len(vtext) >= VALUE_MIN:
        vref = names.value_ref(connection, vtext, epk)
        if vref is not None:
            vtext = None
    shape = f"{kind} {''.join(order)} {keys}" if keys else f"{kind} {''.join(order)}"
    known = names.ids  # committed names first, without a call (ids start at 1)
    return (
        epk,
        known.get(attr) or names.id(connection, attr),
        dataset,
        known.get(shape) or names.id(connection, shape),
        *stamps,
        num,
        vtext,
        vref,
        stored,
        orjson.dumps(rest) if rest else None,
        explicit,
    )


ROWS_LIMIT = 4096  # encoded rows remembered per transaction (encode_row)


def encode_row(
    connection: sqlite3.Connection, names: Names, times: TimeCodec, epk: int, attr: str, instance: Instance
) -> tuple[Any, ...]:
    """encode, done once per transaction for each distinct (attribute, instance): a batch's entities
    share their unchanged attributes' instances member for member (the same description, category,
    unit; the batch's one createdAt and modifiedAt), and the row of each is the same but for its
    entity."""
    try:
        key = (attr, orjson.dumps(instance))
    except orjson.JSONEncodeError:  # a value orjson cannot write (an int beyond 64 bits)
        return encode(connection, names, times, epk, attr, instance)
    rows = names.rows
    found = rows.get(key)
    if found is None:
        row = encode(connection, names, times, epk, attr, instance)
        text = row[VTEXT]
        # a long value seen for the first time stays inline in this row only: the next one refers to it
        if len(rows) < ROWS_LIMIT and (text is None or len(text) < VALUE_MIN or row[VTEXT - 1] is not None):
            rows[key] = row[1:]
        return row
    return (epk, *found)


def kind_of(shape: str) -> str:
    """The attribute type of a shape name."""
    return shape.partition(" ")[0]


def decode(
    connection: sqlite3.Connection, names: Names, times: TimeCodec, prefix: str, pk: int, row: Sequence[Any]
) -> Instance:
    """The instance (with its instanceId last) from a row of the DECODED columns."""
    shape, dataset, observed, created, modified, deleted, expires, num, vtext, vref, stored, rest, explicit = row
    if vref is not None:
        vtext = names.value_text(connection, vref)
    kind, _, order = names.name(connection, shape).partition(" ")
    order, _, keys = order.partition(" ")
    if created is not None and modified is not None:
        created = modified - created
    stamps = (observed, created, modified, deleted, expires)
    others = iter(orjson.loads(rest).items()) if rest is not None else iter(())
    instance: Instance = {}
    for code in order:
        if code == "r":
            key, value = next(others)
            instance[key] = value
        elif code == "t":
            instance["type"] = kind
        elif code == "v":
            member = VALUE_MEMBER.get(kind, "value")
            if stored == INT:
                instance[member] = int(num)
            elif stored == FLOAT:
                instance[member] = float(num)
            elif keys:
                instance[member] = _reordered(orjson.loads(vtext), _template(keys))
            else:
                instance[member] = orjson.loads(vtext)
        elif code == "d":
            instance["datasetId"] = names.name(connection, dataset)
        elif code in CODE_TIMES:
            index = CODE_TIMES[code]
            instance[TIME_KEYS[index]] = times.decode(stamps[index])
        else:
            index = SECOND_TIMES[code]
            instance[TIME_KEYS[index]] = times.decode_seconds(stamps[index])
    instance["instanceId"] = explicit if explicit is not None else f"{prefix}{pk:012x}"
    return instance


def instance_prefix(connection: sqlite3.Connection) -> str:
    """The file's instanceId prefix (a random UUID's first 24 hex digits; the pk makes the last 12),
    made with the layout (`migrate`)."""
    row = connection.execute("SELECT value FROM temporal_meta WHERE key = 'instance_prefix'").fetchone()
    if row is not None:
        return str(row[0])
    digits = secrets.token_hex(12)
    prefix = f"{INSTANCE_PREFIX}{digits[:8]}-{digits[8:12]}-7{digits[13:16]}-8{digits[17:20]}-"
    connection.execute("INSERT INTO temporal_meta VALUES ('instance_prefix', ?)", (prefix,))
    return prefix


def pk_of(prefix: str, instance_id: str) -> int | None:
    """The row key an instanceId of this file names, None if it was not made from one."""
    if not instance_id.startswith(prefix) or len(instance_id) != len(prefix) + 12:
        return None
    try:
        return int(instance_id[len(prefix) :], 16)
    except ValueError:
        return None


def file_layout(connection: sqlite3.Connection, known: int, what: str) -> int:
    """The file's layout (PRAGMA user_version); a layout newer than `known` is refused, since a
    newer CityOS wrote it and this one would misread it."""
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > known:
        raise RuntimeError(f"{what} of this file is {version}; this CityOS knows {known} (a newer CityOS wrote it)")
    return version


def migrate(connection: sqlite3.Connection) -> int:
    """Bring a file to this layout inside one transaction; returns how many history instances were
    converted. Called on the writer connection before anything else touches the file."""
    version = file_layout(connection, LAYOUT, "the history layout")
    if version == LAYOUT:
        return 0
    connection.execute("BEGIN IMMEDIATE")
    try:
        old = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'temporal_instances'"
        ).fetchone()
        moved = 0
        if old is not None:
            connection.execute("ALTER TABLE temporal_instances RENAME TO temporal_instances_v0")
            for index in ("temporal_observed", "temporal_created", "temporal_modified", "temporal_deleted"):
                connection.execute(f"DROP INDEX IF EXISTS {index}")
            connection.execute("DROP INDEX IF EXISTS temporal_series")
        for statement in LAYOUT_SCHEMA:
            connection.execute(statement)
        instance_prefix(connection)  # made now, so opening the file later only reads it
        if old is not None:
            moved = _convert(connection)
            connection.execute("DROP TABLE temporal_instances_v0")
        connection.execute(f"PRAGMA user_version = {LAYOUT}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return moved


PRUNE_CHUNK = 500  # ids per statement (SQLite's bound-parameter limit is far above)


def prune_values(connection: sqlite3.Connection, names: Names, refs: set[int]) -> int:
    """Delete the long values of `refs` that no history row refers to any more (their last row was
    deleted in this transaction); returns how many went. The value of the highest id is kept, so
    SQLite never gives its id (max + 1) to another value: ids are never reused (schema version 6).
    That kept value's id is noted (temporal_meta `value_kept`) and tried again by the next prune."""
    if not refs:
        return 0
    kept = connection.execute("SELECT value FROM temporal_meta WHERE key = 'value_kept'").fetchone()
    candidates = sorted(refs | {int(kept[0])} if kept is not None else refs)
    removed: set[int] = set()
    for start in range(0, len(candidates), PRUNE_CHUNK):
        chunk = candidates[start : start + PRUNE_CHUNK]
        removed.update(
            row[0]
            for row in connection.execute(
                f"DELETE FROM temporal_values WHERE id IN ({','.join('?' * len(chunk))})"
                " AND id < (SELECT max(id) FROM temporal_values)"
                f" AND NOT EXISTS ({_REFERRED}) RETURNING id",
                chunk,
            )
        )
    top = connection.execute(
        f"SELECT id FROM temporal_values WHERE id = (SELECT max(id) FROM temporal_values) AND NOT EXISTS ({_REFERRED})"
    ).fetchone()
    if top is not None and top[0] in candidates:
        connection.execute("INSERT OR REPLACE INTO temporal_meta (key, value) VALUES ('value_kept', ?)", (str(top[0]),))
    elif kept is not None:
        connection.execute("DELETE FROM temporal_meta WHERE key = 'value_kept'")
    if removed:
        names.forget_values(removed)
    return len(removed)


_REFERRED = "SELECT 1 FROM temporal_rows r WHERE r.vref = temporal_values.id"


def relative_created(connection: sqlite3.Connection) -> None:
    """Rows of layouts 1 and 2 hold createdAt itself: make it the distance to modifiedAt (encode), and
    the view compute it back (inside the caller's transaction)."""
    connection.execute(
        "UPDATE temporal_rows SET created_us = modified_us - created_us"
        " WHERE created_us IS NOT NULL AND modified_us IS NOT NULL"
    )
    connection.execute("DROP VIEW IF EXISTS temporal_instances")
    connection.execute(LAYOUT_SCHEMA[-1])


def _convert(connection: sqlite3.Connection) -> int:
    """Copy every instance of the old layout (its document, times and instanceId) into the new
    table, in its order (pk kept, so insertion order and ties stay as they were)."""
    names, times = Names(writer=True), TimeCodec()
    rows = connection.execute("SELECT pk, epk, attr, dataset, instance_id, doc FROM temporal_instances_v0 ORDER BY pk")
    moved = 0
    chunk: list[tuple[Any, ...]] = []
    insert = f"INSERT INTO temporal_rows (pk, {INSTANCE_COLUMNS}) VALUES ({', '.join('?' * 16)})"
    for pk, epk, attr, dataset, instance_id, doc in rows:
        instance = orjson.loads(doc)
        if dataset and "datasetId" not in instance:
            instance["datasetId"] = dataset
        instance["instanceId"] = instance_id
        chunk.append((pk, *encode(connection, names, times, epk, attr, instance)))
        moved += 1
        if len(chunk) >= 5000:
            connection.executemany(insert, chunk)
            chunk = []
    if chunk:
        connection.executemany(insert, chunk)
    return moved
