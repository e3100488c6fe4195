"""Smart Data Models JSON Schemas, validated offline.

The schemas CityOS ships (data/schemas/) reference each other and the SDM common schema by URL;
a referencing registry maps those URLs to the local files, so validation never touches the network.
Formats are checked (date-time with the broker's own parser, as jsonschema checks it only when an
optional package is installed).
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from jsonschema import FormatChecker
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_DIR = "data/schemas"
# URLs some schemas use for a shared schema besides its $id
ALIASES = {
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/Environment-schema.json": (
        "Environment-schema.json"
    ),
}


def _read(name: str) -> Any:
    return orjson.loads(resources.files("cityos.ingest").joinpath(SCHEMA_DIR, name).read_bytes())


def shipped() -> list[str]:
    """The entity types with a shipped schema."""
    folder = resources.files("cityos.ingest").joinpath(SCHEMA_DIR)
    return sorted(p.name.removesuffix(".schema.json") for p in folder.iterdir() if p.name.endswith(".schema.json"))


@cache
def _registry() -> Registry[Any]:
    folder = resources.files("cityos.ingest").joinpath(SCHEMA_DIR)
    registry: Registry[Any] = Registry()
    for path in folder.iterdir():
        if path.name.endswith(".json"):
            contents = orjson.loads(path.read_bytes())
            resource = Resource.from_contents(contents, default_specification=DRAFT202012)
            registry = registry.with_resource(contents.get("$id", path.name), resource)
    for url, name in ALIASES.items():
        contents = _read(name)
        registry = registry.with_resource(url, Resource.from_contents(contents, default_specification=DRAFT202012))
    return registry


def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats constrain strings only
    if "T" not in value.upper():
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def format_checker() -> FormatChecker:
    checker = FormatChecker()
    checker.checks("date-time")(_date_time)
    return checker


def load_validator(name_or_path: str, base: Path | None = None) -> Validator:
    """A validator for a shipped SDM type (e.g. "AirQualityObserved") or a schema.json file
    (relative to `base`); its references resolve against the shipped schemas."""
    if name_or_path in shipped():
        schema = _read(f"{name_or_path}.schema.json")
    else:
        path = Path(name_or_path)
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            schema = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(
                f"schema {name_or_path!r} is neither a shipped type ({', '.join(shipped())}) nor a JSON file: {exc}"
            ) from exc
    cls = validator_for(schema, default=validator_for({"$schema": "https://json-schema.org/draft/2020-12/schema"}))
    validator: Validator = cls(schema, registry=_registry(), format_checker=format_checker())
    return validator


def schema_errors(validator: Validator, document: dict[str, Any], limit: int = 3) -> str | None:
    """The schema violations of a keyValues document as one line (the first `limit`); None if valid."""
    errors = sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    parts = [f"{'/'.join(str(p) for p in e.absolute_path) or '(entity)'}: {e.message}" for e in errors[:limit]]
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more")
    return "; ".join(parts)
