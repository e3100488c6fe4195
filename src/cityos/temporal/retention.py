"""Per-type history retention (`--temporal-retention-types WeatherObserved=90,TrafficFlowObserved=30`):
the entities of a type keep their history that many days, on top of --temporal-retention-days (which
bounds every type: the shorter of the two applies). Plain data: parsed here, run by HistoryService."""

from __future__ import annotations

DEFAULT_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"  # where the core @context puts a bare term


def parse_types(text: str, setting: str = "temporal_retention_types", periods: tuple[str, ...] = ()) -> dict[str, int]:
    """{expanded type: days} of the setting; ValueError names what is wrong. A bare name is a term of
    the core @context (its default vocabulary); a type of another @context is given by its IRI.
    `periods`: the suffixes DAYS may carry (`90:hour`), only those."""
    rules: dict[str, int] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, days = item.strip().rpartition("=")
        if periods and ":" in days:
            days, _, period = days.rpartition(":")
            if period.strip() not in periods:
                raise ValueError(f"{setting}: {item.strip()!r}: the period is one of {', '.join(periods)}")
        if not sep or not name.strip() or not days.strip().isdigit() or int(days) < 1:
            raise ValueError(f"{setting}: {item.strip()!r} is not TYPE=DAYS (DAYS a positive integer)")
        name = name.strip()
        rules[name if ":" in name else DEFAULT_VOCAB + name] = int(days)
    return rules


def parse_downsample(text: str) -> dict[str, int]:
    """{expanded type: raw days} of --temporal-downsample (TYPE=DAYS or TYPE=DAYS:hour)."""
    return parse_types(text, "temporal_downsample", ("hour",))


def by_days(rules: dict[str, int], global_days: int) -> dict[int, list[str]]:
    """The types to purge at each retention period, those no longer than the global one's only."""
    grouped: dict[int, list[str]] = {}
    for name, days in sorted(rules.items()):
        if global_days <= 0 or days < global_days:
            grouped.setdefault(days, []).append(name)
    return grouped
