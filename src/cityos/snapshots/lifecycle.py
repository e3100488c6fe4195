"""How long a snapshot lives, and what becomes of a fill its process did not finish.

GS CIM 009 V1.9.1 names `snapshotLifetime` and `lastUsedAt` in the Snapshot (5.2.41) and
`snapshotPriority` as the order of eviction; the text of the clauses was not available here, so the
rules below are CityOS's, written down in docs/conformance.md ("Issue 16: snapshot lifetime..."):

- `snapshotLifetime` (seconds, > 0) counts from `lastUsedAt`: every use of the snapshot (a request
  naming it in NGSILD-Snapshot) extends it. `expiresAt` (a date-time in the future) is a hard end.
  The rendered `expiresAt` is the earlier of the two. `--snapshot-max-lifetime` cuts every lifetime
  to it and is the lifetime of snapshots that give none.
- An expired snapshot is gone: a request naming it is 404 ResourceNotFound, as one never made; the
  sweep (every `--snapshot-fill-beat` seconds, in every worker) deletes it and its frozen entities.
- A create beyond `--snapshot-max-count` evicts the tenant's snapshot of lowest priority (then the
  least recently used) if its priority is lower than the new one's; otherwise 409 as before.
- A fill writes a heartbeat into its snapshot every beat; a snapshot `preparing` without one for
  three beats belongs to a process that stopped (crash, kill, restart), so the sweep makes it
  `failure` and removes what it had copied. A fill is never resumed: it would freeze a later moment
  than the one the snapshot was asked for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from cityos.entities.values import parse_datetime
from cityos.errors import BadRequestData, Conflict, DatabaseBusy
from cityos.settings import Settings
from cityos.snapshots import fill, model
from cityos.store.base import EntityStore
from cityos.store.snapshot_base import SnapshotRow

log = logging.getLogger("cityos.snapshots")
STALE_BEATS = 3  # heartbeats missed before a preparing snapshot counts as interrupted
INTERRUPTED = (
    "the fill was interrupted: the process making the snapshot stopped before it ended;"
    " nothing it had copied was kept (delete this snapshot and make it again)"
)


def _epoch(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def lifetime_members(body: dict[str, Any], max_lifetime: float, now: float) -> dict[str, Any]:
    """The stored members a create, clone or update body's snapshotLifetime and expiresAt give
    (None: removed, as JSON merge-patch's null). A lifetime longer than the server's is cut to it."""
    members: dict[str, Any] = {}
    if "snapshotLifetime" in body:
        value = body["snapshotLifetime"]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise BadRequestData("snapshotLifetime must be a positive number of seconds")
        members["snapshotLifetime"] = value if value is None or not max_lifetime else min(value, max_lifetime)
    if "expiresAt" in body:
        value = body["expiresAt"]
        if value is not None:
            parsed = parse_datetime(value, "expiresAt")
            seconds = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
            if seconds <= now:
                raise BadRequestData("expiresAt must be in the future")
            value = _iso(seconds)
        members[model.UNTIL] = value
    return members


def with_members(document: dict[str, Any], members: dict[str, Any]) -> dict[str, Any]:
    changed = {**document}
    for name, value in members.items():
        if value is None:
            changed.pop(name, None)
        else:
            changed[name] = value
    return changed


def expires(document: dict[str, Any], max_lifetime: float) -> float | None:
    """When the snapshot expires (epoch seconds), None if never."""
    ends = []
    until = _epoch(document.get(model.UNTIL))
    if until is not None:
        ends.append(until)
    lifetime = document.get("snapshotLifetime")
    if max_lifetime > 0:
        lifetime = min(lifetime, max_lifetime) if lifetime else max_lifetime
    used = _epoch(document.get("lastUsedAt")) or _epoch(document.get("createdAt"))
    if lifetime and used is not None:
        ends.append(used + lifetime)
    return min(ends) if ends else None


def expires_at(document: dict[str, Any], max_lifetime: float) -> str | None:
    end = expires(document, max_lifetime)
    return None if end is None else _iso(end)


def expired(document: dict[str, Any], max_lifetime: float, now: float) -> bool:
    """Past its end; a snapshot still preparing is not (its lifetime runs from when it is used)."""
    end = expires(document, max_lifetime)
    return end is not None and end <= now and document.get("snapshotStatus") != model.PREPARING


def stale(document: dict[str, Any], beat: float, now: float) -> bool:
    """Preparing, but its fill has not beaten for STALE_BEATS beats: its process stopped."""
    last = document.get(model.BEAT)
    return document.get("snapshotStatus") == model.PREPARING and (
        not isinstance(last, int | float) or now - last > STALE_BEATS * beat
    )


async def evict(store: EntityStore, row: SnapshotRow) -> bool:
    """Delete a snapshot and its frozen entities; False if it was gone already."""
    if not await store.delete_snapshot(row.tenant, row.id):
        return False
    await fill.drop(store, row.document[model.HIDDEN])
    return True


async def interrupt(store: EntityStore, row: SnapshotRow) -> None:
    """An interrupted fill: its partial copy removed, the snapshot `failure` with the reason."""
    await fill.drop(store, row.document[model.HIDDEN])
    current = await store.get_snapshot(row.tenant, row.id)
    if current is None or current.document.get("snapshotStatus") != model.PREPARING:
        return
    count = len(current.document.get("snapshotQueries") or []) or 1
    document = {
        **current.document,
        "snapshotStatus": model.FAILURE,
        "snapshotQueriesDetails": [{"resultStatus": model.FAILURE, "detail": INTERRUPTED}] * count,
        "modifiedAt": _iso(time.time()),
    }
    await store.save_snapshot(SnapshotRow(row.tenant, row.id, document), create=False)
    log.warning("snapshot %s of tenant %r: its fill was interrupted; marked failure", row.id, row.tenant)


async def sweep(store: EntityStore, settings: Settings, now: float | None = None) -> tuple[int, int]:
    """One pass over every tenant's snapshots: (interrupted fills failed, expired snapshots removed)."""
    now = time.time() if now is None else now
    failed = removed = 0
    for row in await store.all_snapshots():
        if stale(row.document, settings.snapshot_fill_beat, now):
            await interrupt(store, row)
            failed += 1
        elif expired(row.document, settings.snapshot_max_lifetime, now) and await evict(store, row):
            log.info("snapshot %s of tenant %r expired and was removed", row.id, row.tenant)
            removed += 1
    return failed, removed


async def sweep_forever(store: EntityStore, settings: Settings) -> None:
    """At start-up and then every beat: interrupted fills fail, expired snapshots go."""
    while True:
        try:
            await sweep(store, settings)
        except DatabaseBusy:
            log.info("snapshot sweep skipped: the database is busy")
        except Exception:  # keep sweeping; the error is logged
            log.exception("snapshot sweep failed")
        await asyncio.sleep(settings.snapshot_fill_beat)


async def make_room(store: EntityStore, settings: Settings, tenant: str, priority: int) -> None:
    """Before a create or clone: expired snapshots of the tenant go; at the count limit, the one of
    lowest priority (then least recently used) is evicted if lower than `priority`, else 409."""
    now = time.time()
    live = []
    for row in await store.list_snapshots(tenant):
        if not (expired(row.document, settings.snapshot_max_lifetime, now) and await evict(store, row)):
            live.append(row)
    limit = settings.snapshot_max_count
    if len(live) < limit:
        return
    lower = [
        r
        for r in live
        if r.document.get("snapshotStatus") != model.PREPARING
        and r.document.get("snapshotPriority", model.DEFAULT_PRIORITY) < priority
    ]
    if not lower or limit == 0:
        raise Conflict(
            f"the tenant holds {limit} snapshots already (snapshot_max_count) and none of lower priority than"
            f" {priority}: delete or purge some first"
        )

    def order(row: SnapshotRow) -> tuple[int, float]:
        return row.document.get("snapshotPriority", model.DEFAULT_PRIORITY), _epoch(row.document.get("lastUsedAt")) or 0

    victim = min(lower, key=order)
    await evict(store, victim)
    log.info("snapshot %s of tenant %r evicted for one of priority %d", victim.id, tenant, priority)


class Beat:
    """A running fill's heartbeat: every `interval` seconds its snapshot's BEAT member is renewed,
    until stop(); the lock keeps a renewal from landing after the fill's end was recorded."""

    def __init__(self, store: EntityStore, row: SnapshotRow, interval: float) -> None:
        self.store, self.row, self.interval = store, row, interval
        self.lock = asyncio.Lock()
        self.stopped = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.stopped.wait(), self.interval)
                return
            except TimeoutError:
                pass
            async with self.lock:
                if self.stopped.is_set():
                    return
                try:
                    current = await self.store.get_snapshot(self.row.tenant, self.row.id)
                    if current is None or current.document.get("snapshotStatus") != model.PREPARING:
                        return
                    document = {**current.document, model.BEAT: time.time()}
                    await self.store.save_snapshot(SnapshotRow(self.row.tenant, self.row.id, document), create=False)
                except Exception as exc:  # a missed beat is retried; three in a row fail the snapshot
                    log.warning("snapshot %s: heartbeat not written: %s", self.row.id, exc)

    async def stop(self) -> None:
        async with self.lock:
            self.stopped.set()
        await self.task
