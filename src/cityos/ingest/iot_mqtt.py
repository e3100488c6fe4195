"""The IoT Agent's MQTT transport: subscribe to an external broker, hand each message to the agent.

Topics follow the FIWARE IoT Agents: `/{apikey}/{device_id}/attrs` (a whole payload) and
`/{apikey}/{device_id}/attrs/{object_id}` (one bare value), optionally prefixed with `/ul` or
`/json` to name the payload format. The connection is kept up with a capped backoff; messages
are applied one after another, so a device's measures stay in order.

The workers of one deployment share one MQTT shared subscription, so each measure is applied once.
The group is derived from the database by default: another deployment on the same broker (another
database) is in another group and receives every measure too; each ignores, and counts, the
measures of devices it does not know, which another deployment may own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from cityos.errors import FailureLog
from cityos.ingest.iot_agent import IotAgent
from cityos.ingest.iot_payloads import FORMATS
from cityos.store import is_postgres

log = logging.getLogger("cityos.iot")
SUBSCRIPTIONS = tuple(prefix + suffix for prefix in ("", "/ul", "/json") for suffix in ("/+/+/attrs", "/+/+/attrs/+"))
PORTS = {"mqtt": 1883, "mqtts": 8883}
MAX_BACKOFF = 30.0


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

    def status(self) -> dict[str, Any]:
        safe = self._parts._replace(netloc=self._parts.netloc.rpartition("@")[2]).geturl()
        return {"enabled": True, "broker": safe, "connected": self.connected.is_set(), "lastError": self.last_error}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cityos-iot-mqtt")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        import aiomqtt  # imported only when MQTT is configured

        parts = self._parts
        backoff = 0.5
        while True:
            client = aiomqtt.Client(
                parts.hostname or "",
                parts.port or PORTS[parts.scheme],
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                identifier=f"cityos-iot-{uuid.uuid4().hex[:12]}",
                tls_context=ssl.create_default_context() if parts.scheme == "mqtts" else None,
            )
            try:
                async with client:
                    for topic in self.topics:
                        await client.subscribe(topic, qos=1)
                    self.connected.set()
                    self.last_error = ""
                    backoff = 0.5
                    log.info("IoT Agent subscribed to device measures on %s", self.status()["broker"])
                    async for message in client.messages:
                        await self._dispatch(message.topic.value, message.payload)
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
                log.warning("IoT Agent MQTT connection lost (%s); retrying in %.1f s", exc, backoff)
            finally:
                self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _dispatch(self, topic: str, payload: Any) -> None:
        address = parse_topic(topic)
        if address is None:
            return
        if isinstance(payload, str):
            data = payload.encode()
        elif isinstance(payload, bytes | bytearray):
            data = bytes(payload)
        else:
            data = b"" if payload is None else str(payload).encode()
        try:
            await self.agent.handle(
                address.apikey, address.device_id, data, fmt=address.fmt, object_id=address.object_id
            )
        except Exception:  # one message never stops the agent; the error is logged
            # keyed by nothing a client chooses: every device and key together, per kind of failure
            self.failures.failed("measure", "IoT Agent failed on a message from device %s", address.device_id)
