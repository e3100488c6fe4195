"""The compact history layout of SQLite files (store/sqlite_history.py): a file written by the CityOS
of before (tests/data/history-layout-0, made by main at 05bed84 with its make.py) is migrated when
opened, answers every temporal question exactly as before (same JSON, same member order, same
instanceIds), and keeps taking writes; a new file stays small per instance."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient

from backends import sqlite_only
from cityos.app import create_app
from cityos.settings import Settings
from cityos.store.sqlite_schema import LATEST as LAYOUT  # the file version after open
from layout_files import app_over_copy, rows

OLD = Path(__file__).parent / "data" / "history-layout-0"

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
        # the same document, members in the same order
        assert orjson.dumps(response.json()) == orjson.dumps(expected[question]), question
    database = tmp_path / "cityos.db"
    assert rows(database, "PRAGMA user_version") == [(LAYOUT,)]  # the history's layout and the entities' after it
    old = rows(OLD / "cityos.db", "SELECT pk, attr, instance_id, observed_us FROM temporal_instances ORDER BY pk")
    assert rows(database, "SELECT pk, attr, instance_id, observed_us FROM temporal_instances ORDER BY pk") == old
    assert rows(database, "SELECT name FROM sqlite_master WHERE name = 'temporal_instances_v0'") == []


def test_an_old_file_keeps_taking_writes(migrated: TestClient) -> None:
    path = f"{API}/temporal/entities/urn:ngsi-ld:Station:1"
    before = (migrated.get(path)).json()["temperature"]
    patch = {"value": 30, "observedAt": "2024-03-03T10:00:00Z"}
    response = migrated.patch(f"{API}/entities/urn:ngsi-ld:Station:1/attrs/temperature", json=patch)
    assert response.status_code == 204
    after = (migrated.get(path)).json()["temperature"]
    assert after[:-1] == before and after[-1]["value"] == 30
    new_id = after[-1]["instanceId"]
    assert new_id.startswith("urn:ngsi-ld:Instance:") and new_id not in {i["instanceId"] for i in before}
    # an instance of the old file and a new one, each changed and deleted by its instanceId
    for instance_id in (before[1]["instanceId"], new_id):
        target = f"{path}/attrs/temperature/{instance_id}"
        assert (migrated.patch(target, json={"value": 1.25})).status_code == 204
        found = [i for i in (migrated.get(path)).json()["temperature"] if i["instanceId"] == instance_id]
        assert [i["value"] for i in found] == [1.25]
        assert (migrated.delete(target)).status_code == 204
        assert (migrated.delete(target)).status_code == 404
    left = (migrated.get(path)).json()["temperature"]
    assert [i["instanceId"] for i in left] == [before[0]["instanceId"], *(i["instanceId"] for i in before[2:])]


def test_a_new_file_is_compact(tmp_path: Path, db_url: str) -> None:
    """A thousand sensor updates: each history instance takes under 100 bytes of the file."""
    database = tmp_path / "compact.db"
    with TestClient(create_app(Settings(database=str(database)))) as client:
        entities = [
            {
                "id": f"urn:ngsi-ld:Sensor:{n}",
                "type": "Sensor",
                "temperature": {"type": "Property", "value": n, "observedAt": "2024-01-01T00:00:00.000Z"},
            }
            for n in range(100)
        ]
        assert (client.post(f"{API}/entityOperations/upsert", json=entities)).status_code == 201
        for round_ in range(1, 11):
            for entity in entities:
                entity["temperature"]["value"] = round_ * 0.5
                entity["temperature"]["observedAt"] = f"2024-01-01T00:{round_:02d}:00.000Z"
            assert (client.post(f"{API}/entityOperations/upsert", json=entities)).status_code == 204
    with sqlite3.connect(database) as db:
        count = db.execute("SELECT count(*) FROM temporal_rows").fetchone()[0]
        used = db.execute(
            "SELECT sum(pgsize - unused) FROM dbstat WHERE name IN"
            " ('temporal_rows', 'temporal_series_time', 'temporal_instance_ids')"
        ).fetchone()[0]
    assert count == 1100
    assert used / count < 100, f"{used / count:.0f} bytes per history instance"
    print(f"{used / count:.1f} bytes per history instance")


def _questions(client: TestClient) -> dict[str, bytes]:
    path = f"{API}/temporal/entities/urn:ngsi-ld:Place:1"
    questions = [
        path,
        *(
            f"{path}?timeproperty={p}&timerel=after&timeAt=2000-01-01T00:00:00Z"
            for p in ("createdAt", "modifiedAt", "observedAt")
        ),
        f"{path}?lastN=2",
        f"{path}?options=temporalValues",
    ]
    found = {}
    for question in questions:
        response = client.get(question)
        assert response.status_code == 200, question
        found[question] = response.content
    return found


def test_values_times_and_created_round_trip(tmp_path: Path, db_url: str) -> None:
    """Objects whose keys are out of order (nested too, and in lists), whole-second and other times,
    createdAt apart from modifiedAt: each instance comes back member for member, also from a file of
    layout 2 (createdAt stored as itself), which is converted when opened."""
    database = tmp_path / "values.db"
    address = {"zeta": 1, "alpha": {"y": [1, 2], "b": "x"}, "mid": "m"}
    listed = [{"b": 1, "a": 2}]
    entity = {
        "id": "urn:ngsi-ld:Place:1",
        "type": "Place",
        "address": {"type": "Property", "value": address, "observedAt": "2024-05-01T10:00:00Z"},
        "listed": {"type": "Property", "value": listed, "observedAt": "2024-05-01T10:00:00.5Z"},
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [1.5, 2.5]}},
    }
    with TestClient(create_app(Settings(database=str(database)))) as client:
        assert client.post(f"{API}/entities", json=entity).status_code == 201
        patch = {"value": {**address, "zeta": 2}, "observedAt": "2024-05-01T11:00:00Z"}
        assert client.patch(f"{API}/entities/urn:ngsi-ld:Place:1/attrs/address", json=patch).status_code == 204
        temporal = {
            "id": "urn:ngsi-ld:Place:1",
            "type": "Place",
            "listed": [{"type": "Property", "value": 3, "observedAt": "2024-05-02T00:00:00Z", "unitCode": "C62"}],
        }
        assert client.post(f"{API}/temporal/entities", json=temporal).status_code == 204
        answers = _questions(client)
        history = orjson.loads(answers[f"{API}/temporal/entities/urn:ngsi-ld:Place:1"])
        assert [i["value"] for i in history["address"]] == [address, {**address, "zeta": 2}]
        assert [list(i["value"]) for i in history["address"]] == [list(address)] * 2
        assert list(history["address"][0]["value"]["alpha"]) == ["y", "b"]
        assert history["address"][0]["observedAt"] == "2024-05-01T10:00:00Z"
        assert history["listed"][0]["value"] == listed
        assert history["listed"][0]["observedAt"] == "2024-05-01T10:00:00.5Z"
    with sqlite3.connect(database) as db:  # back to layout 2: createdAt stored as itself
        db.execute(
            "UPDATE temporal_rows SET created_us = modified_us - created_us"
            " WHERE created_us IS NOT NULL AND modified_us IS NOT NULL"
        )
        db.execute("PRAGMA user_version = 2")
    with TestClient(create_app(Settings(database=str(database)))) as client:
        assert _questions(client) == answers
    assert rows(database, "PRAGMA user_version") == [(LAYOUT,)]
