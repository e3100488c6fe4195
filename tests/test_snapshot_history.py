"""Temporal snapshots (snapshotTemporalQueries, spec 5.2.41 / 5.16.1) on both back-ends: the
history a snapshot freezes, read with NGSILD-Snapshot through the temporal API, untouched by later
writes, cloned and deleted with the snapshot, and refused when it is larger than the limits."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings
from test_snapshots import (
    BASE,
    ENTITIES,
    FAST,
    HEADER,
    SLOW,
    SNAPSHOTS,
    VEHICLES,
    hidden_tenant,
    make,
    problem,
    settle,
)

TEMPORAL = BASE + "/temporal/entities"
DAY1, NOON1, DAY2, NOON2, DAY3 = (
    "2020-01-01T00:00:00Z",
    "2020-01-01T12:00:00Z",
    "2020-01-02T00:00:00Z",
    "2020-01-02T12:00:00Z",
    "2020-01-03T00:00:00Z",
)
BEFORE_NOON2 = {"timerel": "before", "timeAt": NOON2}
HISTORY = {
    "type": "Snapshot",
    "snapshotQueries": VEHICLES["snapshotQueries"],
    "snapshotTemporalQueries": [
        {"type": "Query", "entities": [{"type": "Vehicle", "id": FAST}], "temporalQ": BEFORE_NOON2}
    ],
}


def speed(client: TestClient, entity_id: str, value: int, observed: str) -> None:
    body = {"speed": {"type": "Property", "value": value, "observedAt": observed}}
    response = client.patch(f"{ENTITIES}/{entity_id}/attrs", json=body)
    assert response.status_code == 204, response.text


def history(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return sorted(i["value"] for i in response.json()["speed"])


def setup(client: TestClient) -> None:
    for entity_id, value in ((FAST, 80), (SLOW, 30)):
        body = {"id": entity_id, "type": "Vehicle", "speed": {"type": "Property", "value": value, "observedAt": DAY1}}
        assert client.post(ENTITIES, json=body).status_code == 201
    speed(client, FAST, 90, DAY2)
    speed(client, FAST, 95, DAY3)


def test_a_snapshot_freezes_history(db_url: str) -> None:
    with TestClient(create_app(Settings(database=db_url)), base_url="http://127.0.0.1:1026") as client:
        setup(client)
        snapshot = client.get(make(client, HISTORY)).json()
        assert snapshot["snapshotStatus"] == "success"
        assert snapshot["snapshotTemporalQueriesDetails"] == [{"resultStatus": "success"}]
        assert snapshot["snapshotTemporalQueries"] == HISTORY["snapshotTemporalQueries"]
        sid = snapshot["id"]
        # a late observation inside the window changes the live history, not the frozen one
        speed(client, FAST, 10, NOON1)
        assert history(client.get(f"{TEMPORAL}/{FAST}")) == [10, 80, 90, 95]
        assert history(client.get(f"{TEMPORAL}/{FAST}", headers={HEADER: sid})) == [80, 90]
        listed = client.get(TEMPORAL, params={"type": "Vehicle"}, headers={HEADER: sid})
        assert listed.status_code == 200 and [e["id"] for e in listed.json()] == [FAST]  # SLOW's history was not asked
        assert listed.headers[HEADER] == sid
        posted = client.post(
            f"{BASE}/temporal/entityOperations/query",
            json={
                "type": "Query",
                "entities": [{"type": "Vehicle"}],
                "temporalQ": {"timerel": "after", "timeAt": DAY2},
            },
            headers={HEADER: sid},
        )
        assert posted.status_code == 200, posted.text
        assert [i["value"] for i in posted.json()[0]["speed"]] == [90]
        problem(client.get(f"{TEMPORAL}/{SLOW}", headers={HEADER: sid}), 404, "ResourceNotFound")
        # the frozen entities are still the current state at creation
        assert client.get(f"{ENTITIES}/{FAST}", headers={HEADER: sid}).json()["speed"]["value"] == 95
        # writes to the history through the header are refused
        instance = {"speed": [{"type": "Property", "value": 1, "observedAt": DAY1}]}
        problem(
            client.post(f"{TEMPORAL}/{FAST}/attrs", json=instance, headers={HEADER: sid}), 422, "OperationNotSupported"
        )

        # a snapshot without temporal queries has no history to show
        plain = client.get(make(client, VEHICLES)).json()["id"]
        empty = client.get(TEMPORAL, params={"type": "Vehicle"}, headers={HEADER: plain})
        assert empty.status_code == 200 and empty.json() == []

        # the clone has the same history; deleting the original removes only the original's
        cloned = client.post(f"{SNAPSHOTS}/{sid}/clone", json={"type": "Snapshot"})
        assert cloned.status_code == 201, cloned.text
        settle(client)
        clone = client.get(cloned.headers["Location"]).json()
        assert clone["snapshotTemporalQueriesDetails"] == [{"resultStatus": "success"}]
        hidden = hidden_tenant(client, "", sid)
        assert client.delete(f"{SNAPSHOTS}/{sid}").status_code == 204
        store = client.app.state.services.store  # type: ignore[attr-defined]
        assert client.portal.call(store.temporal_entity, hidden, FAST) is None  # type: ignore[union-attr]
        assert history(client.get(f"{TEMPORAL}/{FAST}", headers={HEADER: clone["id"]})) == [80, 90]


def test_temporal_validation_and_limits(db_url: str) -> None:
    settings = Settings(database=db_url, snapshot_max_entities=1)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        setup(client)
        query = {"type": "Query", "entities": [{"type": "Vehicle"}]}
        for bad in (
            [query],  # no temporalQ
            [{**query, "temporalQ": "before"}],
            [{**query, "temporalQ": {"timerel": "during", "timeAt": DAY1}}],
            [{**query, "temporalQ": {"timerel": "before"}}],
            [{**query, "temporalQ": {"timerel": "before", "timeAt": DAY1, "lastN": 0}}],
            [{"type": "Query", "temporalQ": BEFORE_NOON2}],  # selects nothing
        ):
            problem(
                client.post(SNAPSHOTS, json={"type": "Snapshot", "snapshotTemporalQueries": bad}), 400, "BadRequestData"
            )
        problem(client.patch(f"{SNAPSHOTS}/urn:x:1", json={"snapshotTemporalQueries": []}), 400, "BadRequestData")
        assert client.get(SNAPSHOTS).json() == []
        # two vehicles' history, one allowed: failure, nothing kept
        too_many = {"type": "Snapshot", "snapshotTemporalQueries": [{**query, "temporalQ": BEFORE_NOON2}]}
        body = client.get(make(client, too_many)).json()
        assert body["snapshotStatus"] == "failure"
        assert "snapshot_max_entities" in body["snapshotTemporalQueriesDetails"][0]["detail"]
        store = client.app.state.services.store  # type: ignore[attr-defined]
        hidden = hidden_tenant(client, "", body["id"])
        for entity_id in (FAST, SLOW):
            assert client.portal.call(store.temporal_entity, hidden, entity_id) is None  # type: ignore[union-attr]
        # lastN keeps the last instances of each attribute
        last = {
            "type": "Snapshot",
            "snapshotTemporalQueries": [
                {"type": "Query", "entities": [{"type": "Vehicle", "id": FAST}], "temporalQ": {"lastN": 1}}
            ],
        }
        sid = client.get(make(client, last)).json()["id"]
        assert history(client.get(f"{TEMPORAL}/{FAST}", headers={HEADER: sid})) == [95]
