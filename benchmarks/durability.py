"""Scenario 7: what `--durability full` costs. One-entity creates (one transaction each, the write
that pays a commit's sync in full) against two servers started side by side on the same back-end,
one with --durability normal and one with full, repeat by repeat; the full row's ratio is its rate
over the normal row's rate in the same repeat. SQLite: two fresh database files (normal syncs the
WAL at checkpoints, full at every commit). PostgreSQL: the same schema; normal keeps the server's
synchronous_commit, so on a server left at its default (on) the two rows measure the same thing."""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

from benchmarks.report import Row
from benchmarks.servers import cityos_server
from benchmarks.workloads import Workload

if TYPE_CHECKING:
    from benchmarks.runner import Bench

NORMAL = "7a. create one entity, --durability normal"
FULL = "7b. create one entity, --durability full"


def durability(bench: Bench, backend: str, url: str | None, stored: int) -> list[Row]:
    normal_row = Row(NORMAL, backend=backend)
    full_row = Row(FULL, baseline=NORMAL, backend=backend)
    """The two rows, measured on servers of their own (stopped on the way out)."""
    with ExitStack() as stack:
        normal = stack.enter_context(cityos_server(bench.workdir, url, durability="normal", name="normal"))
        full = stack.enter_context(cityos_server(bench.workdir, url, durability="full", name="full"))

        def creates(tag: str, repeat: int) -> Workload:
            return Workload("create", stored=stored, start=stored, tag=f"{tag}{repeat}")

        def normal_sample(index: int) -> float:
            result = bench.load(normal, creates("dur-normal", index), seed=index)
            bench.record(normal_row, result)
            return result.rate

        if bench.config.warmup > 0:
            bench.load(normal, creates("dur-normal", -1), duration=bench.config.warmup)
        bench.measure(full_row, full, lambda index: creates("dur-full", index), baseline=normal_sample)
        normal_row.rss_mb = normal.peak_rss_mb()
    return [normal_row, full_row]
