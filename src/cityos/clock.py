"""UTC times as CityOS writes them (NGSI-LD's modifiedAt, the audit trail, the history's codec).

Every write stamps several, so the date and time of day of a second are formatted once and kept
(strftime on gmtime: a third of the cost of a datetime's isoformat); the fraction is the caller's.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

YEAR_1000 = -30_610_224_000  # 1000-01-01T00:00:00Z in seconds: strftime's %Y pads no earlier year

_last: tuple[int, str] = (-1, "")  # the last second formatted and its text (one tuple: thread-safe)


def second_text(second: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS` of a UTC second since the epoch, as `datetime.isoformat` writes it."""
    global _last
    last = _last
    if last[0] == second:
        return last[1]
    if second < YEAR_1000:
        return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=second)).isoformat()[:19]
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    _last = (second, text)
    return text
