"""The garbage collector's settings for a serving process.

CPython's default thresholds (700, 10, 10) run a young collection every 700 new container objects
and a full one every 70,000 or so: a 1,000-entity batch upsert makes about 100,000 objects (parsed
bodies, expanded entities, history rows), so each batch paid for several full collections, each
walking every object of the process, the modules, @contexts and schemas loaded at start included
(70-100 µs per entity, measured in docs/performance.md "Issue 15: batch upsert on the event loop").
Nearly all of those objects die young by reference counting; the collector only matters for
cycles. So a serving process collects less often, and freezes what it loaded before serving, which
full collections then skip. The cost is a little more memory held by cyclic garbage between
collections (bounded by the young threshold).

A batch write (ngsild/batch.py) holds about 80,000 container objects alive at once: the parsed body,
the expanded entities, each entity's stored and new document, its change and history rows, all of
them acyclic and freed by reference counting when the batch is answered. With young collections every
10,000 objects, a 1,000-entity batch upsert ran about eight young collections and one in three a
middle one, each walking every live object of the batch, and collected nothing: 30 µs of the 300 µs
of CPU per entity (docs/performance.md, issue 15 eleventh pass). So while a batch is being handled
the young threshold is BATCH_YOUNG_THRESHOLD (`deferred`): a batch's objects are mostly gone before
the next collection, and what cyclic garbage there is waits for at most that many objects."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 10_000  # new container objects between young collections [CPython: 700]
BATCH_YOUNG_THRESHOLD = 100_000  # the same while a batch write is handled (`deferred`)

# the thresholds before the first of the batches being handled now, once per batch (entered and left on
# the event loop's thread only): process state, as the collector's thresholds themselves are
_deferring: list[tuple[int, int, int]] = []


def tune() -> None:
    """Fewer collections, and what is loaded so far frozen out of them (call once the app is built)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    gc.collect()
    gc.freeze()


@contextmanager
def deferred() -> Iterator[None]:
    """Young collections at most every BATCH_YOUNG_THRESHOLD new objects while the block runs (a
    batch write), and until the event loop's next turn after it: the batch's objects are still held
    when the block ends (its results, by the store's future and the loop's callback that settled
    it), and a young collection then would walk them all. Nested or overlapping blocks (two batches
    at once) share it; the last one out gives the thresholds back as they were. The event loop's
    thread only: the count is not locked."""
    before = _deferring[0] if _deferring else gc.get_threshold()
    if before[0] < BATCH_YOUNG_THRESHOLD:
        gc.set_threshold(BATCH_YOUNG_THRESHOLD, before[1], before[2])
    _deferring.append(before)
    try:
        yield
    finally:
        try:
            asyncio.get_running_loop().call_soon(_resume)
        except RuntimeError:  # no running loop: nothing is held by it
            _resume()


def _resume() -> None:
    """One deferring block is over: the thresholds as they were once none is left."""
    before = _deferring.pop()
    if not _deferring:
        gc.set_threshold(*before)
