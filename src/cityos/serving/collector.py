"""The garbage collector's settings for a serving process.

CPython's default thresholds (700, 10, 10) run a young collection every 700 new container objects
and a full one every 70,000 or so: a 1,000-entity batch upsert makes about 100,000 objects (parsed
bodies, expanded entities, history rows), so each batch paid for several full collections, each
walking every object of the process, the modules, @contexts and schemas loaded at start included
(70-100 µs per entity, measured in docs/performance.md "Issue 15: batch upsert on the event loop").
Nearly all of those objects die young by reference counting; the collector only matters for
cycles. So a serving process collects less often, and freezes what it loaded before serving, which
full collections then skip. The cost is a little more memory held by cyclic garbage between
collections (bounded by the young threshold)."""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # new container objects between young collections [CPython: 700]


def tune() -> None:
    """Fewer collections, and what is loaded so far frozen out of them (call once the app is built)."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    gc.collect()
    gc.freeze()
