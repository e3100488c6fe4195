"""Combining the local answer with the sources' answers (spec 4.3.6.3, annex D).

Entities are merged by id: types united, attributes united; for an attribute that several
answers hold, instances are matched by datasetId and the most recent one (observedAt, then
modifiedAt) wins; when neither carries a time, the answer ranked first keeps it (the local
store before inclusive sources before auxiliary ones, an exclusive source over the local store
for the attributes it holds).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Entity = dict[str, Any]
CORE = frozenset({"id", "type", "@id", "@type", "@context", "scope", "createdAt", "modifiedAt", "deletedAt"})


def _instances(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _stamp(instance: Any) -> str:
    if not isinstance(instance, dict):
        return ""
    return str(instance.get("observedAt") or instance.get("modifiedAt") or "")


def merge_attribute(first: Any, second: Any) -> Any:
    """`first` and `second` are one attribute from two answers; `first` wins a tie."""
    by_dataset: dict[Any, Any] = {}
    for instance in _instances(first):
        by_dataset[instance.get("datasetId") if isinstance(instance, dict) else None] = instance
    for instance in _instances(second):
        key = instance.get("datasetId") if isinstance(instance, dict) else None
        held = by_dataset.get(key)
        if held is None or _stamp(instance) > _stamp(held):
            by_dataset[key] = instance
    merged = list(by_dataset.values())
    return merged[0] if len(merged) == 1 else merged


def _types(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value] if value is not None else []


def merge_entity(first: Entity, second: Entity) -> Entity:
    """Two renderings of one entity as one; `first` ranks higher."""
    out = dict(first)
    types = _types(first.get("type"))
    for kind in _types(second.get("type")):
        if kind not in types:
            types.append(kind)
    if types:
        out["type"] = types[0] if len(types) == 1 else types
    for name, value in second.items():
        if name in CORE:
            if name not in out and name != "@context":
                out[name] = value
            continue
        out[name] = value if name not in out else merge_attribute(out[name], value)
    return out


def merge_lists(ranked: Iterable[Iterable[Entity]]) -> list[Entity]:
    """Entity arrays (highest rank first) as one, in first-seen order, merged by id."""
    by_id: dict[str, Entity] = {}
    for entities in ranked:
        for entity in entities:
            if not isinstance(entity, dict) or not isinstance(entity.get("id"), str):
                continue
            entity = {k: v for k, v in entity.items() if k != "@context"}
            held = by_id.get(entity["id"])
            by_id[entity["id"]] = entity if held is None else merge_entity(held, entity)
    return list(by_id.values())


def drop_attrs(entity: Entity, names: Iterable[str]) -> Entity:
    """The entity without attributes another answer owns (an exclusive registration's)."""
    gone = set(names)
    return {k: v for k, v in entity.items() if k not in gone}


def merge_names(ranked: Iterable[Iterable[Any]]) -> list[Any]:
    """Type or attribute lists (discovery) united, first-seen order."""
    seen: dict[str, Any] = {}
    for items in ranked:
        for item in items:
            key = item if isinstance(item, str) else str(item.get("id", item)) if isinstance(item, dict) else None
            if key is not None and key not in seen:
                seen[key] = item
    return list(seen.values())


NAME_LISTS = ("typeList", "attributeList", "attributeNames", "typeNames")


def _union(first: list[Any], second: list[Any]) -> list[Any]:
    return [*first, *(item for item in second if item not in first)]


def merge_catalogue(ranked: Iterable[Any]) -> Any:
    """Discovery answers (5.7.5-5.7.10) as one: a list body (EntityTypeList, AttributeList) unites
    its names; a details array unites its items by id (and their name lists); a single
    EntityTypeInfo or Attribute is the first answer that has one. None: no answer had anything."""
    out: Any = None
    for body in ranked:
        if body is None:
            continue
        if out is None:
            out = body
        elif isinstance(out, list) and isinstance(body, list):
            by_id = {item.get("id"): item for item in out if isinstance(item, dict)}
            for item in body:
                if not isinstance(item, dict):
                    continue
                held = by_id.get(item.get("id"))
                if held is None:
                    out.append(item)
                    by_id[item.get("id")] = item
                    continue
                for name in NAME_LISTS:
                    if isinstance(held.get(name), list) and isinstance(item.get(name), list):
                        held[name] = _union(held[name], item[name])
        elif isinstance(out, dict) and isinstance(body, dict):
            for name in ("typeList", "attributeList"):
                if isinstance(out.get(name), list) and isinstance(body.get(name), list):
                    out[name] = _union(out[name], body[name])
    return out
