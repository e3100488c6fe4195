"""The city profile: the figures indicators divide by (population, area) that no sensor measures.

A small TOML file (`--city-profile`, CITYOS_CITY_PROFILE) declares them with their source, so an
indicator "per 100,000 population" says which population it used. Without a profile, inputs that
need one have no data and the indicator is stored as incomplete, never divided by a guess.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from cityos.insight.model import IndicatorFileError

FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "population": (int, float),
    "area": (int, float),
    "source": str,
    "year": int,
}
DEMO_PROFILE = "demo-city-profile.toml"  # beside demo-city.yaml: the demo city's declared figures


def parse_profile(text: str, path: str) -> dict[str, float]:
    """The numeric figures of a profile file (population, area in km²), or IndicatorFileError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise IndicatorFileError(path, None, f"syntax error: {exc}") from exc
    for key, value in data.items():
        kinds = FIELDS.get(key)
        if kinds is None:
            raise IndicatorFileError(path, None, f"unknown field {key!r}")
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise IndicatorFileError(path, None, f"{key} has the wrong type")
    figures: dict[str, float] = {key: float(data[key]) for key in ("population", "area") if key in data}
    if any(value <= 0 for value in figures.values()):
        raise IndicatorFileError(path, None, "population and area must be positive")
    return figures


def load_profile(path: str) -> dict[str, float]:
    return parse_profile(Path(path).read_text(encoding="utf-8"), path)


def demo_profile() -> dict[str, float]:
    """The demo city's profile, shipped beside its layout."""
    text = resources.files("cityos.ingest").joinpath("data", DEMO_PROFILE).read_text(encoding="utf-8")
    return parse_profile(text, f"cityos/ingest/data/{DEMO_PROFILE}")
