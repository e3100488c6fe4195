"""Two independent deployments on one MQTT broker: each stores every measure of its own devices
(the default shared-subscription group is derived from the database, so they do not split the
measures between them) and ignores, counting them, the measures of the other's devices.
A real Mosquitto and two real `cityos serve` processes on different databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from paho.mqtt import publish as mqtt_publish

from backends import cli_env, db_rows
from cityos.ingest.iot_mqtt import deployment_identity, share_group
from notify_helpers import free_port, mosquitto, stop_process, wait_for

MEASURES = 12  # per device
DEVICES = ("d1", "d2")


class Deployment:
    def __init__(self, database: str, mqtt_port: int, **settings: str) -> None:
        self.database = database
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = cli_env(
            CITYOS_DATABASE=database,
            CITYOS_PORT=str(port),
            CITYOS_IOT_MQTT_URL=f"mqtt://127.0.0.1:{mqtt_port}",
            **{"CITYOS_" + k.upper(): v for k, v in settings.items()},
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cityos", "serve", "--log-level", "warning"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.http = httpx.Client(base_url=self.base, timeout=10)

    def about(self) -> dict[str, Any]:
        try:
            body: dict[str, Any] = self.http.get("/iot/about").json()
        except httpx.TransportError:
            assert self.process.poll() is None, "the server exited"
            return {}
        return body

    def group(self, apikey: str) -> None:
        service = {"apikey": apikey, "entity_type": "WeatherObserved"}
        response = self.http.post("/iot/services", json={"services": [service]})
        assert response.status_code == 201, response.text

    def stop(self) -> None:
        self.http.close()
        stop_process(self.process)


@pytest.fixture
def two_deployments(db_url: str, tmp_path: Path) -> Iterator[tuple[int, Deployment, Deployment]]:
    """Deployment A on the test's database (either back-end), B on a SQLite file of its own."""
    with mosquitto(private=True) as mqtt_port:  # it counts unknown devices: no other test's measures
        a = Deployment(db_url, mqtt_port)
        b = Deployment(str(tmp_path / "other.db"), mqtt_port)
        try:
            wait_for(
                lambda: a.about().get("mqtt", {}).get("connected") and b.about().get("mqtt", {}).get("connected"),
                timeout=20,
            )
            yield mqtt_port, a, b
        finally:
            a.stop()
            b.stop()


def observed(database: str, entity_id: str) -> list[int]:
    rows = db_rows(
        database,
        "SELECT i.observed_us FROM temporal_instances i JOIN temporal_entities e ON e.pk = i.epk"
        " WHERE e.id = ? AND i.attr LIKE ? ORDER BY 1",
        entity_id,
        "%temperature",
    )
    return [row[0] for row in rows]


def test_each_deployment_stores_all_of_its_own_measures(two_deployments: tuple[int, Deployment, Deployment]) -> None:
    mqtt_port, a, b = two_deployments
    keys = {"a": "key-a-" + os.urandom(4).hex(), "b": "key-b-" + os.urandom(4).hex()}
    a.group(keys["a"])
    b.group(keys["b"])
    messages = []
    for n in range(MEASURES):
        for name, key in keys.items():
            for device in DEVICES:
                payload = {"temperature": n, "TimeInstant": f"2026-01-01T00:{n:02d}:00Z"}
                messages.append(
                    {"topic": f"/json/{key}/{name}-{device}/attrs", "payload": json.dumps(payload), "qos": 1}
                )
    mqtt_publish.multiple(messages, hostname="127.0.0.1", port=mqtt_port)
    total = MEASURES * len(DEVICES)
    for deployment, own in ((a, "a"), (b, "b")):
        stats = wait_for(lambda d=deployment: (s := d.about()["stats"])["received"] >= 2 * total and s, timeout=20)
        assert stats["stored"] == total, stats  # all of its own
        assert stats["unknown_device"] == total, stats  # all of the other's: ignored, counted
        for device in DEVICES:
            entity_id = f"urn:ngsi-ld:WeatherObserved:{own}-{device}"
            assert len(observed(deployment.database, entity_id)) == MEASURES


def test_the_default_group_is_the_deployments(tmp_path: Path) -> None:
    one = tmp_path / "one.db"
    assert share_group("auto", str(one)) == share_group("auto", os.path.relpath(one))  # the same file
    assert share_group("auto", str(one)) != share_group("auto", str(tmp_path / "two.db"))
    assert share_group("auto", str(one)).startswith("cityos-")
    pg = "postgresql://u:secret@DB.example:5432/city?search_path=north"
    assert share_group("auto", pg) == share_group("auto", "postgresql://other@db.example/city?search_path=north")
    assert share_group("auto", pg) != share_group("auto", "postgresql://db.example/city?search_path=south")
    assert "secret" not in deployment_identity(pg)
    assert share_group("none", pg) == share_group("", pg) == ""
    assert share_group("workers-of-city", pg) == "workers-of-city"
