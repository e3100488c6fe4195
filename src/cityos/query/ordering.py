"""orderBy (spec 4.23): sort query results by attributes, metadata, id/type or distance.

    orderBy := item ("," item)*
    item    := path (";asc" | ";desc" | ";dist-asc" | ";dist-desc")?

Values of different kinds order numbers < booleans < strings < absent; `collation` names a
BCP 47 locale for strings (`und` folds accents, `de-u-co-phonebk` expands umlauts).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cmp_to_key
from typing import Any

from cityos.entities.model import VALUE_MEMBER, Entity
from cityos.entities.values import check_name
from cityos.errors import BadRequestData

BCP47_RE = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")
ITEM_RE = re.compile(r"^(?P<path>[^;\[\]]+)(?P<keys>(\[[^\[\]]+\])*)(;(?P<dir>asc|desc|dist-asc|dist-desc))?$")
SYSTEM = ("createdAt", "modifiedAt", "deletedAt", "observedAt", "unitCode", "datasetId")
PHONEBOOK = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"})


@dataclass(frozen=True)
class OrderItem:
    name: str
    segments: tuple[str, ...]
    keys: tuple[str, ...]
    descending: bool
    distance: bool


def parse_order_by(text: str) -> tuple[OrderItem, ...]:
    if not text or len(text) > 1024:
        raise BadRequestData("orderBy must be between 1 and 1024 characters")
    items = []
    for raw in text.split(","):
        match = ITEM_RE.match(raw.strip())
        if match is None:
            raise BadRequestData(f"orderBy: cannot read {raw!r}")
        name, *segments = match["path"].split(".")
        check_name(name, "orderBy attribute")
        keys = tuple(re.findall(r"\[([^\[\]]+)\]", match["keys"] or ""))
        direction = match["dir"] or "asc"
        items.append(OrderItem(name, tuple(segments), keys, direction.endswith("desc"), direction.startswith("dist")))
    return tuple(items)


def check_collation(tag: str | None) -> str | None:
    if tag is not None and not BCP47_RE.match(tag):
        raise BadRequestData(f"collation {tag!r} is not a BCP 47 language tag")
    return tag


def _collate(text: str, collation: str | None) -> Any:
    if collation is None:
        return text
    if "co-phonebk" in collation.lower():
        text = text.translate(PHONEBOOK)
    folded = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    return (folded.casefold(), text)


def _value(entity: Entity, item: OrderItem, expand: Callable[[str], str]) -> Any:
    if item.name in ("id", "type") and not item.segments:
        value: Any = entity["id"] if item.name == "id" else entity["type"][0]
        return value
    if item.name in ("createdAt", "modifiedAt") and not item.segments:
        return entity.get(item.name)
    instances = entity["attrs"].get(expand(item.name))
    if not instances:
        return None
    node: Any = next((i for i in instances if "datasetId" not in i), instances[0])
    for segment in item.segments:
        if not isinstance(node, dict):
            return None
        if segment in SYSTEM:
            return node.get(segment)
        node = node.get(expand(segment))
    if not isinstance(node, dict):
        return None
    member = VALUE_MEMBER.get(node.get("type", ""), "value")
    value = node.get(member)
    for key in item.keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _rank(value: Any) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float):
        return 0
    if isinstance(value, str):
        return 2
    return 3 if value is None else 2


def sorter(
    items: tuple[OrderItem, ...],
    expand: Callable[[str], str],
    *,
    collation: str | None = None,
    distance: Callable[[Entity, str], float | None] | None = None,
) -> Callable[[list[Entity]], list[Entity]]:
    """A function that sorts entities by the orderBy items (stable; absent values last)."""
    if any(item.distance for item in items) and distance is None:
        raise BadRequestData("ordering by distance needs a reference point (orderFrom)")

    def value_of(entity: Entity, item: OrderItem) -> Any:
        if item.distance:
            assert distance is not None
            return distance(entity, expand(item.name))
        value = _value(entity, item, expand)
        return _collate(value, collation) if isinstance(value, str) else value

    def compare(a: Entity, b: Entity) -> int:
        for item in items:
            left, right = value_of(a, item), value_of(b, item)
            rank_left, rank_right = _rank(left), _rank(right)
            if rank_left != rank_right:
                return rank_left - rank_right  # absent values stay last in both directions
            if left is None or left == right:
                continue
            try:
                order = -1 if left < right else 1
            except TypeError:
                order = -1 if str(left) < str(right) else 1
            return -order if item.descending else order
        return 0

    return lambda entities: sorted(entities, key=cmp_to_key(compare))
