"""PostgreSQL only: the lane of connections lent without asyncpg's acquire (store/postgres/lane.py).
It stays within its share of the pool, drops a connection the database cut while it was free, sends a
connection whose statement failed or was cancelled back through the pool's own release, and gives
every connection back before the pool closes."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from cityos.entities import update
from cityos.store.postgres import PostgresStore
from test_store_contract import POSTGRES, _migrate, make, postgres_schema


async def _backends(store: PostgresStore) -> list[int]:
    """The backend pids of the lane's free connections."""
    return [await connection.fetchval("SELECT pg_backend_pid()") for connection in store._lane._free]


def test_postgres_lane_lends_within_its_share_and_survives_cut_and_failed_connections(
    postgres_skip_reason: str | None,
) -> None:
    with postgres_schema(postgres_skip_reason) as (loop, url):
        loop.run_until_complete(_migrate(url))
        store = PostgresStore(url, pool_size=6)

        async def scenario() -> None:
            await store.open()
            lane, pool = store._lane, store.pool
            try:
                await store.mutate("", [("urn:x:1", update.create(make("urn:x:1", "T")))], atomic=True)
                # many reads at once: the lane takes at most a third of the pool, the pool keeps the rest
                found = await asyncio.gather(*(store.get_stored("", "urn:x:1") for _ in range(40)))
                assert all(isinstance(f, bytes) and b"urn:x:1" in f for f in found)
                assert 1 <= lane._held <= lane.size == 2 and len(lane._free) == lane._held
                assert pool.get_size() - pool.get_idle_size() == lane._held  # lent: only the lane's

                # the database cuts a free lane connection: the next read answers from another one
                pids = await _backends(store)
                admin = await asyncpg.connect(POSTGRES)
                try:
                    for pid in pids:
                        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
                finally:
                    await admin.close()
                await asyncio.sleep(0.2)  # asyncpg notices the closed sockets
                for _ in range(3):
                    found_again = await store.get_stored("", "urn:x:1")
                    assert isinstance(found_again, bytes) and b"urn:x:1" in found_again
                assert not set(await _backends(store)) & set(pids)
                assert lane._held == len(lane._free)

                # a failed statement and a cancelled one: their connections go back through the pool
                held = lane._held
                with pytest.raises(asyncpg.exceptions.UndefinedTableError):
                    await lane.fetchrow(pool, "SELECT * FROM no_such_table")
                assert lane._held == held - 1
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await lane.fetchrow(pool, "SELECT pg_sleep(5)")
                assert lane._held == len(lane._free)
                assert await store.get_entity("", "urn:x:1") is not None
                # a write transaction on a lane connection leaves it clean, back in the lane
                await store.mutate("", [("urn:x:2", update.create(make("urn:x:2", "T")))], atomic=True)
                assert all(not c.is_in_transaction() for c in lane._free)
            finally:
                await asyncio.wait_for(store.close(), 5)  # nothing left lent: the pool closes at once
            assert lane._free == [] and lane._held == 0

        loop.run_until_complete(scenario())
