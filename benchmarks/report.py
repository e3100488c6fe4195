"""Rows of the result table, their statistics over repeats, and the printed Markdown table."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One line of the table. rates holds one rate per repeat; the p50/p99 shown are the medians of the
    repeats' percentiles. A row with `skipped` set did not run (the feature does not exist yet)."""

    name: str
    unit: str = "req/s"
    rates: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_sample: str = ""
    rss_mb: float | None = None
    baseline: str = ""
    target: float | None = None
    ratios: list[float] = field(default_factory=list)  # paired with the baseline, one per repeat
    skipped: str = ""
    kind: str = "scenario"  # scenario | baseline | alternative

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate, "ratio": self.ratio, "met": self.met}


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def format_table(rows: list[Row]) -> str:
    header = (
        "| Scenario | Rate (median) | Spread (min-max) | p50 ms | p99 ms | Errors | Peak RSS MB"
        " | Ratio to baseline (min-max) | Baseline | Target |"
    )
    lines = [header, "|" + "---|" * 10]
    for row in rows:
        if row.skipped:
            lines.append(f"| {row.name} | {row.skipped} | | | | | | | | |")
            continue
        spread = f"{_number(min(row.rates))}-{_number(max(row.rates))}" if row.rates else "-"
        ratio = ""
        if row.ratio is not None:
            ratio = f"{row.ratio:.1%} ({min(row.ratios):.1%}-{max(row.ratios):.1%})"
        target = ""
        if row.target is not None:
            target = f"≥ {row.target:.0%} " + ("met" if row.met else "**missed**")
        rss = f"{row.rss_mb:.0f}" if row.rss_mb is not None else "-"
        lines.append(
            f"| {row.name} | {_number(row.rate)} {row.unit} | {spread} | {_ms(row.p50_ms)} | {_ms(row.p99_ms)}"
            f" | {row.errors} | {rss} | {ratio} | {row.baseline} | {target} |"
        )
    return "\n".join(lines)
