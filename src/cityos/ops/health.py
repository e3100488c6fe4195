"""Liveness and readiness (docs/operations.md, "Health checks"): what a load balancer or a
Kubernetes probe asks. Live: the process answers (no I/O at all). Ready: the database answers at
this schema version, the writer is alive, MQTT is connected when configured, and the notification
outbox is being followed. Each check is cheap and bounded (--health-timeout)."""

from __future__ import annotations

from typing import Any, Protocol

from cityos.store.base import EntityStore


class Outbox(Protocol):
    def outbox_stuck(self, after: float) -> str | None: ...


class Broker(Protocol):
    """ingest/iot_mqtt.MqttTransport as far as readiness needs it."""

    @property
    def connected(self) -> Any: ...  # an asyncio.Event

    last_error: str


async def readiness(
    store: EntityStore, outbox: Outbox, mqtt: Broker | None, *, timeout: float, stuck_after: float
) -> dict[str, bool | str]:
    """Every readiness check by name: True, or why it fails."""
    checks = await store.health(timeout)
    if mqtt is not None:  # only when --iot-mqtt-url is configured
        connected = mqtt.connected.is_set()
        checks["mqtt"] = True if connected else f"not connected to the MQTT broker ({mqtt.last_error or 'connecting'})"
    stuck = outbox.outbox_stuck(stuck_after)
    checks["outbox"] = True if stuck is None else stuck
    return checks


def verdict(checks: dict[str, bool | str]) -> tuple[int, dict[str, Any]]:
    """The status (200 or 503) and the small JSON body of a readiness answer."""
    ok = all(value is True for value in checks.values())
    return (200 if ok else 503), {"status": "ok" if ok else "failing", "checks": checks}
