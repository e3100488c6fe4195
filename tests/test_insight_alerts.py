"""Alert rules on both back-ends, through the served API: a rule judges each change of its type,
writes one Smart Data Models Alert per rule and entity through the one write path (its history is
in the temporal API), with hysteresis, de-duplication, durations, rates, absence, a district
polygon, and an admin's acknowledgement. Expected alerts are worked out in the test from the
readings it sends, independently of the engine."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from cityos.app import create_app
from cityos.settings import Settings
from test_insight_rules import GOOD

ENTITIES = "/ngsi-ld/v1/entities"
RULES = {
    "pm25-high": GOOD,  # PM2.5 above 75 for 2 hours, clear at 60 (the rule file tests' own)
    "heat-rise": """id = "heat-rise"
name = "Temperature rising more than 10 degrees an hour"
type = "WeatherObserved"
severity = "medium"
category = "weather"
[when]
attribute = "temperature"
rate_above = 10
per = "1h"
""",
    "silent": """id = "silent"
name = "No reading for a while"
type = "Device"
severity = "low"
category = "security"
[when]
attribute = "reading"
absent = "0.5s"
""",
    "district-noise": """id = "district-noise"
name = "Noise above 70 dB inside the centre"
type = "NoiseLevelObserved"
severity = "medium"
category = "environment"
[when]
all = [
  {attribute = "LAeq", above = 70},
  {inside = [[2.0, 48.0], [3.0, 48.0], [3.0, 49.0], [2.0, 49.0]]},
]
""",
}
AQ = "urn:ngsi-ld:AirQualityObserved:station-1"


@contextmanager
def serving(db_url: str, folder: Path) -> Iterator[TestClient]:
    settings = Settings(database=db_url, rules_dir=str(folder))
    with TestClient(create_app(settings), base_url="http://127.0.0.1:1026") as client:
        yield client


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir()
    for name, text in RULES.items():
        (folder / f"{name}.toml").write_text(text)
    return folder


def settle(client: TestClient) -> None:
    """Until the alerts the last writes caused are written (the writer is a task of the app)."""
    client.portal.call(client.app.state.alert_rules.settle)  # type: ignore[union-attr, attr-defined]


def at(hour: float) -> str:
    seconds = int(hour * 3600)
    return f"2026-03-01T{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:00Z"


def send(client: TestClient, entity_id: str, attr: str, value: Any, observed: str | None = None) -> None:
    body: dict[str, Any] = {"value": value, **({"observedAt": observed} if observed else {})}
    answer = client.patch(f"{ENTITIES}/{entity_id}/attrs/{attr}", json=body)
    assert answer.status_code == 204, answer.text
    settle(client)


def alert(client: TestClient, rule: str, entity_id: str) -> dict[str, Any] | None:
    answer = client.get(f"{ENTITIES}/urn:ngsi-ld:Alert:{rule}:{entity_id}", params={"options": "keyValues"})
    return answer.json() if answer.status_code == 200 else None


def statuses(temporal: dict[str, Any]) -> list[Any]:
    """The status values of an Alert's temporal representation, oldest first."""
    instances = temporal["status"]
    instances = instances if isinstance(instances, list) else [instances]
    return [i["value"] for i in sorted(instances, key=lambda i: i.get("modifiedAt", ""))]


def expected_alerts(
    readings: list[tuple[float, float]], above: float, clear: float, hold_hours: float
) -> list[tuple[str, float]]:
    """The transitions a plain reading of the rule gives: open once the value has been above
    `above` for `hold_hours` of readings, resolved once it is at or below `clear`."""
    found: list[tuple[str, float]] = []
    is_open, since = False, None
    for hour, value in readings:
        if is_open:
            if value <= clear:
                found.append(("resolved", hour))
                is_open = False
            continue
        if value > above:
            since = hour if since is None else since
            if hour - since >= hold_hours:
                found.append(("open", hour))
                is_open, since = True, None
        else:
            since = None
    return found


