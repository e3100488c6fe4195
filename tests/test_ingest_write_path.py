"""One write path whatever the entry point: an import straight into a database (--database) goes
through the same change listeners as the API, so a year of hourly readings gives one history
instance per row and notifies a subscription exactly as the same import through a running broker
(--url) does. Real CLI processes, a real server, a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.testclient import TestClient

from backends import cli_env, db_rows, stored_json
from cityos.app import create_app
from cityos.settings import Settings
from notify_helpers import BrokerProcess, Receiver, receiving

pytestmark = pytest.mark.slow(seconds=80)

HOURS = 24 * 365
STATION = "urn:ngsi-ld:AirQualityObserved:Beijing-Dongsi"
THRESHOLD = 495  # the rows at or above it are notified: about 90 of the year
REALTIME = Path(__file__).parent / "data" / "gtfs" / "realtime"


def pm25(hour: int) -> int:
    return hour * 37 % 500  # every value 0-499, spread over the year


def stamp(hour: int) -> str:
    return (datetime(2016, 1, 1, tzinfo=UTC) + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def year(tmp_path: Path) -> tuple[Path, Path]:
    """A year of hourly PM2.5 of one station (8,760 rows) and its mapping (an id template with a constant)."""
    source = tmp_path / "dongsi.csv"
    lines = ["station,time,pm25"] + [f"Dongsi,{stamp(h)},{pm25(h)}" for h in range(HOURS)]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    mapping = tmp_path / "dongsi.yaml"
    mapping.write_text(
        yaml.safe_dump(
            {
                "type": "AirQualityObserved",
                "id": "urn:ngsi-ld:AirQualityObserved:Beijing-{station}",
                "time": "time",
                "attributes": {"pm25": {"column": "pm25", "type": "Number"}},
            }
        ),
        encoding="utf-8",
    )
    return source, mapping


SUBSCRIPTION = {
    "type": "Subscription",
    "entities": [{"type": "AirQualityObserved"}],
    "watchedAttributes": ["pm25"],
    "q": f"pm25>={THRESHOLD}",
}


def subscription(uri: str) -> dict[str, Any]:
    return {**SUBSCRIPTION, "notification": {"endpoint": {"uri": uri}, "attributes": ["pm25"]}}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cityos", *args],
        capture_output=True,
        text=True,
        env=cli_env(CITYOS_ALLOW_PRIVATE_NETWORKS="true"),
        timeout=timeout,
        check=False,
    )


def instances(database: str, entity_id: str) -> list[tuple[str, int]]:
    """(attribute, observed_us) of every history instance of an entity."""
    rows = db_rows(
        database,
        "SELECT i.attr, i.observed_us FROM temporal_instances i JOIN temporal_entities e ON e.pk = i.epk"
        " WHERE e.id = ? ORDER BY i.observed_us",
        entity_id,
    )
    return [(str(attr), observed) for attr, observed in rows]


def notified(receiver: Receiver) -> list[tuple[Any, str]]:
    """(value, observedAt) of PM2.5 in every notification received, in order."""
    found = []
    for body in receiver.bodies():
        for entity in body["data"]:
            assert entity["id"] == STATION
            found.append((entity["pm25"]["value"], entity["pm25"]["observedAt"]))
    return found


EXPECTED = [(pm25(h), stamp(h)) for h in range(HOURS) if pm25(h) >= THRESHOLD]


def check_year(database: str, receiver: Receiver) -> None:
    history = instances(database, STATION)
    assert len(history) == HOURS  # one instance per row
    assert len({observed for _, observed in history}) == HOURS
    assert {attr.rsplit("/", 1)[-1] for attr, _ in history} == {"pm25"}
    receiver.wait(len(EXPECTED), timeout=60)
    time.sleep(0.5)  # nothing more comes
    assert sorted(notified(receiver), key=lambda n: n[1]) == EXPECTED


def subscribe_in(db_url: str, receiver_url: str) -> None:
    """Create the test's subscription in the database through the API (in-process, then closed)."""
    with TestClient(
        create_app(Settings(database=db_url, allow_private_networks=True)), base_url="http://127.0.0.1:1026"
    ) as client:
        response = client.post("/ngsi-ld/v1/subscriptions", json=subscription(receiver_url))
        assert response.status_code == 201, response.text


