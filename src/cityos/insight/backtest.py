"""Rolling-origin backtests of the forecasters on real series, against the seasonal-naive baseline.

    python -m cityos.insight.backtest [--data ../shared/data/timeseries] [--origins 30] [--write]

For each series and each origin (the last one `horizon` steps before the series' end, the others
`stride` steps earlier each: 7 days and 13 hours, so origins move through the hours of the day and
the days of the week), the forecaster's model and the baseline are fitted on the `history` steps
before the origin (gaps linearly interpolated, as the service does) and forecast `horizon` steps.
Errors are taken on the steps whose value is known. Per origin:

- MASE = mean |actual - forecast| / mean |y_t - y_(t-m)| over the training window (m the
  baseline's season; Hyndman & Koehler 2006), so MASE < 1 beats the in-sample seasonal-naive error
  and the model beats the baseline when its MASE is below the baseline's over the same origins;
- coverage = the share of actual values inside the 80% and 95% prediction intervals.

The table reports the means over every origin of every series of a forecaster. Fixed settings and
deterministic models: the same command gives the same numbers. `--write` keeps them in
insight/accuracy.json, which the register of models and the forecast entities report.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cityos.insight import forecast as fc
from cityos.insight import forecast_files

COMMAND = "python -m cityos.insight.backtest --data ../shared/data/timeseries --write"
STRIDE = 7 * 24 + 13
ORIGINS = 30
BEIJING = ("Dongsi", "Aotizhongxin", "Changping")
SERIES = {  # forecaster id -> the real series it is measured on (files of shared/data/timeseries)
    "pm25-next-day": [f"beijing-air-quality/PRSA_Data_{s}_20130301-20170228.csv" for s in BEIJING],
    "traffic-next-day": ["metro-interstate-traffic/traffic_hourly.zip"],
}
# forecaster id -> the SIMULATED series it is measured on, for want of a real one (said in the results)
SIMULATED = {
    "parking-next-hours": "simulated: a 300-space garage, hourly, 40 weeks, seed 17 (backtest.simulated_parking)"
}
SPACES = 300


def simulated_parking(weeks: int = 40, seed: int = 17) -> list[float]:
    """Occupied spaces of a made-up 300-space town-centre garage, hourly from a Monday 00:00: a
    weekday profile (night 15%, 85% from 10:00 to 16:00, the evening 35%) and a weekend one (a 60%
    midday), times a level drawn per day (N(1, 0.08)), plus AR(1) noise (phi 0.7, sigma 4% of the
    spaces), and on 5% of the days an evening event (+30% from 19:00 to 23:00); rounded and held
    within 0..300. There is no public parking occupancy series in the shared data: this is NOT a
    measurement of any car park, only a series with the shape such data have, so that the model
    and the baseline are compared on something."""
    rng = np.random.default_rng(seed)
    weekday = [0.15] * 6 + [0.3, 0.55, 0.75] + [0.85] * 8 + [0.7, 0.5, 0.4] + [0.35] * 2 + [0.25, 0.18]
    weekend = [0.12] * 8 + [0.25, 0.35, 0.45, 0.55] + [0.6] * 5 + [0.5, 0.45, 0.4, 0.35, 0.3, 0.2, 0.15]
    values: list[float] = []
    noise = 0.0
    for day in range(weeks * 7):
        profile = weekday if day % 7 < 5 else weekend
        level = rng.normal(1.0, 0.08)
        event = rng.random() < 0.05
        for hour in range(24):
            noise = 0.7 * noise + rng.normal(0.0, 0.04)
            share = profile[hour] * level + noise + (0.3 if event and 19 <= hour <= 23 else 0.0)
            values.append(float(min(max(round(share * SPACES), 0), SPACES)))
    return values


def mase(actual: Sequence[float], forecast: Sequence[float], train: Sequence[float], season: int) -> float:
    """Mean absolute error over the known actual values, scaled by the training window's mean
    absolute seasonal difference (NaN values, actual or in training pairs, are left out)."""
    a, f, y = (np.asarray(v, dtype=np.float64) for v in (actual, forecast, train))
    known = ~np.isnan(a)
    diffs = np.abs(y[season:] - y[:-season])
    scale = float(np.mean(diffs[~np.isnan(diffs)]))
    return float(np.mean(np.abs(a[known] - f[known]))) / scale


def coverage(actual: Sequence[float], lower: Sequence[float], upper: Sequence[float]) -> float:
    """The share of the known actual values inside [lower, upper]."""
    a, lo, hi = (np.asarray(v, dtype=np.float64) for v in (actual, lower, upper))
    known = ~np.isnan(a)
    return float(np.mean((a[known] >= lo[known]) & (a[known] <= hi[known])))


def read_series(data: Path, name: str) -> list[float]:
    """The series' hourly values in file order (NaN: missing)."""
    path = data / name
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            text = archive.read(archive.namelist()[0]).decode("utf-8")
        column = "traffic_volume"
    else:
        text = path.read_text(encoding="utf-8")
        column = "PM2.5"
    rows = csv.DictReader(io.StringIO(text))
    return [float(row[column]) if row[column] not in ("", "NA") else math.nan for row in rows]


