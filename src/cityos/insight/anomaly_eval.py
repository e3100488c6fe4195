"""The anomaly detector's evaluation: real series with injected faults, precision and recall.

Faults are injected into a copy of each series with a fixed seed, one kind per run, so every
flag of a run is either on that kind of fault or a false alarm:

- spike: one reading moved by 3 to 6 robust standard deviations of the series (random sign);
- stuck: the sensor repeats the reading at the fault's start for 12 to 48 readings;
- drift: an offset growing linearly to 2 to 4 robust standard deviations over 48 to 168 readings
  (then the sensor is recalibrated: the fault ends).

About one fault per `spacing` readings (at most a twentieth of the series), after the warm-up,
never overlapping. Recall is per
fault (found if any reading of it is flagged); precision per flag (a flag inside a fault is
true, up to `grace` readings after one is not counted, any other is a false alarm). The clean run
(no fault) gives the false alarms per 1,000 readings. The robust standard deviation is the
interquartile range / 1.349 of the whole series.

Timestamps are read as written (local time) and taken as UTC, so hour-of-day is the local hour.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
import zipfile
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cityos.insight.anomaly import AnomalyDetector, DetectorSettings, Verdict

KINDS = ("spike", "stuck", "drift")
BEIJING_COLUMNS = ("PM2.5", "NO2", "TEMP")
TRAFFIC_COLUMNS = ("traffic_volume", "temp")
SEATTLE_COLUMNS = ("temp_max", "wind")


@dataclass(frozen=True, slots=True)
class Series:
    dataset: str
    name: str
    times: list[float]  # seconds since the epoch, increasing
    values: list[float]


@dataclass(slots=True)
class Score:
    """Counts of one (dataset, fault kind) over its series; kind "none" is the clean run."""

    dataset: str
    kind: str
    readings: int = 0
    faults: int = 0
    found: int = 0
    flags: int = 0
    true_flags: int = 0
    flag_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def recall(self) -> float:
        return self.found / self.faults if self.faults else 0.0

    @property
    def precision(self) -> float:
        return self.true_flags / self.flags if self.flags else 1.0

    @property
    def false_per_1000(self) -> float:
        return 1000.0 * (self.flags - self.true_flags) / self.readings if self.readings else 0.0


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _columns(
    rows: Iterable[dict[str, str]],
    dataset: str,
    station: str,
    time_of: Callable[[dict[str, str]], float],
    columns: Sequence[str],
) -> list[Series]:
    times: dict[str, list[float]] = {c: [] for c in columns}
    values: dict[str, list[float]] = {c: [] for c in columns}
    for row in rows:
        at = time_of(row)
        for column in columns:
            raw = row.get(column, "")
            if raw in ("", "NA"):
                continue
            times[column].append(at)
            values[column].append(float(raw))
    return [Series(dataset, f"{station}/{c}", times[c], values[c]) for c in columns]


def beijing(text: str, station: str) -> list[Series]:
    """A UCI Beijing Multi-Site Air Quality file (hourly)."""

    def at(row: dict[str, str]) -> float:
        return datetime(int(row["year"]), int(row["month"]), int(row["day"]), int(row["hour"]), tzinfo=UTC).timestamp()

    return _columns(csv.DictReader(io.StringIO(text)), "beijing-air-quality", station, at, BEIJING_COLUMNS)


def traffic(text: str) -> list[Series]:
    """The Metro Interstate (I-94) hourly traffic file."""
    rows = csv.DictReader(io.StringIO(text))
    return _columns(rows, "metro-interstate-traffic", "I-94", lambda r: _stamp(r["datetime"]), TRAFFIC_COLUMNS)


def seattle(text: str) -> list[Series]:
    """The daily Seattle weather file."""
    rows = csv.DictReader(io.StringIO(text))
    return _columns(rows, "seattle-weather", "Seattle", lambda r: _stamp(r["date"]), SEATTLE_COLUMNS)


def load_shared(directory: Path) -> list[Series]:
    """Every evaluated series of ../shared/data/timeseries (README there)."""
    found: list[Series] = []
    for path in sorted((directory / "beijing-air-quality").glob("PRSA_Data_*.csv")):
        found += beijing(path.read_text(encoding="utf-8"), path.name.split("_")[2])
    with zipfile.ZipFile(directory / "metro-interstate-traffic" / "traffic_hourly.zip") as archive:
        found += traffic(archive.read(archive.namelist()[0]).decode("utf-8"))
    found += seattle((directory / "seattle-weather" / "seattle-weather.csv").read_text(encoding="utf-8"))
    return found


def load_shipped() -> list[Series]:
    """The two real series shipped inside the package (a year each), for the tests."""
    from importlib import resources

    data = resources.files("cityos.ingest").joinpath("data", "timeseries")
    air = gzip.decompress(data.joinpath("beijing-aotizhongxin-2016-03_2017-02.csv.gz").read_bytes()).decode()
    road = gzip.decompress(data.joinpath("minneapolis-i94-traffic-2016-10_2017-09.csv.gz").read_bytes()).decode()
    return beijing(air, "Aotizhongxin") + traffic(road)


def robust_sd(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return max((ordered[(3 * n) // 4] - ordered[n // 4]) / 1.349, 1e-9)


def inject(
    series: Series, kind: str, rng: random.Random, *, start: int, spacing: int
) -> tuple[list[float], list[tuple[int, int]]]:
    """A faulty copy of the values and the faults' [first, last] reading indexes."""
    values = list(series.values)
    sd = robust_sd(values)
    spacing = max(20, min(spacing, len(values) // 20))  # a short (daily) series gets enough faults too
    faults: list[tuple[int, int]] = []
    at = start + rng.randrange(spacing)
    while True:
        if kind == "spike":
            length = 1
        elif kind == "stuck":
            length = rng.randint(12, 48)
        else:
            length = rng.randint(48, 168)
        if at + length >= len(values):
            break
        if kind == "spike":
            values[at] += rng.choice((-1.0, 1.0)) * rng.uniform(3.0, 6.0) * sd
        elif kind == "stuck":
            for index in range(at + 1, at + length):
                values[index] = values[at]
        else:
            offset = rng.choice((-1.0, 1.0)) * rng.uniform(2.0, 4.0) * sd
            for step, index in enumerate(range(at, at + length), start=1):
                values[index] += offset * step / length
        faults.append((at, at + length - 1))
        at += length + spacing // 2 + rng.randrange(spacing)
    return values, faults


class Observer(Protocol):
    def observe(self, key: Hashable, at: float, value: float) -> Verdict | None: ...


def score_run(
    series: Series,
    values: Sequence[float],
    faults: Sequence[tuple[int, int]],
    detector: Observer,
    score: Score,
    *,
    grace: int = 3,
) -> None:
    owner = [-1] * len(values)  # the fault each reading belongs to (-2: just after one)
    for number, (first, last) in enumerate(faults):
        for index in range(first, last + 1):
            owner[index] = number
        for index in range(last + 1, min(last + 1 + grace, len(values))):
            if owner[index] == -1:
                owner[index] = -2
    found: set[int] = set()
    for index, (at, value) in enumerate(zip(series.times, values, strict=True)):
        verdict = detector.observe(series.name, at, value)
        if verdict is None or owner[index] == -2:
            continue
        score.flags += 1
        score.flag_kinds[verdict.kind] = score.flag_kinds.get(verdict.kind, 0) + 1
        if owner[index] >= 0:
            score.true_flags += 1
            found.add(owner[index])
    score.readings += len(values)
    score.faults += len(faults)
    score.found += len(found)


def evaluate(
    series: Sequence[Series],
    settings: DetectorSettings | None = None,
    *,
    seed: int = 17,
    kinds: Sequence[str] = KINDS,
    spacing: int = 400,
    make: Callable[[], Observer] | None = None,
) -> list[Score]:
    """One Score per (dataset, kind), the clean run ("none") first for each dataset. `make`: another
    detector to measure the same way (a fresh one per run; AnomalyDetector by default)."""
    base = settings or DetectorSettings()

    def fresh() -> Observer:
        return make() if make is not None else AnomalyDetector(base)

    scores: dict[tuple[str, str], Score] = {}
    for item in series:
        rng = random.Random(f"{seed}/{item.dataset}/{item.name}")
        key = (item.dataset, "none")
        clean = scores.setdefault(key, Score(*key))
        score_run(item, item.values, [], fresh(), clean)
        for kind in kinds:
            values, faults = inject(item, kind, rng, start=2 * base.warmup, spacing=spacing)
            key = (item.dataset, kind)
            score_run(item, values, faults, fresh(), scores.setdefault(key, Score(*key)))
    return list(scores.values())


def table(scores: Sequence[Score]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| data set | fault | readings | faults | recall | flags | precision | false alarms / 1,000 readings |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        if s.kind == "none":
            recall, precision = "-", "-"
        else:
            recall, precision = f"{s.recall:.3f}", f"{s.precision:.3f}"
        lines.append(
            f"| {s.dataset} | {s.kind} | {s.readings:,} | {s.faults} | {recall} | {s.flags} | {precision} "
            f"| {s.false_per_1000:.2f} |"
        )
    return "\n".join(lines)
