"""History downsampling's effect on a realistic series: 10 WeatherObserved entities x 30 days of one
temperature reading a minute (432,000 instances), then every hour folded into its mean
(store.temporal_downsample, what --temporal-downsample WeatherObserved=0 would do); bytes per
history instance and the history's size before and after, and how long the fold took.

    python -m benchmarks.downsample sqlite FILE
    python -m benchmarks.downsample postgres postgresql://postgres@127.0.0.1:5432/DB  (a database of its own)
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from cityos.store import open_store
from cityos.temporal.query import to_micros
from cityos.temporal.retention import DEFAULT_VOCAB

WEATHER, TEMP = DEFAULT_VOCAB + "WeatherObserved", DEFAULT_VOCAB + "temperature"
ENTITIES, DAYS = 10, 30
START = datetime(2026, 1, 1, tzinfo=UTC)


def day(entity: int, number: int) -> list[tuple[str, dict[str, object]]]:
    base = START + timedelta(days=number)
    return [
        (
            TEMP,
            {
                "type": "Property",
                "value": round(12 + 6 * ((minute % 1440) / 1440) + entity * 0.1 + (minute % 7) * 0.03, 2),
                "observedAt": (base + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "unitCode": "CEL",
            },
        )
        for minute in range(1440)
    ]


async def size(url: str) -> tuple[int, int]:
    """(history instances, bytes of the history's tables and indexes) after a vacuum."""
    if url.startswith("postgresql"):
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("VACUUM FULL ANALYZE temporal_instances")
            count = await connection.fetchval("SELECT count(*) FROM temporal_instances")
            total = await connection.fetchval(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'temporal_instances'::regclass"
            )
            return int(count), int(total)
        finally:
            await connection.close()
    with sqlite3.connect(url) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (count,) = db.execute("SELECT count(*) FROM temporal_rows").fetchone()
        (total,) = db.execute(
            "SELECT sum(d.pgsize) FROM dbstat d JOIN sqlite_master m ON m.name = d.name"
            " WHERE m.tbl_name LIKE 'temporal%'"
        ).fetchone()
    return int(count), int(total)


async def main(kind: str, url: str) -> None:
    if kind == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{url}{suffix}").unlink(missing_ok=True)
    store = open_store(url)
    await store.open()
    try:
        for entity in range(ENTITIES):  # one write per entity: a new entity's instances replace none
            readings = [reading for number in range(DAYS) for reading in day(entity, number)]
            await store.temporal_write("", f"urn:ngsi-ld:WeatherObserved:{entity}", [WEATHER], readings)
    finally:
        await store.close()
    report = [("before", *await size(url))]
    files = [os.path.getsize(url) if kind == "sqlite" else 0]
    store = open_store(url)
    await store.open()
    try:
        started = time.monotonic()
        removed = await store.temporal_downsample(to_micros(START + timedelta(days=DAYS)), [WEATHER])
        took = time.monotonic() - started
    finally:
        await store.close()
    report.append(("after", *await size(url)))
    files.append(os.path.getsize(url) if kind == "sqlite" else 0)
    print(f"{kind}: folded away {removed:,} instances in {took:.1f} s")
    for label, count, total in report:
        print(f"  {label:6s} {count:9,} instances, history {total / 2**20:8.1f} MiB, {total / count:7.1f} B/instance")
    if kind == "sqlite":
        print(f"  file after VACUUM: {files[0] / 2**20:.1f} MiB before, {files[1] / 2**20:.1f} MiB after")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
