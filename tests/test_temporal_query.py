"""Temporal query parameters as plain data (temporal/query.py): instants, windows, lastN, ISO 8601
periods, calendar period bounds, the representation choice and the Content-Range of a cut."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cityos.errors import BadRequestData
from cityos.temporal.query import (
    Duration,
    Window,
    add_months,
    choose_format,
    content_range,
    format_micros,
    parse_aggregation,
    parse_duration,
    parse_last_n,
    parse_window,
    period_bounds,
    text_micros,
    to_micros,
)


def us(text: str) -> int:
    return text_micros(text)


def test_instants_compare_exactly() -> None:
    assert us("2020-08-01T12:05:00.000Z") == us("2020-08-01T12:05:00Z") == us("2020-08-01T14:05:00+02:00")
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)) == 1_000_000
    assert format_micros(us("2020-08-01T12:05:00Z")) == "2020-08-01T12:05:00Z"
    assert format_micros(us("2020-08-01T12:05:00.250Z")) == "2020-08-01T12:05:00.250Z"


def test_windows() -> None:
    after = parse_window("after", "2020-08-01T12:00:00Z", None, None)
    assert (after.start, after.end, after.timeproperty) == (us("2020-08-01T12:00:00Z"), None, "observedAt")
    before = parse_window("before", "2020-08-01T12:00:00Z", None, "modifiedAt")
    assert (before.start, before.end) == (None, us("2020-08-01T12:00:00Z"))
    between = parse_window("between", "2020-08-01T12:00:00Z", "2020-08-02T12:00:00Z", None)
    assert (between.start, between.end) == (us("2020-08-01T12:00:00Z"), us("2020-08-02T12:00:00Z"))
    assert parse_window(None, None, None, None) == Window()


@pytest.mark.parametrize(
    "args",
    [
        ("after", None, None, None),
        ("between", "2020-08-01T12:00:00Z", None, None),
        ("between", "2020-08-02T12:00:00Z", "2020-08-01T12:00:00Z", None),
        ("during", "2020-08-01T12:00:00Z", None, None),
        ("after", "2020-08-01", None, None),
        ("after", "yesterday", None, None),
        (None, None, None, "expiresAt"),
    ],
)
def test_window_errors(args: tuple[str | None, ...]) -> None:
    with pytest.raises(BadRequestData):
        parse_window(*args)


def test_last_n() -> None:
    assert parse_last_n(None) is None
    assert parse_last_n("4") == parse_last_n(4) == 4
    for bad in ("0", 0, 2.5, "2.5", True, "-1"):
        with pytest.raises(BadRequestData, match="lastN"):
            parse_last_n(bad)


@pytest.mark.parametrize(
    ("text", "duration"),
    [
        ("PT1H", Duration(0, 3_600_000_000)),
        ("P1D", Duration(0, 86_400_000_000)),
        ("P1W", Duration(0, 7 * 86_400_000_000)),
        ("PT0.5S", Duration(0, 500_000)),
        ("PT0S", Duration()),
        ("P1M", Duration(1, 0)),
        ("P1Y2M", Duration(14, 0)),
        (None, Duration()),
    ],
)
def test_durations(text: str | None, duration: Duration) -> None:
    assert parse_duration(text) == duration


@pytest.mark.parametrize("text", ["bogus", "P", "PT", "1H", "P1M2D", "P1.5M"])
def test_bad_durations_name_the_parameter(text: str) -> None:
    with pytest.raises(BadRequestData, match="aggrPeriodDuration"):
        parse_duration(text)


def test_aggregation_methods() -> None:
    assert parse_aggregation("avg,max", "PT1H").methods == ("avg", "max")
    assert parse_aggregation(["sum", "sum"], None).methods == ("sum",)
    for bad in ("median", [], None, [1]):
        with pytest.raises(BadRequestData, match="aggr"):
            parse_aggregation(bad, None)


def test_calendar_periods() -> None:
    assert format_micros(add_months(us("2016-01-31T10:00:00Z"), 1)) == "2016-02-29T10:00:00Z"
    assert format_micros(add_months(us("2016-11-15T00:00:00Z"), 3)) == "2017-02-15T00:00:00Z"
    origin = us("2016-03-01T00:00:00Z")
    bounds = period_bounds(Duration(1, 0), origin, 11, 0, Window())
    assert [format_micros(b) for b in bounds] == ["2017-02-01T00:00:00Z", "2017-03-01T00:00:00Z"]
    window = parse_window("between", "2016-03-01T00:00:00Z", "2016-04-01T00:00:00Z", None)
    assert period_bounds(Duration(), origin, 0, origin + 5, window) == (origin, window.end)
    assert period_bounds(Duration(), origin, 0, origin + 5, Window()) == (origin, origin + 5)


def test_representation_choice() -> None:
    assert choose_format(set(), None, False) == "normalized"
    assert choose_format({"temporalValues"}, None, False) == "temporalValues"
    assert choose_format({"aggregatedValues"}, "temporalValues", False) == "temporalValues"
    assert choose_format(set(), None, True) == "aggregatedValues"


def test_content_range() -> None:
    first, last = us("2020-01-01T01:01:00Z"), us("2020-01-01T01:16:00Z")
    after = parse_window("after", "2019-01-01T01:01:00Z", None, None)
    assert content_range(after, None, first, last) == "date-time 2019-01-01T01:01:00Z-2020-01-01T01:16:00Z/*"
    assert content_range(Window(), None, first, last) == "date-time 2020-01-01T01:01:00Z-2020-01-01T01:16:00Z/*"
    before = parse_window("before", "2021-01-01T01:01:00Z", None, None)
    assert content_range(before, 20, last, first) == "date-time 2021-01-01T01:01:00Z-2020-01-01T01:01:00Z/20"
    between = parse_window("between", "2019-01-01T00:00:00Z", "2021-01-01T00:00:00Z", None)
    assert content_range(between, 20, last, first).startswith("date-time 2021-01-01T00:00:00Z-")
