"""UTC times as CityOS writes them (NGSI-LD's modifiedAt, the audit trail, the history's codec).

Every write stamps several, so the date and time of day of a second are formatted once and kept
(strftime on gmtime: a third of the cost of a datetime's isoformat); the fraction is the caller's.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

YEAR_1000 = -30_610_224_000  # 1000-01-01T00:00:00Z in seconds: strftime's %Y pads no earlier year

# the seconds formatted lately and their texts. Not only the last one: the loop stamps now() while
# the writer thread formats the history's observedAt and the audit chain's times, other seconds,
# and a cache of one second was missed by every write's stamp after them. A dict's get and set
# are each atomic: threads share it safely; it is emptied when full.
_texts: dict[int, str] = {}
TEXTS_LIMIT = 256


def second_text(second: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS` of a UTC second since the epoch, as `datetime.isoformat` writes it."""
    text = _texts.get(second)
    if text is not None:
        return text
    if second < YEAR_1000:
        return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=second)).isoformat()[:19]
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    if len(_texts) >= TEXTS_LIMIT:
        _texts.clear()
    _texts[second] = text
    return text
