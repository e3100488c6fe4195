"""The change stream: GET /cityos/v1/changes pushes each entity change the caller may read, as
server-sent events, to draw a live map without polling.

Where the changes come from: a change listener of the store (as subscriptions, history and the
audit trail are), which only hands each change to the event loop and returns at once, so writers
never wait for a client. With several workers (PostgreSQL) the listener also returns a StoreEvent
per change, which the store sends with NOTIFY when the write commits; the other workers read the
entity again and push it to their own clients (a delete carries the entity's types).

Per client: a bounded queue (--changes-queue); a client that falls that far behind is dropped with
a last `dropped` event (it reconnects and reloads its tiles). Each event is filtered by the client's
type and q, and by its read policy, as a query would be (visible entities only, attributes it may
not read removed). At most --changes-max-clients clients per worker.

Limits: a change the listener saw in a write that then rolled back (an atomic batch whose later
operation failed) is pushed all the same (the map re-reads an entity when clicked); the caller's
policy is the one in force when it connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cityos.entities.model import Entity
from cityos.errors import BadRequestData, NgsiLdError, retry_after_seconds
from cityos.jsonld.termmap import TermMap
from cityos.mapdata.cache import Box, Targets, TileCache
from cityos.mapdata.kept_cells import KeptCells
from cityos.mapdata.layout import LayoutWatch
from cityos.ops.declare import api
from cityos.ops.schemas import NGSI_LD_HEADERS
from cityos.policy.decision import ReadView
from cityos.snapshots.scope import MARK
from cityos.store.base import AfterCommit, EntityChange, EntityLookup, EntityStore, StoreEvent
from cityos.store.side_rows import geo_untouched, geometry_bbox

log = logging.getLogger("cityos.mapdata")

PATH = "/cityos/v1/changes"
LISTENER = "changes"
EVENT_KIND = "entity-change"  # the StoreEvent other workers hear (store/postgres/events.py)
MAX_ATTRS = 32  # attributes in one event
MAX_STRING = 256  # a string value longer than this is left out of an event
GEO = "https://uri.etsi.org/ngsi-ld/location"
RESYNC = "resync"  # another worker's events may have been missed (store/postgres/events.py)
RETOUCH = 1.0  # seconds after a change when its tiles are invalidated once more
GATHER = 0.1  # seconds more a second touch may wait, so that one timer serves many changes
# (time.monotonic() of the change, tenant, boxes, their targets or None if not computed yet, layout)
Retouch = tuple[float, str, list[Box], list[Targets] | None, bool]


class TooManyClients(NgsiLdError):
    """The worker serves --changes-max-clients streams already: try again later (or another worker)."""

    type_name, status, title = "TooManyClients", 503, "Too many change stream clients"
    retry: ClassVar[int] = 5

    @property
    def type_uri(self) -> str:
        return "urn:cityos:errors:TooManyClients"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(retry_after_seconds(self.retry))}


def boxes_of(entity: Entity | None) -> list[Box]:
    """(min_x, min_y, max_x, max_y) of each geometry of an entity: the tiles a change touches."""
    if entity is None:
        return []
    geometries = [  # instance_boxes' walk, without its (attr, box, geometry) tuples
        instance["value"]
        for instances in entity["attrs"].values()
        for instance in instances
        if instance.get("type") == "GeoProperty"
    ]
    return [(box[0], box[2], box[1], box[3]) for geometry in geometries if (box := geometry_bbox(geometry))]


def _layout_changed(
    before: Entity | None, after: Entity | None, boxes: tuple[list[Box], list[Box]] | None = None
) -> bool:
    """Whether a change can change the clusters: a create, a delete, new types or a new geometry
    (an expiry too, which the store sweeps as a change of its own); `boxes`: boxes_of each, when
    the caller has them."""
    if before is None or after is None or before["type"] != after["type"]:
        return True
    boxes = boxes or (boxes_of(before), boxes_of(after))
    return bool(boxes[0] != boxes[1] or before.get("expiresAt") != after.get("expiresAt"))


def _layers_changed(before: Entity | None, after: Entity | None, layout: bool) -> bool:
    """Whether a change can change what the console map's layers count for a policy view (layers.py):
    the layout, or what a view's rules test besides types and ids, a scope or the exact location
    (an area rule; a polygon reshaped inside the same box is not a layout change)."""
    if layout or before is None or after is None:
        return True
    if before.get("scope") != after.get("scope"):
        return True
    old, new = before["attrs"].get(GEO) or [], after["attrs"].get(GEO) or []
    if old is new:  # the very list of `before` (entities/update.py `_require`): left alone
        return False
    return [i.get("value") for i in old] != [i.get("value") for i in new]


def _plain(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_STRING
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, bool | int)


def event_of(entity: Entity, compact: Callable[[str], str], deleted: bool = False) -> dict[str, Any]:
    """The event's data: {"id", "type", "location"?, "attrs": {name: value}, "modifiedAt"}
    (`deleted`: true, and no attributes, when the entity is gone or no longer matches)."""
    event: dict[str, Any] = {"id": entity["id"], "type": compact(entity["type"][0]) if entity["type"] else None}
    attrs: dict[str, Any] = {}
    for iri, instances in entity["attrs"].items():
        if deleted or len(attrs) >= MAX_ATTRS or not instances:
            break
        instance = instances[0]
        kind = instance.get("type")
        if kind == "GeoProperty" and iri == GEO:
            event["location"] = instance.get("value")
        elif kind == "Property" and _plain(instance.get("value")):
            attrs[compact(iri)] = instance["value"]
        elif kind == "Relationship" and isinstance(instance.get("object"), str):
            attrs[compact(iri)] = instance["object"]
    event["attrs"] = attrs
    if deleted:
        event["deleted"] = True
    if entity.get("modifiedAt"):
        event["modifiedAt"] = entity["modifiedAt"]
    return event


@dataclass(eq=False)
class Client:
    """One connected stream: its tenant, filter and policy, and the queue of its events."""

    tenant: str
    matches: Callable[[Entity], bool]  # type, q
    read: ReadView
    compact: Callable[[str], str]
    queue: asyncio.Queue[bytes | None]
    dropped: bool = False
    sent: int = 0

    def judge(self, before: Entity | None, after: Entity | None) -> bytes | None:
        """The event for this client of a change, or None (not its business)."""
        read = self.read
        if after is not None and read.visible(after) and self.matches(after):
            seen = after if read.unrestricted else read.project(after)
            return orjson.dumps(event_of(seen, self.compact))
        if before is not None and read.visible(before) and self.matches(before):
            return orjson.dumps(event_of(before, self.compact, deleted=True))  # gone, or out of its filter
        return None


@dataclass(eq=False)
class ChangeHub:
    """Feeds every connected client of this worker from the store's changes (and other workers')."""

    store: EntityStore
    max_clients: int
    queue_size: int
    shared: bool  # several workers: tell the others of each change (NOTIFY at commit)
    cache: TileCache | None = None  # rendered tiles, invalidated by each change's boxes
    clients: set[Client] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _reads: set[asyncio.Task[None]] = field(default_factory=set)
    _retouch: list[Retouch] = field(default_factory=list)  # second touches to come, oldest first
    _retouch_armed: bool = False  # the loop has them in hand (a timer, or a call to come)
    _retouch_lock: threading.Lock = field(default_factory=threading.Lock)
    # the changes of what the console map's layers count, and their commits (console/layers.py)
    layout: LayoutWatch = field(default_factory=lambda: LayoutWatch(RETOUCH))
    # every change and its commit, for the q-filtered clusters kept per view (kept_cells.py)
    values: LayoutWatch = field(default_factory=lambda: LayoutWatch(RETOUCH))
    kept: KeptCells = field(default_factory=lambda: KeptCells(0))

    async def start(self) -> None:
        if self.max_clients <= 0 and (self.cache is None or not self.cache.enabled):
            return
        self._loop = self.layout.loop = self.values.loop = asyncio.get_running_loop()
        self.store.set_change_listener(self.listener, None, name=LISTENER)

    async def stop(self) -> None:
        if self._loop is None:
            return
        self.store.set_change_listener(None, None, name=LISTENER)
        self._loop = None
        for task in list(self._reads):
            task.cancel()
        for client in list(self.clients):
            with contextlib.suppress(asyncio.QueueFull):
                client.queue.put_nowait(None)

    def listener(self, change: EntityChange, _lookup: EntityLookup) -> Sequence[StoreEvent | AfterCommit]:
        """In the write's transaction (a store thread): hand the change over, never wait."""
        if MARK in change.tenant:  # a snapshot being filled: not the live city
            return ()
        loop = self._loop
        if loop is not None and self.clients:
            loop.call_soon_threadsafe(self.publish, change.tenant, change.before, change.after)
        cache = self.cache
        if cache is not None and cache.enabled:
            before = boxes_of(change.before)
            after = (  # an update that left every geometry alone (most): the same boxes
                before
                if change.before is not None
                and change.after is not None
                and geo_untouched(change.before["attrs"], change.after["attrs"], change.relisted)
                else boxes_of(change.after)
            )
            boxes, layout = before + after, _layout_changed(change.before, change.after, (before, after))
        else:
            boxes, layout = [], _layout_changed(change.before, change.after)
        followed = None
        if _layers_changed(change.before, change.after, layout):
            followed = self.layout.change(change.tenant, change.before, change.after)
        valued = self.values.change(change.tenant, change.before, change.after) if self.kept.max_views else None
        if cache is not None and boxes:
            found = cache.touched(change.tenant, boxes, layout)
            if loop is not None:  # again once the write has surely committed: a tile drawn in between is stale
                self._retouch_later(loop, (time.monotonic(), change.tenant, boxes, found, layout))
        commits: tuple[AfterCommit, ...] = () if followed is None else (followed,)
        if valued is not None:
            commits = (*commits, valued)
        if not self.shared:
            return commits
        gone = change.after is None
        types = (change.before if gone else change.after or {}).get("type", [])  # type: ignore[union-attr]
        data = {"types": types, "deleted": gone, "boxes": boxes, "layout": layout}
        return (StoreEvent(EVENT_KIND, change.tenant, change.entity_id, data), *commits)

    @property
    def listening(self) -> bool:
        """Whether the store's changes reach this hub (not when the stream and tile cache are off)."""
        return self._loop is not None

    def _retouch_later(self, loop: asyncio.AbstractEventLoop, touch: Retouch) -> None:
        """Queue a change's second touch. Only the first change while none is queued wakes the loop;
        the loop's timer then touches, each time it fires, every queued change RETOUCH seconds old
        and waits for the next one, GATHER seconds later at least: one wake-up and a few timers a
        second for all the changes, not one each (each touched RETOUCH to RETOUCH + GATHER after)."""
        with self._retouch_lock:
            self._retouch.append(touch)
            if self._retouch_armed:
                return
            self._retouch_armed = True
        try:
            loop.call_soon_threadsafe(self._retouch_due, loop)
        except RuntimeError:  # the loop is closed: nothing will draw a tile again
            self._retouch_armed = False

    def _retouch_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop: touch the queued changes that are RETOUCH seconds old; wait for the rest."""
        now = time.monotonic()
        with self._retouch_lock:
            queued = self._retouch
            ready = 0
            while ready < len(queued) and queued[ready][0] + RETOUCH <= now:
                ready += 1
            due, self._retouch = queued[:ready], queued[ready:]
            if self._retouch:
                wait = self._retouch[0][0] + RETOUCH - now
                loop.call_later(max(wait, 0.0) + GATHER, self._retouch_due, loop)
            else:
                self._retouch_armed = False
        if self.cache is not None:
            for _, tenant, boxes, found, layout in due:
                if found is None:  # the cache was idle then
                    self.cache.touched(tenant, boxes, layout)
                else:
                    self.cache.bump(tenant, found, layout)

    def publish(self, tenant: str, before: Entity | None, after: Entity | None) -> None:
        """On the loop: queue the change's event for each client that may see it."""
        for client in list(self.clients):
            if client.tenant != tenant or client.dropped:
                continue
            try:
                data = client.judge(before, after)
            except Exception:  # one bad filter must not stop the others
                log.exception("judging a change for a stream failed")
                continue
            if data is None:
                continue
            try:
                client.queue.put_nowait(data)
            except asyncio.QueueFull:
                client.dropped = True  # the stream ends with a `dropped` event

    def follow(self, previous: Callable[[StoreEvent], None]) -> Callable[[StoreEvent], None]:
        """Wrap the app's listener of other workers' events: their changes reach our clients too."""

        def on_event(event: StoreEvent) -> None:
            if event.kind == EVENT_KIND and self.cache is not None:
                boxes = (event.data or {}).get("boxes")
                if isinstance(boxes, list):
                    found = [tuple(b) for b in boxes if isinstance(b, list) and len(b) == 4]
                    self.cache.touched(event.tenant, found, (event.data or {}).get("layout") is not False)
                else:  # a payload too large for NOTIFY lost its data
                    self.cache.everything_changed()
            if event.kind == RESYNC and self.cache is not None:
                self.cache.everything_changed()
            if event.kind in (EVENT_KIND, RESYNC):
                self.layout.lost()  # another worker's change, already committed: nothing to follow
                self.values.lost()
            if event.kind == EVENT_KIND:
                if self.clients and self._loop is not None:
                    task = asyncio.create_task(self._read_again(event))
                    self._reads.add(task)
                    task.add_done_callback(self._reads.discard)
                return
            previous(event)

        return on_event

    async def _read_again(self, event: StoreEvent) -> None:
        data = event.data or {}
        types = [t for t in data.get("types", []) if isinstance(t, str)]
        try:
            after = None if data.get("deleted") else await self.store.get_entity(event.tenant, event.key)
        except Exception:
            log.warning("reading %s for the change stream failed", event.key)
            return
        before = None if after is not None else {"id": event.key, "type": types, "attrs": {}}
        self.publish(event.tenant, before, after)

    def check_room(self) -> None:
        if len(self.clients) >= self.max_clients:
            raise TooManyClients(f"this worker serves {self.max_clients} change streams already")

    def client(self, tenant: str, matches: Callable[[Entity], bool], read: ReadView, terms: TermMap) -> Client:
        """A client, connected once its stream starts (events())."""
        return Client(tenant, matches, read, terms.compact, asyncio.Queue(self.queue_size))

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)