def test_a_threshold_held_for_two_hours_opens_one_alert_and_resolves_below_its_clear_level(
    db_url: str, rules_dir: Path
) -> None:
    readings = [
        (0, 50.0),
        (1, 80.0),
        (2, 74.0),
        (3, 90.0),
        (4, 95.0),
        (5, 85.0),
        (6, 70.0),
        (7, 76.0),
        (8, 61.0),
        (9, 58.0),
        (10, 99.0),
    ]
    transitions = expected_alerts(readings, 75, 60, 2)
    assert transitions == [("open", 5), ("resolved", 9)]  # 74 at hour 2 restarts the clock; 61..70 hold it open
    with serving(db_url, rules_dir) as client:
        made = {"id": AQ, "type": "AirQualityObserved", "pm25": {"type": "Property", "value": 40, "observedAt": at(0)}}
        assert client.post(ENTITIES, json=made).status_code == 201
        seen: list[tuple[str, float]] = []
        last = None
        for hour, value in readings:
            send(client, AQ, "pm25", value, at(hour))
            now = alert(client, "pm25-high", AQ)
            status = now["status"] if now else None
            if status != last:
                seen.append((str(status), hour))
                last = status
                if status == "open":
                    assert now is not None
                    assert now["severity"] == "high" and now["category"] == "environment"
                    assert now["subCategory"] == "airPollution" and now["alertSource"] == AQ
                    assert now["triggerValues"] == {"pm25": value}
                    assert now["rule"] == "pm25-high"
        assert seen == [(status, hour) for status, hour in transitions]
        final = alert(client, "pm25-high", AQ)
        assert final is not None and final["status"] == "resolved" and "resolvedAt" in final
        # the hour-10 reading (99) starts a new clock: nothing is opened before two hours pass
        history = client.get(
            f"/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Alert:pm25-high:{AQ}", params={"attrs": "status"}
        )
        assert history.status_code == 200, history.text
        assert statuses(history.json()) == ["open", "resolved"]  # the one write path records the alert's history
        alerts = client.get(ENTITIES, params={"type": "Alert", "count": "true"})
        assert alerts.headers["NGSILD-Results-Count"] == "1"


def test_a_flapping_sensor_writes_one_alert(db_url: str, rules_dir: Path) -> None:
    with serving(db_url, rules_dir) as client:
        made = {"id": AQ, "type": "AirQualityObserved", "pm25": {"type": "Property", "value": 80, "observedAt": at(0)}}
        assert client.post(ENTITIES, json=made).status_code == 201
        settle(client)
        send(client, AQ, "pm25", 81, at(2))
        first = alert(client, "pm25-high", AQ)
        assert first is not None and first["status"] == "open"
        for step in range(20):  # around the threshold, never down to the clear level
            send(client, AQ, "pm25", 74 if step % 2 else 77, at(2 + (step + 1) / 10))
        again = alert(client, "pm25-high", AQ)
        assert again is not None and again["status"] == "open" and again["dateIssued"] == first["dateIssued"]
        history = client.get(
            f"/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Alert:pm25-high:{AQ}", params={"attrs": "status"}
        )
        assert statuses(history.json()) == ["open"]


def test_a_fast_rise_fires_with_its_rate(db_url: str, rules_dir: Path) -> None:
    station = "urn:ngsi-ld:WeatherObserved:w1"
    readings = [(0, 20.0), (1, 25.0), (1.5, 32.0)]
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(readings)]
    assert rates == [5.0, 14.0]
    with serving(db_url, rules_dir) as client:
        made = {
            "id": station,
            "type": "WeatherObserved",
            "temperature": {"type": "Property", "value": 20.0, "observedAt": at(0)},
        }
        assert client.post(ENTITIES, json=made).status_code == 201
        send(client, station, "temperature", readings[1][1], at(readings[1][0]))
        assert alert(client, "heat-rise", station) is None
        send(client, station, "temperature", readings[2][1], at(readings[2][0]))
        fired = alert(client, "heat-rise", station)
        assert fired is not None and fired["triggerValues"] == {"temperatureRate": rates[1]}
        send(client, station, "temperature", 32.5, at(2))  # 1 an hour: resolved
        resolved = alert(client, "heat-rise", station)
        assert resolved is not None and resolved["status"] == "resolved"


def test_silence_opens_an_alert_and_a_reading_resolves_it(db_url: str, rules_dir: Path) -> None:
    device = "urn:ngsi-ld:Device:d1"
    with serving(db_url, rules_dir) as client:
        made = {"id": device, "type": "Device", "reading": {"type": "Property", "value": "1"}}
        assert client.post(ENTITIES, json=made).status_code == 201
        settle(client)
        assert alert(client, "silent", device) is None
        deadline = time.monotonic() + 10
        found = None
        while time.monotonic() < deadline and found is None:
            time.sleep(0.1)
            found = alert(client, "silent", device)
        assert found is not None and found["status"] == "open"
        assert found["triggerValues"] == {"silentForSeconds": 0.5}
        send(client, device, "reading", "2")
        back = alert(client, "silent", device)
        assert back is not None and back["status"] == "resolved"


