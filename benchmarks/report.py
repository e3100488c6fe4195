"""Rows of the result table, their statistics over repeats, and the printed Markdown tables: every row
with its back-end in a column, then the back-ends side by side, one column each."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.targets import POSTGRES_VS_SQLITE, Target

LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL", "remote": "remote server"}


def backend_label(backend: str, workers: int = 1) -> str:
    """'SQLite', 'PostgreSQL', 'PostgreSQL, 2 workers'; '' for rows that belong to no back-end."""
    label = LABELS.get(backend, backend)
    return f"{label}, {workers} workers" if backend and workers > 1 else label


@dataclass
class Row:
    """One line of the table. rates holds one rate per repeat; the p50/p99 shown are the medians of the
    repeats' percentiles. A row with `skipped` set did not run (the feature does not exist yet).
    backend is the store the server ran on ('' for the constant-JSON floor), workers its processes."""

    name: str
    unit: str = "req/s"
    rates: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_sample: str = ""
    rss_mb: float | None = None
    baseline: str = ""
    target: Target | None = None
    ratios: list[float] = field(default_factory=list)  # paired with the baseline, one per repeat
    cpu_ms: list[float] = field(default_factory=list)  # server (+ database) CPU ms per operation, per repeat
    skipped: str = ""
    kind: str = "scenario"  # scenario | baseline | alternative
    backend: str = ""  # sqlite | postgres | '' (shared by every back-end)
    workers: int = 1

    @property
    def label(self) -> str:
        return backend_label(self.backend, self.workers)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    def met(self, sqlite_rate: float | None = None) -> bool | None:
        """Every part of the target met (None: no target, or a part with nothing to compare with)."""
        return None if self.target is None else self.target.met(self.rate, self.ratio, sqlite_rate)

    def target_text(self, sqlite_rate: float | None = None) -> str:
        return "" if self.target is None else self.target.text(self.rate, self.ratio, sqlite_rate)

    def as_json(self, sqlite_rate: float | None = None) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate, "ratio": self.ratio, "met": self.met(sqlite_rate)}


def sqlite_rates(rows: list[Row]) -> dict[str, float]:
    """The SQLite rate of each scenario name, for the PostgreSQL rows' "≥ 0.7x SQLite" targets."""
    return {row.name: row.rate for row in rows if row.backend == "sqlite" and row.workers == 1 and row.rates}


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def format_table(rows: list[Row]) -> str:
    header = (
        "| Scenario | Back-end | Rate (median) | Spread (min-max) | p50 ms | p99 ms | Errors | Peak RSS MB"
        " | CPU ms/op | Ratio to baseline (min-max) | Baseline | Target |"
    )
    lines = [header, "|" + "---|" * 12]
    versus = sqlite_rates(rows)
    for row in rows:
        if row.skipped or not row.rates:
            lines.append(f"| {row.name} | {row.label} | {row.skipped or 'did not run'} | | | | | | | | | |")
            continue
        spread = f"{_number(min(row.rates))}-{_number(max(row.rates))}" if row.rates else "-"
        ratio = ""
        if row.ratio is not None:
            ratio = f"{row.ratio:.1%} ({min(row.ratios):.1%}-{max(row.ratios):.1%})"
        target = row.target_text(versus.get(row.name))
        rss = f"{row.rss_mb:.0f}" if row.rss_mb is not None else "-"
        cpu = f"{statistics.median(row.cpu_ms):.3f}" if row.cpu_ms else "-"
        lines.append(
            f"| {row.name} | {row.label} | {_number(row.rate)} {row.unit} | {spread} | {_ms(row.p50_ms)}"
            f" | {_ms(row.p99_ms)} | {row.errors} | {rss} | {cpu} | {ratio} | {row.baseline} | {target} |"
        )
    return "\n".join(lines)


def cell(row: Row | None, *, spread: bool = False) -> str:
    """A row in one table cell: its median rate (with spread: and min-max), its paired ratio, its errors."""
    if row is None:
        return "-"
    if row.skipped or not row.rates:
        return row.skipped or "did not run"
    text = f"{_number(row.rate)} {row.unit}"
    if spread:
        text += f" ({_number(min(row.rates))}-{_number(max(row.rates))})"
    if row.ratio is not None:
        text += f" ({row.ratio:.1%})"
    if row.errors:
        text += f", **{row.errors} errors**"
    return text


def format_side_by_side(rows: list[Row]) -> str:
    """One line per scenario, one column per back-end (and worker count): the median rate and, in
    brackets, the paired ratio to the scenario's baseline; then each PostgreSQL column over SQLite (in bold
    below issue 15's 0.7)."""
    scenarios = [row for row in rows if row.kind == "scenario"]
    columns = list(dict.fromkeys((row.backend, row.workers) for row in scenarios))
    names = list(dict.fromkeys(row.name for row in scenarios))
    cells = {(row.name, row.backend, row.workers): row for row in scenarios}
    versus = [column for column in columns if column[0] != "sqlite"] if ("sqlite", 1) in columns else []
    header = ["Scenario", *(backend_label(*column) for column in columns)]
    header += [f"{backend_label(*column)} / SQLite" for column in versus]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        line = [name, *(cell(cells.get((name, *column))) for column in columns)]
        base = cells.get((name, "sqlite", 1))
        for column in versus:
            other = cells.get((name, *column))
            if base is None or other is None or not base.rate or not other.rate:
                line.append("")
            else:
                share = other.rate / base.rate
                line.append(f"{share:.2f}" if share >= POSTGRES_VS_SQLITE else f"**{share:.2f}**")
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)
