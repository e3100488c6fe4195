"""Tabular open data: a CSV file and a YAML mapping in, NGSI-LD entities out, streamed in batches.

The mapping names the entity type, an id template over columns (or a constant id, for a file of
one station), each attribute's column, type and unit, an optional time column or columns (becomes
observedAt), an optional lat/lon pair (becomes location), the cells that mean "no value", static
attributes and an optional Smart Data Models schema to validate against:

    type: AirQualityObserved
    id: "urn:ngsi-ld:AirQualityObserved:Madrid-{station}"
    time: {column: measured, format: "%Y-%m-%d %H:%M", timezone: Europe/Madrid}
    # or, from several columns joined by one space: {columns: [year, month, day, hour], format: "%Y %m %d %H"}
    null_values: [NA, "-"]
    location: {lat: latitude, lon: longitude}
    attributes:
      no2: {column: NO2, type: Number, unit: GQ}
      name: station_name
    static: {dataProvider: City of Example}
    schema: AirQualityObserved

A row that cannot be mapped, fails the schema or is refused by the store goes to the reject file
with its line number and the reason; every other row is loaded.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from string import Formatter
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from cityos.ingest.convert import ConversionError, attribute, convert_value, format_utc, value_kind
from cityos.ingest.schemas import load_validator, schema_errors
from cityos.ingest.sink import Body, Sink

Progress = Callable[[int, int], None]
EXAMPLES = 20  # rejects whose reasons the report keeps (the import run's record: ingest/runs.py)


class MappingError(ValueError):
    """The mapping file is invalid; the message names the key."""


class RowError(ValueError):
    """A row cannot become an entity; the message is the reject reason."""


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    name: str  # the attribute
    column: str
    kind: str = "auto"
    unit: str | None = None
    format: str | None = None  # strptime format of a datetime column
    required: bool = False


@dataclass
class CsvMapping:
    entity_type: str
    id_template: str
    attributes: list[ColumnMapping]
    time_columns: tuple[str, ...] = ()
    time_format: str | None = None
    timezone: ZoneInfo | None = None
    lat: str | None = None
    lon: str | None = None
    static: dict[str, Any] = field(default_factory=dict)
    schema: str | None = None
    null_values: frozenset[str] = frozenset({""})
    delimiter: str = ","
    encoding: str = "utf-8-sig"
    batch_size: int = 500
    base: Path | None = None  # folder of the mapping file, for relative schema paths

    def columns(self) -> set[str]:
        used = {a.column for a in self.attributes} | set(_template_fields(self.id_template))
        return used | set(self.time_columns) | {c for c in (self.lat, self.lon) if c}


def _template(template: str) -> list[tuple[str, str | None]]:
    """(constant text, column or None) pieces of an id template; `{{` and `}}` are braces. The text
    between braces is a column name as written (`{PM2.5}` is the column PM2.5)."""
    try:
        pieces = list(Formatter().parse(template))
    except ValueError as exc:
        raise MappingError(f"id: {exc} in {template!r} (write {{{{ and }}}} for braces)") from exc
    for _, name, spec, conversion in pieces:
        if name is not None and (spec or conversion):
            raise MappingError(f"id: {{{name}{'!' + conversion if conversion else ''}:{spec}}} is not a column name")
        if name == "":
            raise MappingError("id: {} names no column")
    return [(text, name) for text, name, _, _ in pieces]


def _template_fields(template: str) -> list[str]:
    return [name for _, name in _template(template) if name is not None]


def _str(raw: dict[str, Any], key: str, *, default: str | None = None) -> str | None:
    value = raw.get(key, default)
    if value is not None and not isinstance(value, str):
        raise MappingError(f"{key} must be a string")
    return value


def load_mapping(path: Path) -> CsvMapping:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MappingError(f"cannot read the mapping {path}: {exc}") from exc
    return parse_mapping(raw, base=path.parent)


def parse_mapping(raw: Any, *, base: Path | None = None) -> CsvMapping:
    if not isinstance(raw, dict):
        raise MappingError("the mapping must be a YAML object")
    entity_type, id_template = _str(raw, "type"), _str(raw, "id")
    if not entity_type or not id_template:
        raise MappingError(
            "the mapping needs `type` (the entity type) and `id` (a template such as urn:ngsi-ld:T:{col})"
        )
    _template(id_template)  # a constant id is allowed: every row then updates that one entity
    attributes = []
    for name, spec in (raw.get("attributes") or {}).items():
        if isinstance(spec, str):
            spec = {"column": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("column", name), str):
            raise MappingError(f"attributes.{name} must be a column name or {{column, type, unit}}")
        try:
            kind = value_kind(str(spec.get("type", "")))
        except ValueError as exc:
            raise MappingError(f"attributes.{name}: {exc}") from exc
        attributes.append(
            ColumnMapping(
                name,
                spec.get("column", name),
                kind,
                _str(spec, "unit"),
                _str(spec, "format"),
                bool(spec.get("required")),
            )
        )
    time_spec = raw.get("time")
    if isinstance(time_spec, str):
        time_spec = {"column": time_spec}
    if time_spec is not None and not isinstance(time_spec, dict):
        raise MappingError("time must be a column name or {column or columns, format, timezone}")
    time_spec = time_spec or {}
    time_columns = _time_columns(time_spec)
    zone = None
    if time_spec.get("timezone"):
        try:
            zone = ZoneInfo(str(time_spec["timezone"]))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise MappingError(f"time.timezone: unknown time zone {time_spec['timezone']!r}") from exc
    location = raw.get("location") or {}
    if not isinstance(location, dict) or bool(location.get("lat")) != bool(location.get("lon")):
        raise MappingError("location must be {lat: COLUMN, lon: COLUMN}")
    nulls = raw.get("null_values", [])
    nulls = [nulls] if isinstance(nulls, str | int | float) else nulls
    static = raw.get("static") or {}
    if not isinstance(nulls, list) or not isinstance(static, dict):
        raise MappingError("null_values must be a list (or one value) and static an object")
    mapping = CsvMapping(
        entity_type=entity_type,
        id_template=id_template,
        attributes=attributes,
        time_columns=time_columns,
        time_format=_str(time_spec, "format"),
        timezone=zone,
        lat=_str(location, "lat"),
        lon=_str(location, "lon"),
        static=static,
        schema=_str(raw, "schema"),
        null_values=frozenset({"", *(str(v).strip() for v in nulls)}),  # an empty cell never has a value
        delimiter=_str(raw, "delimiter", default=",") or ",",
        encoding=_str(raw, "encoding", default="utf-8-sig") or "utf-8-sig",
        batch_size=int(raw.get("batch_size", 500)),
        base=base,
    )
    if mapping.batch_size < 1:
        raise MappingError("batch_size must be positive")
    if not attributes and not mapping.lat:
        raise MappingError("map at least one attribute (attributes:) or a location")
    return mapping


def _time_columns(spec: dict[str, Any]) -> tuple[str, ...]:
    """`column: c` or `columns: [c1, c2, ...]` (their cells joined by one space, then parsed)."""
    column, columns = spec.get("column"), spec.get("columns")
    if column is not None and columns is not None:
        raise MappingError("time: give `column` or `columns`, not both")
    if columns is None:
        return (_str(spec, "column") or "",) if column else ()
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
        raise MappingError("time.columns must be a list of column names, e.g. [year, month, day, hour]")
    if not spec.get("format"):
        raise MappingError('time.columns needs a format for the joined cells, e.g. "%Y %m %d %H"')
    return tuple(columns)


def _parse_time(raw: str, fmt: str | None, zone: ZoneInfo | None, what: str) -> str:
    try:
        moment = datetime.strptime(raw, fmt) if fmt else datetime.fromisoformat(raw)
    except ValueError as exc:
        raise RowError(f"{what} {raw!r} is not a date-time{f' in the format {fmt}' if fmt else ''}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone or UTC)
    return format_utc(moment)


def map_row(mapping: CsvMapping, row: dict[str, str]) -> tuple[Body, dict[str, Any]]:
    """(the normalized entity body, its keyValues form for schema validation) of one row."""

    def cell(column: str) -> str | None:
        value = row.get(column)
        return None if value is None or value.strip() in mapping.null_values else value.strip()

    pieces = []
    for text, name in _template(mapping.id_template):
        pieces.append(text)
        if name is not None:
            value = cell(name)
            if value is None:
                raise RowError(f"the id column {name} is empty")
            pieces.append(value)
    entity_id = "".join(pieces).replace(" ", "%20")
    body: Body = {"id": entity_id, "type": mapping.entity_type}
    plain: dict[str, Any] = {"id": entity_id, "type": mapping.entity_type}
    observed = None
    if mapping.time_columns:
        parts = [cell(name) for name in mapping.time_columns]
        empty = [name for name, part in zip(mapping.time_columns, parts, strict=True) if part is None]
        if empty:
            raise RowError(f"the time column {empty[0]} is empty")
        what = "/".join(mapping.time_columns)
        observed = _parse_time(" ".join(p for p in parts if p), mapping.time_format, mapping.timezone, what)
    for column in mapping.attributes:
        raw = cell(column.column)
        if raw is None:
            if column.required:
                raise RowError(f"{column.column} is empty")
            continue
        if column.kind == "datetime" and column.format:
            kind, value = "Property", _parse_time(raw, column.format, mapping.timezone, column.column)
        else:
            try:
                kind, value = convert_value(raw, column.kind, column.column)
            except ConversionError as exc:
                raise RowError(str(exc)) from exc
        body[column.name] = attribute(kind, value, observed_at=observed, unit_code=column.unit)
        plain[column.name] = value
    if mapping.lat and mapping.lon:
        lat, lon = cell(mapping.lat), cell(mapping.lon)
        if lat is None or lon is None:
            raise RowError("the location columns are empty")
        try:
            _, point = convert_value(f"{lat},{lon}", "point", f"{mapping.lat}/{mapping.lon}")
        except ConversionError as exc:
            raise RowError(str(exc)) from exc
        body["location"] = attribute("GeoProperty", point, observed_at=observed)
        plain["location"] = point
    for name, value in mapping.static.items():
        body.setdefault(name, value)
        plain.setdefault(name, value.get("value", value) if isinstance(value, dict) else value)
    return body, plain


@dataclass
class CsvReport:
    rows: int = 0
    loaded: int = 0
    rejected: int = 0
    entities: set[str] = field(default_factory=set)
    seconds: float = 0.0
    rejects_path: Path | None = None
    examples: list[tuple[int, str]] = field(default_factory=list)  # (line, reason) of the first rejects

    def summary(self) -> str:
        text = (
            f"{self.rows} rows read, {self.loaded} loaded into {len(self.entities)} entities, "
            f"{self.rejected} rejected, in {self.seconds:.1f} s"
        )
        if self.rejected and self.rejects_path is not None:
            text += f"; rejected rows with their reasons are in {self.rejects_path}"
        return text


def _lines(path: Path, encoding: str, progress: Progress | None) -> Iterator[str]:
    """The file's text lines, reporting bytes read so far (the progress bar's measure)."""
    total = path.stat().st_size
    done = 0
    last = 0.0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle):
            done += len(raw)
            yield raw.decode(encoding if number == 0 else encoding.removesuffix("-sig"))
            if progress is not None and (done == total or time.monotonic() - last > 0.1):
                last = time.monotonic()
                progress(done, total)
    if progress is not None:
        progress(total, total)


class _Rejects:
    """The reject file, opened on the first rejected row."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path = path
        self.header = header
        self._writer: Any = None
        self._handle: Any = None

    def write(self, rows: list[tuple[int, str, dict[str, str]]]) -> None:
        if not rows:
            return
        if self._writer is None:
            self._handle = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._handle)
            self._writer.writerow(["line", "reason", *self.header])
        for line, reason, row in sorted(rows, key=lambda r: r[0]):
            self._writer.writerow([line, reason, *(row.get(c, "") for c in self.header)])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


