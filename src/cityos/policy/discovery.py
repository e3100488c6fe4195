"""Discovery (/types, /attributes) for a caller with a restricted view: the same aggregates as the
store's (store/base.py EntityStore discovery methods), computed over the entities the caller can see
and the attributes it can read, so nothing it may not see is counted or named. The store's SQL
aggregates stay the path of an unrestricted caller (auth off, an admin without deny rules)."""

from __future__ import annotations

from collections.abc import Iterable

from cityos.entities.model import Entity
from cityos.store.base import AttributeStats, EntityTypeStats


class VisibleCatalog:
    """The discovery methods of the storage contract over a list of (visible, projected) entities."""

    def __init__(self, entities: Iterable[Entity]) -> None:
        self.entities = list(entities)

    async def entity_types(self, tenant: str) -> list[str]:
        return sorted({t for e in self.entities for t in e["type"]})

    async def entity_type_attributes(self, tenant: str) -> dict[str, list[str]]:
        result: dict[str, set[str]] = {}
        for entity in self.entities:
            for entity_type in entity["type"]:
                result.setdefault(entity_type, set()).update(entity["attrs"])
        return {t: sorted(attrs) for t, attrs in sorted(result.items())}

    async def entity_type_stats(self, tenant: str, entity_type: str) -> EntityTypeStats | None:
        chosen = [e for e in self.entities if entity_type in e["type"]]
        if not chosen:
            return None
        kinds: dict[str, set[str]] = {}
        for entity in chosen:
            for attr, instances in entity["attrs"].items():
                kinds.setdefault(attr, set()).update(i.get("type", "Property") for i in instances)
        return EntityTypeStats(entity_type, len(chosen), {a: sorted(k) for a, k in sorted(kinds.items())})

    async def attribute_names(self, tenant: str) -> list[str]:
        return sorted({a for e in self.entities for a in e["attrs"]})

    async def attribute_type_names(self, tenant: str) -> dict[str, list[str]]:
        result: dict[str, set[str]] = {}
        for entity in self.entities:
            for attr in entity["attrs"]:
                result.setdefault(attr, set()).update(entity["type"])
        return {a: sorted(types) for a, types in sorted(result.items())}

    async def attribute_stats(self, tenant: str, attr: str) -> AttributeStats | None:
        count = 0
        kinds: set[str] = set()
        types: set[str] = set()
        for entity in self.entities:
            instances = entity["attrs"].get(attr)
            if not instances:
                continue
            count += len(instances)
            kinds.update(i.get("type", "Property") for i in instances)
            types.update(entity["type"])
        if count == 0:
            return None
        return AttributeStats(attr, count, sorted(kinds), sorted(types))
