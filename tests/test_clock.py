"""clock.second_text: the text of a UTC second, kept for the seconds formatted lately."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cityos import clock

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def test_second_text_is_isoformat_whatever_seconds_come_between() -> None:
    """Interleaved seconds (the loop's stamps and the writer's observedAt) each get their own text,
    from the cache or not, before and after it is emptied at its limit; years before 1000 too."""
    seconds = [1_796_683_913, 1_795_318_308, 1_796_683_913, 0, -1, clock.YEAR_1000 - 1, 1_796_683_914]
    seconds += list(range(1_700_000_000, 1_700_000_000 + clock.TEXTS_LIMIT * 2 + 3, 7)) + seconds
    for second in seconds:
        assert clock.second_text(second) == (EPOCH + timedelta(seconds=second)).isoformat()[:19]
    assert 0 < len(clock._texts) <= clock.TEXTS_LIMIT
