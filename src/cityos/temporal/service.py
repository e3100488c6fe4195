"""History at run time: the store's history listener, installed before the first write, and the
retention sweep that drops instances older than temporal_retention_days (and per type,
temporal_retention_types: temporal/retention.py), then folds the readings older than
temporal_downsample's raw periods into hourly means (store/temporal_downsample.py)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from cityos.entities.values import now
from cityos.errors import log_failure
from cityos.settings import Settings
from cityos.store.base import EntityStore
from cityos.store.temporal_base import SCOPE_ATTR
from cityos.tasks import stop_task
from cityos.temporal.history import HistoryRecorder, deletion, parse_disabled, scope_deletion
from cityos.temporal.query import to_micros
from cityos.temporal.retention import by_days, parse_downsample, parse_types

log = logging.getLogger("cityos.temporal")
RETENTION_SECONDS = 3600.0
# a downsampling run after the first looks back only this far past the previous run's cutoff (the
# first run of a process scans all the history of the types): readings that arrive later than that
# with older observedAt are folded at the next restart
DOWNSAMPLE_SLACK = timedelta(days=1)
SLACK_MICROS = int(DOWNSAMPLE_SLACK.total_seconds()) * 1_000_000


class HistoryService:
    def __init__(self, store: EntityStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._sweeper: asyncio.Task[None] | None = None
        self.recorder = HistoryRecorder(parse_disabled(self.settings.temporal_disabled_tenants))
        self._downsampled: dict[int, int] = {}  # raw days -> the cutoff of its last downsampling run

    def install(self) -> None:
        """Record every change of the store from now on, in the change's transaction."""
        self.store.set_change_listener(self.recorder, None, name="history")

    async def start(self) -> None:
        """Install, and sweep what is past the retention period (a server)."""
        self.install()
        if (
            self.settings.temporal_retention_days > 0
            or self.settings.temporal_retention_types
            or self.settings.temporal_downsample
        ) and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._retain())

    async def stop(self) -> None:
        self.store.set_change_listener(None, None, name="history")
        sweeper, self._sweeper = self._sweeper, None
        await stop_task(sweeper)

    async def purge_old(self) -> int:
        """Drop the instances older than the retention period, then those of the types kept less
        long (temporal_retention_types); returns how many went."""
        now = datetime.now(UTC)
        removed = 0
        if self.settings.temporal_retention_days > 0:
            cutoff = now - timedelta(days=self.settings.temporal_retention_days)
            removed += await self.store.temporal_purge(to_micros(cutoff))
        rules = parse_types(self.settings.temporal_retention_types)
        for days, types in by_days(rules, self.settings.temporal_retention_days).items():
            removed += await self.store.temporal_purge(to_micros(now - timedelta(days=days)), types)
        return removed

    async def downsample(self, now: datetime | None = None) -> int:
        """Fold the readings older than each type's raw period into hourly means; returns how many
        instances went. A run looks back from its cutoff to the previous run's, less DOWNSAMPLE_SLACK."""
        now = now or datetime.now(UTC)
        removed = 0
        rules = parse_downsample(self.settings.temporal_downsample)
        for days, types in by_days(rules, 0).items():
            before = to_micros(now - timedelta(days=days))
            previous = self._downsampled.get(days)
            after = None if previous is None else previous - SLACK_MICROS
            removed += await self.store.temporal_downsample(before, types, after)
            self._downsampled[days] = before
        return removed

    async def _retain(self) -> None:
        while True:
            try:
                removed = await self.purge_old()
                if removed:
                    log.info("retention: dropped %d attribute instances", removed)
            except Exception:  # keep sweeping; the error is logged
                log_failure(log, "temporal retention sweep failed")
            try:
                folded = await self.downsample() if self.settings.temporal_downsample else 0
                if folded:
                    log.info("downsampling: folded %d attribute instances into hourly means", folded)
            except Exception:  # keep sweeping; the error is logged
                log_failure(log, "temporal downsampling failed")
            await asyncio.sleep(RETENTION_SECONDS)


async def record_deletion(
    store: EntityStore, tenant: str, entity_id: str, attr: str, *, dataset: str | None, delete_all: bool
) -> bool:
    """A core attribute delete aimed at an entity that exists only in the temporal store (made by
    POST /temporal/entities) records the deletion in its history all the same (020_17-020_20).
    False when the core's 404 stands: the entity is current, or its history lacks the attribute."""
    if await store.get_entity(tenant, entity_id) is not None:
        return False
    info = await store.temporal_entity(tenant, entity_id)
    series = None if info is None else info.attrs.get(attr)
    if info is None or not series or (not delete_all and dataset not in series):
        return False
    stamp = now()
    if attr == SCOPE_ATTR:
        instances = [(attr, scope_deletion(stamp))]
    else:
        chosen = series if delete_all else {dataset: series[dataset]}
        instances = [(attr, deletion(kind, key, stamp)) for key, kind in chosen.items()]
    await store.temporal_write(tenant, entity_id, info.types, instances)
    return True
