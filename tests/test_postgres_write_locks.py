"""PostgreSQL only: what a write waits for when another write into the same tenant or entity is
still open (store/postgres/writes.py). One worker's write is held open by a change listener that
blocks on its sync thread; the other worker's write runs meanwhile."""

from __future__ import annotations

import asyncio
import threading

import asyncpg

from cityos.entities import update
from cityos.entities.model import Entity
from cityos.store import open_store
from cityos.store.base import ChangeListener, EntityChange, EntityLookup, OutboxRow
from cityos.temporal.history import HistoryRecorder
from test_store_contract import _migrate, make, postgres_schema, prop, value_of


def _holding(entity_id: str, release: threading.Event, entered: threading.Event) -> ChangeListener:
    """A change listener that keeps the write of `entity_id` open until `release` is set."""

    def listener(change: EntityChange, lookup: EntityLookup) -> list[OutboxRow]:
        if change.entity_id == entity_id:
            entered.set()
            release.wait(10)
        return []

    return listener


def _set(n: int) -> update.Mutator:
    def run(current: Entity | None) -> update.Outcome:
        if current is None:
            raise AssertionError("the entity was created before this write read it")
        return update.Outcome({**current, "attrs": {**current["attrs"], "https://example.org/n": [prop(n)]}})

    return run


def test_postgres_a_write_into_a_new_tenant_does_not_wait_for_another_open_one(
    postgres_skip_reason: str | None,
) -> None:
    """The first write into a tenant inserts the tenant's row in its last statement: a second
    worker's write into that tenant completes while the first is still running its mutators and
    listeners (it used to wait for the whole first write, and past the busy timeout answer 503: two
    batches loading a fresh database)."""
    with postgres_schema(postgres_skip_reason) as (loop, url):
        loop.run_until_complete(_migrate(url))
        workers = [open_store(url, busy_timeout=1.0) for _ in range(2)]
        release, entered = threading.Event(), threading.Event()

        async def scenario() -> None:
            for worker in workers:
                await worker.open()
            try:
                workers[0].set_change_listener(_holding("urn:x:a", release, entered), None, name="hold")
                held = asyncio.create_task(
                    workers[0].mutate("fresh", [("urn:x:a", update.create(make("urn:x:a", "T")))], atomic=True)
                )
                while not entered.is_set():
                    await asyncio.sleep(0.01)
                [result] = await workers[1].mutate(
                    "fresh", [("urn:x:b", update.create(make("urn:x:b", "T")))], atomic=True
                )
                assert result.error is None
                assert not held.done()
                release.set()
                [first] = await held
                assert first.error is None
            finally:
                release.set()
                for worker in workers:
                    await worker.close()

        loop.run_until_complete(scenario())


def test_postgres_a_write_that_waited_for_a_create_sees_the_created_entity(postgres_skip_reason: str | None) -> None:
    """A write that reads its rows in the statement that takes the entity locks: an entity created
    by the write it waited for is not in that statement's snapshot, so the rows are read by a query
    with a snapshot taken after the locks (entities_for_update), and the update applies to it (no 404)."""
    with postgres_schema(postgres_skip_reason) as (loop, url):
        loop.run_until_complete(_migrate(url))
        workers = [open_store(url) for _ in range(2)]
        release, entered = threading.Event(), threading.Event()

        async def scenario() -> Entity | None:
            for worker in workers:
                await worker.open()
            try:
                await workers[1].mutate("", [("urn:x:other", update.create(make("urn:x:other", "T")))], atomic=True)
                workers[0].set_change_listener(_holding("urn:x:c", release, entered), None, name="hold")
                created = asyncio.create_task(
                    workers[0].mutate("", [("urn:x:c", update.create(make("urn:x:c", "T", n=prop(0))))], atomic=True)
                )
                while not entered.is_set():
                    await asyncio.sleep(0.01)
                waiting = asyncio.create_task(workers[1].mutate("", [("urn:x:c", _set(1))], atomic=True))
                await asyncio.sleep(0.3)  # its statement is waiting for the lock
                assert not waiting.done()
                release.set()
                await created
                [result] = await waiting
                assert result.error is None
                return await workers[1].get_entity("", "urn:x:c")
            finally:
                release.set()
                for worker in workers:
                    await worker.close()

        found = loop.run_until_complete(scenario())
        assert found is not None and value_of(found, "n") == 1


