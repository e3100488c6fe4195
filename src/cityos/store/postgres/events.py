"""Cache invalidation across workers: LISTEN/NOTIFY on one channel.

A write to something workers cache (a subscription, an @context, IoT provisioning) sends a
NOTIFY inside its own transaction, so other workers hear of it exactly when it commits, and never
of a write that rolled back. Each worker keeps one connection LISTENing; when that connection is
lost, events may have been missed, so on reconnecting it reports a "resync" event and the caches
reload whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from cityos.errors import FailureLog
from cityos.store.base import EventListener, StoreEvent
from cityos.tasks import stop_task

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

log = logging.getLogger("cityos.store.postgres")
CHANNEL = "cityos_events"  # followed by a digest of the schema: deployments in other schemas of the
# same database (or concurrent test sessions) never hear each other's events


def channel_for(schema: str) -> str:
    """The NOTIFY channel of the CityOS tables in `schema` (a valid identifier of under 63 bytes)."""
    return f"{CHANNEL}_{hashlib.sha256(schema.encode()).hexdigest()[:16]}"


RESYNC = "resync"  # the kind of the event reported after a lost LISTEN connection
_MAX_PAYLOAD = 7900  # PostgreSQL refuses NOTIFY payloads of 8000 bytes and more


async def notify(connection: Connection, channel: str, origin: str, event: StoreEvent) -> None:
    """Queue the event for delivery at commit."""
    await connection.execute("SELECT pg_notify($1, $2)", channel, payload_of(origin, event))


def payload_of(origin: str, event: StoreEvent) -> str:
    """The event's NOTIFY payload. A payload too large to send loses its `data`; receivers then
    reload the object instead of applying the data."""
    message = {"o": origin, "k": event.kind, "t": event.tenant, "i": event.key, "d": event.data}
    payload = orjson.dumps(message).decode()
    if len(payload.encode()) > _MAX_PAYLOAD:
        kind = "subscription" if event.kind == "subscription-status" else event.kind
        payload = orjson.dumps({**message, "k": kind, "d": None}).decode()
    return payload


def decode(payload: str, origin: str) -> StoreEvent | None:
    """The event in a NOTIFY payload; None for the worker's own events and for foreign payloads."""
    try:
        message: dict[str, Any] = orjson.loads(payload)
        if message.get("o") == origin:
            return None
        return StoreEvent(str(message["k"]), str(message["t"]), str(message["i"]), message.get("d"))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        log.warning("ignoring a malformed event on the %s channel", CHANNEL)
        return None


class EventFollower:
    """One LISTENing connection per worker, reconnected with a capped backoff when lost."""

    def __init__(self, dsn: str, origin: str) -> None:
        self.dsn = dsn
        self.origin = origin
        self.channel = CHANNEL  # set by the store to channel_for(its schema) before start()
        self.listener: EventListener | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.listening = asyncio.Event()  # set while the LISTEN connection is up
        self.failures = FailureLog(log)  # per kind of event: every write of another worker sends one

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    def _deliver(self, event: StoreEvent) -> None:
        listener = self.listener
        if listener is None:
            return
        try:
            listener(event)
        except Exception:  # one faulty refresh must not stop the others
            self.failures.failed(event.kind, "handling the %s event for %s failed", event.kind, event.key)

    def _on_notify(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        event = decode(str(payload), self.origin)
        if event is not None:
            self._deliver(event)

    async def _follow(self) -> None:
        backoff = 0.2
        first = True
        while True:
            connection: asyncpg.Connection[asyncpg.Record] | None = None
            try:
                connection = await asyncpg.connect(self.dsn, timeout=10)
                self._lost.clear()
                connection.add_termination_listener(lambda _c: self._lost.set())
                await connection.add_listener(self.channel, self._on_notify)
                self.listening.set()
                if not first:  # events may have been missed while the connection was down
                    self._deliver(StoreEvent(RESYNC, "", ""))
                first = False
                backoff = 0.2
                await self._lost.wait()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("the event connection to PostgreSQL failed (%s); retrying in %.1f s", exc, backoff)
            finally:
                self.listening.clear()
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