def test_the_district_condition_and_an_acknowledgement(db_url: str, rules_dir: Path) -> None:
    def noise(number: int, point: list[float], level: float) -> dict[str, Any]:
        return {
            "id": f"urn:ngsi-ld:NoiseLevelObserved:n{number}",
            "type": "NoiseLevelObserved",
            "LAeq": {"type": "Property", "value": level},
            "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": point}},
        }

    with serving(db_url, rules_dir) as client:
        for body in (noise(1, [2.5, 48.5], 75), noise(2, [3.5, 48.5], 75), noise(3, [2.5, 48.5], 65)):
            assert client.post(ENTITIES, json=body).status_code == 201
        settle(client)
        # inside and loud; outside; inside and quiet: only the first
        opened = client.get(ENTITIES, params={"type": "Alert", "options": "keyValues"}).json()
        assert [a["alertSource"] for a in opened] == ["urn:ngsi-ld:NoiseLevelObserved:n1"]
        assert opened[0]["location"] == {"type": "Point", "coordinates": [2.5, 48.5]}
        alert_id = opened[0]["id"]
        seen = client.post(f"/cityos/v1/alerts/{alert_id}/acknowledge")
        assert seen.status_code == 200, seen.text
        assert seen.json()["status"] == "acknowledged"
        now = alert(client, "district-noise", "urn:ngsi-ld:NoiseLevelObserved:n1")
        assert now is not None and now["status"] == "acknowledged"
        assert now["acknowledgedBy"] == seen.json()["acknowledgedBy"] and "acknowledgedAt" in now
        send(client, "urn:ngsi-ld:NoiseLevelObserved:n1", "LAeq", 60)  # quiet again: resolved
        now = alert(client, "district-noise", "urn:ngsi-ld:NoiseLevelObserved:n1")
        assert (
            now is not None and now["status"] == "resolved" and now["acknowledgedBy"] == seen.json()["acknowledgedBy"]
        )
        # the loud one outside moves into the centre: its location alone was written, the rule is judged
        assert alert(client, "district-noise", "urn:ngsi-ld:NoiseLevelObserved:n2") is None
        send(client, "urn:ngsi-ld:NoiseLevelObserved:n2", "location", {"type": "Point", "coordinates": [2.9, 48.1]})
        moved = alert(client, "district-noise", "urn:ngsi-ld:NoiseLevelObserved:n2")
        assert moved is not None and moved["status"] == "open" and moved["triggerValues"]["LAeq"] == 75
        assert client.post("/cityos/v1/alerts/urn:ngsi-ld:Alert:none/acknowledge").status_code == 404


def test_rules_are_listed_added_and_refused_with_their_line(db_url: str, rules_dir: Path, tmp_path: Path) -> None:
    with serving(db_url, rules_dir) as client:
        listed = client.get("/cityos/v1/rules").json()
        assert [r["id"] for r in listed] == sorted(RULES)
        text = RULES["heat-rise"].replace('"heat-rise"', '"cold-drop"').replace("rate_above = 10", "rate_below = -10")
        made = client.put("/cityos/v1/rules/cold-drop", content=text)
        assert made.status_code == 201, made.text
        assert (rules_dir / "cold-drop.toml").read_text() == text
        bad = client.put("/cityos/v1/rules/cold-drop", content=text.replace('severity = "medium"', 'severity = "dire"'))
        assert bad.status_code == 400 and bad.json()["detail"].startswith("line 4: severity must be one of"), bad.text
        # the added rule judges the next change at once
        station = "urn:ngsi-ld:WeatherObserved:w2"
        body = {
            "id": station,
            "type": "WeatherObserved",
            "temperature": {"type": "Property", "value": 20.0, "observedAt": at(0)},
        }
        assert client.post(ENTITIES, json=body).status_code == 201
        send(client, station, "temperature", 5.0, at(1))
        dropped = alert(client, "cold-drop", station)
        assert dropped is not None and dropped["triggerValues"] == {"temperatureRate": -15.0}
    (rules_dir / "broken.toml").write_text(RULES["silent"].replace('absent = "0.5s"', 'absent = "soon"'))
    with pytest.raises(Exception) as caught, serving(db_url, rules_dir):
        pass
    assert "broken.toml:8: absent is a duration" in str(caught.value)


def test_open_alerts_are_remembered_after_a_restart(db_url: str, rules_dir: Path) -> None:
    with serving(db_url, rules_dir) as client:
        made = {"id": AQ, "type": "AirQualityObserved", "pm25": {"type": "Property", "value": 80, "observedAt": at(0)}}
        assert client.post(ENTITIES, json=made).status_code == 201
        settle(client)
        send(client, AQ, "pm25", 90, at(3))
        opened = alert(client, "pm25-high", AQ)
        assert opened is not None and opened["status"] == "open"
    with serving(db_url, rules_dir) as client:
        send(client, AQ, "pm25", 91, at(4))  # still high: not opened a second time
        again = alert(client, "pm25-high", AQ)
        assert again is not None and again["dateIssued"] == opened["dateIssued"]
        send(client, AQ, "pm25", 50, at(5))  # resolved by the restarted worker
        done = alert(client, "pm25-high", AQ)
        assert done is not None and done["status"] == "resolved"