def test_postgres_deployments_in_two_schemas_do_not_wait_on_each_others_entities(
    postgres_skip_reason: str | None,
) -> None:
    """Advisory locks belong to the whole database: the entity lock's key holds the schema, so a
    write of an entity in one deployment's schema does not wait while another deployment (another
    schema of the same database) writes an entity of the same tenant and id."""
    with postgres_schema(postgres_skip_reason) as (loop, first_url), postgres_schema(None) as (_, second_url):
        loop.run_until_complete(_migrate(first_url))
        loop.run_until_complete(_migrate(second_url))
        first, second = open_store(first_url, busy_timeout=1.0), open_store(second_url, busy_timeout=1.0)
        release, entered = threading.Event(), threading.Event()

        async def scenario() -> None:
            await first.open()
            await second.open()
            try:
                first.set_change_listener(_holding("urn:x:same", release, entered), None, name="hold")
                held = asyncio.create_task(
                    first.mutate("", [("urn:x:same", update.create(make("urn:x:same", "T")))], atomic=True)
                )
                while not entered.is_set():
                    await asyncio.sleep(0.01)
                [result] = await second.mutate(
                    "", [("urn:x:same", update.create(make("urn:x:same", "T")))], atomic=True
                )
                assert result.error is None
                assert not held.done()
                release.set()
                [done] = await held
                assert done.error is None
            finally:
                release.set()
                await first.close()
                await second.close()

        loop.run_until_complete(scenario())


def test_postgres_history_in_the_write_statement_keeps_an_instance_whose_temporal_entity_appeared(
    postgres_skip_reason: str | None,
) -> None:
    """A write's small history goes in its one statement once its partition is known (temporal.py
    history_ctes). A temporal entity that another transaction creates while that statement waits
    for it is not in the statement's snapshot: the instance is written after it (history_lost), not
    lost, and nothing fails."""
    with postgres_schema(postgres_skip_reason) as (loop, url):
        loop.run_until_complete(_migrate(url))
        store = open_store(url)

        async def scenario() -> int:
            await store.open()
            other = await asyncpg.connect(url)
            try:
                store.set_change_listener(HistoryRecorder(), None, name="history")
                for entity_id in ("urn:x:warm", "urn:x:d"):
                    created = await store.mutate(
                        "", [(entity_id, update.create(make(entity_id, "T", n=prop(0))))], atomic=True
                    )
                    assert created[0].error is None
                # the next write's history goes in its statement
                assert store._recent_partitions  # type: ignore[attr-defined]
                gone = "(SELECT pk FROM temporal_entities WHERE id = 'urn:x:d')"
                await other.execute(f"DELETE FROM temporal_instances WHERE epk IN {gone}")
                await other.execute("DELETE FROM temporal_entities WHERE id = 'urn:x:d'")
                transaction = other.transaction()
                await transaction.start()
                await other.execute(
                    "INSERT INTO temporal_entities (tenant, id, types) VALUES ('', 'urn:x:d', ARRAY['https://example.org/T'])"
                )
                waiting = asyncio.create_task(store.mutate("", [("urn:x:d", _set(1))], atomic=True))
                await asyncio.sleep(0.3)  # its statement waits for the uncommitted temporal entity
                assert not waiting.done()
                await transaction.commit()
                [result] = await waiting
                assert result.error is None
                count: int = await other.fetchval(
                    "SELECT count(*) FROM temporal_instances i JOIN temporal_entities e ON e.pk = i.epk"
                    " WHERE e.id = 'urn:x:d'"
                )
                return count
            finally:
                await other.close()
                await store.close()

        assert loop.run_until_complete(scenario()) >= 1
