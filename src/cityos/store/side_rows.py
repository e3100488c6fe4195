"""What both back-ends index beside each entity document, computed from the document alone: the
flattened values q compares, the bounding boxes of GeoProperty values, the entity's own expiry."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson

from cityos.entities.expiry import normalize
from cityos.entities.model import VALUE_MEMBER, Entity, Instance
from cityos.entities.values import identical


def geometry_bbox(geometry: Any) -> tuple[float, float, float, float] | None:
    """(min_x, max_x, min_y, max_y) of a GeoJSON geometry, for the box prefilter (R*Tree, GiST)."""
    if not isinstance(geometry, dict):
        return None
    coordinates = geometry.get("coordinates")
    if (
        isinstance(coordinates, list)
        and coordinates
        and isinstance(coordinates[0], int | float)
        and geometry.get("type") != "GeometryCollection"
    ):  # one position (a Point): what the walk below gives, without the walk
        x, y = float(coordinates[0]), float(coordinates[1])
        return x, x, y, y
    xs: list[float] = []
    ys: list[float] = []

    def walk(node: Any) -> None:
        if isinstance(node, list) and node and isinstance(node[0], int | float):
            xs.append(float(node[0]))
            ys.append(float(node[1]))
        elif isinstance(node, list):
            for child in node:
                walk(child)

    if not isinstance(geometry, dict):
        return None
    if geometry.get("type") == "GeometryCollection":
        for member in geometry.get("geometries", []):
            box = geometry_bbox(member)
            if box:
                xs.extend(box[:2])
                ys.extend(box[2:])
    else:
        walk(geometry.get("coordinates"))
    if not xs:
        return None
    return min(xs), max(xs), min(ys), max(ys)


def geo_values(entity: Entity) -> list[tuple[str, Any]]:
    return [
        (attr, instance["value"])
        for attr, instances in entity["attrs"].items()
        for instance in instances
        if instance.get("type") == "GeoProperty"
    ]


Boxed = list[tuple[str, tuple[float, float, float, float], Any]]


def geo_untouched(old: dict[str, list[Instance]], new: dict[str, list[Instance]]) -> bool:
    """Whether an update surely left the GeoProperty instances alone: every instance it replaced,
    added or removed is of another type (an instance the update left alone is the very object of the
    stored document: entities/update.py `_require` shares them). A quick answer, cheaper than
    geo_values of both; False sends the caller to compare the geo values."""
    added = False
    for attr, now in new.items():
        was = old.get(attr)
        if was is None or len(was) != len(now):
            added = added or was is None
            for instance in [*was, *now] if was else now:
                if instance.get("type") == "GeoProperty":
                    return False
            continue
        index = 0  # not zip(strict=True) nor enumerate: an object and a keyword parse per attribute
        for instance in now:
            before = was[index]
            index += 1  # noqa: SIM113
            if instance is not before and (
                instance.get("type") == "GeoProperty" or before.get("type") == "GeoProperty"
            ):
                return False
    if added or len(old) != len(new):  # else every attribute of `old` is in `new`: none removed
        return all(instance.get("type") != "GeoProperty" for attr in old if attr not in new for instance in old[attr])
    return True


def instance_boxes(entity: Entity) -> Boxed:
    """(attr, box, geometry) per GeoProperty instance with a box, each box computed once for both
    of the side rows made from it (geo_keys, geo_boxes)."""
    return [(attr, box, geometry) for attr, geometry in geo_values(entity) if (box := geometry_bbox(geometry))]


def geo_keys(boxed: Boxed) -> list[tuple[str, float, float, float, float, str | None]]:
    """(attr, min_x, max_x, min_y, max_y, shapes) per GeoProperty attribute with a box: the union
    of its instances' boxes, and the JSON array of their geometries, or None when the attribute is
    one 2D Point (then min_x and min_y are its coordinates, all an exact test of it needs)."""
    found: dict[str, list[tuple[tuple[float, float, float, float], Any]]] = {}
    for attr, box, geometry in boxed:
        found.setdefault(attr, []).append((box, geometry))
    rows = []
    for attr, instances in found.items():
        boxes = [box for box, _ in instances]
        shapes = None if len(instances) == 1 and _point_2d(instances[0][1]) else orjson.dumps([g for _, g in instances])
        rows.append(
            (
                attr,
                min(b[0] for b in boxes),
                max(b[1] for b in boxes),
                min(b[2] for b in boxes),
                max(b[3] for b in boxes),
                None if shapes is None else shapes.decode(),
            )
        )
    return rows


_SCALARS = (str, int, float)


def _same_rows(was: list[Instance], now: list[Instance]) -> bool:
    """Whether two instance lists surely index the same attr_values rows (attr_rows): the same types
    and datasetIds, and value members that are the same scalars, objects (of any content: outside a
    LanguageProperty an object's members are not indexed) or the same arrays to the byte (1, 1.0 and
    true index differently, so == alone would not do). A quick answer, False when unsure: a replace
    that only moved modifiedAt rewrites nothing."""
    if len(was) != len(now):
        return False
    index = 0  # the lengths are equal; not zip(strict=True) nor enumerate: an object and a keyword parse each
    for after in now:
        before = was[index]
        index += 1
        if before is after:  # left alone by the update (entities/update.py _require shares them)
            continue
        kind = after.get("type")
        member = VALUE_MEMBER.get(kind) if isinstance(kind, str) else None
        if member is None or before.get("type") != kind or before.get("datasetId") != after.get("datasetId"):
            return False
        value, previous = after.get(member), before.get(member)
        of = type(value)
        if of is not type(previous):
            return False
        if of in _SCALARS:
            if value != previous:
                return False
        elif of is dict and kind != "LanguageProperty":
            continue
        elif of is not list or value != previous or not identical(value, previous):
            return False
    return True


def changed_values(
    old: dict[str, list[Instance]], new: dict[str, list[Instance]]
) -> Iterator[tuple[str, list[tuple[str, float | None, str | None]], int]]:
    """(attr, its new attr_rows, how many it had) for each attribute of an update whose attr_values
    rows changed (an attribute removed: no rows), so that only those are rewritten (in place when
    there are as many as before); `old` and `new` are the `attrs` of the document before and after."""
    for attr in (*old, *(a for a in new if a not in old)):
        was, now = old.get(attr), new.get(attr)
        if was is now or (was and now and _same_rows(was, now)):
            continue
        rows = attr_rows(attr, now) if now else []
        previous = attr_rows(attr, was) if was else []
        if previous != rows:
            yield attr, rows, len(previous)


def geo_boxes(entity: Entity) -> list[tuple[str, tuple[float, float, float, float], bool]]:
    """(attr, box, point) per GeoProperty instance with a box; `point` when it is its attribute's
    only such instance and a 2D Point (PostgreSQL's entity_geo rows)."""
    rows = instance_boxes(entity)
    counts = Counter(attr for attr, _, _ in rows)
    return [(attr, box, counts[attr] == 1 and _point_2d(geometry)) for attr, box, geometry in rows]


def _point_2d(geometry: Any) -> bool:
    coordinates = geometry.get("coordinates")
    return (
        geometry.get("type") == "Point"
        and isinstance(coordinates, list)
        and len(coordinates) == 2
        and all(type(c) in (int, float) and math.isfinite(c) for c in coordinates)
    )


def own_expiry(entity: Entity) -> str | None:
    return normalize(entity["expiresAt"]) if entity.get("expiresAt") else None


def indexed_values(entity: Entity) -> Iterator[tuple[str, float | None, str | None]]:
    """(attr, number, text) rows for attr_values: the values q compares, as the evaluator sees them
    (each instance's value member, arrays and language maps flattened one level)."""
    for attr, instances in entity["attrs"].items():
        yield from attr_rows(attr, instances)


def attr_rows(attr: str, instances: list[Instance]) -> list[tuple[str, float | None, str | None]]:
    """The attr_values rows of one attribute's instances."""
    rows: list[tuple[str, float | None, str | None]] = []
    for instance in instances:
        kind = instance.get("type", "")
        member = VALUE_MEMBER.get(kind)
        if member is None or member not in instance:
            continue
        raw = instance[member]
        scalar = type(raw)
        if scalar is int or scalar is float:  # the usual case first
            rows.append((attr, float(raw), None))
            continue
        if scalar is str:
            rows.append((attr, None, raw))
            continue
        items = list(raw.values()) if kind == "LanguageProperty" else (raw,)
        for item in items:
            for value in item if isinstance(item, list) else (item,):
                if isinstance(value, bool):
                    continue
                if isinstance(value, int | float):
                    rows.append((attr, float(value), None))
                elif isinstance(value, str):
                    rows.append((attr, None, value))
    return rows
