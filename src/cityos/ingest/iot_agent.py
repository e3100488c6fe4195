"""The IoT Agent core, independent of transports: device messages in, atomic entity updates out.

MQTT and HTTP only find the API key, the device id and the payload, then call IotAgent.handle (one
message) or handle_many (what has arrived, in one transaction). Each measure becomes an attribute
update with observedAt (the device's timestamp, else the message's arrival time); static attributes
ride along. A message that is malformed, or whose values do not fit their mappings, is counted and
logged with its device id and changes nothing; the other messages of its batch are stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cityos.entities.values import now
from cityos.errors import DatabaseBusy, FailureLog
from cityos.ingest.convert import ConversionError, attribute, convert_value, value_kind
from cityos.ingest.iot_payloads import Measure, PayloadError, parse_payload, parse_single
from cityos.ingest.iot_provisioning import Device, Registry
from cityos.ingest.sink import StoreSink

log = logging.getLogger("cityos.iot")
MAX_UNKNOWN_LOGGED = 10_000
MAX_STORED_OUTCOMES = 10_000  # entities whose "stored" outcome is kept for their next measures (about 1.5 MB)
BUSY_ATTEMPTS = 3  # writes of one batch while the database stays busy (each after its Retry-After)
MAX_BUSY_WAIT = 5.0


@dataclass(slots=True)
class AgentStats:
    """Counters over the agent's life, reported by GET /iot/about."""

    received: int = 0
    stored: int = 0
    malformed: int = 0
    unknown_device: int = 0
    failed: int = 0  # lost to a fault of the agent's own, or to a database that stayed busy


@dataclass(frozen=True, slots=True)
class MeasureOutcome:
    status: str  # "stored", "malformed", "unknown_device" or "failed" (an internal error, logged)
    detail: str = ""
    entity_id: str = ""


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    """One device message as a transport found it; received_at is its arrival time ("": now)."""

    apikey: str
    device_id: str
    payload: bytes
    fmt: str | None = None  # "ul", "json" or None (the device's, else detected)
    object_id: str | None = None  # the message carries the bare value of that one attribute
    received_at: str = ""


