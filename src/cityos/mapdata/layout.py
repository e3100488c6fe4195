"""Which of this worker's changes can change what the console map's layers count (a create, a
delete, a move, a new type or scope: changes.py `_layers_changed`), and when each has committed, so
the layers kept between page loads (console/layers.py) follow them instead of being read again.

A change is seen inside its write's transaction (the change listener), before it commits and
maybe before it is rolled back. So a change of a tenant whose layers are kept is "in flight" from
then until the store calls it back after its commit (store/base.py AfterCommit; never on a
rollback); the follower gets it then, on the event loop, before the writer's caller resumes. A
change nobody follows only notes its time (`changed`): a read of the layers began less than
RETOUCH after it may not see it, as the tile cache assumes. A change in flight longer than
IN_FLIGHT seconds was rolled back, or commits late: either way the kept layers are given up
(`epoch`), and given up again if its commit arrives later. Another worker's change (NOTIFY) or a
resync gives them up too: its event carries no entity to follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence

from cityos.entities.model import Entity
from cityos.store.base import AfterCommit

IN_FLIGHT = 30.0  # seconds after which a change not yet committed is taken as rolled back
# (tenant, before, after) of committed changes, in commit order
Committed = Sequence[tuple[str, Entity | None, Entity | None]]


class LayoutWatch:
    """Counts and follows the changes of the layers (one per change hub)."""

    def __init__(self, retouch: float) -> None:
        self.retouch = retouch
        self.lock = threading.Lock()  # the store's writer thread and the event loop
        self.seen = 0  # changes seen so far (a read of the layers during one is not kept)
        self.changed = -math.inf  # time.monotonic() of the last change nobody followed
        self.changed_in: dict[str, float] = {}  # the same per tenant (fixed())
        self.epoch = 0  # bumped when kept layers cannot follow: every one is dropped
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the hub's start
        self.follower: Callable[[Committed], None] | None = None  # on the loop
        self.tracks: Callable[[str], bool] = lambda tenant: False  # whether a tenant's layers are kept
        self._in_flight: dict[int, float] = {}  # token: time.monotonic() when seen
        self._uncommitted: set[int] = set()  # tokens seen whose commit has not been called (fixed())
        self.sequence = 0  # followed changes committed so far: each one's number, in commit order
        self.first = 0  # during a follower's call: the number of its first change (the rest follow on)
        self._tokens = itertools.count()
        self._queue: list[tuple[int, str, Entity | None, Entity | None, int]] = []
        self._armed = False

    def change(self, tenant: str, before: Entity | None, after: Entity | None) -> AfterCommit | None:
        """In the write's transaction (a store thread): count it; followed, the call for its commit."""
        with self.lock:
            self.seen += 1
            if self.follower is None or self.loop is None or not self.tracks(tenant):
                self.changed = self.changed_in[tenant] = time.monotonic()
                return None
            token = next(self._tokens)
            self._in_flight[token] = time.monotonic()
            self._uncommitted.add(token)
        return AfterCommit(functools.partial(self._committed, token, tenant, before, after))

    def _committed(self, token: int, tenant: str, before: Entity | None, after: Entity | None) -> None:
        """The committing thread: queue it; the first of a batch wakes the loop."""
        with self.lock:
            self._uncommitted.discard(token)
            self.sequence += 1
            self._queue.append((token, tenant, before, after, self.sequence))
            if self._armed:
                return
            self._armed = True
        loop = self.loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # committed on the loop (PostgreSQL): followed before the writer resumes
            self._deliver()
            return
        # another thread (SQLite's writer): the loop runs it before the writer's futures settle; a
        # closed loop: nobody reads the layers any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        """On the loop: hand the committed changes to the follower (or give up if one was lost)."""
        with self.lock:
            queue, self._queue, self._armed = self._queue, [], False
            lost = False
            known = []
            for token, tenant, before, after, _ in queue:
                if self._in_flight.pop(token, None) is None:
                    lost = True  # taken as rolled back already: kept layers may have been read without it
                else:
                    known.append((tenant, before, after))
        if lost:
            self.lost()
        elif known and self.follower is not None:
            self.first = queue[0][4]
            self.follower(known)

    def lost(self) -> None:
        """On the loop: the kept layers cannot follow what changed (another worker's change, ...)."""
        self.epoch += 1

    def settled(self) -> bool:
        """On the loop: no followed change is in flight (one in flight too long is given up)."""
        now = time.monotonic()
        with self.lock:
            expired = [token for token, at in self._in_flight.items() if at + IN_FLIGHT < now]
            for token in expired:
                del self._in_flight[token]
                self._uncommitted.discard(token)
            busy = bool(self._in_flight)
        if expired:
            self.lost()
        return not busy

    def fixed(self, tenant: str, establish: Callable[[], object]) -> tuple[int, int] | None:
        """A read's snapshot taken (`establish`, in the reading thread) where the followed changes
        it holds are known: (the number of the last, the epoch) when no followed change was between
        its listener and its commit then and no unfollowed one of `tenant` came in the last `retouch`
        seconds (the snapshot holds exactly the changes numbered up to it of the tenant); None
        when that cannot be told. Under the lock, so no change is seen or committed meanwhile."""
        with self.lock:
            establish()
            if self._uncommitted or time.monotonic() < self.changed_in.get(tenant, -math.inf) + self.retouch:
                return None
            return self.sequence, self.epoch

    def mark(self, tenant: str) -> tuple[int, int] | None:
        """Just before a statement that takes a snapshot is sent (PostgreSQL; on the loop, where
        each change's listener runs before its COMMIT is sent and its commit is called after the
        answer): the number of the last followed change and the epoch, when no followed change
        is between its listener and its commit and no unfollowed one of `tenant` came in the last
        `retouch` seconds; None otherwise."""
        with self.lock:
            if self._uncommitted or time.monotonic() < self.changed_in.get(tenant, -math.inf) + self.retouch:
                return None
            return self.sequence, self.epoch

    def confirm(self, mark: object) -> tuple[int, int] | None:
        """Once that statement has answered: `mark` when still no followed change is between its
        listener and its commit and none committed meanwhile. Then no change's commit can have been
        taken by the server during the statement (none had been sent before it, and one sent
        during it would still be uncommitted or numbered after the mark): the snapshot holds
        exactly the followed changes numbered up to the mark."""
        with self.lock:
            if mark is None or self._uncommitted or (self.sequence, self.epoch) != mark:
                return None
            return self.sequence, self.epoch

    def keep_if_quiet(self, seen: int, epoch: int, started: float, keep: Callable[[], None]) -> bool:
        """On the loop, after a read that began at `started` when `seen` and `epoch` were current and
        nothing was in flight: `keep` it, unless a change came meanwhile or shortly before (a read
        that began less than `retouch` after an unfollowed change may have missed it)."""
        with self.lock:
            if self.seen != seen or self.epoch != epoch or started < self.changed + self.retouch:
                return False
            keep()  # under the lock: a change seen from now on finds the tenant tracked
            return True