def hub_of(request: Request) -> ChangeHub:
    hub: ChangeHub = request.scope["app"].state["changes"]
    return hub


async def events(
    client: Client, hub: ChangeHub, keepalive: float, duration: float | None = None
) -> AsyncIterator[bytes]:
    """The stream's bytes: a first comment, then each event, a comment after `keepalive` seconds of
    silence, and a last `dropped` event for a client that fell behind; it ends after `duration`
    seconds when one is given."""
    hub.clients.add(client)
    loop = asyncio.get_running_loop()
    end = None if duration is None else loop.time() + duration
    try:
        yield b": cityos change stream\nretry: 3000\n\n"
        while True:
            if client.dropped:
                yield b'event: dropped\ndata: {"reason":"the client fell behind; reload and reconnect"}\n\n'
                return
            wait = keepalive if end is None else min(keepalive, end - loop.time())
            if wait <= 0:
                return
            try:
                data = await asyncio.wait_for(client.queue.get(), wait)
            except TimeoutError:
                if end is None or loop.time() < end:
                    yield b": keep-alive\n\n"
                continue
            if data is None:  # the server is stopping
                return
            client.sent += 1
            yield b"event: change\ndata: " + data + b"\n\n"
    finally:
        hub.disconnect(client)


MAX_DURATION = 86400.0


