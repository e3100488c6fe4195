"""Per-principal rate limits: a token bucket per caller (--rate-limit requests/second, bursts of
--rate-limit-burst). Anonymous callers are limited per remote address.

One process keeps its buckets in a dict (`LocalRateLimiter`). `cityos serve --workers N` makes one table
of buckets in a shared file before uvicorn starts the workers (`create_table`, named to them by
RATE_TABLE_VARIABLE); each worker maps it (`SharedRateLimiter`), so a caller spread over the
workers of one host gets the rate once, not N times. The table is a fixed set of stripes of WAYS
slots; a caller's slot is found by a stable hash in its stripe, and each stripe is updated under an
fcntl byte-range lock (released by the kernel if a worker dies holding it). When a stripe is full,
the bucket closest to full is replaced (a full bucket: nothing lost). Several hosts behind a load
balancer each keep their own table: the limit is per host (docs/security.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import mmap
import os
import struct
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

MAX_BUCKETS = 100_000  # one process: the least recently used bucket goes first (a full bucket: nothing lost)

RATE_TABLE_VARIABLE = "CITYOS_RATE_LIMIT_TABLE"  # set by `cityos serve --workers N` for its workers
WAYS = 8  # slots per stripe: callers whose hashes share a stripe
STRIPES = 16_384  # 131,072 slots, 3 MiB
_SLOT = struct.Struct("<Qdd")  # caller hash (0: empty), tokens, when (time.monotonic, one clock per host)
_STRIPE = struct.Struct("<" + "Qdd" * WAYS)
TABLE_BYTES = STRIPES * _STRIPE.size
_TABLE_PREFIX = "cityos-rate-limits-"


class RateLimiter(Protocol):
    """What the auth middleware calls for each request."""

    def take(self, caller: str, now: float | None = None) -> float:
        """0 if the request may go, else the seconds until it may."""
        ...


def _refill(tokens: float, then: float, now: float, rate: float, burst: float) -> float:
    return min(burst, tokens + max(0.0, now - then) * rate)


class LocalRateLimiter:
    """The buckets of one process (a single worker)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, when)

    def take(self, caller: str, now: float | None = None) -> float:
        """0 if the request may go, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, then = self._buckets.pop(caller, (self.burst, now))
        tokens = _refill(tokens, then, now, self.rate, self.burst)
        if tokens >= 1.0:
            self._buckets[caller] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[caller] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        if len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return wait


class SharedRateLimiter:
    """The buckets of every worker of one `cityos serve`, in the table file at `path`."""

    def __init__(self, path: str | Path, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self._places: dict[str, tuple[int, int]] = {}  # caller -> (hash, stripe offset): hashed once
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(self._fd).st_size != TABLE_BYTES:
                raise ValueError(f"{path} is not a rate-limit table of this version")
            self._map = mmap.mmap(self._fd, TABLE_BYTES)  # MAP_SHARED: every worker sees every write
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def take(self, caller: str, now: float | None = None) -> float:
        """0 if the request may go, else the seconds until it may (the same rule as LocalRateLimiter)."""
        now = time.monotonic() if now is None else now
        place = self._places.get(caller)
        if place is None:
            place = self._place(caller)
        key, offset = place
        rate, burst, table, fd = self.rate, self.burst, self._map, self._fd
        fcntl.lockf(fd, fcntl.LOCK_EX, _STRIPE.size, offset)
        try:
            stripe = _STRIPE.unpack_from(table, offset)
            slot, tokens, then = _choose(stripe, key, now, rate, burst)
            tokens = _refill(tokens, then, now, rate, burst)
            if tokens >= 1.0:
                left, wait = tokens - 1.0, 0.0
            else:
                left, wait = tokens, (1.0 - tokens) / rate
            _SLOT.pack_into(table, offset + slot * _SLOT.size, key, left, now)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, _STRIPE.size, offset)
        return wait

    def _place(self, caller: str) -> tuple[int, int]:
        """A stable hash (the same in every worker, unlike hash()) and the stripe it falls in."""
        key = int.from_bytes(hashlib.blake2b(caller.encode(), digest_size=8).digest(), "little") or 1
        if len(self._places) >= MAX_BUCKETS:
            self._places.clear()
        place = self._places[caller] = (key, (key % STRIPES) * _STRIPE.size)
        return place


def _choose(stripe: tuple[Any, ...], key: int, now: float, rate: float, burst: float) -> tuple[int, float, float]:
    """The slot for `key` in a stripe (key, tokens, when) * WAYS and its bucket: its own, else an
    empty one (a full bucket), else the one that would be fullest now (replaced by a full bucket).
    Slots are never emptied, so a caller's slot always comes before the first empty one."""
    keys = stripe[::3]
    if key in keys:
        slot = keys.index(key)
        return slot, stripe[slot * 3 + 1], stripe[slot * 3 + 2]
    if 0 in keys:
        return keys.index(0), burst, now
    fullness = [_refill(stripe[s * 3 + 1], stripe[s * 3 + 2], now, rate, burst) for s in range(WAYS)]
    return fullness.index(max(fullness)), burst, now


def make_limiter(rate: float, burst: int, table: str | None = None) -> RateLimiter:
    """The shared limiter when the supervisor made a table, else the one of this process."""
    return SharedRateLimiter(table, rate, burst) if table else LocalRateLimiter(rate, burst)


@contextlib.contextmanager
def shared_table() -> Iterator[Path]:
    """A new, empty table for the workers of one `cityos serve` (removed when the server ends; a
    table left by a server that was killed is removed by the next start)."""
    folder = _table_folder()
    _remove_orphans(folder)
    fd, name = tempfile.mkstemp(prefix=f"{_TABLE_PREFIX}{os.getpid()}-", dir=folder)  # mode 0600
    try:
        os.ftruncate(fd, TABLE_BYTES)  # zeros: every slot empty
        os.close(fd)
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _table_folder() -> Path:
    """Memory, not disk: the user's runtime folder, else /dev/shm, else the temporary folder."""
    for candidate in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return Path(candidate)
    return Path(tempfile.gettempdir())


def _remove_orphans(folder: Path) -> None:
    for path in folder.glob(f"{_TABLE_PREFIX}*"):
        pid = path.name[len(_TABLE_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)  # is its server still running?
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                path.unlink()
        except OSError:  # running, as another user
            continue


def retry_after(wait: float) -> int:
    return max(1, math.ceil(wait))
