"""Scenario 9: the IoT Agent's MQTT measures, end to end. A real Mosquitto on a free port, a second
`cityos serve` on the same database subscribed to it (--iot-mqtt-url), a service group and devices
provisioned through the IoT Agent's own API (each device is the sensor of one stored OffStreetParking),
and a publisher in the load-generating process sending UltraLight measures (`f|<free spots>`, QoS 1) at
full speed. The rate is measures stored per second: the agent's `stored` counter (GET /iot/about; it
counts a message once its entity update is committed), read at both ends of a window after a warm-up.

The publisher keeps at most BACKLOG_SECONDS of measures in flight (published, not stored yet, at the
rate stored so far, and at least MIN_BACKLOG), reading the same counter, so the agent never waits for
work, the broker's queue stays bounded and a repeat ends without a long drain; Mosquitto runs with no
queue limit, so a measure the store did not take is counted as an error, not dropped silently."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from benchmarks.entities import ENTITY_TYPE, entity_id
from benchmarks.loadgen import LoadResult
from benchmarks.report import Row
from benchmarks.servers import (
    ServerProcess,
    StartFailed,
    cityos_server,
    free_port,
    listening,
    pinned,
    stop_process,
)
from benchmarks.targets import target

if TYPE_CHECKING:
    from benchmarks.runner import Bench

NAME = "9. IoT Agent MQTT measures, end to end"
BACKLOG_SECONDS = 0.5
# at least two of the agent's batches (iot_mqtt.MAX_BATCH) in flight: with less, an agent that writes
# what has arrived in one transaction is starved into small batches, and the rate it reaches depends
# on the pipeline's latency (a loaded machine) more than on its throughput
MIN_BACKLOG = 1000
CHUNK = 250
DEVICES = 1000
ATTRIBUTE = {"object_id": "f", "name": "availableSpotNumber", "type": "Integer"}


@dataclass(frozen=True)
class MqttSpec:
    """One publishing run: `warmup` seconds, then a `duration` window whose stored measures are counted."""

    mqtt_port: int
    server: str  # the agent's base URL, for its counters
    apikey: str
    devices: int
    warmup: float
    duration: float
    seed: int = 0


class Mosquitto:
    """`with Mosquitto(workdir) as broker`: a broker on a free port (broker.port), stopped by pid on exit."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            raise StartFailed("no mosquitto binary (apt-get install mosquitto)")
        self.port = free_port()
        config = workdir / "mosquitto.conf"
        # no queue limit: a slow subscriber makes the queue grow instead of losing measures
        config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\npersistence false\n"
        )
        self.args = pinned([binary, "-c", str(config)])
        self.log = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Mosquitto:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise StartFailed(f"mosquitto did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        stop_process(self.process)


def _stored(http: httpx.Client) -> int:
    count: int = http.get("/iot/about").json()["stats"]["stored"]
    return count


def run_publisher(spec: MqttSpec) -> LoadResult:
    """In the load-generating process: publish at full speed (within BACKLOG) for warm-up + window, then
    wait for the backlog to be stored; ops are the measures stored inside the window."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cityos-bench-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", spec.mqtt_port)
    client.loop_start()
    result = LoadResult()
    published = 0
    with httpx.Client(base_url=spec.server, timeout=30) as http:
        stored0 = _stored(http)
        start = time.perf_counter()
        window_start, window_end = start + spec.warmup, start + spec.warmup + spec.duration
        first: tuple[float, int] | None = None
        while True:
            now = time.perf_counter()
            stored = _stored(http) - stored0
            if first is None and now >= window_start:
                first = (now, stored)
            if now >= window_end:
                break
            backlog = max(MIN_BACKLOG, int(stored / (now - start) * BACKLOG_SECONDS))
            if published - stored >= backlog:
                time.sleep(0.005)
                continue
            for _ in range(min(CHUNK, backlog - (published - stored))):
                device = (published * 7919 + spec.seed) % spec.devices
                client.publish(f"/{spec.apikey}/sensor-{device}/attrs", f"f|{published % 600}", qos=1)
                published += 1
        end = (time.perf_counter(), stored)
        assert first is not None
        result.ops, result.elapsed = end[1] - first[1], end[0] - first[0]
        # the rest of the backlog, so the next repeat starts from an idle agent; lost measures are errors
        last, last_change = stored, time.monotonic()
        while stored < published and time.monotonic() - last_change < 5:
            time.sleep(0.05)
            stored = _stored(http) - stored0
            if stored != last:
                last, last_change = stored, time.monotonic()
    client.loop_stop()
    client.disconnect()
    if stored < published:
        result.errors = published - stored
        result.error_sample = f"{published - stored} of {published} published measures not stored"
    return result


def _provision(http: httpx.Client, stored: int) -> tuple[str, int]:
    """A service group and its devices, each the sensor of one stored entity; (apikey, devices)."""
    apikey = "bench" + uuid.uuid4().hex[:8]
    group = {"apikey": apikey, "entity_type": ENTITY_TYPE, "attributes": [ATTRIBUTE]}
    response = http.post("/iot/services", json={"services": [group]})
    if response.status_code != 201:
        raise StartFailed(f"provisioning the service group: {response.status_code} {response.text[:300]}")
    devices = min(DEVICES, stored)
    for first in range(0, devices, 500):
        body = [
            {"device_id": f"sensor-{i}", "apikey": apikey, "entity_name": entity_id(i), "transport": "MQTT"}
            for i in range(first, min(first + 500, devices))
        ]
        response = http.post("/iot/devices", json={"devices": body})
        if response.status_code != 201:
            raise StartFailed(f"provisioning devices: {response.status_code} {response.text[:300]}")
    return apikey, devices


def _connected(server: ServerProcess) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{server.base}/iot/about", timeout=5).json()["mqtt"].get("connected"):
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise StartFailed("the IoT Agent did not connect to mosquitto in 30 s")
        time.sleep(0.1)


def mqtt_row(bench: Bench, backend: str, url: str | None, stored: int) -> Row:
    """The row, measured on a server of its own on the back-end's database (stopped on the way out)."""
    row = Row(NAME, unit="measures/s", backend=backend, target=target(NAME, backend))
    config = bench.config
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            broker = stack.enter_context(Mosquitto(bench.workdir))
        except StartFailed as exc:
            row.skipped = f"skipped: {exc}"
            return row
        extra = ["--iot-mqtt-url", f"mqtt://127.0.0.1:{broker.port}"]
        database = None if url else bench.workdir / "bench.db"
        server = stack.enter_context(cityos_server(bench.workdir, url, name="iot", extra=extra, database=database))
        _connected(server)
        with httpx.Client(base_url=server.base, timeout=60) as http:
            apikey, devices = _provision(http, stored)
        setup = time.monotonic() - started
        bench.log(f"  {NAME} … ({devices} devices, mosquitto on port {broker.port}, set up in {setup:.1f} s)")
        for index in range(config.repeat):
            spec = MqttSpec(broker.port, server.base, apikey, devices, config.warmup, config.duration, seed=index)
            with httpx.Client(base_url=server.base, timeout=60) as http:
                stored, cpu = _stored(http), server.cpu_seconds()
                result = bench.pool.submit(run_publisher, spec).result()
                stored, cpu = _stored(http) - stored, server.cpu_seconds() - cpu
            if stored and server.pid:  # the server's CPU per measure stored over the whole repeat
                row.cpu_ms.append(cpu * 1000 / stored)
            bench.record(row, result)
            bench.sample_load()
        row.rss_mb = server.peak_rss_mb()
    return row
