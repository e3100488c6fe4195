"""The IoT Agent's write path in-process, without MQTT: CPU time per measure.

    python -m benchmarks.iot_agent DATABASE MODE COUNT [BATCH]

DATABASE: a SQLite file (made fresh) or a postgresql:// URL (a fresh schema, dropped after).
MODE: `one` (IotAgent.handle per message, as before batching), `many` (IotAgent.handle_many,
BATCH messages at a time, as the MQTT transport drains its inbox), or `profile-one` / `profile-many`
(the same under cProfile, the 25 costliest functions printed). The application is the real one
(create_app with its lifespan: history, subscriptions, audit listeners installed); 1,000 stored
OffStreetParking entities, one provisioned device each (`f` -> availableSpotNumber), UltraLight
`f|<n>` messages spread over the devices as scenario 9 sends them. Prints the process CPU time per
measure (every thread of this process, and the event loop's thread alone: the rest is the store's
writer or sync thread; PostgreSQL's own backends are not counted) and the wall rate.

Under callgrind (CITYOS_INSTRUCTIONS_CALLGRIND=1, as benchmarks/instructions.py) the measured loop
alone is instrumented, every thread of the process counted: the "Collected" total divided by COUNT
is the instructions of one measure, which repeat whatever else the machine runs:

    CITYOS_INSTRUCTIONS_CALLGRIND=1 valgrind --tool=callgrind --instr-atstart=no \
        python -m benchmarks.iot_agent /tmp/iot.db many 2000 500"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
import uuid

from benchmarks.entities import ENTITY_TYPE, make_entity
from benchmarks.instructions import callgrind, put_off_periodic
from cityos.app import create_app
from cityos.ingest.iot_provisioning import parse_device, parse_group
from cityos.settings import Settings

DEVICES = 1000
WARM_UP = 500


def _id(index: int) -> str:
    """Ids of this script's own: PostgreSQL's entity locks are per database, not per schema, so the
    benchmark's ids (bench-N) in another schema would contend with them."""
    return f"urn:ngsi-ld:{ENTITY_TYPE}:iot-agent-{index}"


async def measure(database: str, mode: str, count: int, batch: int) -> None:
    put_off_periodic()
    app = create_app(Settings(database=database, log_level="warning"))
    async with app.router.lifespan_context(app):
        ingest = app.state.ingest
        agent, sink = ingest.agent, ingest.sink
        for first in range(0, DEVICES, 500):
            await sink.upsert("", [make_entity(i, id_=_id(i)) for i in range(first, min(first + 500, DEVICES))])
        apikey = "bench" + uuid.uuid4().hex[:8]
        group = parse_group(
            {
                "apikey": apikey,
                "entity_type": ENTITY_TYPE,
                "attributes": [{"object_id": "f", "name": "availableSpotNumber", "type": "Integer"}],
            },
            "",
            "/",
        )
        await agent.registry.add_groups([group])
        devices = [
            parse_device({"device_id": f"sensor-{i}", "apikey": apikey, "entity_name": _id(i)}, "", "/", group)
            for i in range(DEVICES)
        ]
        await agent.registry.add_devices(devices)

        def message(n: int) -> tuple[str, str, bytes]:
            return apikey, f"sensor-{(n * 7919) % DEVICES}", f"f|{n % 600}".encode()

        async def run(start: int, total: int) -> None:
            if mode.endswith("one"):
                for n in range(start, start + total):
                    await agent.handle(*message(n))
                return
            from cityos.ingest.iot_agent import DeviceMessage

            for first in range(start, start + total, batch):
                last = min(first + batch, start + total)
                await agent.handle_many([DeviceMessage(*message(n)) for n in range(first, last)])

        await run(0, WARM_UP)
        profiler = cProfile.Profile() if mode.startswith("profile") else None
        stored = agent.stats.stored
        cpu, main_cpu, wall = time.process_time(), time.thread_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        callgrind("on")
        await run(WARM_UP, count)
        callgrind("off")
        if profiler is not None:
            profiler.disable()
        cpu, main_cpu = time.process_time() - cpu, time.thread_time() - main_cpu
        wall = time.perf_counter() - wall
        assert agent.stats.stored - stored == count, agent.about()
    print(
        f"{mode} batch={batch}: {cpu / count * 1e6:.1f} µs CPU/measure (event loop {main_cpu / count * 1e6:.1f},"
        f" other threads {(cpu - main_cpu) / count * 1e6:.1f}), {count / wall:,.0f} measures/s wall"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def main() -> None:
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    database, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    batch = int(sys.argv[4]) if len(sys.argv) == 5 else 500
    if database.startswith("postgres"):
        from benchmarks.postgres import BenchSchema

        with BenchSchema(database) as schema:
            asyncio.run(measure(schema.url, mode, count, batch))
        return
    asyncio.run(measure(os.path.join(tempfile.mkdtemp(prefix="cityos-iot-"), "bench.db"), mode, count, batch))


if __name__ == "__main__":
    main()
