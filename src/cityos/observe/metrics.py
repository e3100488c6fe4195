"""Prometheus metrics (docs/operations.md, "Metrics").

Everything is counted in plain numbers where it happens and carried into the Prometheus metrics by
`sample()`, at each scrape and every `metrics_interval` seconds, because prometheus-client's
observe() takes a lock per bucket and per sum (a few microseconds on every request):
- request and store-operation latencies go to a Tally on the event loop (a bisect and two
  additions), added to their histogram child at sample time;
- the other sources are counts or sizes the subsystems keep anyway (the IoT Agent's stats, the
  @context registry's, the dispatcher's lanes, the writer queue); nothing is added to a request's
  path for them. The writer's group-commit sizes (one per transaction, on its thread) are
  observed directly.

With `serve --workers N` every worker writes its values to the files of prometheus-client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the supervisor before the workers start) and a
scrape of any worker adds them up; the gauges say how (livesum, livemax, or one series per pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import resource
from bisect import bisect_left
from collections.abc import Callable, Iterable
from time import perf_counter_ns
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5, 10.0)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"  # the label of what is past a cardinality bound
UNMATCHED = "unmatched"  # the route label of a request no route matched (404)
# the store operations timed (StoreTimer): a fixed list, so the label set is bounded
TIMED_OPERATIONS = (
    "get_entity",
    "get_stored",
    "mutate",
    "query_entities",
    "purge_expired",
    "temporal_write",
    "temporal_query",
    "temporal_aggregate",
    "claim_outbox",
    "finish_outbox",
)
SAMPLE_SECONDS = 0.005  # a store operation's first call after so long is timed (all are counted)
Source = Callable[[], Any]


def bucket_table(buckets: tuple[float, ...], up_to: float) -> tuple[int, list[int]]:
    """A request's bucket by a list index instead of a bisect (a bisect over a dozen int bounds cost
    ~800 instructions, docs/performance.md, "Metrics and access log cost, fourth pass"): `unit` is the largest number of
    nanoseconds every bound is a multiple of, and table[ceil(nanos / unit)] is the index of the
    first bound >= nanos, for nanos up to `up_to` seconds (past it: bisect). Exact: a bound b is a
    multiple of unit, so nanos <= b exactly when ceil(nanos / unit) <= b / unit."""
    bounds = [round(bound * 1e9) for bound in buckets]
    unit = 0
    for bound in bounds:
        unit = math.gcd(unit, bound)
    last = round(up_to * 1e9) // unit
    return unit, [bisect_left(bounds, q * unit) for q in range(last + 1)]


# the request histogram's: HTTP_UNIT is 0.5 ms, the table reaches 10 s (20,001 entries)
HTTP_UNIT, HTTP_INDEX = bucket_table(HTTP_BUCKETS, HTTP_BUCKETS[-1])


class Tally:
    """Observations of one histogram child, kept as plain numbers by the event loop (no lock: one
    thread adds, the same thread flushes) and added to the child by flush(). Durations come in
    integer nanoseconds (perf_counter_ns: int comparisons and additions, no float) and the sum
    goes to the child in seconds. The child's buckets
    and sum are reached through prometheus-client's internals (`_buckets`, `_sum`: its values,
    in memory or in the multiprocess files); tests/test_observe.py checks the counts that result."""

    __slots__ = ("bounds", "child", "counts", "shape", "total")

    def __init__(self, child: Any, buckets: tuple[float, ...]) -> None:
        self.child = child
        self.shape: Any = None  # an HTTP tally's access-log Shape (observe/access.py), kept by app.ProtocolGuard
        self.bounds = (*(round(bound * 1e9) for bound in buckets), 1 << 62)  # ints: int comparisons
        self.counts = [0] * len(self.bounds)
        self.total = 0

    def observe(self, nanos: int) -> None:
        self.counts[bisect_left(self.bounds, nanos)] += 1  # the first bucket with nanos <= bound
        self.total += nanos

    def flush(self) -> None:
        counts, self.counts = self.counts, [0] * len(self.bounds)
        total, self.total = self.total, 0
        if not any(counts):
            return
        self.child._sum.inc(total / 1e9)
        for index, count in enumerate(counts):
            if count:
                self.child._buckets[index].inc(count)


class BoundedLabels:
    """The first `limit` distinct values keep their own label; later ones are counted as `other`,
    so a city with ten thousand subscriptions does not make ten thousand series."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._kept:
            return value
        if len(self._kept) < self.limit:
            self._kept.add(value)
            return value
        return OTHER


