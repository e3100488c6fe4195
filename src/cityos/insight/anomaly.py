"""Streaming anomaly detection on measures (issue 17, part 3): framework-free, standard library only.

Each series (an entity's numeric attribute, one datasetId) keeps a robust seasonal baseline in
bounded memory: per season bucket (hour of day by default) a ring of the last `window` steps
(the change from the last normal reading) and of the last `window` levels. Three checks, because
the three faults a city sensor shows look different:

- spike: the step from the last normal reading, as a robust z-score against this hour's steps
  (median and MAD, with floors so a quiet hour cannot make a tiny change look huge). A flagged
  reading does not move the anchor, so the return to normal is not flagged too; `reanchor` flags in a
  row in one direction are taken as a real level shift.
- stuck: a run of identical readings longer than both `stuck_run` and `stuck_factor` times the
  longest run the series itself showed recently (integer PM2.5 repeats at night; traffic never does).
- drift: a two-sided CUSUM of the clipped, standardized residual from this hour's median level.

Medians of small rings (not exponential means) so a spike or an episode does not drag the baseline;
rings (not ever-growing histories) so memory per series is fixed: about 2 x season x window doubles.
The number of series is bounded too (least recently fed evicted). Why this and not `river`: see
docs/indicators.md, "Anomaly detection".

Not thread-safe: one caller at a time (the store's change listener runs on its writer thread).
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

DETECTOR = "seasonal-mad/1"  # name and version, written with every flag
# the `anomaly` sub-property a flagged reading gets (the core @context's default vocabulary): known
# here, without the rest of the code, because history must not count a flag as a new observation
ANOMALY_IRI = "https://uri.etsi.org/ngsi-ld/default-context/anomaly"
MAD_SIGMA = 1.4826  # MAD to standard deviation under normality
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """Thresholds (README: the --anomaly-* settings) and the baseline's shape."""

    threshold: float = 16.0  # robust z of a step, above which a reading is a spike
    stuck_run: int = 6  # identical readings in a row, at least, before a series is stuck
    stuck_factor: float = 2.0  # ... and more than this times its own longest recent run
    drift_threshold: float = 250.0  # CUSUM (in robust standard deviations) past which a series drifts
    drift_slack: float = 1.5  # residual (robust sd) the CUSUM forgives at each reading
    warmup: int = 72  # readings of a series before any verdict
    window: int = 16  # values kept per season bucket
    season: int = 24  # buckets per day (24: hour of day; 1: none, e.g. daily series)
    reanchor: int = 3  # spikes in a row in one direction after which the new level is accepted
    max_gap: float = 6 * 3600.0  # seconds (or 3 readings' cadence) without a normal reading: the step restarts
    max_series: int = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a reading is anomalous: kind (spike, stuck, drift), a score (robust z for a spike,
    run length for stuck, CUSUM for drift), the value the baseline expected, a sentence."""

    kind: str
    score: float
    expected: float
    reason: str


class _Rings:
    """`buckets` rings of `size` doubles in one flat array (bounded memory, few objects)."""

    __slots__ = ("count", "data", "pos", "size")

    def __init__(self, buckets: int, size: int) -> None:
        self.size = size
        self.data = array("d", bytes(8 * buckets * size))
        self.pos = array("H", bytes(2 * buckets))
        self.count = array("H", bytes(2 * buckets))

    def push(self, bucket: int, value: float) -> None:
        base = bucket * self.size
        self.data[base + self.pos[bucket]] = value
        self.pos[bucket] = (self.pos[bucket] + 1) % self.size
        if self.count[bucket] < self.size:
            self.count[bucket] += 1

    def stats(self, bucket: int) -> tuple[int, float, float]:
        """(count, median, MAD) of one bucket."""
        n = self.count[bucket]
        if n == 0:
            return 0, 0.0, 0.0
        base = bucket * self.size
        values = sorted(self.data[base : base + n])
        median = _median_sorted(values)
        spread = sorted(abs(v - median) for v in values)
        return n, median, _median_sorted(spread)


def _median_sorted(values: list[float]) -> float:
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else (values[mid - 1] + values[mid]) / 2.0


class _Series:
    __slots__ = (
        "anchor",
        "anchor_at",
        "cusum_high",
        "cusum_low",
        "interval",
        "last",
        "last_at",
        "levels",
        "longest_run",
        "n",
        "resolution",
        "run",
        "run_flagged",
        "step_scale",
        "steps",
        "streak",
    )

    def __init__(self, settings: DetectorSettings, at: float, value: float) -> None:
        self.steps = _Rings(settings.season, settings.window)
        self.levels = _Rings(settings.season, settings.window)
        self.n = 1
        self.last = self.anchor = value
        self.last_at = self.anchor_at = at
        self.step_scale = 0.0  # exponentially weighted mean |step - typical step| of the whole series
        self.resolution = math.inf  # the smallest change seen: the sensor's quantization
        self.run = 1
        self.run_flagged = False
        self.longest_run = 1.0
        self.streak = 0
        self.cusum_high = self.cusum_low = 0.0
        self.interval = 0.0  # exponentially weighted seconds between readings (the series' cadence)


class AnomalyDetector:
    """Feed readings in time order per series; `observe` answers a Verdict for an anomalous one."""

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self._series: OrderedDict[Hashable, _Series] = OrderedDict()
        self._bucket_width = DAY / max(1, self.settings.season)
        self._run_decay = 1.0 - 1.0 / (30 * max(1, self.settings.season))  # a month of readings

    def __len__(self) -> int:
        return len(self._series)

    def forget(self, key: Hashable) -> None:
        self._series.pop(key, None)

    def observe(self, key: Hashable, at: float, value: float) -> Verdict | None:
        """One reading (`at` in seconds since the epoch) of series `key`; None when it is normal,
        the first of its series, out of order, or within the warm-up."""
        series = self._series.get(key)
        if series is None:
            self._series[key] = _Series(self.settings, at, value)
            if len(self._series) > self.settings.max_series:
                self._series.popitem(last=False)
            return None
        self._series.move_to_end(key)
        if at <= series.last_at or not math.isfinite(value):
            return None
        return self._judge(series, at, value)

    def _judge(self, s: _Series, at: float, value: float) -> Verdict | None:
        cfg = self.settings
        s.n += 1
        ready = s.n > cfg.warmup
        s.interval += (min(at - s.last_at, 7 * DAY) - s.interval) / min(s.n - 1, 100)
        bucket = int((at % DAY) // self._bucket_width) % max(1, cfg.season)
        change = abs(value - s.last)
        if 0.0 < change < s.resolution:
            s.resolution = change
        # stuck: a run of identical readings, longer than the series' own runs
        s.longest_run = max(1.0, s.longest_run * self._run_decay)
        if change == 0.0:
            s.run += 1
        else:
            if not s.run_flagged:
                s.longest_run = max(s.longest_run, float(s.run))
            s.run, s.run_flagged = 1, False
        s.last, s.last_at = value, at
        floor = s.resolution if math.isfinite(s.resolution) else 1e-9
        limit = max(cfg.stuck_run, cfg.stuck_factor * s.longest_run)
        if ready and s.run >= limit:
            s.run_flagged = True
            s.anchor_at = at
            return Verdict("stuck", float(s.run), s.anchor, f"the same value {value:g} {s.run} times in a row")
        # after a gap the step means nothing: start again from here
        if at - s.anchor_at > max(cfg.max_gap, 3.0 * s.interval):
            s.anchor, s.anchor_at, s.streak = value, at, 0
            s.levels.push(bucket, value)
            return None
        # spike: the step from the last normal reading against this hour's steps
        step = value - s.anchor
        n_steps, step_median, step_mad = s.steps.stats(bucket)
        step_sd = max(MAD_SIGMA * step_mad, 0.5 * s.step_scale, floor)
        z = (step - step_median) / step_sd
        if ready and n_steps >= 4 and abs(z) > cfg.threshold:
            direction = 1 if z > 0 else -1
            s.streak = s.streak + direction if s.streak * direction > 0 else direction
            if abs(s.streak) <= cfg.reanchor:
                expected = s.anchor + step_median
                return Verdict(
                    "spike",
                    abs(z),
                    expected,
                    f"a step of {step:+.4g} from {s.anchor:g} where this hour's steps are "
                    f"{step_median:+.4g} ± {step_sd:.3g} (robust z {z:+.1f})",
                )
            s.streak = 0  # several in a row: a new level, taken as it is
        else:
            s.streak = 0
            s.steps.push(bucket, step)
            s.step_scale += (abs(step - step_median) - s.step_scale) / min(s.n, 500)
        s.anchor, s.anchor_at = value, at
        # drift: CUSUM of the standardized residual from this hour's median level
        n_levels, level, level_mad = s.levels.stats(bucket)
        s.levels.push(bucket, value)
        if n_levels < 4:
            return None
        level_sd = max(MAD_SIGMA * level_mad, floor)
        residual = max(-4.0, min(4.0, (value - level) / level_sd))
        s.cusum_high = max(0.0, s.cusum_high + residual - cfg.drift_slack)
        s.cusum_low = max(0.0, s.cusum_low - residual - cfg.drift_slack)
        cusum = max(s.cusum_high, s.cusum_low)
        if ready and cusum > cfg.drift_threshold:
            way = "above" if s.cusum_high >= s.cusum_low else "below"
            return Verdict(
                "drift",
                cusum,
                level,
                f"readings have stayed {way} this hour's usual {level:g} ± {level_sd:.3g} (CUSUM {cusum:.0f})",
            )
        return None


def describe(settings: DetectorSettings) -> dict[str, object]:
    """What the register of models (issue 17, part 5) shows of the detector."""
    return {
        "id": DETECTOR,
        "purpose": "Flag anomalous readings (spikes, stuck sensors, drifts) of incoming measures.",
        "method": "Per series and hour of day: robust z of the step from the last normal reading "
        "(median/MAD of recent steps), run length of identical readings, CUSUM of the level residual.",
        "settings": {
            "threshold": settings.threshold,
            "stuckRun": settings.stuck_run,
            "driftThreshold": settings.drift_threshold,
            "warmup": settings.warmup,
            "maxSeries": settings.max_series,
        },
        "evaluation": "docs/indicators.md, Anomaly detection (python -m benchmarks.anomaly)",
    }
