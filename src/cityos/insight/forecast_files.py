"""Forecasters declared as data: one TOML file per forecaster, like the indicators and the alert
rules (docs/indicators.md, "Forecasters declared as files"). The shipped set is in
`insight/forecasters/`; `--forecasters-dir` adds or replaces (same id) forecasters. A file is
checked whole at load; a refused one names its line and the reason.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from cityos.insight.forecast import Forecaster
from cityos.insight.model import IndicatorFileError
from cityos.insight.rules import seconds_of

FIELDS: dict[str, type] = {
    "id": str,
    "name": str,
    "purpose": str,
    "type": str,
    "attribute": str,
    "unit": str,
    "step": str,
    "horizon": int,
    "history": str,
    "seasons": list,
    "baseline_season": str,
    "version": int,
    "max_entities": int,
}
REQUIRED = ("id", "name", "purpose", "type", "attribute", "unit", "step", "horizon", "history", "seasons")
ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
UNIT = re.compile(r"^[A-Z0-9]{2,3}$")  # a UN/CEFACT common code
TERM = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
MAX_HORIZON = 1000  # steps: a forecast entity holds one item per step
MAX_HISTORY = 20_000  # steps read per entity (one aggregated row each)
MAX_ENTITIES = 1000


class ForecasterFileError(IndicatorFileError):
    """A refused forecaster file: where and why (the same shape as a refused indicator file)."""


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    return next((i + 1 for i, line in enumerate(text.splitlines()) if pattern.match(line)), None)


def parse_forecaster(text: str, path: str) -> tuple[Forecaster, str]:
    """The forecaster a file declares and the file's sha256, or ForecasterFileError."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        raise ForecasterFileError(path, int(found.group(1)) if found else None, f"syntax error: {exc}") from exc

    def refuse(key: str, reason: str) -> ForecasterFileError:
        return ForecasterFileError(path, _line_of(text, key), reason)

    for key, value in data.items():
        expected = FIELDS.get(key)
        if expected is None:
            raise refuse(key, f"unknown field {key!r}")
        if not isinstance(value, expected) or isinstance(value, bool):
            raise refuse(key, f"{key} must be a {expected.__name__}")
    for key in REQUIRED:
        if key not in data:
            raise ForecasterFileError(path, None, f"missing field {key!r}")
    if not ID.match(data["id"]):
        raise refuse("id", "id must be lower-case letters, digits and dashes")
    for key in ("type", "attribute"):
        if not TERM.match(data[key]):
            raise refuse(key, f"{key} is a term of the core @context (letters, digits, underscores)")
    if not UNIT.match(data["unit"]):
        raise refuse("unit", "unit is a UN/CEFACT common code (e.g. GQ, C62)")
    step = seconds_of(data["step"])
    if step is None or step < 60 or step != int(step):
        raise refuse("step", "step is a duration of whole seconds, a minute or more (e.g. 15m, 1h)")

    def steps(key: str, text_value: Any) -> int:
        seconds = seconds_of(text_value) if isinstance(text_value, str) else None
        if seconds is None or seconds <= 0 or seconds % step:
            raise refuse(key, f"{key} is a duration that is a whole number of steps (e.g. 1d)")
        return int(seconds // step)

    seasons = tuple(steps("seasons", season) for season in data["seasons"])
    if not seasons or len(seasons) > 3 or any(s < 2 for s in seasons) or list(seasons) != sorted(set(seasons)):
        raise refuse("seasons", "seasons are 1 to 3 periods, ascending, each of 2 steps or more")
    baseline = steps("baseline_season", data.get("baseline_season", data["seasons"][-1]))
    history = steps("history", data["history"])
    if not 2 * max(seasons) <= history <= MAX_HISTORY:
        raise refuse("history", f"history is 2 of the longest season to {MAX_HISTORY} steps")
    if baseline > history:
        raise refuse("baseline_season", "the baseline's season is at most the history")
    if not 1 <= data["horizon"] <= MAX_HORIZON:
        raise refuse("horizon", f"horizon is 1 to {MAX_HORIZON} steps")
    max_entities = data.get("max_entities", 50)
    if not 1 <= max_entities <= MAX_ENTITIES:
        raise refuse("max_entities", f"max_entities is 1 to {MAX_ENTITIES}")
    forecaster = Forecaster(
        id=data["id"],
        name=data["name"],
        purpose=data["purpose"],
        type=data["type"],
        attribute=data["attribute"],
        unit=data["unit"],
        step=int(step),
        horizon=data["horizon"],
        history=history,
        seasons=seasons,
        baseline_season=baseline,
        version=data.get("version", 1),
        max_entities=max_entities,
    )
    return forecaster, hashlib.sha256(text.encode()).hexdigest()


def load_forecasters(directory: str) -> dict[str, Forecaster]:
    """Every *.toml of `directory`; the first refused file raises ForecasterFileError."""
    if not directory:
        return {}
    folder = Path(directory)
    if not folder.is_dir():
        raise ForecasterFileError(directory, None, "not a directory")
    found = [parse_forecaster(p.read_text(encoding="utf-8"), str(p))[0] for p in sorted(folder.glob("*.toml"))]
    return {f.id: f for f in found}


def shipped() -> dict[str, Forecaster]:
    """The forecasters shipped in cityos/insight/forecasters/."""
    with resources.as_file(resources.files("cityos.insight").joinpath("forecasters")) as folder:
        return load_forecasters(str(folder))


def load(directory: str = "") -> dict[str, Forecaster]:
    """The shipped forecasters, then `directory`'s (a file with a shipped id replaces it)."""
    return {**shipped(), **load_forecasters(directory)}
