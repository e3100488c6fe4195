"""Peak memory of open-data exports (docs/open-data.md, "Streaming and memory"): a fresh SQLite city
of N entities, loaded through a real server's batch upsert, then `cityos export` of the whole dataset
as CSV, GeoJSON and Parquet, each in its own process whose peak RSS (ru_maxrss) is read when it ends.
The exports stream one page at a time, so the peak should not grow with N.

    python -m benchmarks.export_memory --sizes 10000,1000000 --port 25010
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

CATALOG = """
[catalog]
publisher = "Benchmark city"

[[dataset]]
id = "counters"
type = "Counter"
title = "Counters"
description = "Synthetic counters for the export memory benchmark."
"""
BATCH = 1000


def entities(start: int, count: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"urn:ngsi-ld:Counter:{i:07d}",
            "type": "Counter",
            "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [i % 360 - 180, 0.5]}},
            "count": {"type": "Property", "value": i},
            "status": {"type": "Property", "value": "ok" if i % 7 else "check"},
            "name": {"type": "Property", "value": f"Counter number {i}"},
        }
        for i in range(start, start + count)
    ]


def load(base: str, size: int) -> float:
    started = time.monotonic()

    def send(start: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            body = entities(start, min(BATCH, size - start))
            answer = http.post("/ngsi-ld/v1/entityOperations/upsert", json=body)
            assert answer.status_code in (201, 204), answer.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, range(0, size, BATCH)))
    return time.monotonic() - started


# `cityos export` in a process that prints its own peak RSS (KiB) on its last stderr line
MEASURED = (
    "import resource, sys; from cityos.cli import main; code = main(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


def export(database: str, catalog: str, fmt: str, out: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, bytes written) of one `cityos export` process."""
    started = time.monotonic()
    command = [sys.executable, "-c", MEASURED, "export", "counters", "--format", fmt, "-o", str(out)]
    command += ["--database", database, "--catalog-file", catalog, "--max-rows", "1000000"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
    done = subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    peak_kib = int(done.stderr.strip().splitlines()[-1])
    return seconds, peak_kib / 1024, out.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--port", type=int, default=25010)
    args = parser.parse_args()
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as folder:
            database = str(Path(folder) / "city.db")
            catalog = Path(folder) / "catalog.toml"
            catalog.write_text(CATALOG, encoding="utf-8")
            env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOS_")}
            env |= {"CITYOS_DATABASE": database, "CITYOS_PORT": str(args.port)}
            server = subprocess.Popen([sys.executable, "-m", "cityos", "serve", "--log-level", "warning"], env=env)
            try:
                base = f"http://127.0.0.1:{args.port}"
                for _ in range(200):
                    try:
                        httpx.get(base + "/version", timeout=1)
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
                loaded = load(base, size)
            finally:
                server.terminate()
                server.wait(30)
            print(f"{size:,} entities loaded in {loaded:.0f} s", flush=True)
            for fmt in ("csv", "geojson", "parquet"):
                seconds, peak, written = export(database, str(catalog), fmt, Path(folder) / f"out.{fmt}")
                print(
                    f"  {fmt:8} {seconds:7.1f} s  peak RSS {peak:6.0f} MB  {written / 1e6:8.1f} MB written", flush=True
                )


if __name__ == "__main__":
    main()
