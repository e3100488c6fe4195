"""The conflicts of 4.3.6.3 and 5.9.2 between a registration being created (or updated) and what
exists already: another exclusive registration for the same entity and attributes, or a local
entity the registration would take over (Conflict, 409)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from cityos.errors import Conflict
from cityos.query.patterns import found
from cityos.registrations.matching import type_names
from cityos.registrations.model import NAME_LISTS
from cityos.subscriptions.model import Doc

PROXIED = ("exclusive", "redirect")


def mode_of(doc: Doc) -> str:
    return str(doc.get("mode", "inclusive"))


def _names(item: Doc) -> set[str] | None:
    """The attributes an information item covers; None: every attribute."""
    names = {n for name in NAME_LISTS for n in item.get(name, ())}
    return names or None


def _covers(item: Doc, entity_id: str, entity_types: set[str]) -> bool:
    entities = item.get("entities")
    if entities is None:
        return True
    for selector in entities:
        if "id" in selector:
            if selector["id"] == entity_id:
                return True
        elif "idPattern" in selector:
            if found(selector["idPattern"], entity_id) and type_names(selector["type"]) & entity_types:
                return True
        elif type_names(selector["type"]) & entity_types:
            return True
    return False


def _exclusive_pairs(doc: Doc) -> Iterator[tuple[str, set[str], set[str] | None]]:
    """(entity id, its types, attributes) of each entity an exclusive registration names."""
    for item in doc["information"]:
        for selector in item.get("entities", ()):
            if "id" in selector:
                yield selector["id"], type_names(selector["type"]), _names(item)


def check_registrations(doc: Doc, others: Iterable[Doc]) -> None:
    """4.3.6.3: once an exclusive registration exists, no other exclusive or redirect one may be
    made for the same entity id and attributes (redirect ones may overlap each other)."""
    if mode_of(doc) not in PROXIED:
        return
    for other in others:
        if other["id"] == doc["id"] or mode_of(other) != "exclusive":
            continue
        for entity_id, types, attrs in _exclusive_pairs(other):
            for item in doc["information"]:
                names = _names(item)
                if _covers(item, entity_id, types) and (attrs is None or names is None or attrs & names):
                    raise Conflict(
                        f"Conflict: the exclusive registration {other['id']} already provides attributes of {entity_id}"
                    )


def entity_ids(doc: Doc) -> list[str]:
    """The entity ids a proxied registration names (those a local entity may conflict with)."""
    if mode_of(doc) not in PROXIED:
        return []
    return list(dict.fromkeys(s["id"] for item in doc["information"] for s in item.get("entities", ()) if "id" in s))


def check_local(doc: Doc, entities: dict[str, dict[str, Any]]) -> None:
    """5.9.2: a redirect registration for an entity that exists locally, or an exclusive one for
    attributes a local entity has, is a Conflict. `entities`: the local entities of entity_ids(doc)."""
    mode = mode_of(doc)
    for item in doc["information"]:
        names = _names(item)
        for selector in item.get("entities", ()):
            entity = entities.get(selector.get("id", ""))
            if entity is None:
                continue
            if mode == "redirect":
                raise Conflict(f"Conflict: entity {entity['id']} exists locally; it cannot be redirected")
            held = set(entity.get("attrs", {}))
            if mode == "exclusive" and (names is None or held & names):
                raise Conflict(f"Conflict: entity {entity['id']} holds attributes this exclusive registration names")