def subscribe_on(base: str, receiver_url: str) -> None:
    """Create the test's subscription on a running broker."""
    response = httpx.post(base + "/ngsi-ld/v1/subscriptions", json=subscription(receiver_url))
    assert response.status_code == 201, response.text


def test_a_year_into_the_database_file_records_history_and_notifies(db_url: str, year: tuple[Path, Path]) -> None:
    source, mapping = year
    with receiving() as receiver:
        subscribe_in(db_url, receiver.url)
        result = cli("import", "csv", str(source), "--mapping", str(mapping), "--database", db_url)
        assert result.returncode == 0, result.stderr
        assert f"{HOURS} rows read, {HOURS} loaded into 1 entities, 0 rejected" in result.stdout
        # the command delivered what it caused before it exited
        assert len(receiver.requests) == len(EXPECTED), result.stderr
        check_year(db_url, receiver)
    assert db_rows(db_url, "SELECT count(*) FROM outbox") == [(0,)]


def test_a_year_through_a_running_broker_is_the_same(db_url: str, year: tuple[Path, Path]) -> None:
    source, mapping = year
    broker = BrokerProcess(db_url)
    broker.start()
    try:
        with receiving() as receiver:
            subscribe_on(broker.base, receiver.url)
            result = cli("import", "csv", str(source), "--mapping", str(mapping), "--url", broker.base)
            assert result.returncode == 0, result.stderr
            assert f"{HOURS} rows read, {HOURS} loaded into 1 entities, 0 rejected" in result.stdout
            check_year(db_url, receiver)
    finally:
        broker.stop()


def test_undelivered_notifications_are_left_to_the_server(db_url: str, year: tuple[Path, Path]) -> None:
    """--notify-wait 0: the import leaves its notifications in the database; a server on it
    delivers them when it starts."""
    source, mapping = year
    with receiving() as receiver:
        subscribe_in(db_url, receiver.url)
        result = cli(
            "import", "csv", str(source), "--mapping", str(mapping), "--database", db_url, "--notify-wait", "0"
        )
        assert result.returncode == 0, result.stderr
        assert receiver.requests == []
        assert db_rows(db_url, "SELECT count(*) FROM outbox") == [(len(EXPECTED),)]
        broker = BrokerProcess(db_url)
        broker.start()
        try:
            receiver.wait(len(EXPECTED), timeout=60)
            assert sorted(notified(receiver), key=lambda n: n[1]) == EXPECTED
        finally:
            broker.stop()


def few_rows(tmp_path: Path) -> tuple[Path, Path]:
    """Three hours of one station, every one above the threshold (a constant id)."""
    source = tmp_path / "few.csv"
    source.write_text("station,time,pm25\n" + "".join(f"Dongsi,{stamp(h)},499\n" for h in range(3)), encoding="utf-8")
    mapping = tmp_path / "few.yaml"
    mapping.write_text(
        yaml.safe_dump({"type": "AirQualityObserved", "id": STATION, "time": "time", "attributes": {"pm25": "pm25"}}),
        encoding="utf-8",
    )
    return source, mapping


def test_a_running_server_delivers_what_an_import_wrote_into_its_database(db_url: str, tmp_path: Path) -> None:
    """Another process's rows in the outbox are noticed by a running server (its periodic poll)."""
    source, mapping = few_rows(tmp_path)
    broker = BrokerProcess(db_url)
    broker.start()
    try:
        with receiving() as receiver:
            subscribe_on(broker.base, receiver.url)
            args = ("import", "csv", str(source), "--mapping", str(mapping), "--database", db_url)
            result = cli(*args, "--notify-wait", "0")
            assert result.returncode == 0, result.stderr
            receiver.wait(3, timeout=15)
            assert notified(receiver) == [(499, stamp(h)) for h in range(3)]
    finally:
        broker.stop()


