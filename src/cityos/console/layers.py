"""The map page's layers (each type with entities located, and how many), kept between page loads.

Asking the API for them scans every entity twice (`/types`, then a located count per type): 0.5-1 s
at 100,000 entities on each load of /console/map. They are kept per tenant for an unrestricted
caller (a restricted one's depend on its policy: asked each time), while the map's change hub
(mapdata/changes.py) has seen no change that creates, deletes, moves or retypes an entity since
they were read, and only if they were read RETOUCH seconds after the last such change (by then its
write has committed, as the tile cache assumes: a read during the write's transaction would keep
the count before it). An attribute's new value leaves every count as it was. So the page shows
what the API would answer; the one lag is an entity whose `expiresAt` passes, counted until the
store's sweep deletes it (a change) or --tile-cache-seconds pass (the tile cache's own bound on a
missed change, which kept layers share).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cityos.mapdata.changes import RETOUCH, ChangeHub

MAX_TENANTS = 256  # tenants whose layers are kept, least recently used dropped


@dataclass(frozen=True)
class Kept:
    counts: dict[str, int]
    version: int  # the hub's layers_version when the read began
    read_at: float  # time.monotonic() when the read began


class LayerCache:
    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._kept: OrderedDict[str, Kept] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def counts(
        self, hub: ChangeHub | None, tenant: str, read: Callable[[], Awaitable[dict[str, int]]]
    ) -> dict[str, int]:
        """The located count per type, kept or read (`read`) again; `hub` None: not kept."""
        if hub is None or not hub.listening:
            return await read()
        found = self._kept.get(tenant)
        if found is not None and self._fresh(hub, found):
            self._kept.move_to_end(tenant)
            self.hits += 1
            return dict(found.counts)
        self.misses += 1
        version, started = hub.layers_version, time.monotonic()
        counts = await read()
        self._kept[tenant] = Kept(dict(counts), version, started)
        self._kept.move_to_end(tenant)
        while len(self._kept) > MAX_TENANTS:
            self._kept.popitem(last=False)
        return counts

    def _fresh(self, hub: ChangeHub, kept: Kept) -> bool:
        if time.monotonic() - kept.read_at > self.max_age:
            return False
        return kept.version == hub.layers_version and kept.read_at >= hub.layers_changed + RETOUCH
