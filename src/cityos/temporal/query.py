"""Temporal query parameters (spec 4.11, 5.7.3, 5.7.4): the time window, lastN, aggregation and
the temporal pagination range, as plain data shared by the URL and the POST query body.

Times are handled as integer microseconds since the epoch: instants compare exactly
(`12:05:00.000Z` is `12:05:00Z`), and the store buckets them with integer arithmetic.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cityos.entities.values import MAX_SAFE_INTEGER
from cityos.errors import BadRequestData

TIME_PROPERTIES = ("observedAt", "createdAt", "modifiedAt", "deletedAt")
TIMERELS = ("before", "after", "between")
AGGREGATION_METHODS = ("totalCount", "distinctCount", "sum", "avg", "min", "max", "stddev", "sumsq")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMBER = r"(\d+(?:[.,]\d+)?)"
DURATION_RE = re.compile(
    rf"^P(?:{_NUMBER}Y)?(?:{_NUMBER}M)?(?:{_NUMBER}W)?(?:{_NUMBER}D)?"
    rf"(?:T(?=\d)(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?$"
)
DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?$")


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact: no float rounding)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def parse_instant(value: Any, what: str) -> datetime:
    """A date-time (a date alone is refused: 021_26_09); naive means UTC."""
    if not isinstance(value, str) or not DATETIME_RE.match(value.strip()):
        raise BadRequestData(f"{what} must be an ISO 8601 date-time such as 2020-08-01T12:05:00Z, got {value!r}")
    try:
        moment = datetime.fromisoformat(value.strip().replace(",", "."))
    except ValueError as exc:
        raise BadRequestData(f"{what} is not a valid date-time: {value!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def text_micros(value: str) -> int:
    """Microseconds of a stored timestamp string (already validated when it was written)."""
    return to_micros(parse_instant(value, "timestamp"))


def format_micros(micros: int) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ`, with a fraction only when there is one: the suite compares bucket
    and range bounds as exact strings."""
    moment = from_micros(micros)
    if moment.microsecond == 0:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if moment.microsecond % 1000 == 0:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Window:
    """Instances whose `timeproperty` lies in [start, end): after = [timeAt, ∞), before = (-∞, timeAt),
    between = [timeAt, endTimeAt). Without timerel every instance having the property is in."""

    timeproperty: str = "observedAt"
    timerel: str | None = None
    time_at: int | None = None
    end_time_at: int | None = None

    @property
    def start(self) -> int | None:
        return self.time_at if self.timerel in ("after", "between") else None

    @property
    def end(self) -> int | None:
        if self.timerel == "before":
            return self.time_at
        return self.end_time_at if self.timerel == "between" else None


def parse_window(timerel: Any, time_at: Any, end_time_at: Any, timeproperty: Any) -> Window:
    prop = "observedAt" if timeproperty is None else timeproperty
    if prop not in TIME_PROPERTIES:
        raise BadRequestData(f"timeproperty must be one of {', '.join(TIME_PROPERTIES)}, got {prop!r}")
    if timerel is None:
        return Window(prop)
    if timerel not in TIMERELS:
        raise BadRequestData(f"timerel must be before, after or between, got {timerel!r}")
    if time_at is None:
        raise BadRequestData(f"timerel={timerel} needs timeAt")
    start = to_micros(parse_instant(time_at, "timeAt"))
    end = None
    if timerel == "between":
        if end_time_at is None:
            raise BadRequestData("timerel=between needs endTimeAt")
        end = to_micros(parse_instant(end_time_at, "endTimeAt"))
        if end <= start:
            raise BadRequestData("endTimeAt must be later than timeAt")
    return Window(prop, timerel, start, end)


def parse_last_n(raw: Any) -> int | None:
    """lastN: a positive integer (JSON number or URL text); 0, fractions and the rest are 400."""
    if raw is None:
        return None
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw.strip())
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_SAFE_INTEGER:
        raise BadRequestData(f"lastN must be a positive integer up to {MAX_SAFE_INTEGER}, got {raw!r}")
    return raw


