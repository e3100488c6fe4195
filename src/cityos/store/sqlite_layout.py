"""The entity tables' layout on SQLite (layout 4): interned side tables, compressed documents, and
the migration of older files to it. Layout 3 is layout 2 with the history's createdAt stored as its
distance to modifiedAt, whole-second times and object values' key orders in the shapes
(sqlite_history.encode): files of layout 2 and older are converted when opened. Layout 4 adds the
audit trail's compact rows (store/sqlite_audit.py), readable with those of before: nothing converted.

Side tables hold integers, not IRIs: entity types and attribute IRIs are interned in the same
`temporal_names` table the history uses (store/sqlite_history.py `Names`), so a side row is a few
bytes instead of a 40-80 byte IRI repeated in the table and in each of its indexes. The tables are
WITHOUT ROWID and clustered by the key their writes and probes use: `attr_values` by (pk, attr,
seq), so rewriting one attribute's rows or probing a candidate is a range of the primary key, and
no separate pk index is needed.

Documents are zstd frames compressed with a dictionary trained on stored Smart Data Models
documents (data/documents-1.zdict, benchmarks/codec_dictionary.py), behind a one-byte format tag
that names the codec and the dictionary: an OffStreetParking document of 2.3 KB of JSON takes about
310 bytes, so several fit on a page instead of one. Documents written before (issue 15's tenth
pass) are raw DEFLATE with DICTIONARY (tag DEFLATED): still read as they are, and written in the
new format when their entity is; a document that starts with `{` is plain JSON (files of before
layout 2).
SQL reads a document's JSON through the function `doc_json` (registered on every connection).
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator
from importlib.resources import files
from typing import Any, cast

import orjson
import zstandard

from cityos.entities.model import Entity
from cityos.store.side_rows import attr_rows
from cityos.store.sqlite_history import LAYOUT as HISTORY_LAYOUT
from cityos.store.sqlite_history import LAYOUT_SCHEMA, VALUES_SCHEMA, Names, file_layout, relative_created
from cityos.store.sqlite_history import migrate as migrate_history

LAYOUT = 5  # PRAGMA user_version of a file with this layout (1 is the compact history alone, 2 before
ENTITIES_LAYOUT = 2  # the history's createdAt was relative): the side tables and documents of layout 2
RELATIVE_CREATED_LAYOUT = 3  # the history's createdAt relative to modifiedAt
# 4: the geo tables' attribute interned (entity_geo_attrs, entity_geo_walk: _intern_geo) and the audit
# trail's compact hashes (store/sqlite_audit.py; nothing to convert, its view reads the rows of before,
# but an older CityOS would misread the new rows, so it must refuse the file)
# 5: long history values stored once (temporal_values, temporal_rows.vref) and temporal_types interned
# (_value_refs); the rows of before stay valid (vref NULL)
SIDE_SCHEMA = """
CREATE TABLE IF NOT EXISTS attr_values (  -- the values q compares (side_rows.attr_rows), seq-th of the attribute
    pk INTEGER NOT NULL, attr INTEGER NOT NULL, seq INTEGER NOT NULL, num REAL, txt TEXT,
    PRIMARY KEY (pk, attr, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attr_values_num ON attr_values (attr, num) WHERE num IS NOT NULL;
CREATE INDEX IF NOT EXISTS attr_values_txt ON attr_values (attr, txt) WHERE txt IS NOT NULL;
CREATE TABLE IF NOT EXISTS entity_types (
    type INTEGER NOT NULL, pk INTEGER NOT NULL, PRIMARY KEY (type, pk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_types_pk ON entity_types (pk);
CREATE TABLE IF NOT EXISTS entity_attrs (
    attr INTEGER NOT NULL, pk INTEGER NOT NULL, PRIMARY KEY (attr, pk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entity_attrs_pk ON entity_attrs (pk);
"""
# Parameters that are None or bytes are not of the types sqlite3 binds without asking its adapters
# (int, float, str, bytearray): for each one it looks for an adapter, then for `__adapt__` on its
# protocol type, whose miss formats an AttributeError message (about 2,000 instructions; 9% of the
# writer thread's instructions in a batch upsert: history rows are mostly NULLs). Registered
# adapters that give the object itself back are found by one dict lookup. Process-wide, and an
# identity: no value binds differently.
sqlite3.register_adapter(type(None), cast("Callable[[None], None]", {}.get))  # {}.get(None) is None, in C
sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b for exact bytes

# the id of one interned name, and of several, inside SQL (a name never interned matches nothing)
NAME_ID = "(SELECT id FROM temporal_names WHERE name = ?)"


def name_ids(count: int) -> str:
    return f"(SELECT id FROM temporal_names WHERE name IN ({','.join('?' * count)}))"


# -- documents ---------------------------------------------------------------------------------------
# A stored document's first byte names its format, so files keep documents of every format written
# before and a later dictionary gets a tag of its own beside these (never change a tag's meaning):
DEFLATED = b"\x01"  # raw DEFLATE with DICTIONARY (written until issue 15's tenth pass; read, not written)
ZSTD_1 = b"\x02"  # a magicless zstd frame (content size, no checksum, no dictionary id) with ZSTD_1_DICTIONARY
# the strings a deflated document is made of; DEFLATE finds matches cheapest near the end
DICTIONARY = (
    b'"type":"Polygon","coordinates":[[['
    b'"type":"LineString","coordinates":[['
    b'"type":"ListRelationship","objectList":['
    b'"type":"ListProperty","valueList":['
    b'"type":"JsonProperty","json":'
    b'"type":"VocabProperty","vocab":"'
    b'"type":"LanguageProperty","languageMap":{'
    b'"unitCode":"'
    b'"expiresAt":"'
    b'"deletedAt":"'
    b'"datasetId":"urn:ngsi-ld:'
    b'"https://uri.etsi.org/ngsi-ld/observationSpace":[{"type":"GeoProperty","value":{"type":"Point","coordinates":['
    b'"https://uri.etsi.org/ngsi-ld/operationSpace":[{"type":"GeoProperty","value":{"type":"Point","coordinates":['
    b"https://schema.org/"
    b"https://smartdatamodels.org/dataModel."
    b"http://purl.org/dc/terms/description"
    b'{"type":"Relationship","object":"urn:ngsi-ld:'
    b'"observedAt":"'
    b'"https://uri.etsi.org/ngsi-ld/location":[{"type":"GeoProperty","value":{"type":"Point","coordinates":['
    b'{"id":"urn:ngsi-ld:","type":["https://uri.etsi.org/ngsi-ld/default-context/"],"createdAt":"'
    b'","modifiedAt":"","attrs":{"https://uri.etsi.org/ngsi-ld/default-context/'
    b'":[{"type":"Property","value":'
    b'","createdAt":"","modifiedAt":"'
    b'"}],"https://uri.etsi.org/ngsi-ld/default-context/'
)
# zstd's dictionary of tag ZSTD_1: 16 KiB trained (COVER, fixed seed and parameters) on the stored
# documents of the Smart Data Models examples; how it was made: data/README.md. Its SHA-256 is
# checked by tests/test_entity_layout.py: a changed file would misread every document written with it.
ZSTD_1_DICTIONARY = zstandard.ZstdCompressionDict(files("cityos.store").joinpath("data/documents-1.zdict").read_bytes())
# Level 1: the writer packs a whole document for every change. Level 3 makes the benchmark's
# documents 6% smaller for the same instructions, but took about 20% longer (larger tables, more cache
# misses; docs/performance.md, issue 15 tenth pass). Magicless frames save the 4-byte magic number;
# the tag says what follows.
_PARAMETERS = zstandard.ZstdCompressionParameters.from_level(
    1, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=False, write_dict_id=False
)


class _Codecs(threading.local):
    """A compressor and a decompressor per thread: zstandard's objects must not be used by two
    threads at once, and making one per document costs tens of µs, more than packing it."""

    def __init__(self) -> None:
        self.packer = zstandard.ZstdCompressor(dict_data=ZSTD_1_DICTIONARY, compression_params=_PARAMETERS)
        self.unpacker = zstandard.ZstdDecompressor(dict_data=ZSTD_1_DICTIONARY, format=zstandard.FORMAT_ZSTD1_MAGICLESS)


_codecs = _Codecs()


def deflate(document: bytes) -> bytes:
    """The stored form of a document's JSON: tag ZSTD_1 and the zstd frame. The zstd frame
    records the JSON's length, so `inflate` allocates its result once."""
    return ZSTD_1 + _codecs.packer.compress(document)


def inflate(stored: bytes) -> bytes:
    """The JSON of a stored document (zstd, deflated, or plain JSON as files of before hold it)."""
    tag = stored[:1]
    if tag == ZSTD_1:
        return _codecs.unpacker.decompress(memoryview(stored)[1:])
    if tag == DEFLATED:
        return zlib.decompressobj(-15, DICTIONARY).decompress(memoryview(stored)[1:])
    return stored


def doc_json(stored: bytes | str | None) -> str | None:
    """SQL's view of a document (`doc_json(e.doc)`), for json_each and json_extract."""
    if stored is None:
        return None
    if isinstance(stored, str):
        return stored
    return inflate(stored).decode()


def register(connection: sqlite3.Connection) -> None:
    connection.create_function("doc_json", 1, doc_json, deterministic=True)


# -- side rows ---------------------------------------------------------------------------------------
def value_rows(pk: int, attr_id: int, rows: list[tuple[str, float | None, str | None]]) -> Iterator[tuple[Any, ...]]:
    """attr_values rows (pk, attr, seq, num, txt) of one attribute's side_rows.attr_rows."""
    for seq, (_, num, txt) in enumerate(rows):
        yield pk, attr_id, seq, num, txt


def entity_rows(
    ids: Callable[[str], int], pk: int, entity: Entity
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[Any, ...]]]:
    """(entity_types, entity_attrs, attr_values) rows of a whole entity; `ids` interns a name."""
    attrs = entity["attrs"]
    attr_ids = {attr: ids(attr) for attr in attrs}
    values = [
        row for attr, instances in attrs.items() for row in value_rows(pk, attr_ids[attr], attr_rows(attr, instances))
    ]
    return [(ids(t), pk) for t in entity["type"]], [(a, pk) for a in attr_ids.values()], values


# -- migration ---------------------------------------------------------------------------------------
def migrate(connection: sqlite3.Connection, names: Names) -> int:
    """Bring a file to this layout (the history's first, sqlite_history.migrate); returns how many
    entities were converted. Called on the writer connection before anything else touches the file."""
    version = file_layout(connection, LAYOUT, "the layout")
    if version == LAYOUT:
        return 0
    if version < HISTORY_LAYOUT:
        migrate_history(connection)  # its rows are encoded as this layout's
    assert HISTORY_LAYOUT < ENTITIES_LAYOUT < RELATIVE_CREATED_LAYOUT < LAYOUT
    connection.execute("BEGIN IMMEDIATE")
    try:
        _value_refs(connection)  # before the view is made again: it reads vref
        if HISTORY_LAYOUT <= version < RELATIVE_CREATED_LAYOUT:  # rows of layouts 1 and 2 hold createdAt itself
            relative_created(connection)
        existing = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'entities'"
        ).fetchone()
        if version >= ENTITIES_LAYOUT:
            existing = None  # its side tables and documents are this layout's already
        elif existing is not None:
            for table in ("attr_values", "entity_types", "entity_attrs"):  # their indexes and triggers too
                connection.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in SIDE_SCHEMA.split(";"):
            if statement.strip():
                connection.execute(statement)
        moved = _convert(connection, names) if existing is not None else 0
        _intern_geo(connection)
        connection.execute(f"PRAGMA user_version = {LAYOUT}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        names.rolled_back()
        raise
    names.committed()
    return moved


def _value_refs(connection: sqlite3.Connection) -> None:
    """Layout 5: temporal_rows gains `vref` (a long value's text kept once in temporal_values, NULL in
    every row of before), the view reads it; temporal_types holds the type's interned id instead of
    its IRI (about 70 bytes per entity). Cheap: one ALTER TABLE, and a copy of one row per entity type."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(temporal_rows)")}
    if "vref" not in columns:
        connection.execute("ALTER TABLE temporal_rows ADD COLUMN vref INTEGER")
        connection.execute(VALUES_SCHEMA)
        connection.execute("DROP VIEW IF EXISTS temporal_instances")
        connection.execute(LAYOUT_SCHEMA[-1])
    types = {row[1]: row[2] for row in connection.execute("PRAGMA table_info(temporal_types)")}
    if types.get("type", "INTEGER").upper() == "INTEGER":  # a new file, or converted already
        return
    connection.execute("INSERT OR IGNORE INTO temporal_names (name) SELECT DISTINCT type FROM temporal_types")
    connection.execute(
        "CREATE TABLE temporal_types_5 (type INTEGER NOT NULL, epk INTEGER NOT NULL, PRIMARY KEY (type, epk))"
        " WITHOUT ROWID"
    )
    connection.execute(
        "INSERT INTO temporal_types_5 (type, epk) SELECT n.id, t.epk FROM temporal_types t"
        " JOIN temporal_names n ON n.name = t.type"
    )
    connection.execute("DROP TABLE temporal_types")
    connection.execute("ALTER TABLE temporal_types_5 RENAME TO temporal_types")


def _intern_geo(connection: sqlite3.Connection) -> None:
    """Layout 4: entity_geo_attrs holds the interned attribute (an IRI of 30-80 bytes before, about
    75 of an OffStreetParking's 2,200 bytes with the walk row's). Its rows are copied with their gid
    (the R*Tree's key); entity_geo_walk is dropped, and made again from the documents by
    sqlite_query.create_query_schema right after."""
    columns = {row[1]: row[2] for row in connection.execute("PRAGMA table_info(entity_geo_attrs)")}
    if columns.get("attr", "INTEGER").upper() == "INTEGER":  # a new file, or converted already
        return
    connection.execute("INSERT OR IGNORE INTO temporal_names (name) SELECT DISTINCT attr FROM entity_geo_attrs")
    connection.execute(
        "CREATE TABLE entity_geo_attrs_4 (gid INTEGER PRIMARY KEY, pk INTEGER NOT NULL, attr INTEGER NOT NULL)"
    )
    connection.execute(
        "INSERT INTO entity_geo_attrs_4 (gid, pk, attr) SELECT g.gid, g.pk, n.id"
        " FROM entity_geo_attrs g JOIN temporal_names n ON n.name = g.attr"
    )
    connection.execute("DROP TABLE entity_geo_attrs")  # its index with it
    connection.execute("ALTER TABLE entity_geo_attrs_4 RENAME TO entity_geo_attrs")
    connection.execute("CREATE INDEX entity_geo_attrs_pk ON entity_geo_attrs (pk)")
    connection.execute("DROP TABLE IF EXISTS entity_geo_walk")


def _convert(connection: sqlite3.Connection, names: Names) -> int:
    """Deflate every document and index it again, interned (the rows the writer would make)."""
    moved = 0
    types: list[tuple[int, int]] = []
    attrs: list[tuple[int, int]] = []
    values: list[tuple[Any, ...]] = []
    docs: list[tuple[bytes, int]] = []

    def ids(name: str) -> int:
        return names.id(connection, name)

    def flush() -> None:
        connection.executemany("UPDATE entities SET doc = ? WHERE pk = ?", docs)
        connection.executemany("INSERT OR IGNORE INTO entity_types (type, pk) VALUES (?, ?)", types)
        connection.executemany("INSERT OR IGNORE INTO entity_attrs (attr, pk) VALUES (?, ?)", attrs)
        connection.executemany("INSERT INTO attr_values (pk, attr, seq, num, txt) VALUES (?, ?, ?, ?, ?)", values)
        for rows in (docs, types, attrs, values):
            rows.clear()

    last = -1
    while True:  # in chunks of keys, so no statement reads the rows another one changes
        rows = connection.execute(
            "SELECT pk, doc FROM entities WHERE pk > ? ORDER BY pk LIMIT 2000", (last,)
        ).fetchall()
        if not rows:
            return moved
        for pk, doc in rows:
            text = inflate(doc)
            more_types, more_attrs, more_values = entity_rows(ids, pk, orjson.loads(text))
            types += more_types
            attrs += more_attrs
            values += more_values
            docs.append((deflate(text), pk))
        moved += len(rows)
        last = rows[-1][0]
        flush()