def test_a_receiver_that_is_down_does_not_hold_the_import(db_url: str, tmp_path: Path) -> None:
    """The command tries for --notify-wait seconds, says what it leaves, and a server started on
    the database later delivers it."""
    source, mapping = few_rows(tmp_path)
    up = False
    with receiving(answer=lambda _: 200 if up else 500) as receiver:
        with TestClient(create_app(Settings(database=db_url, allow_private_networks=True))) as client:
            response = client.post("/ngsi-ld/v1/subscriptions", json=subscription(receiver.url))
            assert response.status_code == 201, response.text
        started = time.monotonic()
        result = cli(
            "import", "csv", str(source), "--mapping", str(mapping), "--database", db_url, "--notify-wait", "2"
        )
        assert time.monotonic() - started < 20
        assert result.returncode == 0, result.stderr
        assert "3 notification(s) not delivered within --notify-wait 2 s" in result.stderr
        assert receiver.requests, "the command did not try"
        assert db_rows(db_url, "SELECT count(*) FROM outbox") == [(3,)]
        up = True
        tried = len(receiver.requests)
        broker = BrokerProcess(db_url)
        broker.start()
        try:
            receiver.wait(tried + 3, timeout=30)
            delivered = [r.body for r in receiver.requests[tried:]]
            assert [b["data"][0]["pm25"]["observedAt"] for b in delivered] == [stamp(h) for h in range(3)]
        finally:
            broker.stop()


def test_a_polling_import_notifies_while_it_runs(db_url: str) -> None:
    """`import gtfs-rt --interval` into a database runs until stopped: its notifications go out
    as it writes, not when it ends."""
    with receiving() as receiver:
        body = {
            "type": "Subscription",
            "entities": [{"type": "Vehicle"}],
            "notification": {"endpoint": {"uri": receiver.url}},
        }
        with TestClient(create_app(Settings(database=db_url, allow_private_networks=True))) as client:
            assert client.post("/ngsi-ld/v1/subscriptions", json=body).status_code == 201
        feed = str(REALTIME / "vehicle_position.pb")
        process = subprocess.Popen(
            [sys.executable, "-m", "cityos", "import", "gtfs-rt", feed, "--database", db_url, "--interval", "30"],
            env=cli_env(CITYOS_ALLOW_PRIVATE_NETWORKS="true"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            [first] = receiver.wait(1, timeout=20)
            assert process.poll() is None  # still polling
            assert first.body["data"][0]["id"] == "urn:ngsi-ld:Vehicle:1"
        finally:
            process.terminate()
            process.wait(timeout=10)


def test_gtfs_realtime_into_the_database_file_records_history_once(db_url: str) -> None:
    """`import gtfs-rt` without --url records history; the same feeds polled again add none (their
    header timestamp, hence every observedAt, is unchanged), and an alert does not publish the
    path of the local file it came from."""
    feeds = [str(REALTIME / name) for name in ("vehicle_position.pb", "trip-updates-full.asciipb", "alerts.asciipb")]
    for _ in range(2):
        for feed in feeds:
            result = cli("import", "gtfs-rt", feed, "--database", db_url)
            assert result.returncode == 0, result.stdout + result.stderr
    assert instances(db_url, "urn:ngsi-ld:Vehicle:1"), "no history recorded"
    for entity_id in ("urn:ngsi-ld:GtfsTrip:trip-1", *alert_ids(db_url)):
        history = instances(db_url, entity_id)
        assert history and all(observed is not None for _, observed in history)
        assert len(history) == len(set(history)), entity_id  # one instance per attribute and observedAt
    documents = db_rows(db_url, "SELECT doc FROM entities WHERE id LIKE ?", "urn:ngsi-ld:Alert:%")
    texts = [str(stored_json(doc)) for (doc,) in documents]
    assert texts and all(str(REALTIME) not in text and "alerts.asciipb" not in text for text in texts)


def alert_ids(database: str) -> list[str]:
    return [
        row[0] for row in db_rows(database, "SELECT id FROM temporal_entities WHERE id LIKE ?", "urn:ngsi-ld:Alert:%")
    ]
