"""The service catalogue, declared as data: a TOML file naming the jurisdiction, its bounds and its
services (what GET services.{format} lists), each with its attributes (the service definition),
the asset types a report is linked to and the notice and expected delay given to the citizen.

A city edits a file, not code; the demo city's file is shipped (data/demo-services.toml)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DATATYPES = ("string", "number", "datetime", "text", "singlevaluelist", "multivaluelist")
SERVICE_TYPES = ("realtime", "batch", "blackbox")
CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
ENTITY_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")


class CatalogueError(ValueError):
    """A services file that cannot be served: said in one line at start-up."""


@dataclass(frozen=True, slots=True)
class Attribute:
    code: str
    datatype: str
    required: bool
    description: str
    order: int
    variable: bool = True
    datatype_description: str = ""
    values: tuple[tuple[str, str], ...] = ()  # (key, name) of a list datatype


@dataclass(frozen=True, slots=True)
class Service:
    code: str
    name: str
    description: str
    group: str
    keywords: str
    type: str = "realtime"
    asset_types: tuple[str, ...] = ()
    notice: str = ""
    expected_days: float = 0.0
    attributes: tuple[Attribute, ...] = ()

    @property
    def metadata(self) -> bool:
        return bool(self.attributes)


@dataclass(frozen=True, slots=True)
class Catalogue:
    jurisdiction_id: str
    name: str
    agency: str
    bounds: tuple[float, float, float, float] | None  # min lon, min lat, max lon, max lat
    services: dict[str, Service] = field(default_factory=dict)

    def inside(self, lon: float, lat: float) -> bool:
        if self.bounds is None:
            return True
        min_lon, min_lat, max_lon, max_lat = self.bounds
        return min_lon <= lon <= max_lon and min_lat <= lat <= max_lat


def _text(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or (default is None and not value.strip()):
        raise CatalogueError(f"{where}: {key} must be a non-empty string")
    return value


def parse_bounds(value: Any, where: str) -> tuple[float, float, float, float]:
    """[min lon, min lat, max lon, max lat] of WGS84 degrees (a list, or the setting's comma text)."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    try:
        numbers = tuple(float(part) for part in value)
    except (TypeError, ValueError):
        raise CatalogueError(f"{where}: bounds must be four numbers") from None
    if len(numbers) != 4:
        raise CatalogueError(f"{where}: bounds must be four numbers: min lon, min lat, max lon, max lat")
    min_lon, min_lat, max_lon, max_lat = numbers
    if not (-180 <= min_lon < max_lon <= 180 and -90 <= min_lat < max_lat <= 90):
        raise CatalogueError(f"{where}: bounds must be min lon < max lon and min lat < max lat, in degrees")
    return min_lon, min_lat, max_lon, max_lat


def _attribute(table: Any, where: str) -> Attribute:
    if not isinstance(table, dict):
        raise CatalogueError(f"{where}: an attribute must be a table")
    code = _text(table, "code", where)
    if not CODE.match(code):
        raise CatalogueError(f"{where}: attribute code {code!r} must be 1-64 letters, digits, _ . -")
    datatype = _text(table, "datatype", where)
    if datatype not in DATATYPES:
        raise CatalogueError(f"{where}: datatype must be one of {', '.join(DATATYPES)}")
    values: list[tuple[str, str]] = []
    for item in table.get("values", []):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str | int) or "name" not in item:
            raise CatalogueError(f"{where}: each value needs a key and a name")
        values.append((str(item["key"]), str(item["name"])))
    if datatype.endswith("valuelist") and not values:
        raise CatalogueError(f"{where}: a {datatype} needs values")
    return Attribute(
        code=code,
        datatype=datatype,
        required=bool(table.get("required", False)),
        description=_text(table, "description", where),
        order=int(table.get("order", 1)),
        variable=bool(table.get("variable", True)),
        datatype_description=str(table.get("datatype_description", "")),
        values=tuple(values),
    )


def _service(table: Any, where: str) -> Service:
    if not isinstance(table, dict):
        raise CatalogueError(f"{where}: a service must be a table")
    code = _text(table, "code", where)
    if not CODE.match(code):
        raise CatalogueError(f"{where}: service code {code!r} must be 1-64 letters, digits, _ . -")
    kind = table.get("type", "realtime")
    if kind not in SERVICE_TYPES:
        raise CatalogueError(f"{where}: type must be one of {', '.join(SERVICE_TYPES)}")
    assets = table.get("asset_types", [])
    if not isinstance(assets, list) or not all(isinstance(a, str) and ENTITY_TYPE.match(a) for a in assets):
        raise CatalogueError(f"{where}: asset_types must be a list of entity type names")
    attributes = tuple(
        _attribute(item, f"{where} attribute {n}") for n, item in enumerate(table.get("attribute", []), 1)
    )
    if len({a.code for a in attributes}) != len(attributes):
        raise CatalogueError(f"{where}: attribute codes must be unique")
    days = table.get("expected_days", 0)
    if not isinstance(days, int | float) or days < 0:
        raise CatalogueError(f"{where}: expected_days must be a number of days, 0 or more")
    return Service(
        code=code,
        name=_text(table, "name", where),
        description=_text(table, "description", where, ""),
        group=_text(table, "group", where, ""),
        keywords=_text(table, "keywords", where, ""),
        type=kind,
        asset_types=tuple(assets),
        notice=_text(table, "notice", where, ""),
        expected_days=float(days),
        attributes=tuple(sorted(attributes, key=lambda a: a.order)),
    )


def parse_catalogue(text: str, source: str = "services file") -> Catalogue:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{source}: {exc}") from None
    services: dict[str, Service] = {}
    for number, table in enumerate(data.get("service", []), 1):
        service = _service(table, f"{source} service {number}")
        if service.code in services:
            raise CatalogueError(f"{source}: service code {service.code!r} is declared twice")
        services[service.code] = service
    if not services:
        raise CatalogueError(f"{source}: no [[service]] declared")
    bounds = data.get("bounds")
    return Catalogue(
        jurisdiction_id=_text(data, "jurisdiction_id", source),
        name=_text(data, "name", source, ""),
        agency=_text(data, "agency", source, ""),
        bounds=None if bounds is None else parse_bounds(bounds, source),
        services=services,
    )


def load_catalogue(path: str, bounds: str = "") -> Catalogue:
    """The catalogue of `path` (empty: the demo city's), its bounds replaced by the setting's."""
    if path:
        catalogue = parse_catalogue(Path(path).read_text(encoding="utf-8"), path)
    else:
        text = resources.files("cityos.open311").joinpath("data/demo-services.toml").read_text(encoding="utf-8")
        catalogue = parse_catalogue(text, "demo-services.toml")
    if bounds:
        from dataclasses import replace

        catalogue = replace(catalogue, bounds=parse_bounds(bounds, "open311_bounds"))
    return catalogue
