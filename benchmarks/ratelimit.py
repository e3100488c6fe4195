"""What a rate-limit check costs per request (docs/security.md, "Rate limits and IoT devices"): the
in-memory buckets of one worker against the table the workers of `cityos serve --workers N` share
(auth/ratelimit.py). CPU time (user + system: the shared table's locks are system calls), so a busy
machine changes it little.

    python -m benchmarks.ratelimit [--calls N] [--callers N] [--rounds N]
"""

from __future__ import annotations

import argparse
import time

from cityos.auth.ratelimit import LocalRateLimiter, RateLimiter, SharedRateLimiter, shared_table


def per_call(limiter: RateLimiter, callers: list[str]) -> float:
    """Microseconds of CPU time per take()."""
    take = limiter.take
    start = time.process_time()
    for caller in callers:
        take(caller)
    return (time.process_time() - start) / len(callers) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    callers = [f"key:ck_{n % args.callers:08d}" for n in range(args.calls)]
    with shared_table() as path:
        shared = SharedRateLimiter(path, 1000.0, 20)
        local = LocalRateLimiter(1000.0, 20)
        for _ in range(args.rounds):
            print(f"in memory {per_call(local, callers):.2f} µs   shared table {per_call(shared, callers):.2f} µs")
        shared.close()


if __name__ == "__main__":
    main()