@dataclass(frozen=True, slots=True)
class Duration:
    """An ISO 8601 period: whole calendar months plus fixed microseconds (years are 12 months,
    weeks 7 days). Both zero (PT0S) means one period over the whole window."""

    months: int = 0
    micros: int = 0

    @property
    def zero(self) -> bool:
        return self.months == 0 and self.micros == 0


def parse_duration(raw: Any) -> Duration:
    if raw is None:
        return Duration()
    found = DURATION_RE.match(raw) if isinstance(raw, str) and raw != "P" else None
    if found is None:
        raise BadRequestData(f"aggrPeriodDuration must be an ISO 8601 duration such as PT1H or P1M, got {raw!r}")
    years, months, weeks, days, hours, minutes, seconds = (float((g or "0").replace(",", ".")) for g in found.groups())
    if years % 1 or months % 1:
        raise BadRequestData("aggrPeriodDuration: years and months must be whole numbers")
    micros = round((((weeks * 7 + days) * 24 + hours) * 60 + minutes) * 60_000_000 + seconds * 1_000_000)
    total_months = int(years) * 12 + int(months)
    if total_months and micros:
        raise BadRequestData("aggrPeriodDuration cannot mix years or months with weeks, days or times")
    return Duration(total_months, micros)


def add_months(micros: int, months: int) -> int:
    """Calendar month arithmetic (the day is clamped to the month's length)."""
    moment = from_micros(micros)
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return to_micros(moment.replace(year=year, month=month + 1, day=day))


def period_bounds(duration: Duration, origin: int, index: int, last: int, window: Window) -> tuple[int, int]:
    """[start, end) of period `index` counted from `origin`; a zero duration is one period that
    ends at the window's end, or at the last instance when the window is open."""
    if duration.months:
        return add_months(origin, duration.months * index), add_months(origin, duration.months * (index + 1))
    if duration.micros:
        return origin + duration.micros * index, origin + duration.micros * (index + 1)
    return origin, window.end if window.end is not None else last


@dataclass(frozen=True, slots=True)
class Aggregation:
    methods: tuple[str, ...]
    duration: Duration


def parse_aggregation(methods: Any, duration: Any) -> Aggregation:
    """aggrMethods (a comma list or an array) and aggrPeriodDuration; errors name the parameter."""
    if methods is None:
        raise BadRequestData("aggregatedValues needs aggrMethods")
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",")]
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) and m for m in methods):
        raise BadRequestData("aggrMethods must be a non-empty list of method names")
    unknown = [m for m in methods if m not in AGGREGATION_METHODS]
    if unknown:
        raise BadRequestData(
            f"aggrMethods: unknown method(s) {', '.join(unknown)}; use {', '.join(AGGREGATION_METHODS)}"
        )
    return Aggregation(tuple(dict.fromkeys(methods)), parse_duration(duration))


REPRESENTATION_OPTIONS = ("temporalValues", "aggregatedValues", "sysAttrs", "normalized")
FORMATS = ("temporalValues", "aggregatedValues", "normalized")


def choose_format(options: set[str], format_param: str | None, aggregation_given: bool) -> str:
    """normalized | temporalValues | aggregatedValues: `format` wins over `options` (021_19_02);
    aggregation parameters alone in a POST query body ask for aggregatedValues (021_27_07)."""
    if format_param is not None:
        return format_param
    if "temporalValues" in options:
        return "temporalValues"
    if "aggregatedValues" in options or (aggregation_given and "normalized" not in options):
        return "aggregatedValues"
    return "normalized"


def content_range(window: Window, last_n: int | None, first: int, last: int) -> str:
    """The Content-Range of a response cut by the instance cap (spec 6.3.10): the range covered,
    oldest-to-newest without lastN, newest-to-oldest with it; `first`/`last` are the first and last
    instance kept in cut order."""
    if last_n is None:
        start = window.time_at if window.timerel in ("after", "between") and window.time_at is not None else first
        size = "*"
    else:
        start = first
        if window.timerel == "before" and window.time_at is not None:
            start = window.time_at
        elif window.timerel == "between" and window.end_time_at is not None:
            start = window.end_time_at
        size = str(last_n)
    return f"date-time {format_micros(start)}-{format_micros(last)}/{size}"
