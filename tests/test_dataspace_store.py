"""The data channel's shared replay and rate state in the store, on both back-ends: a nonce is
taken once within its time (also by another connection, as another worker or process would use),
forgotten after it; an agreement's bucket gives its rate a minute, refills with time, and is one
bucket for every connection to the database."""

from __future__ import annotations

import asyncio

from cityos.store import open_store


async def _both(db_url: str) -> None:
    first, second = open_store(db_url), open_store(db_url)  # two processes' stores on one database
    await first.open()
    await second.open()
    try:
        assert await first.first_use("Singapore", "n1", until=1000.0, now=900.0)
        assert not await second.first_use("Singapore", "n1", until=1000.0, now=901.0)  # the replay
        assert await second.first_use("Kunming", "n1", until=1000.0, now=901.0)  # another key's nonce
        assert await first.first_use("Singapore", "n1", until=1400.0, now=1001.0)  # forgotten after its time
        waits = [await (first if n % 2 else second).take_token("agreement:a", 3, now=5000.0) for n in range(4)]
        assert waits[:3] == [0.0, 0.0, 0.0] and 19.9 < waits[3] <= 20.0  # 3 a minute: one every 20 s
        assert await first.take_token("agreement:b", 3, now=5000.0) == 0.0  # its own bucket
        assert await second.take_token("agreement:a", 3, now=5020.0) == 0.0  # refilled by one
        assert await first.take_token("agreement:a", 3, now=5020.0) > 0
    finally:
        await first.close()
        await second.close()


def test_nonces_and_rates_are_shared_through_the_store(db_url: str) -> None:
    asyncio.run(_both(db_url))
