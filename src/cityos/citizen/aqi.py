"""Air-quality health indices from pollutant concentrations, in two conventions:

- the US EPA AQI (Technical Assistance Document for the Reporting of Daily Air Quality, EPA-454/B-24-002,
  May 2024: the PM2.5 breakpoints revised in February 2024), gases converted from µg/m³ to ppb/ppm
  at 25 °C and 1 atm, concentrations truncated as the document says, the index rounded to an integer;
- China's AQI (HJ 633-2012, 环境空气质量指数(AQI)技术规定): IAQI per pollutant, hourly values on
  the 1-hour tables for SO2, NO2, CO and O3 and the 24-hour tables for PM2.5 and PM10, each IAQI
  rounded up, the AQI the largest, the primary pollutant named when the AQI is above 50.

Concentrations come in µg/m³ (CO too: the demo's Beijing series is in µg/m³), keyed by the
Smart Data Models attribute names (pm25, pm10, o3, no2, so2, co). Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

POLLUTANTS = ("pm25", "pm10", "o3", "no2", "so2", "co")
MOLAR_VOLUME = 24.45  # litres per mole at 25 °C and 1 atm (EPA's conversion)
MOLAR_MASS = {"o3": 48.00, "no2": 46.01, "so2": 64.07, "co": 28.01}

# (concentration low, high, index low, high); units after conversion in `_us_concentration`
US_TABLES: Mapping[str, Sequence[tuple[float, float, int, int]]] = {
    "pm25": (  # µg/m³, 24-hour, truncated to 0.1
        (0.0, 9.0, 0, 50),
        (9.1, 35.4, 51, 100),
        (35.5, 55.4, 101, 150),
        (55.5, 125.4, 151, 200),
        (125.5, 225.4, 201, 300),
        (225.5, 325.4, 301, 500),
    ),
    "pm10": (  # µg/m³, 24-hour, truncated to an integer
        (0, 54, 0, 50),
        (55, 154, 51, 100),
        (155, 254, 101, 150),
        (255, 354, 151, 200),
        (355, 424, 201, 300),
        (425, 604, 301, 500),
    ),
    "o3": (  # ppm, 8-hour, truncated to 0.001 (8-hour values end at 0.200 ppm)
        (0.000, 0.054, 0, 50),
        (0.055, 0.070, 51, 100),
        (0.071, 0.085, 101, 150),
        (0.086, 0.105, 151, 200),
        (0.106, 0.200, 201, 300),
    ),
    "co": (  # ppm, 8-hour, truncated to 0.1
        (0.0, 4.4, 0, 50),
        (4.5, 9.4, 51, 100),
        (9.5, 12.4, 101, 150),
        (12.5, 15.4, 151, 200),
        (15.5, 30.4, 201, 300),
        (30.5, 50.4, 301, 500),
    ),
    "so2": (  # ppb, 1-hour, truncated to an integer
        (0, 35, 0, 50),
        (36, 75, 51, 100),
        (76, 185, 101, 150),
        (186, 304, 151, 200),
        (305, 604, 201, 300),
        (605, 1004, 301, 500),
    ),
    "no2": (  # ppb, 1-hour, truncated to an integer
        (0, 53, 0, 50),
        (54, 100, 51, 100),
        (101, 360, 101, 150),
        (361, 649, 151, 200),
        (650, 1249, 201, 300),
        (1250, 2049, 301, 500),
    ),
}
US_DIGITS = {"pm25": 1, "pm10": 0, "o3": 3, "co": 1, "so2": 0, "no2": 0}
US_CATEGORIES = (
    (50, "good"),
    (100, "moderate"),
    (150, "unhealthy-for-sensitive-groups"),
    (200, "unhealthy"),
    (300, "very-unhealthy"),
    (500, "hazardous"),
)

# HJ 633-2012 table 1: IAQI 0, 50, 100, 150, 200, 300, 400, 500 and each pollutant's breakpoints
CN_IAQI = (0, 50, 100, 150, 200, 300, 400, 500)
CN_TABLES: Mapping[str, Sequence[float]] = {
    "so2": (0, 150, 500, 650, 800),  # 1-hour, µg/m³ (above 800 the standard uses the 24-hour value)
    "no2": (0, 100, 200, 700, 1200, 2340, 3090, 3840),  # 1-hour, µg/m³
    "co": (0, 5, 10, 35, 60, 90, 120, 150),  # 1-hour, mg/m³
    "o3": (0, 160, 200, 300, 400, 800, 1000, 1200),  # 1-hour, µg/m³
    "pm10": (0, 50, 150, 250, 350, 420, 500, 600),  # 24-hour, µg/m³
    "pm25": (0, 35, 75, 115, 150, 250, 350, 500),  # 24-hour, µg/m³
}
CN_CATEGORIES = (
    (50, "excellent"),  # 优
    (100, "good"),  # 良
    (150, "lightly-polluted"),  # 轻度污染
    (200, "moderately-polluted"),  # 中度污染
    (300, "heavily-polluted"),  # 重度污染
    (10**9, "severely-polluted"),  # 严重污染
)


@dataclass(frozen=True)
class Index:
    """One convention's answer: the index, its category, the pollutant that set it, and each sub-index."""

    value: int | None
    category: str | None
    primary: list[str]
    parts: dict[str, int]