async def import_csv(
    path: Path,
    mapping: CsvMapping,
    sink: Sink,
    tenant: str = "",
    *,
    rejects_path: Path,
    progress: Progress | None = None,
) -> CsvReport:
    """Load every good row, in batches through the sink; write the bad ones to rejects_path."""
    started = time.monotonic()
    validator = load_validator(mapping.schema, mapping.base) if mapping.schema else None
    reader = csv.DictReader(_lines(path, mapping.encoding, progress), delimiter=mapping.delimiter)
    header = [c.strip() for c in reader.fieldnames or []]
    missing = sorted(mapping.columns() - set(header))
    if missing:
        raise MappingError(f"{path.name} has no column {', '.join(missing)} (its columns: {', '.join(header)})")
    report = CsvReport(rejects_path=rejects_path)
    rejects = _Rejects(rejects_path, header)
    batch: list[tuple[int, dict[str, str], Body]] = []
    bad: list[tuple[int, str, dict[str, str]]] = []

    async def flush() -> None:
        results = await sink.upsert(tenant, [body for _, _, body in batch]) if batch else []
        for (line, row, _), result in zip(batch, results, strict=True):
            if result.error is None:
                report.loaded += 1
                report.entities.add(result.entity_id)
            else:
                bad.append((line, f"refused by the broker: {result.error}", row))
        report.rejected += len(bad)
        report.examples += [
            (line, reason)
            for line, reason, _ in sorted(bad, key=lambda r: r[0])[: max(0, EXAMPLES - len(report.examples))]
        ]
        rejects.write(bad)
        batch.clear()
        bad.clear()

    try:
        for row in reader:
            report.rows += 1
            line = reader.line_num
            clean = {k.strip(): v for k, v in row.items() if k is not None}
            try:
                if None in row:
                    raise RowError("the row has more fields than the header")
                body, plain = map_row(mapping, clean)
                problem = schema_errors(validator, plain) if validator is not None else None
                if problem is not None:
                    raise RowError(f"schema {mapping.schema}: {problem}")
            except RowError as exc:
                bad.append((line, str(exc), clean))
            else:
                batch.append((line, clean, body))
            if len(batch) + len(bad) >= mapping.batch_size:
                await flush()
        await flush()
    finally:
        rejects.close()
    report.seconds = time.monotonic() - started
    return report
