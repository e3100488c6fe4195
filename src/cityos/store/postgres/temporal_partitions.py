"""The monthly partitions of temporal_instances: their names and bounds, creating them on demand,
and dropping whole ones for retention.

A partition is created as a plain table and then ATTACHed, never with CREATE TABLE ... PARTITION
OF: that form takes an ACCESS EXCLUSIVE lock on the parent and so waits for every open transaction
that has written history, while ATTACH PARTITION takes SHARE UPDATE EXCLUSIVE, which lets inserts
and reads go on. Creation runs on a connection of its own and commits at once: a writer needs the
new month in the middle of its own transaction (mutate appends history inside it), and taking a
connection from the pool there could starve the pool when every pooled connection waits for one.

Every write first calls temporal_lock_partitions (in the migration, folded into the statement that
upserts the temporal entity) with the months it writes to: it locks each attached one and names
the missing ones, which are then created and locked. The lock is what makes partition routing see a
month that another session attached during this transaction (tested in the contract test; there is
no per-process "already created" cache, since it cannot tell what a given transaction has seen),
and it keeps the month from being dropped until the writer commits. A write's first statement
(writes.py _READ) calls the lighter temporal_partitions_missing (migration 21) instead: the retention
lock and the check, no lock of the partition, since that transaction has not used
temporal_instances yet and its first lock of it reads the invalidations (tested); a partition
dropped out of band (not by temporal_purge, which takes the retention lock) between its two
statements then fails the write, where the partition's lock made the DROP wait.

Two advisory locks, keyed on the parent table's oid (so schemas never collide):
- the creation lock serialises creators, so workers that need one new month at once create it once;
- the retention lock: writers hold it shared until they commit (temporal_lock_partitions), and
  temporal_purge takes it exclusively to detach a partition, so a month is never detached between
  a writer's check and its lock.
"""

from __future__ import annotations

import calendar
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg

from cityos.store.sqlite_temporal import FOREVER
from cityos.temporal.query import from_micros, to_micros

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

DAY_US = 86_400_000_000
PREFIX = "temporal_instances_"
LEFTOVER = "temporal_purged_"  # a partition detached by temporal_purge, about to be dropped
_NAME = re.compile(r"^temporal_instances_(\d{4})_(\d{2})$")
_OID = "('temporal_instances'::regclass)::oid::bigint"
RETENTION_LOCK = f"{_OID} + 1099511627776"  # + 2**40, as in temporal_missing_partitions
CREATION_LOCK = f"{_OID} + 2199023255552"  # + 2**41
# A purge waiting for writers gives way (below deadlock_timeout's default 1 s, so it is the purge,
# never a writer, that is cancelled if they wait on each other); its rows are then deleted one by one.
PURGE_LOCK_TIMEOUT = "500ms"
CREATE_LOCK_TIMEOUT = "10s"
ATTACHED = (
    "SELECT c.oid::regclass::text AS name, c.relname FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid"
    " WHERE h.inhparent = 'temporal_instances'::regclass"
)


def retained(observed: int | None, created: int | None, modified: int | None, deleted: int | None) -> int:
    """The partition key: the time temporal_purge judges an instance by (as SQLite's purge does);
    an instance without any time is kept forever, in the timeless partition."""
    for time in (observed, modified, created, deleted):
        if time is not None:
            return time
    return FOREVER


def month_of(key: int) -> int | None:
    """The month (year * 12 + month - 1) of a partition key; None for the timeless partition."""
    if key >= FOREVER:
        return None
    moment = from_micros(key)
    return moment.year * 12 + moment.month - 1


def partition_name(month: int) -> str:
    return f"{PREFIX}{month // 12:04d}_{month % 12 + 1:02d}"


def month_of_name(name: str) -> int | None:
    found = _NAME.match(name)
    return None if found is None else int(found[1]) * 12 + int(found[2]) - 1


