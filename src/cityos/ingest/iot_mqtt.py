"""The IoT Agent's MQTT transport: subscribe to an external broker, hand each message to the agent.

Topics follow the FIWARE IoT Agents: `/{apikey}/{device_id}/attrs` (a whole payload) and
`/{apikey}/{device_id}/attrs/{object_id}` (one bare value), optionally prefixed with `/ul` or
`/json` to name the payload format. The connection is kept up with a capped backoff. What has
arrived (up to MAX_BATCH messages) is written in one transaction, in arrival order, so a device's
measures stay in order; the inbox is bounded (see Inbox).

Delivery: paho acknowledges a QoS 1 message when it reads it (aiomqtt offers no manual
acknowledgement), and the session is clean, so a measure is delivered at most once: one received
and not yet committed (at most MAX_INBOX + MAX_BATCH of them) is lost if the process stops.

The workers of one deployment share one MQTT shared subscription, so each measure is applied once.
The group is derived from the database by default: another deployment on the same broker (another
database) is in another group and receives every measure too; each ignores, and counts, the
measures of devices it does not know, which another deployment may own.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from cityos.entities.values import now
from cityos.errors import FailureLog
from cityos.ingest.iot_agent import DeviceMessage, IotAgent
from cityos.ingest.iot_payloads import FORMATS
from cityos.store import is_postgres
from cityos.tasks import stop_task

log = logging.getLogger("cityos.iot")
SUBSCRIPTIONS = tuple(prefix + suffix for prefix in ("", "/ul", "/json") for suffix in ("/+/+/attrs", "/+/+/attrs/+"))
PORTS = {"mqtt": 1883, "mqtts": 8883}
MAX_BACKOFF = 30.0
MAX_BATCH = 500  # device messages written in one transaction
MAX_INBOX = 5000  # messages received and not yet written; more wait at the broker


IDENTITY_PARAMETERS = ("host", "port", "dbname", "search_path", "options")


def deployment_identity(database: str) -> str:
    """What names one deployment's data: a SQLite file's absolute path (links resolved), or a
    PostgreSQL server, database and search_path (not the user or the password)."""
    if not is_postgres(database):
        return "sqlite:" + os.path.realpath(database)
    parts = urlsplit(database)
    params = sorted((k, v) for k, v in parse_qsl(parts.query) if k in IDENTITY_PARAMETERS)
    host = (parts.hostname or "").lower()
    return f"postgresql://{host}:{parts.port or 5432}{parts.path or '/'}?{params}"


def share_group(setting: str, database: str) -> str:
    """The shared-subscription group of the iot_mqtt_share_group setting ("" for plain topics)."""
    if setting in ("", "none"):
        return ""
    if setting != "auto":
        return setting
    return "cityos-" + hashlib.sha256(deployment_identity(database).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class TopicAddress:
    apikey: str
    device_id: str
    fmt: str | None = None
    object_id: str | None = None


def parse_topic(topic: str) -> TopicAddress | None:
    """Where a measure topic points; None for topics that are not device measures."""
    levels = topic.split("/")
    if len(levels) < 4 or levels[0] != "":
        return None
    fmt = None
    if levels[1] in FORMATS and len(levels) in (5, 6) and levels[4] == "attrs":
        fmt = levels[1]
        levels = ["", *levels[2:]]
    if len(levels) not in (4, 5) or levels[3] != "attrs" or not levels[1] or not levels[2]:
        return None
    object_id = levels[4] if len(levels) == 5 else None
    if object_id == "":
        return None
    return TopicAddress(levels[1], levels[2], fmt, object_id)


class MqttTransport:
    def __init__(self, agent: IotAgent, url: str, share_group: str = "") -> None:
        parts = urlsplit(url)
        if parts.scheme not in PORTS or not parts.hostname:
            raise ValueError(f"iot_mqtt_url must look like mqtt://host:1883 or mqtts://host:8883, got {url!r}")
        self.agent = agent
        self.url = url
        # a shared subscription: the broker hands each message to one worker of the group only
        self.topics = [f"$share/{share_group}/{topic}" if share_group else topic for topic in SUBSCRIPTIONS]
        self._parts = parts
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.last_error = ""
        self.failures = FailureLog(log)  # a failure met by every message is not logged for each
        self._paho: Any = None  # the connected paho client, while connected
        self._paused: int | None = None  # the socket whose reads are paused (a full inbox)
        self._batched: _BatchedIo | None = None  # the connection's buffered reads, while connected

    def status(self) -> dict[str, Any]:
        safe = self._parts._replace(netloc=self._parts.netloc.rpartition("@")[2]).geturl()
        return {"enabled": True, "broker": safe, "connected": self.connected.is_set(), "lastError": self.last_error}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cityos-iot-mqtt")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        import aiomqtt  # imported only when MQTT is configured

        parts = self._parts
        backoff = 0.5
        while True:
            inbox = Inbox(self)
            client = aiomqtt.Client(
                parts.hostname or "",
                parts.port or PORTS[parts.scheme],
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                identifier=f"cityos-iot-{uuid.uuid4().hex[:12]}",
                tls_context=ssl.create_default_context() if parts.scheme == "mqtts" else None,
                queue_type=inbox.queue_type,
            )
            self._paho = client._client  # the paho client underneath: its socket, to pause reading
            try:
                async with client:
                    self._batched = _BatchedIo.install(self._paho)
                    if self._batched is not None and (sock := self._paho.socket()) is not None:
                        # this transport's reader (aiomqtt's reads one packet a wake-up): every packet
                        # the read brought, then back to the loop
                        loop = asyncio.get_running_loop()
                        loop.remove_reader(sock.fileno())
                        loop.add_reader(sock.fileno(), self._read)
                    for topic in self.topics:
                        await client.subscribe(topic, qos=1)
                    self.connected.set()
                    self.last_error = ""
                    backoff = 0.5
                    log.info("IoT Agent subscribed to device measures on %s", self.status()["broker"])
                    async for first in client.messages:  # waits for a message, or the connection's end
                        batch = inbox.take(cast(Arrived, first), MAX_BATCH)
                        await self._dispatch(batch)
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
                log.warning("IoT Agent MQTT connection lost (%s); retrying in %.1f s", exc, backoff)
            finally:
                self.connected.clear()
                self._paused = None
                self._paho = None
                self._batched = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    # -- backpressure: while the inbox is full the socket is not read, so the broker holds the rest
    def _pause(self) -> None:
        sock = self._paho.socket() if self._paho is not None else None
        if self._paused is None and sock is not None:
            self._paused = sock.fileno()
            asyncio.get_running_loop().remove_reader(self._paused)

    def _resume(self) -> None:
        paused, self._paused = self._paused, None
        sock = self._paho.socket() if self._paho is not None else None
        # only the socket it paused: a connection closed meanwhile may have left its number to another
        if paused is not None and sock is not None and sock.fileno() == paused:
            loop = asyncio.get_running_loop()
            loop.add_reader(paused, self._read)
            if self._batched is not None and self._batched.buffered():
                loop.call_soon(self._read)  # bytes read before the pause: the socket may not wake it

    def _read(self) -> None:
        """What aiomqtt's reader does (read while a TLS socket holds decoded bytes); a broken
        connection is reported by paho to aiomqtt, which ends the message iteration."""
        paho = self._paho
        if paho is None:
            return
        batched = self._batched
        try:
            while True:
                paho.loop_read()
                if self._paused is not None or self._paho is not paho:  # a full inbox, or a closed connection
                    break
                sock = paho.socket()
                if sock is None:
                    break
                if not getattr(sock, "pending", lambda: 0)() and (batched is None or not batched.buffered()):
                    break
        except Exception:
            self.failures.failed("read", "IoT Agent could not read from the MQTT broker")
            paho.disconnect()

    async def _dispatch(self, batch: list[Arrived]) -> None:
        messages = []
        for received_at, message in batch:
            address = parse_topic(message.topic.value)
            if address is None:
                continue
            payload = message.payload
            if isinstance(payload, bytes):
                data = payload
            elif isinstance(payload, str):
                data = payload.encode()
            elif isinstance(payload, bytearray):
                data = bytes(payload)
            else:
                data = b"" if payload is None else str(payload).encode()
            messages.append(
                DeviceMessage(address.apikey, address.device_id, data, address.fmt, address.object_id, received_at)
            )
        if not messages:
            return
        try:
            await self.agent.handle_many(messages)
        except Exception:  # the store failed (the rest of this batch is lost); the agent goes on
            self.failures.failed("batch", "IoT Agent failed on a batch of %d device messages", len(messages))


Arrived = tuple[str, Any]  # (arrival time, aiomqtt.Message)
PUBACK = 0x40  # an MQTT PUBACK packet's first byte


class _BatchedIo:
    """The connection's socket calls, batched. paho reads a packet in three reads (its first byte,
    its length, its body) and sends each QoS 1 acknowledgement (4 bytes) with a send of its own:
    about four system calls a measure, 13% of the busy samples of a server storing MQTT measures
    (docs/performance.md, issue 15 eleventh pass). Here paho's reads are served from one buffer filled by
    a read of up to READ bytes, and the acknowledgements waiting to be sent go out in one send. The
    bytes read and sent are the same, in the same order; paho's own calls do the socket work (its
    error handling, TLS included). Installed on paho's private `_sock_recv` and `_packet_write`
    when they are there (paho-mqtt 2.x); without them nothing is installed and paho works alone."""

    READ = 65536

    def __init__(self, paho: Any) -> None:
        self._recv = paho._sock_recv
        self._write = paho._packet_write
        self._out = paho._out_packet
        self._data = b""
        self._at = 0

    @classmethod
    def install(cls, paho: Any) -> _BatchedIo | None:
        if not all(hasattr(paho, name) for name in ("_sock_recv", "_packet_write", "_out_packet")):
            return None
        batched = cls(paho)
        paho._sock_recv = batched.recv
        paho._packet_write = batched.packet_write
        return batched

    def buffered(self) -> bool:
        """Whether bytes read are still waiting for paho (the socket's readiness does not show them)."""
        return self._at < len(self._data)

    def recv(self, size: int) -> bytes:
        at, held = self._at, self._data
        if at < len(held):
            chunk = held[at : at + size]
            self._at = at + len(chunk)
            return chunk
        data: bytes = self._recv(self.READ)  # BlockingIOError, b"" at the end, errors: as paho's own read
        if len(data) <= size:
            return data
        self._data, self._at = data, size
        return data[:size]

    def packet_write(self) -> Any:
        out = self._out
        if len(out) > 1 and all(p["command"] == PUBACK and p["pos"] == 0 for p in out):
            joined = b"".join(p["packet"] for p in out)
            out.clear()
            out.append(
                {
                    "command": PUBACK,
                    "mid": 0,
                    "qos": 1,
                    "pos": 0,
                    "to_process": len(joined),
                    "packet": joined,
                    "info": None,
                }
            )
        return self._write()


class Inbox:
    """The messages received and not yet written, in arrival order, each with its arrival time:
    the queue aiomqtt puts them in (its queue_type), bounded by pausing the socket's reads at
    MAX_INBOX and resuming below half of it (paho acknowledges a QoS 1 message as it reads it, so
    a queue that refused one would lose it)."""

    def __init__(self, transport: MqttTransport) -> None:
        self.transport = transport
        self.queue: asyncio.Queue[Arrived] | None = None
        self._millisecond, self._stamp = 0, ""
        inbox = self

        class Queue(asyncio.Queue):  # type: ignore[type-arg]  # made by aiomqtt.Client
            def __init__(self, maxsize: int = 0) -> None:
                super().__init__(maxsize)
                inbox.queue = self

            def put_nowait(self, item: Any) -> None:
                super().put_nowait((inbox.arrival(), item))
                if self.qsize() >= MAX_INBOX:
                    transport._pause()

        self.queue_type = Queue

    def arrival(self) -> str:
        """The time now as NGSI-LD writes it (values.now), formatted once per millisecond: the
        messages of one read share it."""
        millisecond = time.time_ns() // 1_000_000
        if millisecond != self._millisecond:
            self._millisecond, self._stamp = millisecond, now()
        return self._stamp

    def take(self, first: Arrived, limit: int) -> list[Arrived]:
        """`first` and what else has arrived, up to `limit` messages in all."""
        batch = [first]
        queue = self.queue
        if queue is not None:
            while len(batch) < limit and not queue.empty():
                batch.append(queue.get_nowait())
            if queue.qsize() < MAX_INBOX // 2:
                self.transport._resume()
        return batch
