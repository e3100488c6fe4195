"""The anomaly detector on live writes, on both back-ends: readings written through the API feed
the change listener; an anomalous one gets an `anomaly` sub-property written through the same
write path, which neither feeds the detector again nor adds an instance to the history; a later
reading that keeps the flag (merge-patch) has it cleared; a flag whose reading moved on is not
written."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.insight.anomaly import ANOMALY_IRI
from cityos.insight.anomaly_watch import AnomalyWatch, Flag
from cityos.settings import Settings
from notify_helpers import wait_for

ENTITIES = "/ngsi-ld/v1/entities"
UPSERT = "/ngsi-ld/v1/entityOperations/upsert?options=update"
SENSOR = "urn:ngsi-ld:WeatherObserved:anomaly-test"
START = datetime(2024, 3, 1, tzinfo=UTC)
HOURS = 24 * 5


def _stamp(hour: int) -> str:
    return (START + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reading(hour: int, value: float) -> dict[str, Any]:
    return {
        "id": SENSOR,
        "type": "WeatherObserved",
        "temperature": {"type": "Property", "value": value, "observedAt": _stamp(hour)},
    }


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    settings = Settings(database=db_url, anomaly_attrs="temperature", anomaly_warmup=24)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as test_client:
        yield test_client


def _watch(client: TestClient) -> AnomalyWatch:
    watch: AnomalyWatch = client.app.state.anomalies  # type: ignore[attr-defined]
    return watch


def _temperature(client: TestClient) -> dict[str, Any]:
    response = client.get(f"{ENTITIES}/{SENSOR}")
    assert response.status_code == 200, response.text
    attr: dict[str, Any] = response.json()["temperature"]
    return attr


def test_a_spike_is_flagged_through_the_write_path(client: TestClient) -> None:
    rng = random.Random(17)
    for hour in range(HOURS):  # a daily cycle with noise, one request per reading
        value = round(10 + 5 * math.sin(2 * math.pi * hour / 24) + rng.gauss(0, 0.3), 2)
        assert client.post(UPSERT, json=[_reading(hour, value)]).status_code in (201, 204)
    watch = _watch(client)
    assert watch.written == 0, "no flag on a normal series"
    assert "anomaly" not in _temperature(client)

    assert client.post(UPSERT, json=[_reading(HOURS, 60.0)]).status_code == 204  # a spike
    flagged = wait_for(lambda: _temperature(client).get("anomaly"))
    assert flagged["value"]["kind"] == "spike"
    assert flagged["value"]["score"] > 7
    assert flagged["observedAt"] == _stamp(HOURS)
    assert _temperature(client)["value"] == 60.0
    assert watch.written == 1

    # the flag write fed nothing back: the series saw each reading once
    key = ("", SENSOR, "https://uri.etsi.org/ngsi-ld/default-context/temperature", None)
    assert watch.detector._series[key].n == HOURS + 1

    # history: one instance per reading, none carrying the flag
    history = client.get(
        f"/ngsi-ld/v1/temporal/entities/{SENSOR}",
        params={"attrs": "temperature", "timerel": "after", "timeAt": "2024-01-01T00:00:00Z"},
    )
    assert history.status_code == 200, history.text
    instances = history.json()["temperature"]
    assert len(instances) == HOURS + 1
    assert not any("anomaly" in instance for instance in instances)

    # a normal reading by merge-patch keeps sub-attributes: the stale flag is cleared
    patch = {"temperature": {"type": "Property", "value": 10.2, "observedAt": _stamp(HOURS + 1)}}
    assert client.patch(f"{ENTITIES}/{SENSOR}", json=patch).status_code == 204
    wait_for(lambda: watch.written == 2)
    current = _temperature(client)
    assert "anomaly" not in current and current["value"] == 10.2
    assert watch.detector._series[key].n == HOURS + 2

    # a flag whose reading moved on is not written
    assert client.portal is not None
    stale = Flag("", SENSOR, key[2], None, _stamp(HOURS), 60.0, None)
    assert client.portal.call(watch.write, [stale]) == []
    entity = client.portal.call(client.app.state.services.store.get_entity, "", SENSOR)  # type: ignore[attr-defined]
    assert ANOMALY_IRI not in entity["attrs"][key[2]][0]


def test_the_core_context_names_the_flag_as_the_history_knows_it(client: TestClient) -> None:
    assert _watch(client).terms.expand("anomaly") == ANOMALY_IRI


def test_off_by_default(db_url: str) -> None:
    with TestClient(create_app(Settings(database=db_url))) as plain:
        watch = _watch(plain)
        assert not watch.enabled
        assert plain.post(UPSERT, json=[_reading(0, 1.0)]).status_code == 201
        assert len(watch.detector) == 0


def test_history_counts_no_flag_as_an_observation() -> None:
    """temporal/history.py: a flag added or cleared is no new instance, and none is recorded with one."""
    from cityos.store.base import EntityChange
    from cityos.temporal.history import changed_instances, history_rows

    def entity(instance: dict[str, Any]) -> dict[str, Any]:
        stamp = "2024-03-01T00:00:00.000Z"
        return {"id": SENSOR, "type": ["T"], "createdAt": stamp, "modifiedAt": stamp, "attrs": {"a": [instance]}}

    reading = {"type": "Property", "value": 60.0, "createdAt": "2024-03-01T00:00:00.000Z"}
    reading["modifiedAt"] = reading["createdAt"]  # no observedAt: the system times say when
    flag = {"type": "Property", "value": {"kind": "spike"}, "createdAt": "2024-03-01T00:00:01.000Z"}
    flagged = {**reading, ANOMALY_IRI: flag}
    assert changed_instances(entity(reading), entity(flagged)) == []
    assert changed_instances(entity(flagged), entity(reading)) == []
    newer = {**flagged, "value": 1.0, "modifiedAt": "2024-03-01T01:00:00.000Z"}  # a merge keeps the flag
    [row] = history_rows(EntityChange("", SENSOR, entity(flagged), entity(newer)))
    assert row.instance["value"] == 1.0 and ANOMALY_IRI not in row.instance