def _truncate(value: float, digits: int) -> float:
    scale = float(10**digits)
    return math.floor(value * scale + 1e-9) / scale


def _us_concentration(pollutant: str, micrograms: float) -> float:
    if pollutant in ("pm25", "pm10"):
        return micrograms
    ppb: float = micrograms * MOLAR_VOLUME / MOLAR_MASS[pollutant]
    return ppb / 1000 if pollutant in ("o3", "co") else ppb


def us_sub_index(pollutant: str, micrograms: float) -> int | None:
    """The EPA's piecewise-linear index of one pollutant; None when the value is off the table."""
    c = _truncate(_us_concentration(pollutant, micrograms), US_DIGITS[pollutant])
    for c_lo, c_hi, i_lo, i_hi in US_TABLES[pollutant]:
        if c_lo <= c <= c_hi:
            return round((i_hi - i_lo) / (c_hi - c_lo) * (c - c_lo) + i_lo)
    return None


def cn_sub_index(pollutant: str, micrograms: float) -> int | None:
    """HJ 633-2012 formula (1), rounded up; None when the value is above the table."""
    c = micrograms / 1000 if pollutant == "co" else micrograms
    points = CN_TABLES[pollutant]
    for k in range(len(points) - 1):
        if points[k] <= c <= points[k + 1]:
            i_lo, i_hi = CN_IAQI[k], CN_IAQI[k + 1]
            return math.ceil((i_hi - i_lo) / (points[k + 1] - points[k]) * (c - points[k]) + i_lo - 1e-9)
    return None


def _category(value: int, table: Sequence[tuple[int, str]]) -> str:
    for upper, name in table:
        if value <= upper:
            return name
    return table[-1][1]


def _index(
    concentrations: Mapping[str, float],
    sub: Callable[[str, float], int | None],
    categories: Sequence[tuple[int, str]],
    floor: int,
) -> Index:
    parts: dict[str, int] = {}
    for pollutant in POLLUTANTS:
        value = concentrations.get(pollutant)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            found = sub(pollutant, float(value))
            if found is not None:
                parts[pollutant] = found
    if not parts:
        return Index(None, None, [], {})
    top = max(parts.values())
    primary = [p for p, v in parts.items() if v == top] if top > floor else []
    return Index(top, _category(top, categories), primary, parts)


def us_aqi(concentrations: Mapping[str, float]) -> Index:
    """US EPA AQI: the largest sub-index; the primary pollutant is reported at any value."""
    return _index(concentrations, us_sub_index, US_CATEGORIES, -1)


def cn_aqi(concentrations: Mapping[str, float]) -> Index:
    """China's AQI (HJ 633-2012): the largest IAQI; a primary pollutant only above 50."""
    return _index(concentrations, cn_sub_index, CN_CATEGORIES, 50)
