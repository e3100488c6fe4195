"""The IoT Agent core, independent of transports: a device message in, one atomic entity update out.

MQTT and HTTP only find the API key, the device id and the payload, then call IotAgent.handle. Each
measure becomes an attribute update with observedAt (the device's timestamp, else the arrival time);
static attributes ride along. A message that is malformed, or whose values do not fit their
mappings, is counted and logged with its device id and changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from cityos.entities.values import now
from cityos.errors import NgsiLdError
from cityos.ingest.convert import ConversionError, attribute, convert_value, value_kind
from cityos.ingest.iot_payloads import Measure, PayloadError, parse_payload, parse_single
from cityos.ingest.iot_provisioning import Device, Registry
from cityos.ingest.sink import Sink, error_text

log = logging.getLogger("cityos.iot")
MAX_UNKNOWN_LOGGED = 10_000


@dataclass(slots=True)
class AgentStats:
    """Counters over the agent's life, reported by GET /iot/about."""

    received: int = 0
    stored: int = 0
    malformed: int = 0
    unknown_device: int = 0


@dataclass(frozen=True, slots=True)
class MeasureOutcome:
    status: str  # "stored", "malformed" or "unknown_device"
    detail: str = ""
    entity_id: str = ""


class IotAgent:
    def __init__(self, registry: Registry, sink: Sink) -> None:
        self.registry = registry
        self.sink = sink
        self.stats = AgentStats()
        self._unknown: set[tuple[str, str]] = set()  # (apikey, device id) already logged

    def about(self) -> dict[str, Any]:
        return {"stats": asdict(self.stats)}

    async def handle(
        self, apikey: str, device_id: str, payload: bytes, *, fmt: str | None = None, object_id: str | None = None
    ) -> MeasureOutcome:
        """Apply one device message. fmt: "ul", "json" or None (the device's, else detected);
        object_id: the message carries the bare value of that one attribute."""
        self.stats.received += 1
        device = await self.registry.resolve(apikey, device_id)
        if device is None:
            # another deployment on the same MQTT broker may own it: ignored and counted, logged once
            self.stats.unknown_device += 1
            if len(self._unknown) < MAX_UNKNOWN_LOGGED and (apikey, device_id) not in self._unknown:
                self._unknown.add((apikey, device_id))
                log.info("measures from unknown device %s (apikey %s) are ignored", device_id, apikey)
            return MeasureOutcome("unknown_device", f"no device {device_id} with apikey {apikey}")
        try:
            fmt = fmt or device.protocol or None
            measures = parse_single(payload, object_id, fmt) if object_id else parse_payload(payload, fmt)
            bodies = [measure_body(device, measure, now()) for measure in measures]
            await self.sink.upsert(device.tenant, bodies, atomic=True)
        except (PayloadError, ConversionError, NgsiLdError) as exc:
            detail = error_text(exc) if isinstance(exc, NgsiLdError) else str(exc)
            self.stats.malformed += 1
            log.warning("malformed measure from device %s (apikey %s) rejected: %s", device_id, apikey, detail)
            return MeasureOutcome("malformed", detail, device.entity_id)
        self.stats.stored += 1
        return MeasureOutcome("stored", entity_id=device.entity_id)


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
