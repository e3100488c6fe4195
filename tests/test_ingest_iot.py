"""The IoT Agent: payload parsing, provisioning, and measures over real HTTP and a real Mosquitto
broker into a real `cityos serve` process, read back through the NGSI-LD API."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import paho.mqtt.publish as mqtt_publish
import pytest

from backends import cli_env
from cityos.ingest.iot_mqtt import parse_topic
from cityos.ingest.iot_payloads import PayloadError, detect_format, parse_json, parse_single, parse_ultralight
from notify_helpers import free_port, mosquitto, wait_for

# -- payloads (pure) ------------------------------------------------------------------------------


class TestUltraLight:
    def test_pairs(self) -> None:
        [measure] = parse_ultralight(b"t|23.5|h|40")
        assert measure.values == {"t": "23.5", "h": "40"}
        assert measure.timestamp is None

    def test_groups_and_timestamps(self) -> None:
        measures = parse_ultralight(b"2024-05-01T10:00:00Z|t|1#t|2|TimeInstant|2024-05-01T12:00:00+02:00")
        assert [m.values for m in measures] == [{"t": "1"}, {"t": "2"}]
        assert [m.timestamp for m in measures] == ["2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z"]

    @pytest.mark.parametrize(
        ("payload", "reason"),
        [
            (b"", "empty"),
            (b"t|23|h", "odd number"),
            (b"t||h|4", "no value"),
            (b"|4", "empty attribute name"),
            (b"t|1|t|2", "repeats"),
            (b"\xff\xfe", "not UTF-8"),
            (b"not-a-time|t|1", "odd number"),
            (b"2024-13-45T99:00:00Z|t|1", "not an ISO 8601"),
        ],
    )
    def test_malformed(self, payload: bytes, reason: str) -> None:
        with pytest.raises(PayloadError, match=reason):
            parse_ultralight(payload)


class TestJsonPayload:
    def test_object_and_array(self) -> None:
        assert parse_json(b'{"t": 21.5, "on": true}')[0].values == {"t": 21.5, "on": True}
        measures = parse_json(b'[{"t": 1, "TimeInstant": "2024-01-01T00:00:00Z"}, {"t": 2}]')
        assert [m.timestamp for m in measures] == ["2024-01-01T00:00:00Z", None]

    @pytest.mark.parametrize("payload", [b"{", b"[]", b"[1]", b'{"t": null}', b"{}", b'{"TimeInstant": "x", "t": 1}'])
    def test_malformed(self, payload: bytes) -> None:
        with pytest.raises(PayloadError):
            parse_json(payload)

    def test_detect_and_single(self) -> None:
        assert detect_format(b'  {"t": 1}') == "json"
        assert detect_format(b"t|1") == "ul"
        assert parse_single(b"42", "t", "json")[0].values == {"t": 42}
        assert parse_single(b"42", "t", None)[0].values == {"t": "42"}


def test_topics() -> None:
    assert parse_topic("/key/dev-1/attrs") == parse_topic("/key/dev-1/attrs")
    address = parse_topic("/json/key/dev-1/attrs/t")
    assert address is not None
    assert (address.apikey, address.device_id, address.fmt, address.object_id) == ("key", "dev-1", "json", "t")
    plain = parse_topic("/key/dev-1/attrs")
    assert plain is not None and plain.fmt is None and plain.object_id is None
    for topic in ("key/dev/attrs", "/key/dev/cmd", "/key//attrs", "/key/dev/attrs/", "/a/b/c/d/e/f/g"):
        assert parse_topic(topic) is None


# -- a real server with a real broker -------------------------------------------------------------


class Agent:
    """The running server and the broker it subscribes to."""

    def __init__(self, base: str, mqtt_port: int) -> None:
        self.base = base
        self.mqtt_port = mqtt_port
        self.http = httpx.Client(base_url=base, timeout=10)

    def about(self) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get("/iot/about").json()
        return body

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.about()["stats"]
        return stats

    def entity(self, entity_id: str, tenant: str = "") -> httpx.Response:
        headers = {"NGSILD-Tenant": tenant} if tenant else {}
        return self.http.get(f"/ngsi-ld/v1/entities/{entity_id}", headers=headers)

    def publish(self, topic: str, payload: bytes | str) -> None:
        mqtt_publish.single(topic, payload, qos=1, hostname="127.0.0.1", port=self.mqtt_port)

    def group(self, entity_type: str, **extra: Any) -> str:
        apikey = "k" + uuid.uuid4().hex[:10]
        response = self.http.post(
            "/iot/services", json={"services": [{"apikey": apikey, "entity_type": entity_type, **extra}]}
        )
        assert response.status_code == 201, response.text
        return apikey


@pytest.fixture(scope="module")
def agent(module_db_url: str) -> Iterator[Agent]:
    with mosquitto() as mqtt_port:
        port = free_port()
        env = cli_env(
            CITYOS_DATABASE=module_db_url,
            CITYOS_PORT=str(port),
            CITYOS_IOT_MQTT_URL=f"mqtt://127.0.0.1:{mqtt_port}",
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "cityos", "serve", "--log-level", "warning"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            running = Agent(f"http://127.0.0.1:{port}", mqtt_port)

            def connected() -> bool:
                try:
                    return bool(running.about()["mqtt"]["connected"])
                except httpx.TransportError:
                    assert process.poll() is None, "the server exited"
                    return False

            wait_for(connected, timeout=20)
            yield running
            running.http.close()
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class TestProvisioning:
    def test_groups_and_devices(self, agent: Agent) -> None:
        headers = {"fiware-service": "prov", "fiware-servicepath": "/north"}
        group = {
            "apikey": "prov-key",
            "entity_type": "WeatherObserved",
            "resource": "/iot/d",
            "attributes": [{"object_id": "t", "name": "temperature", "type": "Number"}],
        }
        assert agent.http.post("/iot/services", json={"services": [group]}, headers=headers).status_code == 201
        again = agent.http.post("/iot/services", json={"services": [group]}, headers=headers)
        assert again.status_code == 409
        listed = agent.http.get("/iot/services", headers=headers).json()
        assert listed["count"] == 1 and listed["services"][0]["subservice"] == "/north"
        assert agent.http.get("/iot/services").json()["count"] >= 0  # other tenants do not see it
        assert all(g["apikey"] != "prov-key" for g in agent.http.get("/iot/services").json()["services"])

        device = {
            "device_id": "ws-1",
            "entity_name": "urn:ngsi-ld:WeatherObserved:ws-1",
            "transport": "HTTP",
            "attributes": [{"object_id": "h", "name": "relativeHumidity", "type": "Number"}],
        }
        assert agent.http.post("/iot/devices", json={"devices": [device]}, headers=headers).status_code == 201
        shown = agent.http.get("/iot/devices/ws-1", headers=headers).json()
        assert shown["apikey"] == "prov-key"  # the tenant's only group
        assert shown["entity_type"] == "WeatherObserved"
        assert agent.http.post("/iot/devices", json={"devices": [device]}, headers=headers).status_code == 409
        assert agent.http.get("/iot/devices/ws-1").status_code == 404  # another tenant
        bad = agent.http.post("/iot/devices", json={"devices": [{"device_id": "x/y"}]}, headers=headers)
        assert bad.status_code == 400
        assert agent.http.post("/iot/devices", json={"nope": []}, headers=headers).status_code == 400

        measure = agent.http.post(
            "/iot/d", params={"k": "prov-key", "i": "ws-1"}, content=b"t|19.5|h|40", headers=headers
        )
        assert measure.status_code == 200, measure.text
        entity = agent.entity("urn:ngsi-ld:WeatherObserved:ws-1", tenant="prov").json()
        assert entity["temperature"]["value"] == 19.5 and entity["relativeHumidity"]["value"] == 40

        assert agent.http.delete("/iot/devices/ws-1", headers=headers).status_code == 204
        assert agent.http.delete("/iot/devices/ws-1", headers=headers).status_code == 404
        assert agent.http.delete("/iot/services", params={"apikey": "prov-key"}, headers=headers).status_code == 204
        assert agent.http.get("/iot/services", headers=headers).json()["count"] == 0


class TestHttpMeasures:
    def test_ultralight_with_mapping_units_and_statics(self, agent: Agent) -> None:
        apikey = agent.group(
            "AirQualityObserved",
            attributes=[
                {
                    "object_id": "n",
                    "name": "no2",
                    "type": "Number",
                    "metadata": {"unitCode": {"type": "Text", "value": "GQ"}},
                },
                {"object_id": "loc", "name": "location", "type": "geo:point"},
            ],
            static_attributes=[{"name": "refDevice", "type": "Relationship", "value": "urn:ngsi-ld:Device:aq-1"}],
        )
        before = time.time()
        response = agent.http.post("/iot/d", params={"k": apikey, "i": "aq-1"}, content=b"n|41.5|loc|36.9,-116.76|c|ok")
        assert response.status_code == 200, response.text
        entity = agent.entity("urn:ngsi-ld:AirQualityObserved:aq-1").json()
        assert entity["type"] == "AirQualityObserved"
        assert entity["no2"]["value"] == 41.5 and entity["no2"]["unitCode"] == "GQ"
        assert entity["location"] == {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [-116.76, 36.9]},
            "observedAt": entity["no2"]["observedAt"],
        }
        assert entity["c"]["value"] == "ok"  # unmapped: named and typed as sent
        assert entity["refDevice"] == {"type": "Relationship", "object": "urn:ngsi-ld:Device:aq-1"}
        observed = entity["no2"]["observedAt"]
        assert observed.endswith("Z") and abs(_epoch(observed) - before) < 60

    def test_json_with_device_timestamp(self, agent: Agent) -> None:
        apikey = agent.group("WeatherObserved", resource="/iot/json")
        body = b'{"temperature": 21.25, "TimeInstant": "2024-05-01T12:00:00+02:00", "status": {"ok": true}}'
        assert agent.http.post("/iot/json", params={"k": apikey, "i": "w-1"}, content=body).status_code == 200
        entity = agent.entity("urn:ngsi-ld:WeatherObserved:w-1").json()
        assert entity["temperature"] == {"type": "Property", "value": 21.25, "observedAt": "2024-05-01T10:00:00Z"}
        assert entity["status"]["value"] == {"ok": True}

    def test_malformed_measures_are_counted_and_store_nothing(self, agent: Agent) -> None:
        apikey = agent.group("Device", attributes=[{"object_id": "b", "name": "batteryLevel", "type": "Number"}])
        url = "/iot/d"
        assert agent.http.post(url, params={"k": apikey, "i": "d-1"}, content=b"b|0.5|s|on").status_code == 200
        stored = agent.entity("urn:ngsi-ld:Device:d-1").json()
        start = agent.stats()
        for payload in (b"b|0.4|s", b"b|low|s|off", b"s|off#b|x", b"b|0.3|@bad|1"):
            response = agent.http.post(url, params={"k": apikey, "i": "d-1"}, content=payload)
            assert response.status_code == 400, payload
            assert "d-1" in response.json()["detail"]
        assert agent.http.post("/iot/json", params={"k": apikey, "i": "d-1"}, content=b'{"b": ').status_code == 400
        assert agent.stats()["malformed"] == start["malformed"] + 5
        assert agent.entity("urn:ngsi-ld:Device:d-1").json() == stored  # nothing partial
        # a new device whose first measure is malformed gets no entity at all
        assert agent.http.post(url, params={"k": apikey, "i": "d-2"}, content=b"b|empty").status_code == 400
        assert agent.entity("urn:ngsi-ld:Device:d-2").status_code == 404

    def test_unknown_api_key(self, agent: Agent) -> None:
        start = agent.stats()["unknown_device"]
        response = agent.http.post("/iot/d", params={"k": "no-such-key", "i": "x"}, content=b"t|1")
        assert response.status_code == 404
        assert agent.stats()["unknown_device"] == start + 1
        assert agent.http.post("/iot/d", params={"k": "no-such-key"}, content=b"t|1").status_code == 400


class TestMqttMeasures:
    def test_ultralight_json_and_single_attribute(self, agent: Agent) -> None:
        apikey = agent.group(
            "OffStreetParking",
            attributes=[{"object_id": "free", "name": "availableSpotNumber", "type": "Integer"}],
        )
        entity_id = "urn:ngsi-ld:OffStreetParking:p-1"
        agent.publish(f"/{apikey}/p-1/attrs", "free|87|state|open")
        entity = wait_for(lambda: _ok(agent.entity(entity_id)))
        assert entity["availableSpotNumber"]["value"] == 87
        assert entity["state"]["value"] == "open"
        assert "observedAt" in entity["availableSpotNumber"]

        agent.publish(f"/json/{apikey}/p-1/attrs", '{"free": 85, "TimeInstant": "2024-06-01T08:00:00Z"}')
        entity = wait_for(lambda: _changed(agent, entity_id, "availableSpotNumber", 85))
        assert entity["availableSpotNumber"]["observedAt"] == "2024-06-01T08:00:00Z"

        agent.publish(f"/{apikey}/p-1/attrs/free", "80")
        wait_for(lambda: _changed(agent, entity_id, "availableSpotNumber", 80))

    def test_malformed_messages_do_not_stop_the_agent(self, agent: Agent) -> None:
        apikey = agent.group(
            "WasteContainer", attributes=[{"object_id": "f", "name": "fillingLevel", "type": "Number"}]
        )
        entity_id = "urn:ngsi-ld:WasteContainer:bin-1"
        agent.publish(f"/{apikey}/bin-1/attrs", "f|0.5")
        wait_for(lambda: _ok(agent.entity(entity_id)))
        stored = agent.entity(entity_id).json()
        start = agent.stats()["malformed"]
        for payload in ("f|0.6|x", "f|full", b"\xff\xfe", "f|0.7#f|nope"):
            agent.publish(f"/{apikey}/bin-1/attrs", payload)
        agent.publish(f"/json/{apikey}/bin-1/attrs", "{not json")
        wait_for(lambda: agent.stats()["malformed"] >= start + 5)
        assert agent.entity(entity_id).json() == stored
        agent.publish(f"/{apikey}/bin-1/attrs", "f|0.9")  # the agent still runs
        wait_for(lambda: _changed(agent, entity_id, "fillingLevel", 0.9))
        assert agent.about()["mqtt"]["connected"] is True

    def test_a_burst_is_stored_whole_in_order(self, agent: Agent) -> None:
        """Messages that arrive together are written in batches: every measure is in the history,
        each device's last one is its current value, and the counters add up."""
        apikey = agent.group(
            "WasteContainer", attributes=[{"object_id": "f", "name": "fillingLevel", "type": "Integer"}]
        )
        start = agent.stats()
        count = 300
        messages: list[Any] = [
            {"topic": f"/{apikey}/burst-{n % 2}/attrs", "payload": f"f|{n}", "qos": 1} for n in range(count)
        ]
        messages.insert(100, {"topic": f"/{apikey}/burst-0/attrs", "payload": "f|many", "qos": 1})
        mqtt_publish.multiple(messages, hostname="127.0.0.1", port=agent.mqtt_port)
        stats = wait_for(lambda: (s := agent.stats())["received"] >= start["received"] + count + 1 and s, timeout=30)
        assert stats["stored"] - start["stored"] == count
        assert stats["malformed"] - start["malformed"] == 1
        for device, last in ((0, count - 2), (1, count - 1)):
            entity_id = f"urn:ngsi-ld:WasteContainer:burst-{device}"
            assert agent.entity(entity_id).json()["fillingLevel"]["value"] == last
            history = agent.http.get(
                f"/ngsi-ld/v1/temporal/entities/{entity_id}", params={"attrs": "fillingLevel", "lastN": 1000}
            ).json()["fillingLevel"]
            assert sorted(i["value"] for i in history) == list(range(device, count, 2))


def _ok(response: httpx.Response) -> Any:
    return response.json() if response.status_code == 200 else None


def _changed(agent: Agent, entity_id: str, attr: str, value: Any) -> Any:
    entity = _ok(agent.entity(entity_id))
    return entity if entity and entity.get(attr, {}).get("value") == value else None


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()
