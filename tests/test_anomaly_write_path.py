"""The anomaly detector on live writes, on both back-ends: readings written through the API feed
the change listener; an anomalous one gets an `anomaly` sub-property written through the same
write path as an annotation (Outcome.annotation, EntityChange.annotation), which neither feeds the
detector again nor adds an instance to the history; a user's own `anomaly` sub-property is data,
kept in the history; a later reading that keeps the flag (merge-patch) has it cleared; a flag whose
reading moved on is not written."""

from __future__ import annotations

import functools
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
    # the history has the new reading once; the clearing, an annotation too, added nothing. That
    # reading was stored still carrying the earlier reading's flag (merge-patch keeps sub-attributes),
    # and the history records it as stored: the flag's observedAt names the reading it judged
    instances = client.get(
        f"/ngsi-ld/v1/temporal/entities/{SENSOR}",
        params={"attrs": "temperature", "timerel": "after", "timeAt": "2024-01-01T00:00:00Z", "lastN": "2"},
    ).json()["temperature"]
    assert [i["value"] for i in instances] == [60.0, 10.2]
    assert instances[1]["anomaly"]["observedAt"] == _stamp(HOURS) and "anomaly" not in instances[0]

    # a flag whose reading moved on is not written
    assert client.portal is not None
    stale = Flag("", SENSOR, key[2], None, _stamp(HOURS), 60.0, None)
    assert client.portal.call(watch.write, [stale]) == []
    entity = client.portal.call(client.app.state.services.store.get_entity, "", SENSOR)  # type: ignore[attr-defined, call-arg]
    assert ANOMALY_IRI not in entity["attrs"][key[2]][0]


def test_the_core_context_names_the_flag_as_the_history_knows_it(client: TestClient) -> None:
    assert _watch(client).terms.expand("anomaly") == ANOMALY_IRI


def test_off_by_default(db_url: str) -> None:
    with TestClient(create_app(Settings(database=db_url))) as plain:
        watch = _watch(plain)
        assert not watch.enabled
        assert plain.post(UPSERT, json=[_reading(0, 1.0)]).status_code == 201
        assert len(watch.detector) == 0


def test_a_users_own_anomaly_sub_property_is_kept_in_history(client: TestClient) -> None:
    """Only the detector's writes are annotations: a sub-property a user names `anomaly` is data."""
    own = {"type": "Property", "value": "door open", "observedAt": _stamp(1)}
    body = {"id": SENSOR, "type": "WeatherObserved"}
    for hour, value in ((1, 40.0), (2, 41.0)):
        reading = {"type": "Property", "value": value, "observedAt": _stamp(hour), "anomaly": own}
        assert client.post(UPSERT, json=[{**body, "relativeHumidity": reading}]).status_code in (201, 204)
    history = client.get(
        f"/ngsi-ld/v1/temporal/entities/{SENSOR}",
        params={"attrs": "relativeHumidity", "timerel": "after", "timeAt": "2024-01-01T00:00:00Z"},
    )
    assert history.status_code == 200, history.text
    instances = history.json()["relativeHumidity"]
    assert [i["value"] for i in instances] == [40.0, 41.0]
    assert all(i["anomaly"]["value"] == "door open" for i in instances)


def test_an_annotation_write_records_no_history(client: TestClient) -> None:
    """The store's contract: a mutator's Outcome(annotation=True) reaches the listeners as
    EntityChange.annotation and the history records nothing; the same write unmarked records one."""
    from cityos.entities.model import Entity
    from cityos.entities.update import Outcome

    assert client.post(UPSERT, json=[_reading(0, 5.0)]).status_code == 201
    store = client.app.state.services.store  # type: ignore[attr-defined]
    iri = _watch(client).terms.expand("temperature")
    assert client.portal is not None

    def count() -> int:
        params = {"attrs": "temperature", "timerel": "after", "timeAt": "2024-01-01T00:00:00Z"}
        return len(client.get(f"/ngsi-ld/v1/temporal/entities/{SENSOR}", params=params).json()["temperature"])

    def note(text: str, annotation: bool) -> None:
        def run(current: Entity | None) -> Outcome:
            assert current is not None
            [instance] = current["attrs"][iri]
            marked = {**instance, ANOMALY_IRI: {"type": "Property", "value": text}}
            return Outcome({**current, "attrs": {**current["attrs"], iri: [marked]}}, [iri], annotation=annotation)

        write = functools.partial(store.mutate, "", [(SENSOR, run)], atomic=False)
        [result] = client.portal.call(write)  # type: ignore[union-attr]
        assert result.error is None and result.change.annotation is annotation

    assert count() == 1
    note("a mark", annotation=True)
    assert count() == 1 and _temperature(client)["anomaly"]["value"] == "a mark"
    note("data", annotation=False)
    assert count() == 2


def test_history_skips_exactly_the_annotations() -> None:
    """temporal/history.py: an annotation change adds no instance; any other change is recorded as
    stored, an `anomaly` sub-property included."""
    from cityos.store.base import EntityChange
    from cityos.temporal.history import history_rows

    def entity(instance: dict[str, Any]) -> dict[str, Any]:
        stamp = "2024-03-01T00:00:00.000Z"
        return {"id": SENSOR, "type": ["T"], "createdAt": stamp, "modifiedAt": stamp, "attrs": {"a": [instance]}}

    reading = {"type": "Property", "value": 60.0, "createdAt": "2024-03-01T00:00:00.000Z"}
    reading["modifiedAt"] = reading["createdAt"]
    flag = {"type": "Property", "value": {"kind": "spike"}, "createdAt": "2024-03-01T00:00:01.000Z"}
    flagged = {**reading, ANOMALY_IRI: flag}
    assert history_rows(EntityChange("", SENSOR, entity(reading), entity(flagged), annotation=True)) == []
    assert history_rows(EntityChange("", SENSOR, entity(flagged), entity(reading), annotation=True)) == []
    [row] = history_rows(EntityChange("", SENSOR, entity(reading), entity(flagged)))
    assert row.instance[ANOMALY_IRI] == flag
