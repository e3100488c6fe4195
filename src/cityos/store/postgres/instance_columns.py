"""The PostgreSQL history layout's columns of an attribute instance, computed once per distinct
instance (issue 15, sixth pass).

A batch upsert of 1,000 refreshed entities writes some 9,000 instances; about half are the same
instance member for member (an unchanged description, unit or category with the batch's one
createdAt and modifiedAt), and nearly every timestamp text repeats. Profiled, `columns` (five
timestamp parses, two JSON encodings per instance) and a `uuid.UUID` per instanceId were 36% of
the event loop's time of such a batch. Both are pure functions of their input, so the columns are
kept by the instance's JSON text (bounded, shared by threads: a dict's get and set are atomic, and
the values are immutable tuples) and the timestamp parses by their text (lru_cache)."""

from __future__ import annotations

import functools
import os
from typing import Any

import orjson

from cityos.entities.model import VALUE_MEMBER, Instance
from cityos.entities.values import parse_datetime
from cityos.store.postgres.temporal_partitions import retained
from cityos.store.sqlite_history import TIME_KEYS
from cityos.temporal.query import to_micros

# (dataset, (kind, the five times, number, JSON text, document), the partition key)
Columns = tuple[str, tuple[Any, ...], int]
KEPT = 4096  # distinct instances kept (about 2 MB); all dropped when full
_kept: dict[bytes, Columns] = {}


@functools.lru_cache(maxsize=4096)
def _micros_of(text: str) -> int:
    return to_micros(parse_datetime(text, "timestamp"))


def _micros(value: Any) -> int | None:
    return _micros_of(value) if isinstance(value, str) else None


def columns(instance: Instance) -> Columns:
    """(dataset, (kind, the five times in microseconds, number, JSON text, document as str), the
    partition key: temporal_partitions.retained) of an instance; its instanceId has its own column
    and is not in the document."""
    key = orjson.dumps(instance)
    found = _kept.get(key)
    if found is None:
        found = _columns(instance, key)
        if len(_kept) >= KEPT:
            _kept.clear()
        _kept[key] = found
    return found


def _columns(instance: Instance, text: bytes) -> Columns:
    doc = {k: v for k, v in instance.items() if k != "instanceId"} if "instanceId" in instance else instance
    kind = str(doc.get("type") or "Property")
    member = VALUE_MEMBER.get(kind, "value")
    value = doc.get(member)
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    vtext = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode() if member in doc else None
    times = tuple(_micros(doc.get(key)) for key in TIME_KEYS)
    document = (text if doc is instance else orjson.dumps(doc)).decode()
    return str(doc.get("datasetId") or ""), (kind, *times, number, vtext, document), retained(*times[:4])


def new_instance_ids(count: int) -> list[str]:
    """`count` instanceIds as new_instance_id makes them, from one os.urandom call (a batch's
    history has some 10,000 instances: one call each was ~1.8 us of an instance's ~6)."""
    digits = os.urandom(16 * count).hex()
    ids = []
    for at in range(0, 32 * count, 32):
        h = digits[at : at + 32]
        # the version nibble 4, the variant bits 10 (new_instance_id's masks, on hex digits)
        ids.append(f"urn:ngsi-ld:Instance:{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}")
    return ids


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_instance_id() -> str:
    """A random (version 4) UUID instanceId, formatted without building a uuid.UUID."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"urn:ngsi-ld:Instance:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