class Metrics:
    """The metrics of one server process; `sources` are filled in by create_app."""

    def __init__(self, *, max_labels: int = 50, multiproc_dir: str | None = None) -> None:
        self.multiproc_dir = multiproc_dir if multiproc_dir is not None else os.environ.get(MULTIPROC_VARIABLE)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: half the text of a scrape, never graphed
        self.registry = CollectorRegistry(auto_describe=False)
        self.labels = BoundedLabels(max_labels)
        r = self.registry
        self.http = Histogram(
            "cityos_http_request_duration_seconds",
            "HTTP requests by route template, method and status: latency (its _count counts them).",
            ["route", "method", "status"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.http_tallies: dict[tuple[int, str, int], Tally] = {}
        self.tallies: list[Tally] = []  # every Tally, flushed by sample()
        self.store_seconds = Histogram(
            "cityos_store_operation_duration_seconds",
            "Store operations: latency by operation.",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.group_size = Histogram(
            "cityos_writer_group_commit_size",
            "Writes committed together in one SQLite transaction (group commit).",
            buckets=GROUP_BUCKETS,
            registry=r,
        )
        self.writer_queue = Gauge(
            "cityos_writer_queue_depth",
            "Writes waiting for the SQLite writer.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.outbox_backlog = Gauge(
            "cityos_notification_backlog",
            "Notifications claimed by this server and not yet delivered or given up, by subscription.",
            ["subscription"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.outbox_age = Gauge(
            "cityos_notification_oldest_age_seconds",
            "Age of the oldest notification waiting (retried or queued), by subscription.",
            ["subscription"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.deliveries = Counter(
            "cityos_notification_deliveries",
            "Notification delivery attempts by subscription and outcome (sent, failed).",
            ["subscription", "outcome"],
            registry=r,
        )
        self.measures = Counter(
            "cityos_iot_measures",
            "IoT Agent device messages (MQTT and HTTP) by outcome: received, stored, or rejected "
            "(malformed, unknown_device, failed).",
            ["outcome"],
            registry=r,
        )
        self.contexts = Counter(
            "cityos_context_cache",
            "@context resolutions: hit (compiled before), miss (compiled now), fetch_failure (a remote "
            "@context could not be fetched).",
            ["result"],
            registry=r,
        )
        self.federation = Counter(
            "cityos_federation_calls",
            "Calls to context sources and partner cities by partner (registration id) and outcome.",
            ["partner", "outcome"],
            registry=r,
        )
        self.history_rows = Counter("cityos_history_rows", "History instances written.", registry=r)
        self.rss = Gauge(
            "cityos_process_resident_memory_bytes",
            "Resident memory of the process.",
            registry=r,
            multiprocess_mode="all",
        )
        self.open_files = Gauge(
            "cityos_process_open_files", "Open file descriptors of the process.", registry=r, multiprocess_mode="all"
        )
        self.loop_lag = Gauge(
            "cityos_event_loop_lag_seconds",
            "Longest delay of the event loop in the last sampling interval (a timer woken late).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.info = Gauge(
            "cityos_up", "1 per live server process (workers add up).", registry=r, multiprocess_mode="livesum"
        )
        self.info.set(1)
        # what sample() reads: set by create_app (each returns a plain number or mapping)
        self.queue_depth: Source | None = None
        self.agent_stats: Source | None = None  # IotAgent.stats
        self.context_counts: Source | None = None  # ContextRegistry.counts
        self.federation_counts: Source | None = None  # Forwarder.counts
        self.history_count: Source | None = None  # HistoryRecorder.rows
        self.lanes: Source | None = None  # Dispatcher.backlog(): {subscription: (waiting, oldest age)}
        self.delivery_counts: Source | None = None  # Dispatcher.counts
        self._seen: dict[str, float] = {}  # totals carried over so far, by source key
        self._backlog_labels: set[str] = set()
        self._lag = 0.0

    # -- the hot path -----------------------------------------------------------------------------
    def request(self, route: Any, method: str, status: int, nanos: int) -> None:
        """One answered request, `nanos` long; `route` is the matched route (its template is the
        label). app.ProtocolGuard does the same inline. One dict look-up and the Tally's observe;
        a method that is not one of METHODS finds no key and gets the `other` label's Tally from
        http_tally (so at most one Tally per route, status and known method, or other)."""
        tally = self.http_tallies.get((id(route), method, status))  # a Route is not hashable
        if tally is None:
            tally = self.http_tally(route, method, status)
        try:  # as Tally.observe
            tally.counts[HTTP_INDEX[(nanos + HTTP_UNIT - 1) // HTTP_UNIT]] += 1
        except IndexError:  # past the table's 10 s
            tally.counts[bisect_left(tally.bounds, nanos)] += 1
        tally.total += nanos

    def http_tally(self, route: Any, method: str, status: int) -> Tally:
        if method not in METHODS:  # any token is a method to HTTP: bounded here
            return self.http_tally(route, OTHER, status)
        key = (id(route), method, status)  # the route lives as long as the app
        made = self.http_tallies.get(key)
        if made is None:
            template = getattr(route, "path", None) or UNMATCHED
            made = self.http_tallies[key] = self.tally(self.http.labels(template, method, str(status)), HTTP_BUCKETS)
        return made

    def tally(self, child: Any, buckets: tuple[float, ...]) -> Tally:
        made = Tally(child, buckets)
        self.tallies.append(made)
        return made

    def group_committed(self, size: int) -> None:
        """Called by the SQLite writer thread after each group commit."""
        self.group_size.observe(size)

    # -- sampling ---------------------------------------------------------------------------------
    def _carry(self, key: str, total: float, counter: Any) -> None:
        """Add to `counter` what `total` (a source's running count) grew by since the last sample."""
        before = self._seen.get(key, 0.0)
        if total > before:
            counter.inc(total - before)
        self._seen[key] = total

    def sample(self) -> None:
        """Carry the subsystems' own counts and sizes into the metrics (at a scrape, and every
        metrics_interval seconds, which is what the other workers' scrapes see)."""
        for tally in self.tallies:
            tally.flush()
        self.rss.set(resident_bytes())
        with contextlib.suppress(OSError):
            self.open_files.set(len(os.listdir("/proc/self/fd")))
        self.loop_lag.set(self._lag)
        if self.queue_depth is not None:
            self.writer_queue.set(self.queue_depth())
        if self.agent_stats is not None:
            stats = self.agent_stats()
            for outcome in ("received", "stored", "malformed", "unknown_device", "failed"):
                self._carry("iot." + outcome, getattr(stats, outcome), self.measures.labels(outcome))
        if self.context_counts is not None:
            for result, total in list(self.context_counts().items()):
                self._carry("ctx." + result, total, self.contexts.labels(result))
        if self.history_count is not None:
            self._carry("history", self.history_count(), self.history_rows)
        if self.federation_counts is not None:
            for (partner, outcome), total in list(self.federation_counts().items()):
                label = self.labels(partner)
                self._carry(f"fed.{partner}.{outcome}", total, self.federation.labels(label, outcome))
        if self.delivery_counts is not None:
            for (subscription, outcome), total in list(self.delivery_counts().items()):
                label = self.labels(subscription)
                self._carry(f"sub.{subscription}.{outcome}", total, self.deliveries.labels(label, outcome))
        if self.lanes is not None:
            self._sample_backlog(self.lanes())

    def _sample_backlog(self, backlog: dict[str, tuple[int, float]]) -> None:
        waiting: dict[str, int] = {}
        oldest: dict[str, float] = {}
        for subscription, (count, age) in backlog.items():
            label = self.labels(subscription)
            waiting[label] = waiting.get(label, 0) + count
            oldest[label] = max(oldest.get(label, 0.0), age)
        for label in self._backlog_labels - waiting.keys():  # emptied since: 0, not a stale value
            self.outbox_backlog.labels(label).set(0)
            self.outbox_age.labels(label).set(0)
        for label, count in waiting.items():
            self.outbox_backlog.labels(label).set(count)
            self.outbox_age.labels(label).set(oldest[label])
        self._backlog_labels = set(waiting)

    async def run(self, interval: float) -> None:
        """Sample every `interval` seconds; the event-loop lag is how late a short timer fires."""
        loop = asyncio.get_running_loop()
        tick = min(0.25, interval)
        while True:
            worst = 0.0
            until = loop.time() + interval
            while loop.time() < until:
                planned = loop.time() + tick
                await asyncio.sleep(tick)
                worst = max(worst, loop.time() - planned)
            self._lag = worst
            self.sample()

    # -- exposition -------------------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets: this process's metrics, or every worker's added up."""
        self.sample()
        if self.multiproc_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def names(self) -> list[str]:
        """The metric family names this server exposes (the dashboard test checks against them)."""
        return sorted(collector_names(self.registry.collect()))

    def close(self) -> None:
        """A worker that stops: its live gauges leave the sums (multiprocess mode)."""
        if self.multiproc_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiproc_dir)  # type: ignore[no-untyped-call]


def collector_names(families: Iterable[Any]) -> set[str]:
    return {family.name for family in families}


def resident_bytes() -> int:
    """Resident memory now (Linux /proc), else the peak (getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class SampledTally(Tally):
    """A Tally of calls that are all counted (by `counter`, StoreTimer's functools.lru_cache
    wrapper: its misses) and some timed: flush() scales the timed ones' buckets and sum to the
    calls, so the histogram's count is exact and its buckets and sum are estimates."""

    __slots__ = ("counter", "seen")

    def __init__(self, child: Any, buckets: tuple[float, ...], counter: Any) -> None:
        super().__init__(child, buckets)
        self.counter = counter
        self.seen = 0  # the counter's misses at the last flush

    def flush(self) -> None:
        misses = self.counter.cache_info().misses
        timed = sum(self.counts)
        if not timed:  # no call timed yet: its calls are carried to the next flush
            return
        calls, self.seen = misses - self.seen, misses
        counts, self.counts = self.counts, [0] * len(self.bounds)
        total, self.total = self.total, 0
        if not calls:
            return
        self.child._sum.inc(total * calls / timed / 1e9)
        cumulative = given = 0
        for index, count in enumerate(counts):  # each bucket's share of the calls, rounded so
            cumulative += count  # that the shares add up to the calls exactly
            share = (cumulative * calls + timed // 2) // timed
            if share > given:
                self.child._buckets[index].inc(share - given)
                given = share


def _swap(store: Any, name: str, was: Any, now: Any) -> None:
    """Put `now` in place of the store's operation `name` if it is still `was`."""
    if vars(store).get(name) is was:
        setattr(store, name, now)


class StoreTimer:
    """Times the store's main operations (TIMED_OPERATIONS) by replacing them on the instance.
    Every call is counted in C: functools.lru_cache(maxsize=0) caches nothing and counts its calls
    as misses, with no Python frame (a Python wrapper on every call cost a retrieve ~1 K
    instructions, 0.3%; docs/performance.md, "Metrics and access log cost, fourth pass"). The first call after each
    SAMPLE_SECONDS is timed: a timing coroutine stands in for the counter until a call comes, puts
    the counter back, and is put back itself SAMPLE_SECONDS after that call (at most 1/SAMPLE_SECONDS
    timed calls a second per operation; an idle server has no timer)."""

    @staticmethod
    def install(store: Any, metrics: Metrics) -> None:
        for name in TIMED_OPERATIONS:
            method = getattr(store, name, None)
            if method is None:
                continue
            counted = functools.lru_cache(maxsize=0)(method)
            tally = SampledTally(metrics.store_seconds.labels(name), STORE_BUCKETS, counted)
            metrics.tallies.append(tally)

            def timer(name: str = name, counted: Any = counted, tally: SampledTally = tally) -> Any:
                async def measured(*args: Any, **kwargs: Any) -> Any:
                    # swapped only while the store holds this very timer: something that replaced
                    # the operation since (a wrapper of its own) is never undone by a swap
                    swapped = vars(store).get(name) is measured
                    if swapped:
                        setattr(store, name, counted)  # the next calls: counted only
                    started = perf_counter_ns()
                    try:
                        return await counted(*args, **kwargs)
                    finally:
                        tally.observe(perf_counter_ns() - started)
                        if swapped:
                            asyncio.get_running_loop().call_later(SAMPLE_SECONDS, _swap, store, name, counted, measured)

                return measured

            setattr(store, name, timer())
