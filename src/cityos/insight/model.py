"""Indicators declared as data: one TOML file per indicator, checked whole at load.

TOML (tomllib, in the standard library since 3.11) rather than YAML: no new parser to depend on,
no implicit typing (`no` stays a string, `1.10` a float), and its decode errors carry the line and
column. A file is refused with its path, the line and the reason: a syntax error, an unknown or
missing field, a formula naming something that is not an input, a unit mismatch.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cityos.insight.formula import Formula, FormulaError, compile_formula, show, unit_of

PERIODS = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400, "monthly": 30 * 86400, "yearly": 365 * 86400}
CALENDAR = {"calendar-month": 1, "calendar-year": 12}  # UTC calendar periods, in months
ANCHORS = ("now", "latest")  # the window ends at the computation, or at the inputs' latest instance
SCOPES = ("city", "district")  # district: one value per polygon of the file's [districts] table
AGGREGATIONS = ("avg", "sum", "min", "max", "totalCount")  # temporal: the store's SQL aggregation
KINDS = ("temporal", "count", "current-sum", "within", "profile")
PER = {"hourly": 3600, "daily": 86400}  # periods of a threshold count (temporal inputs)
COMPARE = (">", ">=", "<", "<=")
PROFILE_KEYS = {"population": "C62", "area": "KMK"}  # the city profile's figures and their units
INDICATOR_FIELDS = {
    "id": str,
    "name": str,
    "description": str,
    "standard": str,
    "clause": str,
    "references": list,
    "unit": str,
    "period": str,
    "anchor": str,
    "scope": str,
    "coverage": float,
    "formula": str,
    "version": int,
    "inputs": dict,
    "districts": dict,
}
REQUIRED = ("id", "name", "standard", "clause", "unit", "period", "formula", "inputs")
INPUT_FIELDS = {
    "kind": str,
    "type": str,
    "attribute": str,
    "aggregation": str,
    "q": str,
    "unit": str,
    "sampling": int,
    "per": str,
    "compare": str,
    "threshold": float,
    "near": str,
    "distance": float,
    "key": str,
}
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class IndicatorFileError(ValueError):
    """A refused indicator file: where and why."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        super().__init__(f"{path}" + (f":{line}" if line else "") + f": {reason}")
        self.path, self.line, self.reason = path, line, reason


