"""Per-principal rate limits: a token bucket per caller (--rate-limit requests/second, bursts of
--rate-limit-burst). Anonymous callers are limited per remote address. Buckets live in each worker:
with N workers a caller spread over them gets up to N times the rate (docs/security.md)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict

MAX_BUCKETS = 100_000  # the least recently used bucket goes first (a full bucket: nothing lost)


class RateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, when)

    def take(self, caller: str, now: float | None = None) -> float:
        """0 if the request may go, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, then = self._buckets.pop(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[caller] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[caller] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return wait


def retry_after(wait: float) -> int:
    return max(1, math.ceil(wait))