def _duration(raw: str | None) -> float | None:
    """`duration`: seconds after which the server ends the stream (a client behind a proxy that cuts
    long requests, a check that the stream answers); absent: the stream lasts as long as the client."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_DURATION:
        raise BadRequestData(f"duration must be a number of seconds above 0 and at most {MAX_DURATION:.0f}")
    return value


STREAM_PARAMS = ("type", "q", "duration")


@api(
    "The change stream: entity changes as server-sent events (docs/map-data.md)",
    query=STREAM_PARAMS,
    returns="Text",
    media=("text/event-stream",),
    errors=(400, 503),
    headers=NGSI_LD_HEADERS,
)
async def stream_changes(request: Request) -> Response:
    from cityos.ngsild import access
    from cityos.ngsild.common import check_params, existing_tenant, query_context, services
    from cityos.query.entity_query import QuerySpec, build_entity_query

    check_params(request, STREAM_PARAMS)
    duration = _duration(request.query_params.get("duration"))
    hub = hub_of(request)
    settings = services(request).settings
    if hub.max_clients <= 0:
        raise TooManyClients("the change stream is off (--changes-max-clients 0)")
    tenant = await existing_tenant(request)
    context = await query_context(request, tenant)
    params = request.query_params
    query = build_entity_query(
        QuerySpec(type_expr=params.get("type"), q=params.get("q"), max_pattern_length=settings.max_pattern_length),
        context.terms.expand,
    )
    types = frozenset(query.types) if query.types is not None else None
    predicate = query.predicate

    def matches(entity: Entity) -> bool:
        if types is not None and types.isdisjoint(entity["type"]):
            return False
        return predicate is None or predicate(entity)

    hub.check_room()
    client = hub.client(tenant, matches, access.view(request, tenant), context.terms)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        events(client, hub, settings.changes_keepalive, duration), media_type="text/event-stream", headers=headers
    )
