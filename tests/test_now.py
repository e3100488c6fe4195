"""entities.values.now formats the date and time of day once per second: its answers are still
exactly `datetime.isoformat`'s, milliseconds truncated, across second, day and year boundaries."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from cityos.entities import values

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
