"""Issue 17 part 3: the anomaly detector's precision and recall on the real series of
../shared/data/timeseries with injected spikes, stuck sensors and drifts (fixed seed).

    python -m benchmarks.anomaly                       # the table of docs/indicators.md
    python -m benchmarks.anomaly --threshold 6 --drift-threshold 40   # other settings
    python -m benchmarks.anomaly --shipped             # the two series shipped in the package

What is injected and how it is counted: src/cityos/insight/anomaly_eval.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from cityos.insight.anomaly import DetectorSettings
from cityos.insight.anomaly_eval import evaluate, load_shared, load_shipped, table

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "timeseries"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.anomaly", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help=f"the timeseries folder [{DATA}]")
    parser.add_argument("--shipped", action="store_true", help="the package's own two series instead")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--spacing", type=int, default=400, help="about one fault per this many readings")
    defaults = DetectorSettings()
    for field in dataclasses.fields(DetectorSettings):
        if field.name != "max_series":
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(getattr(defaults, field.name)))
    args = parser.parse_args(argv)
    chosen = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(DetectorSettings)
        if f.name != "max_series" and getattr(args, f.name) is not None
    }
    settings = dataclasses.replace(defaults, **chosen)
    series = load_shipped() if args.shipped else load_shared(args.data)
    started = time.process_time()
    scores = evaluate(series, settings, seed=args.seed, spacing=args.spacing)
    spent = time.process_time() - started
    print(f"settings: {settings}")
    print(f"series: {len(series)} ({', '.join(sorted({s.dataset for s in series}))}); seed {args.seed}")
    print(table(scores))
    readings = sum(s.readings for s in scores)
    print(f"\n{readings:,} readings judged in {spent:.1f} s of CPU ({1e6 * spent / readings:.1f} µs a reading)")


if __name__ == "__main__":
    main()
