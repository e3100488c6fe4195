"""Forecasters (issue 17, part 4): which series are forecast, how, and the methods themselves.

A forecaster names an entity type and a numeric attribute whose future a decision depends on, the
step the history is aggregated to (in SQL, by the temporal store), how much history it reads, the
horizon and the seasonal periods. The method is statsforecast's MSTL (a seasonal decomposition per
period) with AutoETS on the deseasonalised trend, which gives prediction intervals; statsforecast
is an optional dependency (`pip install -e '.[forecast]' in the CityOS checkout`), imported only when a model is fitted,
so a server without it starts as before and answers a forecast request with ForecastUnavailable.

The baseline every forecaster is measured against is the seasonal-naive forecast (the value one
season earlier), with the normal prediction intervals of Hyndman & Athanasopoulos, "Forecasting:
principles and practice", 3rd ed., section 5.5 (sigma_h = sigma * sqrt(k + 1), k = floor((h-1)/m)).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

LEVELS = (80, 95)  # prediction intervals, in percent
OWNER = "the operator of this CityOS deployment (issue 17)"
Array = npt.NDArray[np.float64]


class ForecastUnavailable(RuntimeError):
    """The forecasting library is not installed (the optional extra `forecast`)."""


@dataclass(frozen=True, slots=True)
class Forecaster:
    id: str
    name: str
    purpose: str
    type: str  # entity type (a term of the core @context)
    attribute: str  # numeric attribute forecast, per entity
    unit: str  # UN/CEFACT code of the attribute
    step: int  # seconds: the history is averaged to this step in SQL, and forecast at it
    horizon: int  # steps ahead
    history: int  # steps of history read (the model's training window)
    seasons: tuple[int, ...]  # seasonal periods in steps (MSTL)
    baseline_season: int  # the seasonal-naive baseline's period in steps
    version: int = 1
    max_entities: int = 50  # entities of the type forecast per computation (bounded work)

    @property
    def method(self) -> str:
        periods = ", ".join(str(s) for s in self.seasons)
        return f"statsforecast MSTL(season_length=[{periods}]) with AutoETS(model='ZZN') on the trend"

    def entity_id(self, entity: str) -> str:
        local = entity.removeprefix("urn:ngsi-ld:")
        return f"urn:ngsi-ld:{FORECAST_TYPE}:{self.id}:{local}"


FORECAST_TYPE = "TimeSeriesForecast"
HOUR = 3600
# the forecasters themselves are declared as files: insight/forecasters/*.toml (forecast_files.py)


@dataclass(frozen=True, slots=True)
class Prediction:
    mean: Array
    bounds: dict[int, tuple[Array, Array]]  # level -> (lower, upper)


def fill_gaps(values: Sequence[float | None]) -> tuple[Array, int]:
    """Missing steps linearly interpolated (ends: the nearest value), and how many there were;
    the models need a regular series without holes."""
    y = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    missing = np.isnan(y)
    gaps = int(missing.sum())
    if gaps == len(y):
        raise ValueError("no values to forecast from")
    if gaps:
        known = np.flatnonzero(~missing)
        y[missing] = np.interp(np.flatnonzero(missing), known, y[known])
    return y, gaps


def seasonal_naive(y: Array, horizon: int, season: int, levels: Sequence[int] = LEVELS) -> Prediction:
    """y[T + h] = y[T + h - m * (k + 1)], k = floor((h - 1) / m), with normal intervals from the
    in-sample seasonal differences (fpp3 5.5)."""
    if len(y) <= season:
        raise ValueError(f"a seasonal-naive forecast needs more than {season} values")
    steps = np.arange(1, horizon + 1)
    k = (steps - 1) // season
    mean = y[len(y) - season + (steps - 1) % season].astype(np.float64)
    residuals = y[season:] - y[:-season]
    sigma = float(np.sqrt(np.mean(residuals**2)))
    bounds = {}
    for level in levels:
        z = NormalDist().inv_cdf(0.5 + level / 200)
        half = z * sigma * np.sqrt(k + 1)
        bounds[level] = (mean - half, mean + half)
    return Prediction(mean, bounds)


def _statsforecast() -> tuple[Any, Any]:
    try:
        from statsforecast.models import MSTL, AutoETS
    except ImportError as exc:
        raise ForecastUnavailable(
            "forecasts need the optional dependency statsforecast: pip install -e '.[forecast]' in the CityOS checkout"
        ) from exc
    return MSTL, AutoETS


def model_forecast(y: Array, horizon: int, seasons: Sequence[int], levels: Sequence[int] = LEVELS) -> Prediction:
    """MSTL + AutoETS (statsforecast): CPU-bound, call it off the event loop."""
    mstl, auto_ets = _statsforecast()
    model = mstl(season_length=list(seasons), trend_forecaster=auto_ets(model="ZZN"))
    found = model.forecast(y=y, h=horizon, level=list(levels))
    bounds = {level: (np.asarray(found[f"lo-{level}"]), np.asarray(found[f"hi-{level}"])) for level in levels}
    return Prediction(np.asarray(found["mean"], dtype=np.float64), bounds)


def accuracy() -> dict[str, Any]:
    """The committed backtest results (insight/accuracy.json, made by `python -m
    cityos.insight.backtest --write`): forecaster id -> measured accuracy."""
    try:
        text = resources.files("cityos.insight").joinpath("accuracy.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    found: dict[str, Any] = json.loads(text)
    return found


def verdict(forecaster_id: str, measured: dict[str, Any] | None = None) -> str:
    """'better than the seasonal-naive baseline', 'no better than ...', or 'not measured'."""
    table = accuracy() if measured is None else measured
    entry = table.get("forecasters", {}).get(forecaster_id)
    if not entry or entry.get("mase") is None:
        return "not measured"
    found = "better" if entry["mase"] < entry["baseline_mase"] else "no better"
    return f"{found} than the seasonal-naive baseline" + (" (on simulated data only)" if entry.get("simulated") else "")
