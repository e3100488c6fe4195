"""What both back-ends index beside each entity document, computed from the document alone: the
flattened values q compares, the bounding boxes of GeoProperty values, the entity's own expiry."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from cityos.entities.expiry import normalize
from cityos.entities.model import VALUE_MEMBER, Entity, Instance
from cityos.entities.values import identical

_NUMBERS = (int, float)  # not `int | float`: that makes a union object at each call (1 K instructions)


def geometry_bbox(geometry: Any) -> tuple[float, float, float, float] | None:
    """(min_x, max_x, min_y, max_y) of a GeoJSON geometry, for the box prefilter (R*Tree, GiST)."""
    if not isinstance(geometry, dict):
        return None
    coordinates = geometry.get("coordinates")
    if (
        isinstance(coordinates, list)
        and coordinates
        and isinstance(coordinates[0], _NUMBERS)
        and geometry.get("type") != "GeometryCollection"
    ):  # one position (a Point): what the walk below gives, without the walk
        x, y = float(coordinates[0]), float(coordinates[1])
        return x, x, y, y
    xs: list[float] = []
    ys: list[float] = []

    def walk(node: Any) -> None:
        if isinstance(node, list) and node and isinstance(node[0], _NUMBERS):
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


# geo_untouched's last answer and the two `attrs` it was for: the store's side rows ask it of a change,
# then the map tiles' listener (mapdata/changes.py) of the same two dicts, which nothing changes after
# (a change's documents are read-only); one tuple, replaced whole, so a thread reads all of it or none
_last_geo: tuple[object, object, bool] = (None, None, False)


def ordered(relisted: tuple[str, ...], first: dict[str, Any], second: dict[str, Any]) -> Sequence[str]:
    """The names of `relisted` (EntityChange.relisted) in the order of `first`'s keys, then of
    `second`'s that `first` lacks: the order of a walk of every attribute, without the walk when
    there is one name (a sensor's reading)."""
    if len(relisted) < 2:
        return relisted
    order = {name: index for index, name in enumerate([*first, *(name for name in second if name not in first)])}
    return sorted(relisted, key=lambda name: order.get(name, len(order)))


def geo_untouched(
    old: dict[str, list[Instance]], new: dict[str, list[Instance]], relisted: tuple[str, ...] | None = None
) -> bool:
    """Whether an update surely left the GeoProperty instances alone: every instance it replaced,
    added or removed is of another type (an instance the update left alone is the very object of the
    stored document: entities/update.py `_require` shares them). A quick answer, cheaper than
    geo_values of both; False sends the caller to compare the geo values. `relisted`: the only
    attributes whose lists may differ (EntityChange.relisted). Asked twice in a row of the same two
    dicts, the second answer is the first's."""
    global _last_geo
    last = _last_geo
    if last[0] is old and last[1] is new:
        return last[2]
    answer = _geo_untouched(old, new) if relisted is None else _geo_relisted(old, new, relisted)
    _last_geo = (old, new, answer)
    return answer


def _geo_relisted(old: dict[str, list[Instance]], new: dict[str, list[Instance]], relisted: tuple[str, ...]) -> bool:
    """_geo_untouched given the attributes whose lists may differ: every other one is the same list."""
    for attr in relisted:
        was, now = old.get(attr) or [], new.get(attr) or []
        if was is now:
            continue
        if len(was) != len(now):
            if any(instance.get("type") == "GeoProperty" for instance in [*was, *now]):
                return False
            continue
        for index, instance in enumerate(now):
            before = was[index]
            if instance is not before and (
                instance.get("type") == "GeoProperty" or before.get("type") == "GeoProperty"
            ):
                return False
    return True


def _geo_untouched(old: dict[str, list[Instance]], new: dict[str, list[Instance]]) -> bool:
    added = False
    for attr, now in new.items():
        was = old.get(attr)
        if was is now:  # the very list of `before` (entities/update.py `_require`): left alone
            continue
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


def _rewritten(
    attr: str, was: list[Instance] | None, now: list[Instance] | None
) -> tuple[str, list[tuple[str, float | None, str | None]], int] | None:
    """(attr, its new attr_rows, how many it had) when an attribute's attr_values rows changed."""
    if was is now or (was and now and _same_rows(was, now)):
        return None
    rows = attr_rows(attr, now) if now else []
    previous = attr_rows(attr, was) if was else []
    return (attr, rows, len(previous)) if previous != rows else None


def changed_values(
    old: dict[str, list[Instance]], new: dict[str, list[Instance]], relisted: tuple[str, ...] | None = None
) -> Iterator[tuple[str, list[tuple[str, float | None, str | None]], int]]:
    """(attr, its new attr_rows, how many it had) for each attribute of an update whose attr_values
    rows changed (an attribute removed: no rows), so that only those are rewritten (in place when
    there are as many as before); `old` and `new` are the `attrs` of the document before and after,
    `relisted` the only attributes whose lists may differ (EntityChange.relisted)."""
    if relisted is not None:
        for attr in ordered(relisted, old, new):
            found = _rewritten(attr, old.get(attr), new.get(attr))
            if found is not None:
                yield found
        return
    for attr, was in old.items():  # one lookup an attribute, no tuple of every name: most are left alone
        now = new.get(attr)
        if was is now:
            continue
        found = _rewritten(attr, was, now)
        if found is not None:
            yield found
    if not new.keys() <= old.keys():  # some attribute is new (a set comparison in C)
        for attr, now in new.items():
            if attr not in old and now:  # new: no rows before
                rows = attr_rows(attr, now)
                if rows:
                    yield attr, rows, 0


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
                if isinstance(value, _NUMBERS):
                    rows.append((attr, float(value), None))
                elif isinstance(value, str):
                    rows.append((attr, None, value))
    return rows
