"""Issue 17's performance target: an indicator over a year of hourly data of 100 stations.

Loads 876,000 pm25 instances (100 AirQualityObserved stations x 8,760 hours, seeded random values)
through the ingest sink's history path, then times `pm25-annual-mean` (no write) three times and
prints the value beside the plain-Python mean of the same values.

    python -m benchmarks.indicators /tmp/big.db --load
    python -m benchmarks.indicators postgresql://postgres@127.0.0.1:5432/big --load   # a migrated, empty database
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from cityos.ingest.sink import StoreSink
from cityos.insight.engine import iso
from cityos.insight.service import IndicatorService
from cityos.pipeline import open_pipeline
from cityos.settings import Settings

HOUR = 3_600_000_000
START = 1_451_606_400_000_000  # 2016-01-01T00:00:00Z
STATIONS = 100
HOURS = 8760


async def run(database: str, load: bool) -> None:
    async with open_pipeline(Settings.from_env(database=database)) as pipeline:
        terms = pipeline.contexts.core_terms()
        if load:
            sink = StoreSink(pipeline.store, terms)
            ids = [f"urn:ngsi-ld:AirQualityObserved:s{n:03d}" for n in range(STATIONS)]
            current = [{"id": i, "type": "AirQualityObserved", "pm25": {"type": "Property", "value": 1.0}} for i in ids]
            await sink.upsert("", current)
            started = time.perf_counter()
            rng = random.Random(17)
            total = 0.0
            for entity_id in ids:
                values = [rng.uniform(0, 200) for _ in range(HOURS)]
                total += sum(values)
                rows = [
                    {"type": "Property", "value": v, "observedAt": iso(START + h * HOUR)} for h, v in enumerate(values)
                ]
                await sink.add_attribute_instances("", entity_id, "AirQualityObserved", {"pm25": rows})
            took = time.perf_counter() - started
            print(f"loaded {STATIONS * HOURS:,} in {took:.1f} s; plain-Python mean {total / (STATIONS * HOURS)!r}")
        service = IndicatorService(pipeline.store, terms)
        service.load()
        for _ in range(3):
            started, cpu = time.perf_counter(), time.process_time()
            result = (await service.compute("pm25-annual-mean", write=False)).result
            print(
                f"pm25-annual-mean: {time.perf_counter() - started:.2f} s wall,"
                f" client CPU {time.process_time() - cpu:.2f} s, value {result.value!r},"
                f" instances {result.inputs[0].instances:,}, {result.status}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("database")
    parser.add_argument("--load", action="store_true", help="load the 876,000 instances first")
    args = parser.parse_args()
    asyncio.run(run(args.database, args.load))


if __name__ == "__main__":
    main()