@dataclass(slots=True)
class Scores:
    mase: list[float] = field(default_factory=list)
    coverage: dict[int, list[float]] = field(default_factory=lambda: {level: [] for level in fc.LEVELS})

    def add(self, actual: list[float], prediction: fc.Prediction, train: list[float], season: int) -> None:
        self.mase.append(mase(actual, prediction.mean.tolist(), train, season))
        for level, (lower, upper) in prediction.bounds.items():
            self.coverage[level].append(coverage(actual, lower.tolist(), upper.tolist()))

    def summary(self, prefix: str = "") -> dict[str, float]:
        found = {f"{prefix}mase": round(float(np.mean(self.mase)), 4)}
        found |= {f"{prefix}coverage{level}": round(float(np.mean(v)), 4) for level, v in self.coverage.items()}
        return found


Model = Callable[[fc.Array, fc.Forecaster], fc.Prediction]


def backtest(
    forecaster: fc.Forecaster, series: list[float], origins: int, model: Model, baseline: Model
) -> tuple[Scores, Scores]:
    """The model's and the baseline's scores over `origins` rolling origins of one series."""
    ours, base = Scores(), Scores()
    last = len(series) - forecaster.horizon
    for i in range(origins):
        origin = last - i * STRIDE
        if origin - forecaster.history < 0:
            break
        train = series[origin - forecaster.history : origin]
        actual = series[origin : origin + forecaster.horizon]
        if all(math.isnan(v) for v in actual) or sum(not math.isnan(v) for v in train) < len(train) // 2:
            continue
        y, _ = fc.fill_gaps([None if math.isnan(v) else v for v in train])
        ours.add(actual, model(y, forecaster), train, forecaster.baseline_season)
        base.add(actual, baseline(y, forecaster), train, forecaster.baseline_season)
    return ours, base


def run(data: Path, origins: int, only: Sequence[str] = ()) -> dict[str, Any]:
    from cityos.insight.forecast_service import baseline_method, statsforecast_method

    results: dict[str, Any] = {}
    for forecaster_id, files in {**SERIES, **{k: [v] for k, v in SIMULATED.items()}}.items():
        if only and forecaster_id not in only:
            continue
        forecaster = forecast_files.shipped()[forecaster_id]
        ours, base = Scores(), Scores()
        started = time.perf_counter()
        for name in files:
            series = simulated_parking() if forecaster_id in SIMULATED else read_series(data, name)
            one, other = backtest(forecaster, series, origins, statsforecast_method, baseline_method)
            ours.mase += one.mase
            base.mase += other.mase
            for level in fc.LEVELS:
                ours.coverage[level] += one.coverage[level]
                base.coverage[level] += other.coverage[level]
        results[forecaster_id] = {
            "series": files,
            "origins": len(ours.mase),
            "horizon": forecaster.horizon,
            "method": forecaster.method,
            "version": forecaster.version,
            **ours.summary(),
            "baseline": f"seasonal naive, m = {forecaster.baseline_season}",
            **base.summary("baseline_"),
        }
        if forecaster_id in SIMULATED:
            results[forecaster_id]["simulated"] = True
        print(f"{forecaster_id}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return {
        "command": COMMAND,
        "settings": {"origins_per_series": origins, "stride_steps": STRIDE, "levels": list(fc.LEVELS)},
        "forecasters": results,
    }


def table(found: dict[str, Any]) -> str:
    lines = [
        "| forecaster | series, origins | MASE | baseline MASE | 80% / 95% coverage | baseline's | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for forecaster_id, r in found["forecasters"].items():
        series = ", ".join(s if r.get("simulated") else Path(s).name for s in r["series"])
        lines.append(
            f"| `{forecaster_id}` | {series}; {r['origins']} | {r['mase']:.3f} | {r['baseline_mase']:.3f} |"
            f" {r['coverage80']:.3f} / {r['coverage95']:.3f} |"
            f" {r['baseline_coverage80']:.3f} / {r['baseline_coverage95']:.3f} |"
            f" {fc.verdict(forecaster_id, found)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cityos.insight.backtest", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/timeseries", help="the shared time series folder")
    parser.add_argument("--origins", type=int, default=ORIGINS, help="rolling origins per series")
    parser.add_argument("--write", action="store_true", help="keep the results in insight/accuracy.json")
    parser.add_argument("--only", action="append", default=[], metavar="ID", help="this forecaster only (repeatable)")
    args = parser.parse_args(argv)
    try:
        found = run(Path(args.data), args.origins, args.only)
    except fc.ForecastUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    print(table(found))
    if args.write:
        target = Path(fc.__file__).with_name("accuracy.json")
        if args.only:  # the others' results are kept as they were
            kept = json.loads(target.read_text(encoding="utf-8"))
            found = {**kept, "forecasters": {**kept["forecasters"], **found["forecasters"]}}
        target.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
        print(f"written: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