@dataclass(frozen=True, slots=True)
class Input:
    """One named input. temporal: `aggregation` of `attribute` over the window, in SQL, over all
    entities of `type`, expecting one instance per `sampling` seconds per entity (coverage); with
    `per`, `compare` and `threshold`: how many (entity, hour or day) periods' aggregation compares
    true, the periods aggregated in SQL; count: how many entities of `type` match `q`;
    current-sum: the sum of `attribute`'s current values over the entities of `type` matching `q`;
    within: how many entities of `type` (matching `q`) lie within `distance` metres of an entity
    of type `near` (the store's geo-query); profile: a figure of the city profile (`key`)."""

    name: str
    kind: str
    type: str
    unit: str
    attribute: str | None = None
    aggregation: str | None = None
    q: str | None = None
    sampling: int = 3600
    per: str | None = None
    compare: str | None = None
    threshold: float | None = None
    near: str | None = None
    distance: float | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class District:
    """A district polygon of a district-scoped indicator: its id (the KPI entity's last part), its
    name and its outer ring of [longitude, latitude] positions, closed."""

    id: str
    name: str
    ring: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class Indicator:
    id: str
    name: str
    standard: str
    clause: str
    unit: str
    period: str
    formula: Formula
    inputs: dict[str, Input]
    source: str  # the file it was read from
    digest: str  # sha256 of the file's bytes: the formula version a value was computed with
    description: str = ""
    references: tuple[str, ...] = ()
    anchor: str = "now"
    scope: str = "city"
    coverage: float = 0.75
    version: int = 1
    districts: tuple[District, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> int:
        """The length of a rolling period (a calendar period's length depends on where it falls)."""
        return PERIODS.get(self.period, 0)

    @property
    def entity_id(self) -> str:
        """The entity of a city-scoped value (a district-scoped one: entity_of each district)."""
        return f"urn:ngsi-ld:KeyPerformanceIndicator:{self.id}:{self.scope}"

    def entity_of(self, district: District | None) -> str:
        return self.entity_id if district is None else f"urn:ngsi-ld:KeyPerformanceIndicator:{self.id}:{district.id}"

    @property
    def scopes(self) -> tuple[District | None, ...]:
        """What one computation covers: the city (None), or each district."""
        return self.districts if self.scope == "district" else (None,)


def _line_of(text: str, key: str, after: str | None = None) -> int | None:
    """The line where `key = ` is written (after the table header `after`, if given)."""
    lines = text.splitlines()
    start = 0
    if after is not None:
        header = re.compile(rf"^\s*\[\s*{re.escape(after)}\s*\]")
        start = next((i for i, line in enumerate(lines) if header.match(line)), 0)
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    return next((i + 1 for i in range(start, len(lines)) if pattern.match(lines[i])), None)


def _check_fields(path: str, text: str, data: dict[str, Any], known: dict[str, type], where: str | None) -> None:
    for key, value in data.items():
        expected = known.get(key)
        if expected is None:
            raise IndicatorFileError(path, _line_of(text, key, where), f"unknown field {key!r}")
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or isinstance(value, bool):
            raise IndicatorFileError(path, _line_of(text, key, where), f"{key} must be a {expected.__name__}")


def parse_indicator(text: str, path: str) -> Indicator:
    """The indicator a file declares, or IndicatorFileError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        raise IndicatorFileError(path, int(found.group(1)) if found else None, f"syntax error: {exc}") from exc
    _check_fields(path, text, data, INDICATOR_FIELDS, None)
    for key in REQUIRED:
        if key not in data:
            raise IndicatorFileError(path, None, f"missing field {key!r}")

    def refuse(key: str, reason: str, where: str | None = None) -> IndicatorFileError:
        return IndicatorFileError(path, _line_of(text, key, where), reason)

    if not ID.match(data["id"]):
        raise refuse("id", "id must be lower-case letters, digits and dashes")
    if data["period"] not in PERIODS and data["period"] not in CALENDAR:
        raise refuse("period", f"period must be one of {', '.join([*PERIODS, *CALENDAR])}")
    if data.get("anchor", "now") not in ANCHORS:
        raise refuse("anchor", f"anchor must be one of {', '.join(ANCHORS)}")
    if data.get("scope", "city") not in SCOPES:
        raise refuse("scope", f"scope must be one of {', '.join(SCOPES)}")
    districts = _districts(path, text, data.get("districts", {}))
    if (data.get("scope", "city") == "district") != bool(districts):
        raise refuse("scope", "a district scope needs a [districts] table, and only it has one")
    if not 0 <= data.get("coverage", 0.75) <= 1:
        raise refuse("coverage", "coverage is a share between 0 and 1")
    if not data["inputs"]:
        raise refuse("inputs", "an indicator needs at least one input")
    inputs = {name: _input(path, text, name, body) for name, body in data["inputs"].items()}
    try:
        formula = compile_formula(data["formula"], {name: item.unit for name, item in inputs.items()})
    except FormulaError as exc:
        raise refuse("formula", f"formula: {exc}") from exc
    if formula.unit != unit_of(data["unit"]):
        raise refuse(
            "formula", f"unit mismatch: the formula gives {show(formula.unit)}, the indicator says {data['unit']}"
        )
    return Indicator(
        id=data["id"],
        name=data["name"],
        standard=data["standard"],
        clause=data["clause"],
        unit=data["unit"],
        period=data["period"],
        formula=formula,
        inputs=inputs,
        source=path,
        digest=hashlib.sha256(text.encode()).hexdigest(),
        description=data.get("description", ""),
        references=tuple(str(item) for item in data.get("references", [])),
        anchor=data.get("anchor", "now"),
        scope=data.get("scope", "city"),
        coverage=float(data.get("coverage", 0.75)),
        version=data.get("version", 1),
        districts=districts,
    )


def _districts(path: str, text: str, table: dict[str, Any]) -> tuple[District, ...]:
    """[districts.<id>] tables: name (optional) and polygon, a closed ring of [lon, lat]."""
    found: list[District] = []
    for key, body in table.items():
        where = f"districts.{key}"
        line = _line_of(text, "polygon", where) or _line_of(text, "districts")
        if not ID.match(key) or not isinstance(body, dict):
            raise IndicatorFileError(path, line, f"district {key!r}: a table with a lower-case id")
        unknown = set(body) - {"name", "polygon"}
        if unknown:
            raise IndicatorFileError(path, line, f"district {key}: unknown field {sorted(unknown)[0]!r}")
        ring: list[Any] = body.get("polygon") or []
        good = isinstance(ring, list) and len(ring) >= 4 and ring[0] == ring[-1]
        good = good and all(
            isinstance(p, list)
            and len(p) == 2
            and all(isinstance(c, int | float) and not isinstance(c, bool) for c in p)
            and -180 <= p[0] <= 180
            and -90 <= p[1] <= 90
            for p in ring
        )
        if not good:
            raise IndicatorFileError(
                path, line, f"district {key}: polygon must be a closed ring of 4 or more [longitude, latitude]"
            )
        found.append(District(key, str(body.get("name", key)), tuple((float(p[0]), float(p[1])) for p in ring)))
    return tuple(found)


def _input(path: str, text: str, name: str, body: Any) -> Input:
    where = f"inputs.{name}"
    if not isinstance(body, dict) or not NAME.match(name):
        raise IndicatorFileError(path, _line_of(text, name), f"input {name!r} must be a table with a plain name")
    _check_fields(path, text, body, INPUT_FIELDS, where)

    def refuse(key: str, reason: str) -> IndicatorFileError:
        return IndicatorFileError(path, _line_of(text, key, where), f"input {name}: {reason}")

    kind = body.get("kind", "temporal")
    if kind not in KINDS:
        raise refuse("kind", f"kind must be one of {', '.join(KINDS)}")
    for key in ("type", "unit") if kind != "profile" else ("key", "unit"):
        if key not in body:
            raise IndicatorFileError(path, _line_of(text, name), f"input {name}: missing field {key!r}")
    if kind in ("temporal", "current-sum") and "attribute" not in body:
        raise IndicatorFileError(path, _line_of(text, name), f"input {name}: a {kind} input needs an attribute")
    allowed = {
        "temporal": {"attribute", "aggregation", "sampling", "per", "compare", "threshold"},
        "count": {"q"},
        "current-sum": {"attribute", "q"},
        "within": {"q", "near", "distance"},
        "profile": {"key"},
    }[kind] | {"kind", "type", "unit"}
    if kind == "temporal":
        _check_threshold(body, refuse)
    for key in body:
        if key not in allowed:
            raise refuse(key, f"a {kind} input has no {key}")
    if kind in ("count", "within") and body["unit"] != "C62":
        raise refuse("unit", "a count is in C62 (one)")
    if kind == "within" and ("near" not in body or "distance" not in body or body["distance"] <= 0):
        raise IndicatorFileError(path, _line_of(text, name), f"input {name}: within needs near and a distance > 0")
    if kind == "profile":
        if body["key"] not in PROFILE_KEYS:
            raise refuse("key", f"key must be one of {', '.join(PROFILE_KEYS)}")
        if body["unit"] != PROFILE_KEYS[body["key"]]:
            raise refuse("unit", f"the profile's {body['key']} is in {PROFILE_KEYS[body['key']]}")
    if body.get("sampling", 3600) <= 0:
        raise refuse("sampling", "sampling is a positive number of seconds")
    return Input(
        name=name,
        kind=kind,
        type=body.get("type", ""),
        unit=body["unit"],
        attribute=body.get("attribute"),
        aggregation=body.get("aggregation"),
        q=body.get("q"),
        sampling=body.get("sampling", 3600),
        per=body.get("per"),
        compare=body.get("compare"),
        threshold=float(body["threshold"]) if "threshold" in body else None,
        near=body.get("near"),
        distance=float(body["distance"]) if "distance" in body else None,
        key=body.get("key"),
    )


def _check_threshold(body: dict[str, Any], refuse: Callable[[str, str], IndicatorFileError]) -> None:
    """A temporal input's aggregation, and its threshold count (per, compare, threshold: all or none)."""
    if body.get("aggregation") not in AGGREGATIONS:
        raise refuse("aggregation", f"aggregation must be one of {', '.join(AGGREGATIONS)}")
    given = [key for key in ("per", "compare", "threshold") if key in body]
    if not given:
        return
    if len(given) < 3:
        missing = sorted({"per", "compare", "threshold"} - set(given))
        raise refuse(given[0], f"a threshold count needs per, compare and threshold (missing {', '.join(missing)})")
    if body["per"] not in PER:
        raise refuse("per", f"per must be one of {', '.join(PER)}")
    if body["compare"] not in COMPARE:
        raise refuse("compare", f"compare must be one of {' '.join(COMPARE)}")
    if body["aggregation"] == "totalCount":
        raise refuse("aggregation", "a threshold count compares avg, sum, min or max")
    if body["unit"] != "C62":
        raise refuse("unit", "a threshold count is a number of periods, in C62 (one)")


def shipped_files() -> list[tuple[str, str]]:
    """The indicators CityOS ships (insight/indicators/*.toml) as (name, text)."""
    folder = resources.files("cityos.insight").joinpath("indicators")
    return sorted(
        (f"cityos/insight/indicators/{item.name}", item.read_text(encoding="utf-8"))
        for item in folder.iterdir()
        if item.name.endswith(".toml")
    )


def load_indicators(directory: str = "", *, shipped: bool = True) -> dict[str, Indicator]:
    """The shipped set and every *.toml of `directory`; a file of the directory with the id of a
    shipped one replaces it. The first refused file raises IndicatorFileError."""
    files: list[tuple[str, str]] = shipped_files() if shipped else []
    if directory:
        folder = Path(directory)
        if not folder.is_dir():
            raise IndicatorFileError(directory, None, "not a directory")
        files += [(str(p), p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.toml"))]
    return index(parse_indicator(text, path) for path, text in files)


def index(indicators: Iterable[Indicator]) -> dict[str, Indicator]:
    return {indicator.id: indicator for indicator in indicators}
