"""The targets a row is judged against (issue 15, "City scale"), kept apart from the measuring code so the
table says which target a number missed and by how much.

A target can have several parts, each checked on its own: a ratio to the row's paired baseline (the
constant-JSON floor, or for batch upsert the raw 1,000-row write of the same database), an absolute
rate, a time per request (1000 / rate: the server's time per request while it is saturated, which is
what one request costs it; a p50 under 8 connections would count the queueing too), and for PostgreSQL
a ratio to the SQLite row of the same name in the same run. Absolute parts are SQLite's (measured on
this 2-core machine); PostgreSQL is held to a share of SQLite's rate instead."""

from __future__ import annotations

from dataclasses import dataclass, replace

POSTGRES_VS_SQLITE = 0.7
FLAT = 0.7  # the rate at the largest size within 30% of the rate at the smallest
LOAD_SECONDS_1M = 120.0  # 1,000,000 entities loaded by batch upsert in under 2 minutes
RSS_MB = 300.0  # with 1,000,000 stored, under query load
BYTES_PER_ENTITY = 2048.0
BYTES_PER_INSTANCE = 100.0


@dataclass(frozen=True)
class Target:
    ratio: float | None = None  # ≥ this share of the paired baseline
    rate: float | None = None  # ≥ this rate, in the row's unit
    max_ms: float | None = None  # ≤ this many ms of server time per request (1000 / rate)
    vs_sqlite: float | None = None  # ≥ this times the same scenario's SQLite rate (PostgreSQL rows)

    def checks(self, rate: float, ratio: float | None, sqlite_rate: float | None) -> list[tuple[str, bool | None]]:
        """(what, met) per part; met is None when the run has nothing to compare with."""
        parts: list[tuple[str, bool | None]] = []
        if self.ratio is not None:
            parts.append((f"≥ {self.ratio:.0%}", None if ratio is None else ratio >= self.ratio))
        if self.rate is not None:
            parts.append((f"≥ {self.rate:,.0f}/s", rate >= self.rate))
        if self.max_ms is not None:
            parts.append((f"≤ {self.max_ms:g} ms/req", rate > 0 and 1000 / rate <= self.max_ms))
        if self.vs_sqlite is not None:
            met = None if not sqlite_rate else rate / sqlite_rate >= self.vs_sqlite
            parts.append((f"≥ {self.vs_sqlite:g}x SQLite", met))
        return parts

    def text(self, rate: float, ratio: float | None, sqlite_rate: float | None) -> str:
        return "; ".join(
            f"{what} {'n/a' if met is None else 'met' if met else '**missed**'}"
            for what, met in self.checks(rate, ratio, sqlite_rate)
        )

    def met(self, rate: float, ratio: float | None, sqlite_rate: float | None) -> bool | None:
        verdicts = [met for _, met in self.checks(rate, ratio, sqlite_rate)]
        if not verdicts or None in verdicts:
            return None
        return all(verdicts)


# SQLite's targets by row-name prefix (issue 15: "Targets"); 3. is paired with the raw SQLite write
SQLITE: dict[str, Target] = {
    "1. ": Target(ratio=0.15, rate=2000),
    "2. ": Target(ratio=0.25, rate=3500),
    "3. ": Target(ratio=0.20, rate=15_000),
    "4. ": Target(ratio=0.50),
    "5a. ": Target(rate=1800),
    "5b. ": Target(rate=1000),
    "5c. ": Target(rate=1000),
    "5d. ": Target(rate=1800),
    "6b. ": Target(max_ms=50),
    "6c. ": Target(rate=1000),
    "9. ": Target(rate=5000),
}
PG_RATIOS = {"3. ": 0.25}  # batch upsert ≥ 25% of the raw PostgreSQL 1,000-row write
PG_SCENARIOS = ("1. ", "2. ", "3. ", "4. ", "5", "6", "9. ")  # "every scenario" of issue 15


def target(name: str, backend: str) -> Target | None:
    """The target of a scenario row on a back-end (None: the row has none)."""
    if backend == "postgres":
        if not name.startswith(PG_SCENARIOS):
            return None
        ratio = next((value for prefix, value in PG_RATIOS.items() if name.startswith(prefix)), None)
        return Target(ratio=ratio, vs_sqlite=POSTGRES_VS_SQLITE)
    return next((value for prefix, value in SQLITE.items() if name.startswith(prefix)), None)


def without_ratio(found: Target | None) -> Target | None:
    """The target without its ratio part (rows measured without a paired baseline, e.g. a remote run)."""
    return None if found is None else replace(found, ratio=None)
