"""Device payloads, parsed without side effects: UltraLight 2.0 and JSON, as the FIWARE IoT Agents
read them.

UltraLight 2.0: `t|23.5|h|40`, several measure groups separated by `#`, each group optionally led by
an ISO 8601 timestamp (`2024-05-01T10:00:00Z|t|23.5`). JSON: an object of measures, or an array of
them. In both, a `TimeInstant` measure gives the observation time. A payload that breaks these rules
raises PayloadError and yields nothing: a device message is taken whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from cityos.entities.values import DEFAULT_MAX_NESTING_DEPTH, check_nesting
from cityos.errors import BadRequestData
from cityos.ingest.convert import ConversionError, utc_timestamp

UL = "ul"
JSON = "json"
FORMATS = (UL, JSON)
TIME_KEYS = frozenset({"TimeInstant", "timeInstant"})
MAX_GROUPS = 1000


class PayloadError(ValueError):
    """A malformed device payload; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class Measure:
    """One observation: raw values by object id, and the time the device gave (if any)."""

    values: dict[str, Any]
    timestamp: str | None = None


def detect_format(payload: bytes) -> str:
    """JSON if the payload looks like a JSON object or array, UltraLight otherwise."""
    return JSON if payload.lstrip()[:1] in (b"{", b"[") else UL


def parse_payload(payload: bytes, fmt: str | None = None) -> list[Measure]:
    """The measures of a device message in a format (None: detected from the payload)."""
    fmt = fmt or detect_format(payload)
    if fmt == UL:
        return parse_ultralight(payload)
    if fmt == JSON:
        return parse_json(payload)
    raise PayloadError(f"unknown payload format {fmt!r}")


def _text(payload: bytes) -> str:
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise PayloadError(f"the payload is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not text:
        raise PayloadError("the payload is empty")
    return text


def _timestamp(raw: Any) -> str:
    try:
        return utc_timestamp(raw, "TimeInstant")
    except ConversionError as exc:
        raise PayloadError(str(exc)) from exc


def _looks_like_time(field: str) -> bool:
    return len(field) >= 10 and field[:4].isdigit() and field[4:5] == "-"


def parse_ultralight(payload: bytes) -> list[Measure]:
    groups = _text(payload).split("#")
    if len(groups) > MAX_GROUPS:
        raise PayloadError(f"more than {MAX_GROUPS} measure groups")
    measures = []
    for number, group in enumerate(groups, start=1):
        fields = [field.strip() for field in group.strip().split("|")]
        timestamp = None
        if len(fields) % 2 == 1:
            if not _looks_like_time(fields[0]):
                raise PayloadError(f"measure group {number} has an odd number of fields: {group!r}")
            timestamp = _timestamp(fields.pop(0))
        values: dict[str, Any] = {}
        for key, value in zip(fields[::2], fields[1::2], strict=True):
            if not key:
                raise PayloadError(f"measure group {number} has an empty attribute name")
            if not value:
                raise PayloadError(f"measure group {number}: attribute {key!r} has no value")
            if key in TIME_KEYS:
                timestamp = _timestamp(value)
                continue
            if key in values:
                raise PayloadError(f"measure group {number} repeats attribute {key!r}")
            values[key] = value
        if not values:
            raise PayloadError(f"measure group {number} has no measures")
        measures.append(Measure(values, timestamp))
    return measures


def _loads(text: str) -> Any:
    """The JSON of a measure, nested no deeper than the max_nesting_depth default (a measure is
    a flat object of values; MQTT messages carry no settings)."""
    try:
        document = orjson.loads(text)
        check_nesting(document, DEFAULT_MAX_NESTING_DEPTH, "the payload")
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"the payload is not valid JSON: {exc}") from exc
    except BadRequestData as exc:
        raise PayloadError(exc.detail) from exc
    return document


def parse_json(payload: bytes) -> list[Measure]:
    document = _loads(_text(payload))
    items = document if isinstance(document, list) else [document]
    if not items or len(items) > MAX_GROUPS:
        raise PayloadError("a JSON payload needs 1 to 1000 measure objects")
    measures = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise PayloadError(f"measure {number} is not a JSON object")
        timestamp = None
        values: dict[str, Any] = {}
        for key, value in item.items():
            if key in TIME_KEYS:
                timestamp = _timestamp(value)
            elif value is None:
                raise PayloadError(f"measure {number}: attribute {key!r} is null")
            elif not key:
                raise PayloadError(f"measure {number} has an empty attribute name")
            else:
                values[key] = value
        if not values:
            raise PayloadError(f"measure {number} has no measures")
        measures.append(Measure(values, timestamp))
    return measures


def parse_single(payload: bytes, object_id: str, fmt: str | None) -> list[Measure]:
    """A single-attribute message (MQTT topic /{apikey}/{device}/attrs/{object_id}): the payload is
    the bare value, JSON-decoded when the format is JSON."""
    text = _text(payload)
    if fmt == JSON:
        value = _loads(text)
        if value is None:
            raise PayloadError(f"attribute {object_id!r} is null")
        return [Measure({object_id: value})]
    return [Measure({object_id: text})]
