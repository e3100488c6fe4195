"""Update semantics of NGSI-LD as pure functions: (current entity, request) -> new entity + report.

The store runs these inside its write transaction, so every operation is atomic: a function that
raises leaves the stored entity untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cityos.entities.model import NULL_URI, Entity, Instance
from cityos.errors import AlreadyExists, BadRequestData, ResourceNotFound


@dataclass(slots=True)
class Outcome:
    """What a mutation did: the entity to store (None deletes it) and the per-attribute report."""

    entity: Entity | None
    updated: list[str] = field(default_factory=list)
    not_updated: list[tuple[str, str]] = field(default_factory=list)  # (attribute iri, reason)
    created: bool = False
    # the write annotates what is stored (a derived mark, e.g. the anomaly detector's flag on a
    # reading) and is no new observation: the store hands it on in EntityChange.annotation
    annotation: bool = False
    # the attributes whose instance lists this mutation gave a new list; every other attribute of
    # `entity` is the very list of the current entity's (`_require(lists=False)`). None: not known
    relisted: tuple[str, ...] | None = None


Mutator = Callable[[Entity | None], Outcome]


def _require(current: Entity | None, entity_id: str, *, lists: bool = True) -> Entity:
    """A copy of the stored entity for a mutator to change, sharing its attribute instances: the
    mutators replace an instance (a new dict) and change the lists and dicts copied here, never an
    instance in place, so `current` (the change's `before`) stays as it was. The instances an update
    leaves alone are then the very objects of `before`, which the history and side-row comparisons
    see at once (a sensor update changes one attribute of ten). `lists=False`: the attributes' lists
    are shared too, and the mutator gives each attribute it may change a list of its own (`append`),
    so an attribute left alone is the very list of `before` and the comparisons skip it whole."""
    if current is None:
        raise ResourceNotFound(f"entity {entity_id} does not exist")
    copied: Entity = {**current, "type": list(current["type"])}
    attrs = current["attrs"]
    copied["attrs"] = {iri: list(instances) for iri, instances in attrs.items()} if lists else dict(attrs)
    if "scope" in current:
        copied["scope"] = list(current["scope"])
    return copied


def _own(attrs: dict[str, list[Instance]], iri: str) -> list[Instance] | None:
    """`attrs[iri]` made a list of this mutation's own (of `_require(lists=False)`'s shared
    ones), to change in place; None if the entity has no such attribute."""
    held = attrs.get(iri)
    if held is None:
        return None
    own = attrs[iri] = list(held)
    return own


def create(new: Entity) -> Mutator:
    def run(current: Entity | None) -> Outcome:
        if current is not None:
            raise AlreadyExists(f"entity {new['id']} already exists")
        return Outcome(new, created=True)

    return run


def replace(new: Entity) -> Mutator:
    """PUT /entities/{id}: everything but createdAt is replaced."""

    def run(current: Entity | None) -> Outcome:
        if current is None:  # only read: no copy of the stored entity (a batch upsert's usual path)
            raise ResourceNotFound(f"entity {new['id']} does not exist")
        new["createdAt"] = current["createdAt"]
        return Outcome(new, updated=list(new["attrs"]))

    return run


def upsert(new: Entity, *, mode: str) -> Mutator:
    """Batch upsert: create, else replace the entity (mode=replace) or its attributes (mode=update)."""

    def run(current: Entity | None) -> Outcome:
        if current is None:
            return Outcome(new, created=True)
        if mode == "replace":
            return replace(new)(current)
        return _append(current, new["id"], new, no_overwrite=False, add_types=True)

    return run


def delete(entity_id: str) -> Mutator:
    def run(current: Entity | None) -> Outcome:
        _require(current, entity_id, lists=False)
        return Outcome(None)

    return run


def _merge_types(entity: Entity, types: list[str]) -> None:
    for entity_type in types:
        if entity_type not in entity["type"]:
            entity["type"].append(entity_type)


def _put_instance(instances: list[Instance], instance: Instance) -> bool:
    """Put `instance` in place of the one with the same datasetId; True if it replaced one."""
    dataset = instance.get("datasetId")
    for index, existing in enumerate(instances):
        if existing.get("datasetId") == dataset:
            instance["createdAt"] = existing.get("createdAt", instance["createdAt"])
            instances[index] = instance
            return True
    instances.append(instance)
    return False


def _has_instance(instances: list[Instance], dataset: str | None) -> bool:
    return any(existing.get("datasetId") == dataset for existing in instances)


def append(entity_id: str, fragment: Entity, *, no_overwrite: bool, add_types: bool = False) -> Mutator:
    """POST /entities/{id}/attrs: add attributes, replacing same-datasetId instances unless noOverwrite."""

    def run(current: Entity | None) -> Outcome:
        return _append(current, entity_id, fragment, no_overwrite=no_overwrite, add_types=add_types)

    return run


def _append(
    current: Entity | None, entity_id: str, fragment: Entity, *, no_overwrite: bool, add_types: bool
) -> Outcome:
    """append's mutation (upsert's too: called directly, no closure made for each entity)."""
    entity = _require(current, entity_id, lists=False)
    outcome = Outcome(entity)
    if add_types and fragment.get("type"):
        _merge_types(entity, fragment["type"])
    if "scope" in fragment:
        if no_overwrite:
            entity["scope"] = entity.get("scope", []) + [
                s for s in fragment["scope"] if s not in entity.get("scope", [])
            ]
        else:
            entity["scope"] = fragment["scope"]
    attrs = entity["attrs"]
    for iri, instances in fragment["attrs"].items():
        held = attrs.get(iri)
        target = attrs[iri] = [] if held is None else list(held)  # its own list: `before`'s stays as it was
        changed = False
        for instance in instances:
            if no_overwrite and _has_instance(target, instance.get("datasetId")):
                continue
            _put_instance(target, instance)
            changed = True
        if changed:
            outcome.updated.append(iri)
        else:
            outcome.not_updated.append((iri, "attribute exists and noOverwrite was requested"))
    entity["modifiedAt"] = fragment["modifiedAt"]
    outcome.relisted = tuple(fragment["attrs"])
    return outcome


def _delete_instance(entity: Entity, iri: str, dataset: str | None) -> bool:
    instances = entity["attrs"].get(iri)
    if not instances:
        return False
    remaining = [i for i in instances if i.get("datasetId") != dataset]
    if len(remaining) == len(instances):
        return False
    if remaining:
        entity["attrs"][iri] = remaining
    else:
        del entity["attrs"][iri]
    return True


def update_attrs(entity_id: str, fragment: Entity, *, no_overwrite: bool = False) -> Mutator:
    """PATCH /entities/{id}/attrs and batch update: replace (or add) whole attribute instances;
    NGSI-LD Null deletes an instance; types are added; scope only replaces an existing scope."""

    def run(current: Entity | None) -> Outcome:
        entity = _require(current, entity_id, lists=False)
        outcome = Outcome(entity, relisted=tuple(fragment["attrs"]))
        if fragment.get("type"):
            _merge_types(entity, fragment["type"])
        if "scope" in fragment:
            if "scope" in entity and not no_overwrite:
                entity["scope"] = fragment["scope"]
                outcome.updated.append("scope")
            else:
                outcome.not_updated.append(("scope", "the entity has no scope to update"))
        attrs = entity["attrs"]
        for iri, instances in fragment["attrs"].items():
            target = _own(attrs, iri)  # its own list: `before`'s stays as it was
            changed = False
            for instance in instances:
                dataset = instance.get("datasetId")
                if instance.get("null"):
                    changed = _delete_instance(entity, iri, dataset) or changed
                    continue
                if no_overwrite and target and _has_instance(target, dataset):
                    continue
                target = entity["attrs"].setdefault(iri, [])
                _put_instance(target, instance)
                changed = True
            if changed:
                outcome.updated.append(iri)
            else:
                outcome.not_updated.append(
                    (
                        iri,
                        "attribute exists and noOverwrite was requested"
                        if no_overwrite
                        else "attribute instance does not exist",
                    )
                )
        if outcome.updated or fragment.get("type"):
            entity["modifiedAt"] = fragment["modifiedAt"]
        return outcome

    return run


def _merge_json(existing: Any, patch: Any) -> Any:
    """RFC 7396 inside a JSON object value: NGSI-LD Null removes a key."""
    if not isinstance(existing, dict) or not isinstance(patch, dict):
        return patch
    merged = dict(existing)
    for key, value in patch.items():
        if value == NULL_URI or value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge_json(existing.get(key), value)
    return merged


def _merge_instance(existing: Instance, patch: Instance, stamp: str, *, merge_values: bool = True) -> Instance:
    """Merge of one attribute instance: given members replace, others stay, null sub-attributes go.
    `merge_values`: a JSON object `value` is merged into the old one (RFC 7396, the merge-patch of
    5.6.17); without it (partial attribute update, 5.6.4) the given `value` replaces the old one."""
    if patch.get("type") and patch["type"] != existing["type"]:
        merged = {k: v for k, v in existing.items() if ":" in k or k in ("createdAt", "datasetId")}
    else:
        merged = dict(existing)
    for key, value in patch.items():
        if key in ("createdAt", "null"):
            continue
        if value is None:
            merged.pop(key, None)
        elif (
            merge_values
            and key == "value"
            and existing.get("type") == "Property"
            and patch.get("type") in (None, "Property")
        ):
            merged[key] = _merge_json(existing.get("value"), value)
        elif ":" in key and isinstance(existing.get(key), dict) and isinstance(value, dict):
            merged[key] = _merge_instance(existing[key], value, stamp)
        else:
            merged[key] = value
    merged["modifiedAt"] = stamp
    return merged


def merge(entity_id: str, fragment: Entity) -> Mutator:
    """PATCH /entities/{id} (merge-patch): member-level merge; NGSI-LD Null deletes an instance."""

    def run(current: Entity | None) -> Outcome:
        entity = _require(current, entity_id, lists=False)
        outcome = Outcome(entity, relisted=tuple(fragment["attrs"]))
        stamp = fragment["modifiedAt"]
        if fragment.get("type"):
            _merge_types(entity, fragment["type"])
        if "scope" in fragment:
            entity["scope"] = fragment["scope"]
        if fragment.get("expiresAt") is not None:
            entity["expiresAt"] = fragment["expiresAt"]
        elif "expiresAt" in fragment:
            entity.pop("expiresAt", None)
        attrs = entity["attrs"]
        for iri, instances in fragment["attrs"].items():
            _own(attrs, iri)  # its own list: `before`'s stays as it was
            for instance in instances:
                dataset = instance.get("datasetId")
                if instance.get("null"):
                    _delete_instance(entity, iri, dataset)
                    continue
                target = entity["attrs"].setdefault(iri, [])
                for index, existing in enumerate(target):
                    if existing.get("datasetId") == dataset:
                        target[index] = _merge_instance(existing, instance, stamp)
                        break
                else:
                    target.append({k: v for k, v in instance.items() if v is not None})
            outcome.updated.append(iri)
        entity["modifiedAt"] = stamp
        return outcome

    return run


def partial_update(entity_id: str, attr_iri: str, patch: Instance, dataset: str | None) -> Mutator:
    """PATCH /entities/{id}/attrs/{attr} (5.6.4): each given member replaces the one of the existing
    instance (a JSON object `value` as a whole, as Orion-LD does), the others stay; NGSI-LD Null
    removes a sub-attribute. Only the merge-patch of a whole entity (5.6.17) merges inside values."""

    def run(current: Entity | None) -> Outcome:
        entity = _require(current, entity_id, lists=False)
        instances = _own(entity["attrs"], attr_iri)  # its own list: `before`'s stays as it was
        if not instances:
            raise ResourceNotFound(f"attribute {attr_iri} does not exist in entity {entity_id}")
        for index, existing in enumerate(instances):
            if existing.get("datasetId") == dataset:
                if patch.get("type") and patch["type"] != existing["type"]:
                    raise BadRequestData(f"attribute {attr_iri} is a {existing['type']}, not a {patch['type']}")
                if patch.get("null"):
                    _delete_instance(entity, attr_iri, dataset)
                else:
                    instances[index] = _merge_instance(existing, patch, patch["modifiedAt"], merge_values=False)
                break
        else:
            raise ResourceNotFound(f"attribute {attr_iri} has no instance with datasetId {dataset}")
        entity["modifiedAt"] = patch["modifiedAt"]
        return Outcome(entity, updated=[attr_iri], relisted=(attr_iri,))

    return run


def replace_attr(entity_id: str, attr_iri: str, instances: list[Instance]) -> Mutator:
    """PUT /entities/{id}/attrs/{attr}: the attribute must exist; its instance is replaced."""

    def run(current: Entity | None) -> Outcome:
        entity = _require(current, entity_id, lists=False)
        target = _own(entity["attrs"], attr_iri)  # its own list: `before`'s stays as it was
        if not target:
            raise ResourceNotFound(f"attribute {attr_iri} does not exist in entity {entity_id}")
        for instance in instances:
            if not _has_instance(target, instance.get("datasetId")):
                raise ResourceNotFound(f"attribute {attr_iri} has no instance with that datasetId")
            _put_instance(target, instance)
        entity["modifiedAt"] = instances[0]["modifiedAt"]
        return Outcome(entity, updated=[attr_iri], relisted=(attr_iri,))

    return run


def delete_attr(entity_id: str, attr_iri: str, *, dataset: str | None, delete_all: bool, stamp: str) -> Mutator:
    def run(current: Entity | None) -> Outcome:
        entity = _require(current, entity_id, lists=False)  # a new list or none: no list changed in place
        instances = entity["attrs"].get(attr_iri)
        if not instances:
            raise ResourceNotFound(f"attribute {attr_iri} does not exist in entity {entity_id}")
        if delete_all:
            remaining: list[Instance] = []
        else:
            remaining = [i for i in instances if i.get("datasetId") != dataset]
            if len(remaining) == len(instances):
                label = "the default instance" if dataset is None else f"datasetId {dataset}"
                raise ResourceNotFound(f"attribute {attr_iri} has no {label}")
        if remaining:
            entity["attrs"][attr_iri] = remaining
        else:
            del entity["attrs"][attr_iri]
        entity["modifiedAt"] = stamp
        return Outcome(entity, updated=[attr_iri], relisted=(attr_iri,))

    return run


def check_same_id(body_id: Any, path_id: str) -> None:
    if body_id is not None and body_id != path_id:
        raise BadRequestData(f"the id in the body ({body_id}) differs from the id in the path ({path_id})")


def prune(entity_id: str, names: set[str], *, keep: bool, stamp: str) -> Mutator:
    """Purge with keep/drop: remove the attributes not kept, or the ones dropped."""

    def run(current: Entity | None) -> Outcome:
        entity = _require(current, entity_id, lists=False)  # attributes removed, no list changed
        doomed = [iri for iri in entity["attrs"] if (iri not in names) == keep]
        for iri in doomed:
            del entity["attrs"][iri]
        if doomed:
            entity["modifiedAt"] = stamp
        return Outcome(entity, updated=doomed, relisted=tuple(doomed))

    return run


def only_types(entity_id: str, types: list[str], mutator: Mutator) -> Mutator:
    """Apply `mutator` only if the entity has one of `types` (the `type` query parameter)."""

    def run(current: Entity | None) -> Outcome:
        if current is not None and not set(types) & set(current["type"]):
            raise ResourceNotFound(f"entity {entity_id} is not of the requested type")
        return mutator(current)

    return run


def delete_scope(entity_id: str, *, stamp: str) -> Mutator:
    def run(current: Entity | None) -> Outcome:
        entity = _require(current, entity_id, lists=False)
        if "scope" not in entity:
            raise ResourceNotFound(f"entity {entity_id} has no scope")
        del entity["scope"]
        entity["modifiedAt"] = stamp
        return Outcome(entity, updated=["scope"], relisted=())

    return run
