"""Issue 15's history footprint, layout 5: a long value that repeats is stored once (temporal_values,
referred to by temporal_rows.vref) and temporal_types holds interned type ids. The temporal API answers
the same whatever the row holds (inline, by reference, or a file of layout 4 converted when opened), on
both back-ends for the answers and on SQLite for the rows."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

import pytest
from starlette.testclient import TestClient

from backends import sqlite_only
from cityos.app import create_app
from cityos.settings import Settings
from cityos.store.sqlite_history import LAYOUT_SCHEMA, VALUE_MIN
from cityos.store.sqlite_schema import LATEST as LAYOUT  # the file version after open

BASE = "/ngsi-ld/v1"
TEMPORAL = f"{BASE}/temporal/entities"
LONG = "A municipal car park near the metro station and the town hall, open all day"
ADDRESS = {"streetAddress": "Rua do Almada 21", "addressLocality": "Porto", "type": "PostalAddress"}  # not key order


def _place(number: int, *, occupied: int = 0) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Place:v{number}",
        "type": "Place",
        "description": {"type": "Property", "value": LONG},
        "address": {"type": "Property", "value": ADDRESS},
        "name": {"type": "Property", "value": f"The car park {number:06d}, round {occupied}"},  # long, never repeats
        "occupied": {"type": "Property", "value": occupied},
    }


def _fill(client: TestClient) -> None:
    """Three rounds of a batch upsert of four places (encode_row), then a temporal write with two
    instances of a long text in one entity (encode)."""
    for occupied in range(3):
        batch = [_place(number, occupied=occupied) for number in range(4)]
        assert client.post(f"{BASE}/entityOperations/upsert", json=batch).status_code in (201, 204)
    observed = [f"2026-01-0{day}T10:00:00Z" for day in (1, 2)]
    body = {
        "id": "urn:ngsi-ld:Place:t1",
        "type": "Place",
        "note": [{"type": "Property", "value": LONG + " (note)", "observedAt": at} for at in observed],
    }
    assert client.post(TEMPORAL, json=body).status_code in (201, 204)


def _answers(client: TestClient) -> list[Any]:
    """What the temporal API says about them: every instance, the simplified form, aggregations over
    the texts, and a query by type."""
    found = []
    for entity, time in (
        ("urn:ngsi-ld:Place:v0", "modifiedAt"),
        ("urn:ngsi-ld:Place:v3", "modifiedAt"),
        ("urn:ngsi-ld:Place:t1", "observedAt"),
    ):
        for params in (
            {},
            {"options": "temporalValues"},
            {
                "options": "aggregatedValues",
                "aggrMethods": "totalCount,distinctCount,min,max",
                "aggrPeriodDuration": "PT0S",
            },
        ):
            answer = client.get(f"{TEMPORAL}/{entity}", params={**params, "timeproperty": time})
            assert answer.status_code == 200, answer.text
            found.append(answer.json())
    query = {
        "type": "Place",
        "timerel": "after",
        "timeAt": "2000-01-01T00:00:00Z",
        "options": "temporalValues",
        "timeproperty": "modifiedAt",
    }
    answer = client.get(TEMPORAL, params=query)
    assert answer.status_code == 200, answer.text
    found.append(sorted(answer.json(), key=lambda entity: entity["id"]))
    return found


def _instances(answer: dict[str, Any], attr: str) -> list[Any]:
    return sorted((instance["value"] for instance in answer[attr]), key=str)


def test_repeated_long_values_read_back_exactly(db_url: str) -> None:
    with TestClient(create_app(Settings(database=db_url))) as client:
        _fill(client)
        answers = _answers(client)
    v0 = answers[0]
    assert _instances(v0, "description") == [LONG] * 3
    assert [list(value) for value in _instances(v0, "address")] == [list(ADDRESS)] * 3  # the key order kept
    assert _instances(v0, "name") == [f"The car park 000000, round {n}" for n in range(3)]
    aggregated = answers[2]
    assert [point[0] for point in aggregated["description"]["distinctCount"]] == [1]
    assert [point[0] for point in aggregated["description"]["totalCount"]] == [3]
    t1 = answers[6]
    assert _instances(t1, "note") == [LONG + " (note)"] * 2
    assert {f"urn:ngsi-ld:Place:v{n}" for n in range(4)} <= {entity["id"] for entity in answers[-1]}


@sqlite_only
def test_a_long_value_is_stored_once_when_it_repeats(db_url: str) -> None:
    with TestClient(create_app(Settings(database=db_url))) as client:
        _fill(client)
    assert len(LONG) >= VALUE_MIN
    with closing(sqlite3.connect(db_url)) as db:
        stored = dict(db.execute("SELECT value, id FROM temporal_values").fetchall())
        # the description and the address repeat in other entities: stored once each; the note repeats
        # in its own entity only, a name never repeats, a number is not text: inline
        assert set(stored) == {f'"{LONG}"', orjson_sorted(ADDRESS)}
        rows = db.execute(
            "SELECT n.name, r.vtext IS NULL, r.vref IS NULL, count(*) FROM temporal_rows r"
            " JOIN temporal_names n ON n.id = r.attr GROUP BY 1, 2, 3"
        ).fetchall()
        by_attr: dict[str, dict[str, int]] = {}
        for attr, no_text, no_ref, count in rows:
            kind = "number" if no_text and no_ref else "ref" if no_text else "inline"
            by_attr.setdefault(attr.rsplit("/", 1)[-1], {})[kind] = count
        assert by_attr["description"] == {"inline": 1, "ref": 11}  # the first sighting stays inline
        assert by_attr["address"] == {"inline": 1, "ref": 11}
        assert by_attr["name"] == {"inline": 12}
        assert by_attr["note"] == {"inline": 2}
        assert by_attr["occupied"] == {"number": 12}
        # the view spells every value out, wherever the row keeps it
        texts = db.execute("SELECT DISTINCT vtext FROM temporal_instances WHERE attr LIKE '%description'").fetchall()
        assert texts == [(f'"{LONG}"',)]
        assert db.execute("SELECT DISTINCT typeof(type) FROM temporal_types").fetchall() == [("integer",)]
        place = db.execute("SELECT id FROM temporal_names WHERE name LIKE '%/Place'").fetchone()[0]
        assert db.execute("SELECT DISTINCT CAST(types AS TEXT) FROM temporal_entities").fetchall() == [(f"[{place}]",)]


def orjson_sorted(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@sqlite_only
def test_a_file_of_layout_4_is_converted_and_answers_the_same(db_url: str) -> None:
    with TestClient(create_app(Settings(database=db_url))) as client:
        _fill(client)
        before = _answers(client)
    with closing(sqlite3.connect(db_url)) as db, db:  # back to layout 4: values inline, type IRIs
        db.execute(
            "UPDATE temporal_rows SET vtext = (SELECT value FROM temporal_values WHERE id = vref)"
            " WHERE vref IS NOT NULL"
        )
        db.execute("DROP VIEW temporal_instances")
        db.execute("DROP INDEX temporal_rows_vref")  # schema version 6's
        db.execute("ALTER TABLE temporal_rows DROP COLUMN vref")
        db.execute("DROP TABLE temporal_values")
        view = LAYOUT_SCHEMA[-1].replace("(SELECT value FROM temporal_values WHERE id = r.vref),", "")
        db.execute(view)
        db.execute("ALTER TABLE temporal_types RENAME TO ids")
        db.execute(
            "CREATE TABLE temporal_types (type TEXT NOT NULL, epk INTEGER NOT NULL, PRIMARY KEY (type, epk))"
            " WITHOUT ROWID"
        )
        db.execute("INSERT INTO temporal_types SELECT n.name, t.epk FROM ids t JOIN temporal_names n ON n.id = t.type")
        db.execute("DROP TABLE ids")
        db.execute(
            "UPDATE temporal_entities SET types = (SELECT json_group_array(n.name)"
            " FROM json_each(CAST(types AS TEXT)) j JOIN temporal_names n ON n.id = j.value)"
        )
        assert db.execute("SELECT DISTINCT types FROM temporal_entities").fetchall() == [
            ('["https://uri.etsi.org/ngsi-ld/default-context/Place"]',)
        ]
        db.execute("PRAGMA user_version = 4")
    with TestClient(create_app(Settings(database=db_url))) as client:
        assert _answers(client) == before
        _fill(client)  # written as the new layout after the rows of before
    with closing(sqlite3.connect(db_url)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (LAYOUT,)
        assert db.execute("SELECT DISTINCT typeof(type) FROM temporal_types").fetchall() == [("integer",)]
        assert db.execute("SELECT count(*) FROM temporal_rows WHERE vref IS NOT NULL").fetchone()[0] > 0
        # the type lists of before stay as they were until the entity gets a new type
        assert db.execute(
            "SELECT count(*) FROM temporal_entities WHERE CAST(types AS TEXT) LIKE '%https%'"
        ).fetchone() == (5,)


@pytest.mark.parametrize("count", [1])
def test_nothing_repeats_nothing_is_interned(db_url: str, count: int) -> None:
    """One entity written once: no value repeats, so no row refers to temporal_values (SQLite) and the
    answers are those of any back-end."""
    with TestClient(create_app(Settings(database=db_url))) as client:
        assert client.post(f"{BASE}/entities", json=_place(9)).status_code == 201
        answer = client.get(f"{TEMPORAL}/urn:ngsi-ld:Place:v9", params={"timeproperty": "modifiedAt"})
        assert answer.status_code == 200
        assert [instance["value"] for instance in answer.json()["description"]] == [LONG] * count
    if not db_url.startswith("postgresql"):
        with closing(sqlite3.connect(db_url)) as db:
            assert db.execute("SELECT count(*) FROM temporal_values").fetchone() == (0,)
