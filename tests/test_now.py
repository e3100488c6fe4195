"""entities.values.now formats the date and time of day once per second, and the history's time
codec formats them with strftime: their answers are still exactly `datetime.isoformat`'s,
milliseconds truncated, across second, day and year boundaries and before the year 1000."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from cityos.entities import values
from cityos.store.sqlite_history import _canonical, _seconds

MOMENTS_NS = [
    1_767_225_599_999_999_999,  # 2025-12-31T23:59:59.999999999Z: truncated, not rounded
    1_767_225_600_000_000_000,  # the next year
    1_767_225_600_000_999_999,
    1_767_225_600_001_000_000,
    1_767_225_601_500_000_000,
    1_700_000_000_123_456_789,  # back to an earlier second
]


def test_now_matches_datetime_isoformat(monkeypatch: pytest.MonkeyPatch) -> None:
    for moment in MOMENTS_NS:
        monkeypatch.setattr(time, "time_ns", lambda moment=moment: moment)
        micros = moment // 1000
        expected = datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)
        assert values.now() == expected.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _reference(micros: int, timespec: str) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


@pytest.mark.parametrize(
    "micros",
    [
        0,
        -1,
        -1000,
        1_767_225_600_123_000,
        1_767_225_600_123_456,
        1_767_225_599_000_000,
        253_402_300_799_999_999,  # 9999-12-31T23:59:59.999999Z
        -62_135_596_800_000_000,  # 0001-01-01T00:00:00Z
        -30_610_224_000_000_001,  # the last microsecond of the year 999
        -30_610_224_000_000_000,  # 1000-01-01
        -30_000_000_000_123_000,
    ],
)
def test_history_times_are_written_as_datetime_isoformat_writes_them(micros: int) -> None:
    assert _canonical(micros) == _reference(micros, "milliseconds" if micros % 1000 == 0 else "microseconds")
    if micros % 1_000_000 == 0:
        assert _seconds(micros) == _reference(micros, "seconds")
