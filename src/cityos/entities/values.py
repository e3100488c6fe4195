"""Validators for the leaf values of NGSI-LD: URIs, names, timestamps, GeoJSON geometries."""

from __future__ import annotations

import re
import time
import unicodedata
from datetime import UTC, datetime
from typing import Any

from cityos.clock import second_text
from cityos.errors import BadRequestData

URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`\x00-\x1f\x7f]*$")  # no control characters
FORBIDDEN_NAME_CHARS = frozenset("<>\"'=;()\\ \t\r\n")
# the largest integer a count parameter (offset, limit, lastN) may be: read exactly by every client
# (JavaScript) and by both stores (SQLite and PostgreSQL integers stop at 2**63 - 1)
MAX_SAFE_INTEGER = 2**53 - 1
DEFAULT_MAX_NESTING_DEPTH = 64  # the max_nesting_depth setting's default (orjson itself stops at 1024)
GEOMETRY_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"}
)


def now() -> str:
    """The current time as NGSI-LD writes it: ISO 8601, UTC, milliseconds (truncated, as
    `datetime.isoformat` does). Every write stamps one, so the date and time of day are formatted
    once per second, not per call (as audit/chain.py's utc_now)."""
    second, milli = divmod(time.time_ns() // 1_000_000, 1000)
    return (
        f"{second_text(second)}.{str(1000 + milli)[1:]}Z"  # the digits of milli, zero-padded: no format spec to parse
    )


# invisible or confusable code points that have no place in an identifier
INVISIBLE = frozenset({0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800})
BAD_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn", "Cs"})


def has_invisible(value: str) -> bool:
    if value.isascii():  # the usual identifier, checked in C (this runs for every name of every write)
        return False
    for char in value:
        code = ord(char)
        if code < 0x80:
            continue
        if code in INVISIBLE or unicodedata.category(char) in BAD_CATEGORIES:
            return True
        if 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF:  # variation selectors
            return True
    return False


# URIs that passed is_uri: a device's entity id comes with each of its measures (as _VALID_NAMES in model.py)
_VALID_URIS: set[str] = set()
_VALID_URIS_MAX = 16_384


def is_uri(value: Any) -> bool:
    if type(value) is str and value in _VALID_URIS:
        return True
    if not (isinstance(value, str) and URI_RE.match(value) is not None and not has_invisible(value)):
        return False
    if type(value) is str:
        if len(_VALID_URIS) >= _VALID_URIS_MAX:
            _VALID_URIS.clear()
        _VALID_URIS.add(value)
    return True


def require_uri(value: Any, what: str) -> str:
    if not is_uri(value):
        raise BadRequestData(f"{what} must be a URI, got {value!r}")
    if value == "urn:ngsi-ld:null":
        raise BadRequestData(f"{what} cannot be NGSI-LD Null")
    return str(value)


def check_name(name: Any, what: str) -> str:
    """Attribute and type names: a term (starting with a letter or _) or an IRI."""
    if not isinstance(name, str) or not name:
        raise BadRequestData(f"{what} must be a non-empty string")
    bad = FORBIDDEN_NAME_CHARS.intersection(name)
    if bad:
        raise BadRequestData(f"{what} {name!r} contains forbidden characters: {''.join(sorted(bad))!r}")
    if has_invisible(name):
        raise BadRequestData(f"{what} {name!r} contains invisible or control characters")
    if ":" not in name and not (name[0].isalpha() or name[0] == "_"):
        raise BadRequestData(f"{what} {name!r} must start with a letter")
    return name


def parse_datetime(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise BadRequestData(f"{what} must be an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadRequestData(f"{what} is not a valid ISO 8601 date-time: {value!r}") from exc
    if "T" not in value.upper():
        raise BadRequestData(f"{what} must contain a time: {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def check_datetime(value: Any, what: str) -> str:
    parse_datetime(value, what)
    return str(value)


def _position(value: Any, what: str) -> None:
    if (
        not isinstance(value, list)
        or not 2 <= len(value) <= 3
        or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in value)
    ):
        raise BadRequestData(f"{what}: a position must be an array of 2 or 3 numbers, got {value!r}")
    if not (-180 <= value[0] <= 180 and -90 <= value[1] <= 90):
        raise BadRequestData(f"{what}: position {value!r} is outside longitude/latitude bounds")


def _positions(value: Any, what: str, minimum: int) -> None:
    if not isinstance(value, list) or len(value) < minimum:
        raise BadRequestData(f"{what}: expected an array of at least {minimum} positions")
    for position in value:
        _position(position, what)


def _ring(value: Any, what: str) -> None:
    _positions(value, what, 4)
    if value[0] != value[-1]:
        raise BadRequestData(f"{what}: a polygon ring must be closed (first position equals last)")


def check_geometry(value: Any, what: str) -> dict[str, Any]:
    """Validate a GeoJSON geometry (RFC 7946) and return it."""
    if not isinstance(value, dict):
        raise BadRequestData(f"{what}: a GeoProperty value must be a GeoJSON geometry object")
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in GEOMETRY_TYPES:
        raise BadRequestData(f"{what}: unsupported GeoJSON geometry type {kind!r}")
    if kind == "GeometryCollection":
        members = value.get("geometries")
        if not isinstance(members, list):
            raise BadRequestData(f"{what}: a GeometryCollection needs a 'geometries' array")
        for member in members:
            check_geometry(member, what)
        return value
    coords = value.get("coordinates")
    label = f"{what} ({kind})"
    if kind == "Point":
        _position(coords, label)
    elif kind == "MultiPoint":
        _positions(coords, label, 1)
    elif kind == "LineString":
        _positions(coords, label, 2)
    elif kind == "MultiLineString":
        if not isinstance(coords, list) or not coords:
            raise BadRequestData(f"{label}: expected an array of line strings")
        for line in coords:
            _positions(line, label, 2)
    elif kind == "Polygon":
        if not isinstance(coords, list) or not coords:
            raise BadRequestData(f"{label}: expected an array of linear rings")
        for ring in coords:
            _ring(ring, label)
    else:  # MultiPolygon
        if not isinstance(coords, list) or not coords:
            raise BadRequestData(f"{label}: expected an array of polygons")
        for polygon in coords:
            if not isinstance(polygon, list) or not polygon:
                raise BadRequestData(f"{label}: expected an array of linear rings")
            for ring in polygon:
                _ring(ring, label)
    return value


CONTAINERS = (dict, list)


def check_nesting(value: Any, limit: int, what: str = "the request body") -> None:
    """400 for JSON nested deeper than `limit` arrays/objects (the max_nesting_depth setting): the
    code that walks values recursively (expansion, rendering, comparison) must never reach Python's
    recursion limit. Iterative, one level at a time (a list comprehension per container is the
    cheapest walk in Python: a 1,000-entity batch is checked in about 10 ms), so the check itself
    cannot reach it."""
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise BadRequestData(f"{what} nests arrays and objects deeper than {limit} levels (max_nesting_depth)")
        below: list[Any] = []
        for item in level:
            below += [
                child for child in (item.values() if isinstance(item, dict) else item) if isinstance(child, CONTAINERS)
            ]
        level = below


def identical(a: object, b: object) -> bool:
    """JSON equality, which Python's == is not: 1, 1.0 and true are three values (1 == True == 1.0).
    Hot callers ask == first (in C) and this only when it said equal."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(identical(value, b[key]) for key, value in a.items())
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    return a == b