class IotAgent:
    def __init__(self, registry: Registry, sink: StoreSink) -> None:
        self.registry = registry
        self.sink = sink
        self.stats = AgentStats()
        self._unknown: set[tuple[str, str]] = set()  # (apikey, device id) already logged
        # the "stored" outcome of each entity, made once (frozen: one object serves all its measures)
        self._stored: dict[str, MeasureOutcome] = {}
        # keyed by nothing a client chooses: every device and key together, per kind of failure
        self.failures = FailureLog(log)

    def about(self) -> dict[str, Any]:
        return {"stats": asdict(self.stats)}

    async def handle(
        self, apikey: str, device_id: str, payload: bytes, *, fmt: str | None = None, object_id: str | None = None
    ) -> MeasureOutcome:
        """Apply one device message (see handle_many)."""
        return (await self.handle_many([DeviceMessage(apikey, device_id, payload, fmt, object_id)]))[0]

    async def handle_many(self, messages: Sequence[DeviceMessage]) -> list[MeasureOutcome]:
        """Apply device messages in order, one transaction per tenant for all of them: each message
        is stored whole or not at all, two messages of one device are applied one after the other
        (both in the history, the last one the current value), and a bad message changes nothing
        but its own outcome. One outcome per message, in order."""
        outcomes: list[MeasureOutcome | None] = [None] * len(messages)
        try:
            units: dict[str, list[tuple[int, DeviceMessage, Device, list[dict[str, Any]]]]] = {}
            registry = self.registry
            for index, message in enumerate(messages):
                device = registry.provisioned(message.apikey, message.device_id) or await registry.resolve(
                    message.apikey, message.device_id
                )
                if device is None:
                    outcomes[index] = self._unknown_device(message)
                    continue
                try:
                    bodies = message_bodies(device, message)
                except (PayloadError, ConversionError) as exc:
                    outcomes[index] = self._malformed(message, device, str(exc))
                    continue
                except Exception:  # a fault of the agent's own: that message alone is lost (and logged)
                    if len(messages) == 1:
                        raise
                    self.failures.failed("measure", "IoT Agent failed on a message from device %s", message.device_id)
                    outcomes[index] = self._failed(device, "internal error")
                    continue
                units.setdefault(device.tenant, []).append((index, message, device, bodies))
            for tenant, found in units.items():
                try:
                    errors = await self._write(tenant, [bodies for *_, bodies in found])
                except DatabaseBusy as busy:
                    for index, _, device, _ in found:
                        outcomes[index] = self._failed(device, busy.detail or "database busy")
                    continue
                for (index, message, device, _), error in zip(found, errors, strict=True):
                    if error is None:
                        self.stats.stored += 1
                        outcomes[index] = self._stored_outcome(device.entity_id)
                    else:
                        outcomes[index] = self._malformed(message, device, error)
            return [outcome for outcome in outcomes if outcome is not None]
        finally:  # with the outcomes, so the counters always add up: received = the others
            self.stats.received += len(messages)

    async def _write(self, tenant: str, units: list[list[dict[str, Any]]]) -> list[str | None]:
        """The sink's write, tried again while the database is busy (another process's long
        transaction): a busy database is no fault of the measures, so they are not counted as
        malformed; the transport reads no more messages meanwhile (its inbox is bounded)."""
        for attempt in range(BUSY_ATTEMPTS):
            try:
                return await self.sink.upsert_units(tenant, units)
            except DatabaseBusy as busy:
                if attempt == BUSY_ATTEMPTS - 1:
                    self.failures.failed("busy", "IoT Agent: the database stayed busy, %d measures lost", len(units))
                    raise
                await asyncio.sleep(min(busy.retry_after, MAX_BUSY_WAIT))
        raise AssertionError("unreachable")

    def _stored_outcome(self, entity_id: str) -> MeasureOutcome:
        found = self._stored.get(entity_id)
        if found is None:
            if len(self._stored) >= MAX_STORED_OUTCOMES:
                self._stored.clear()
            found = self._stored[entity_id] = MeasureOutcome("stored", entity_id=entity_id)
        return found

    def _failed(self, device: Device, detail: str) -> MeasureOutcome:
        self.stats.failed += 1
        return MeasureOutcome("failed", detail, device.entity_id)

    def _unknown_device(self, message: DeviceMessage) -> MeasureOutcome:
        # another deployment on the same MQTT broker may own it: ignored and counted, logged once
        apikey, device_id = message.apikey, message.device_id
        self.stats.unknown_device += 1
        if len(self._unknown) < MAX_UNKNOWN_LOGGED and (apikey, device_id) not in self._unknown:
            self._unknown.add((apikey, device_id))
            log.info("measures from unknown device %s (apikey %s) are ignored", device_id, apikey)
        return MeasureOutcome("unknown_device", f"no device {device_id} with apikey {apikey}")

    def _malformed(self, message: DeviceMessage, device: Device, detail: str) -> MeasureOutcome:
        self.stats.malformed += 1
        log.warning(
            "malformed measure from device %s (apikey %s) rejected: %s", message.device_id, message.apikey, detail
        )
        return MeasureOutcome("malformed", detail, device.entity_id)


def message_bodies(device: Device, message: DeviceMessage) -> list[dict[str, Any]]:
    """The entity bodies of one message, one per measure group; PayloadError or ConversionError
    if any part of it is malformed."""
    fmt = message.fmt or device.protocol or None
    payload = message.payload
    measures = parse_single(payload, message.object_id, fmt) if message.object_id else parse_payload(payload, fmt)
    received_at = message.received_at or now()
    return [measure_body(device, measure, received_at) for measure in measures]


def measure_body(device: Device, measure: Measure, received_at: str) -> dict[str, Any]:
    """The entity body for one measure: its attributes (mapped, typed, observedAt) and the device's
    static attributes."""
    body: dict[str, Any] = {"id": device.entity_id, "type": device.entity_type}
    observed = measure.timestamp or received_at
    for object_id, raw in measure.values.items():
        mapping = device.mapping(object_id)
        kind, value = convert_value(raw, value_kind(mapping.type), f"attribute {object_id}")
        body[mapping.name] = attribute(kind, value, observed_at=observed, unit_code=mapping.unit_code)
    for static in device.static_attributes:
        if static.name not in body:
            kind, value = convert_value(static.value, _static_kind(static.type), f"static attribute {static.name}")
            body[static.name] = attribute(kind, value)
    return body


def _static_kind(name: str) -> str:
    try:
        return value_kind(name)
    except ValueError:
        return value_kind("")  # FIWARE types without a conversion (e.g. "Text[]") keep the value as given
