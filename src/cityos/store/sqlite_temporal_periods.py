"""The SQL of the temporal aggregation's periods in the SQLite back-end (sqlite_temporal.py): the
statistics per period as SQL, the SELECT list of a period, and a period's bounds and statistics
from its row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cityos.store.sqlite_downsample import WEIGHTED_STATS
from cityos.store.temporal_base import PeriodStats

LOOP_PERIODS = 256  # periods of one series read one statement each; more are grouped by one sort


# statistic -> SQL over the period's rows (p: t, num, vtext, v = vkind, shape)
STAT_SQL = {
    "count": "COUNT(*)",
    "distinct": "COUNT(DISTINCT vtext) + COUNT(DISTINCT CASE WHEN v = 1 THEN num END)",  # ints have no vtext
    "numbers": "COUNT(num)",
    "sum": "SUM(num)",
    "avg": "AVG(num)",
    "min": "MIN(num)",
    "max": "MAX(num)",
    "sumsq": "SUM(num * num)",
    "min_text": "MIN(COALESCE(vtext, CASE WHEN v = 1 THEN CAST(CAST(num AS INTEGER) AS TEXT) END))",
    "max_text": "MAX(COALESCE(vtext, CASE WHEN v = 1 THEN CAST(CAST(num AS INTEGER) AS TEXT) END))",
}


STAT_WEIGHTED = {**STAT_SQL, **WEIGHTED_STATS}  # over rows with sqlite_downsample.WEIGHTED's columns


def _select(stats: list[str], times: bool = False, shapes: bool = False, weighted: bool = False) -> str:
    """The SELECT list of a period: its first and last time, its least and greatest shape, then
    the statistics asked for (COUNT(*) when there are none, so that the list is never empty)."""
    parts = ["MIN(t)", "MAX(t)"] if times else []
    parts += ["MIN(shape)", "MAX(shape)"] if times or shapes else []
    sql = STAT_WEIGHTED if weighted else STAT_SQL
    return ", ".join([*parts, *(sql[stat] for stat in stats)] or ["COUNT(*)"])


def _period_stats(
    index: int, origin: int, row: Sequence[Any], stats: list[str], *, shapes: bool = True
) -> tuple[PeriodStats, tuple[int, int]]:
    """A period's statistics from (first, last, [least shape, greatest shape,] stats...); those not
    asked for are 0 or None."""
    first, last = row[:2]
    low, high = row[2:4] if shapes else (0, 0)
    values: dict[str, Any] = {"count": 0, "distinct": 0, "numbers": 0}
    values.update(zip(stats, row[4 if shapes else 2 :], strict=False))
    return PeriodStats(
        index,
        origin,
        first,
        last,
        values["count"],
        values["distinct"],
        values["numbers"],
        values.get("sum"),
        values.get("avg"),
        values.get("min"),
        values.get("max"),
        values.get("sumsq"),
        values.get("min_text"),
        values.get("max_text"),
    ), (low, high)


def _truncated(offset: int, length: int) -> int:
    """offset / length rounded toward zero, as SQL's integer division does."""
    quotient = abs(offset) // length
    return quotient if offset >= 0 else -quotient


def _period_range(index: int, origin: int, length: int) -> tuple[int, int]:
    """[low, high) of the times whose period number is `index` (the offset from the origin divided
    by the length toward zero: period 0 reaches one length before the origin too)."""
    if index > 0:
        return origin + index * length, origin + (index + 1) * length
    if index == 0:
        return origin - length + 1, origin + length
    return origin + (index - 1) * length + 1, origin + index * length + 1
