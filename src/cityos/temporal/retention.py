"""Per-type history retention (`--temporal-retention-types WeatherObserved=90,TrafficFlowObserved=30`):
the entities of a type keep their history that many days, on top of --temporal-retention-days (which
bounds every type: the shorter of the two applies). Plain data: parsed here, run by HistoryService."""

from __future__ import annotations

DEFAULT_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"  # where the core @context puts a bare term


def parse_types(text: str) -> dict[str, int]:
    """{expanded type: days} of the setting; ValueError names what is wrong. A bare name is a term of
    the core @context (its default vocabulary); a type of another @context is given by its IRI."""
    rules: dict[str, int] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, days = item.strip().rpartition("=")
        if not sep or not name.strip() or not days.strip().isdigit() or int(days) < 1:
            raise ValueError(f"temporal_retention_types: {item.strip()!r} is not TYPE=DAYS (DAYS a positive integer)")
        name = name.strip()
        rules[name if ":" in name else DEFAULT_VOCAB + name] = int(days)
    return rules


def by_days(rules: dict[str, int], global_days: int) -> dict[int, list[str]]:
    """The types to purge at each retention period, those no longer than the global one's only."""
    grouped: dict[int, list[str]] = {}
    for name, days in sorted(rules.items()):
        if global_days <= 0 or days < global_days:
            grouped.setdefault(days, []).append(name)
    return grouped
