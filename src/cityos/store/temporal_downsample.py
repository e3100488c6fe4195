"""History downsampling (`--temporal-downsample WeatherObserved=90`): the numeric Property instances
(with an observedAt) of the entities of a type, older than the raw period, are folded per hour into
one instance at the start of the hour whose value is the hour's mean, carrying how many readings it
stands for (SAMPLES, a sub-property). Both back-ends find the hours with more than one such instance
by one GROUP BY, then fold a bounded chunk of hours per transaction with `fold` (this module), so
the mean is the same on both and a re-run weights an earlier hourly instance by its count: an hour
that holds one instance is left as it is (one reading is its own mean), which also keeps an hour
already folded from being folded again.

Non-numeric instances, and instances without observedAt, are left alone (retention still drops them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cityos.entities.model import Instance

HOUR = 3_600_000_000  # microseconds
SAMPLES = "https://cityos.dev/ns/history#sampleCount"  # the readings an hourly instance stands for
# and their least and greatest values and the sum of their squares, so that aggregations over the
# hourly instances give what they give over the readings (min, max, sumsq, stddev; sum and avg
# come from the mean and the count): the stores' aggregation SQL reads them (WEIGHTED)
LEAST = "https://cityos.dev/ns/history#min"
GREATEST = "https://cityos.dev/ns/history#max"
SQUARES = "https://cityos.dev/ns/history#sumsq"
FOLDED = (SAMPLES, LEAST, GREATEST, SQUARES)
FOLD_ROWS = 5000  # instances one transaction of a downsampling run folds, about (whole hours)


def samples(instance: Instance) -> int:
    """How many readings an instance stands for: its SAMPLES sub-property, else 1."""
    member = instance.get(SAMPLES)
    count = member.get("value") if isinstance(member, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1


def _number(instance: Instance, name: str, otherwise: float) -> float:
    """The number of sub-property `name` of a folded instance, else `otherwise` (a reading's own)."""
    member = instance.get(name)
    value = member.get("value") if isinstance(member, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else otherwise


def fold(instances: Sequence[Instance], hour: int) -> Instance:
    """One instance for an hour's numeric instances (oldest first): the last one's members, its value
    the mean weighted by each one's samples, observedAt the hour's start, SAMPLES the total, and the
    least and greatest value and the sum of squares of all the readings it stands for."""
    weights = [samples(i) for i in instances]
    values = [float(i["value"]) for i in instances]
    total = sum(weights)
    mean = sum(v * w for v, w in zip(values, weights, strict=True)) / total
    # an hourly instance of before these members: its mean stands for its readings
    least = min(_number(i, LEAST, v) for i, v in zip(instances, values, strict=True))
    greatest = max(_number(i, GREATEST, v) for i, v in zip(instances, values, strict=True))
    squares = sum(_number(i, SQUARES, v * v * w) for i, v, w in zip(instances, values, weights, strict=True))
    folded: Instance = {k: v for k, v in instances[-1].items() if k not in ("instanceId", "value", *FOLDED)}
    folded["value"] = mean
    folded["observedAt"] = datetime.fromtimestamp(hour * HOUR / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    folded[SAMPLES] = {"type": "Property", "value": total}
    folded[LEAST] = {"type": "Property", "value": least}
    folded[GREATEST] = {"type": "Property", "value": greatest}
    folded[SQUARES] = {"type": "Property", "value": squares}
    return folded


def chunks(hours: Sequence[tuple[object, int]], limit: int = FOLD_ROWS) -> list[list[int]]:
    """Indexes of (key, rows) hours grouped so that one group folds about `limit` rows."""
    groups: list[list[int]] = []
    size = limit
    for n, (_, rows) in enumerate(hours):
        if size + rows > limit and (not groups or groups[-1]):
            groups.append([])
            size = 0
        groups[-1].append(n)
        size += rows
    return groups
