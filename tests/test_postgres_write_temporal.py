"""PostgreSQL only: a one-entity write's history with the temporal entity read under its lock
(migration 21: entity_for_update, temporal_partitions_missing; temporal.py history_ctes). The
statement then inserts the instances for the stored temporal pk without upserting the temporal
entity; a new type still extends it, and a temporal entity removed meanwhile by a writer without the
entity lock still gets its instance (the `lost` fall-back)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg

from cityos.entities import update
from cityos.entities.model import Entity
from cityos.store import open_store
from cityos.store.base import EntityChange, EntityLookup, OutboxRow
from cityos.store.postgres.temporal import PostgresTemporal
from cityos.store.postgres.temporal_partitions import create_partitions, month_of, partition_name
from cityos.temporal.history import HistoryRecorder
from cityos.temporal.query import to_micros
from test_store_contract import V, _migrate, make, postgres_schema, prop

N = V + "n"


def _set(n: int, *types: str) -> update.Mutator:
    def run(current: Entity | None) -> update.Outcome:
        assert current is not None
        kinds = current["type"] + [V + t for t in types if V + t not in current["type"]]
        return update.Outcome({**current, "type": kinds, "attrs": {**current["attrs"], N: [prop(n)]}})

    return run


def _spy(monkeypatch: Any) -> list[str]:
    """The history CTEs each write's statement carried."""
    seen: list[str] = []
    original = PostgresTemporal.history_ctes

    def spied(self: Any, *args: Any, **kwargs: Any) -> Any:
        answer = original(self, *args, **kwargs)
        if answer is not None:
            seen.append(answer.cte)
        return answer

    monkeypatch.setattr(PostgresTemporal, "history_ctes", spied)
    return seen


async def _history(connection: asyncpg.Connection, entity_id: str) -> tuple[list[Any], list[str], int]:
    """(the values of N in insertion order, the temporal entity's types, how many temporal entities)."""
    values = await connection.fetch(
        "SELECT i.doc->'value' AS v FROM temporal_instances i JOIN temporal_entities e ON e.pk = i.epk"
        " WHERE e.id = $1 AND i.attr = $2 ORDER BY i.pk",
        entity_id,
        N,
    )
    types = await connection.fetchval("SELECT types FROM temporal_entities WHERE id = $1", entity_id)
    count = await connection.fetchval("SELECT count(*) FROM temporal_entities WHERE id = $1", entity_id)
    return [int(r["v"]) for r in values], list(types or []), int(count)


def test_postgres_a_known_temporal_entity_is_not_upserted(postgres_skip_reason: str | None, monkeypatch: Any) -> None:
    """Updates of an entity whose temporal entity exists: the history goes in the write statement
    without th_ins/th_upd, to the same temporal pk; an update that adds a type takes the upsert and
    the type is appended; the instances are those of every write, in order."""
    seen = _spy(monkeypatch)
    with postgres_schema(postgres_skip_reason) as (loop, url):
        loop.run_until_complete(_migrate(url))
        store = open_store(url)

        async def scenario() -> tuple[list[Any], list[str], int]:
            await store.open()
            other = await asyncpg.connect(url)
            try:
                store.set_change_listener(HistoryRecorder(), None, name="history")
                for entity_id in ("urn:x:warm", "urn:x:a"):  # the first learns the month's partition
                    [made] = await store.mutate(
                        "", [(entity_id, update.create(make(entity_id, "T", n=prop(0))))], atomic=True
                    )
                    assert made.error is None
                seen.clear()
                for n, types in ((1, ()), (2, ()), (3, ("U",)), (4, ("U",))):
                    [result] = await store.mutate("", [("urn:x:a", _set(n, *types))], atomic=True)
                    assert result.error is None
                return await _history(other, "urn:x:a")
            finally:
                await other.close()
                await store.close()

        values, types, count = loop.run_until_complete(scenario())
    assert values == [0, 1, 2, 3, 4]
    assert types == [V + "T", V + "U"] and count == 1
    assert ["th_ins" in cte for cte in seen] == [False, False, True, False]
    assert all(cte.startswith("th_pk") or "th_ins" in cte for cte in seen)


def test_postgres_a_temporal_entity_removed_meanwhile_still_gets_its_instance(
    postgres_skip_reason: str | None,
) -> None:
    """A writer without the entity lock deletes the temporal entity after the write read its pk
    (here a listener, on another connection, between the write's two statements): the statement
    finds no pk, and the instance is written after it to a temporal entity made again."""
    with postgres_schema(postgres_skip_reason) as (loop, url):
        loop.run_until_complete(_migrate(url))
        store = open_store(url)
        state: dict[str, Any] = {}

        def removing(change: EntityChange, lookup: EntityLookup) -> list[OutboxRow]:
            if state.get("armed"):
                state["armed"] = False
                sql = "DELETE FROM temporal_entities WHERE id = 'urn:x:d'"
                asyncio.run_coroutine_threadsafe(state["other"].execute(sql), loop).result(10)
            return []

        async def scenario() -> tuple[list[Any], list[str], int]:
            await store.open()
            state["other"] = other = await asyncpg.connect(url)
            try:
                store.set_change_listener(HistoryRecorder(), None, name="history")
                store.set_change_listener(removing, None, name="removing")
                for entity_id in ("urn:x:warm", "urn:x:d"):
                    [made] = await store.mutate(
                        "", [(entity_id, update.create(make(entity_id, "T", n=prop(0))))], atomic=True
                    )
                    assert made.error is None
                await other.execute("DELETE FROM temporal_instances")
                state["armed"] = True
                [result] = await store.mutate("", [("urn:x:d", _set(1))], atomic=True)
                assert result.error is None and not state["armed"]
                return await _history(other, "urn:x:d")
            finally:
                await other.close()
                await store.close()

        assert loop.run_until_complete(scenario()) == ([1], [V + "T"], 1)


def test_postgres_a_partition_attached_after_begin_is_routed_to(postgres_skip_reason: str | None) -> None:
    """What a write's first statement relies on (temporal_partitions_missing takes no lock on the
    partition): a month attached by another session after this transaction began, and found attached
    by it, receives this transaction's insert through the parent (its first lock of the parent reads
    the catalogue's invalidations)."""
    with postgres_schema(postgres_skip_reason) as (loop, url):
        loop.run_until_complete(_migrate(url))
        moment = to_micros(datetime(2031, 7, 4, tzinfo=UTC))
        month = month_of(moment)
        assert month is not None
        name = partition_name(month)

        async def scenario() -> tuple[list[str], list[str], int]:
            writer = await asyncpg.connect(url)
            try:
                async with writer.transaction():
                    before = await writer.fetchval("SELECT temporal_partitions_missing($1::text[])", [name])
                    await create_partitions(url, [month])
                    after = await writer.fetchval("SELECT temporal_partitions_missing($1::text[])", [name])
                    await writer.execute(
                        "INSERT INTO temporal_instances (epk, attr, instance_id, kind, retained_us, doc)"
                        " VALUES (1, 'a', 'urn:i', 'Property', $1, '{}')",
                        moment,
                    )
                count = await writer.fetchval(f"SELECT count(*) FROM {name}")
                return list(before), list(after), int(count)
            finally:
                await writer.close()

        assert loop.run_until_complete(scenario()) == ([name], [], 1)