def bounds(month: int) -> tuple[int, int]:
    """[start, end) of a month in microseconds (computed by days: December 9999 has no successor)."""
    year, number = divmod(month, 12)
    start = to_micros(datetime(year, number + 1, 1, tzinfo=UTC))
    return start, start + calendar.monthrange(year, number + 1)[1] * DAY_US


async def create_partitions(dsn: str, months: Iterable[int]) -> None:
    """Create and attach the months that are not attached yet, in one transaction of a connection
    of its own (idempotent: creators wait for each other on the creation lock, then skip what exists)."""
    wanted = sorted(set(months))
    if not wanted:
        return
    connection: Connection = await asyncpg.connect(dsn, timeout=10)
    try:
        async with connection.transaction():
            await connection.execute(f"SET LOCAL lock_timeout = '{CREATE_LOCK_TIMEOUT}'")
            await connection.execute(f"SELECT pg_advisory_xact_lock({CREATION_LOCK})")
            schema: str = await connection.fetchval(
                "SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'temporal_instances'::regclass"
            )
            attached = {row["relname"] for row in await connection.fetch(ATTACHED)}
            for month in wanted:
                name = partition_name(month)
                if name in attached:
                    continue
                start, end = bounds(month)
                await connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {schema}.{name} (LIKE temporal_instances INCLUDING DEFAULTS)"
                )
                await connection.execute(
                    f"ALTER TABLE temporal_instances ATTACH PARTITION {schema}.{name}"
                    f" FOR VALUES FROM ({start}) TO ({end})"
                )
    finally:
        await connection.close()


async def droppable(connection: Connection, before: int) -> list[tuple[int, str]]:
    """(month, table) of the attached monthly partitions entirely older than `before`, oldest first."""
    found = []
    for row in await connection.fetch(ATTACHED):
        month = month_of_name(row["relname"])
        if month is not None and bounds(month)[1] <= before:
            found.append((month, str(row["name"])))
    return sorted(found)


async def drop_partition(connection: Connection, table: str) -> tuple[int, list[int]] | None:
    """Drop a whole partition: (instances it held, their temporal entities), or None when writers
    kept it busy past PURGE_LOCK_TIMEOUT (nothing is changed; the caller deletes its rows instead).

    The partition is first detached and renamed, in a transaction that holds the retention lock and
    the parent's lock only for those catalogue changes; it is counted and dropped afterwards, when
    nobody can see it, so no writer or reader waits for the scan. A detached table left behind by a
    crash in between is dropped by the next purge (drop_leftovers)."""
    detached = f"{LEFTOVER}{uuid.uuid4().hex[:12]}"
    try:
        async with connection.transaction():
            await connection.execute(f"SET LOCAL lock_timeout = '{PURGE_LOCK_TIMEOUT}'")
            await connection.execute(f"SELECT pg_advisory_xact_lock({RETENTION_LOCK})")
            await connection.execute(f"ALTER TABLE temporal_instances DETACH PARTITION {table}")
            await connection.execute(f"ALTER TABLE {table} RENAME TO {detached}")
    except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
        return None
    schema = table.rsplit(".", 1)[0] + "." if "." in table else ""
    row = await connection.fetchrow(f"SELECT count(*) AS n, array_agg(DISTINCT epk) AS epks FROM {schema}{detached}")
    await connection.execute(f"DROP TABLE {schema}{detached}")
    assert row is not None
    return int(row["n"]), list(row["epks"] or [])


async def drop_leftovers(connection: Connection) -> list[int]:
    """Drop the partitions an interrupted purge detached but did not drop (their instances were
    out of the store already); returns their temporal entities, to check for emptiness."""
    touched: list[int] = []
    for row in await connection.fetch(
        "SELECT c.oid::regclass::text AS name FROM pg_class c WHERE c.relkind = 'r' AND c.relname LIKE $1"
        " AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'temporal_instances'::regclass)",
        LEFTOVER.replace("_", r"\_") + "%",
    ):
        table = str(row["name"])
        touched.extend(await connection.fetchval(f"SELECT array_agg(DISTINCT epk) FROM {table}") or [])
        await connection.execute(f"DROP TABLE {table}")
    return touched
