"""What a change of the current state adds to the history (spec 4.5.7, 4.5.6, 5.6.x): pure
functions from an EntityChange to the attribute instances to append.

- A created entity: one instance per attribute instance (datasetId), as stored.
- An update, merge or replace: an instance for each attribute instance that changed (a member,
  its value or its modifiedAt), nothing for the untouched ones; an expiresAt-only merge adds nothing.
  An observation stated again (the same observedAt and the same content, only the system times
  moved: a feed polled twice, a device message delivered twice) is not a new instance either.
- A removed attribute instance (attribute delete, NGSI-LD Null, expiry, entity delete): a deletion
  instance carrying deletedAt and the NGSI-LD Null value of its type, and no other time.
- The scope: a Property instance whose observedAt copies its modifiedAt; removed, `"value": []`.
- An annotation (EntityChange.annotation: a write marking what is stored, the anomaly flag): nothing.
The entity's own expiresAt is never copied: an expired entity leaves its history behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cityos.entities.model import NULL_URI, VALUE_MEMBER, Entity, Instance
from cityos.entities.values import identical, now
from cityos.snapshots.scope import MARK
from cityos.store.base import EntityChange, EntityLookup, HistoryRow, OutboxRow
from cityos.store.side_rows import ordered
from cityos.store.temporal_base import SCOPE_ATTR

DEFAULT_TENANT = "@default"  # how the tenant without a name is written in temporal_disabled_tenants
ALL_TENANTS = "*"


def deletion(kind: str, dataset: str | None, stamp: str) -> Instance:
    """The instance recording that an attribute instance was deleted (020_17): NGSI-LD Null in the
    value member of its type, deletedAt, no observedAt."""
    member = VALUE_MEMBER.get(kind, "value")
    value: object = NULL_URI
    if kind == "LanguageProperty":
        value = {"@none": NULL_URI}
    elif kind in ("ListProperty", "ListRelationship"):
        value = [NULL_URI]
    instance: Instance = {"type": kind, member: value}
    if dataset is not None:
        instance["datasetId"] = dataset
    instance["deletedAt"] = stamp
    return instance


def scope_deletion(stamp: str) -> Instance:
    return {"type": "Property", "value": [], "deletedAt": stamp}


def scope_instance(scope: Sequence[str], stamp: str) -> Instance:
    """A scope change from the core API (4.5.6): observedAt is a copy of modifiedAt."""
    return {"type": "Property", "value": list(scope), "observedAt": stamp, "createdAt": stamp, "modifiedAt": stamp}


def _by_dataset(instances: Sequence[Instance]) -> dict[str | None, Instance]:
    if len(instances) == 1:  # the usual case
        return {instances[0].get("datasetId"): instances[0]}
    return {instance.get("datasetId"): instance for instance in instances}


SYSTEM_TIMES = frozenset({"createdAt", "modifiedAt"})


def _observation(instance: Instance) -> dict[str, object]:
    """An instance without its system times (also those of its sub-attributes)."""
    return {
        key: _observation(value) if isinstance(value, dict) and ":" in key else value
        for key, value in instance.items()
        if key not in SYSTEM_TIMES
    }


def _differ(old: Instance | None, new: Instance) -> bool:
    return old != new or not identical(old, new)


def restated(old: Instance | None, new: Instance) -> bool:
    """The same observation again: observedAt and every member unchanged (true after 1 is a new
    value, not the same one stated again)."""
    if old is None or "observedAt" not in new or old.get("observedAt") != new["observedAt"]:
        return False
    observed, again = _observation(old), _observation(new)
    return observed == again and identical(observed, again)


def changed_instances(
    before: Entity | None, after: Entity | None, relisted: tuple[str, ...] | None = None
) -> list[tuple[str, Instance]]:
    """(attribute, instance) pairs to append for one change, in attribute order: the attributes of
    `after` first, then those only `before` had. `relisted`: the only attributes whose lists may
    differ (EntityChange.relisted), so the others are not walked."""
    found: list[tuple[str, Instance]] = []
    old_attrs = before["attrs"] if before else {}
    new_attrs = after["attrs"] if after else {}
    stamp = after["modifiedAt"] if after and after.get("modifiedAt") else None
    walked: Iterable[tuple[str, list[Instance]]] = (
        new_attrs.items()
        if relisted is None
        else [(attr, new_attrs[attr]) for attr in ordered(relisted, new_attrs, old_attrs) if attr in new_attrs]
    )
    for attr, instances in walked:
        olds = old_attrs.get(attr)
        if olds is instances:  # the very list of `before` (entities/update.py `_require`): left alone
            continue
        if not olds:  # a new attribute (every entity of a batch create): all of its instances
            found.extend(
                (attr, instance) for instance in (instances if len(instances) == 1 else _by_dataset(instances).values())
            )
            continue
        if len(olds) == 1 and len(instances) == 1:  # the usual case: one instance, before and after
            old_one, new_one = olds[0], instances[0]
            if old_one is new_one:  # left alone: the very object of `before` (entities/update.py _require)
                continue
            if old_one.get("datasetId") == new_one.get("datasetId"):
                if _differ(old_one, new_one) and not restated(old_one, new_one):
                    found.append((attr, new_one))  # written in this transaction, never changed after
                continue
        old = _by_dataset(olds)
        new = _by_dataset(instances)
        for dataset, instance in new.items():
            if _differ(old.get(dataset), instance) and not restated(old.get(dataset), instance):
                found.append((attr, instance))
        for dataset, instance in old.items():
            if dataset not in new:
                stamp = stamp or now()
                found.append((attr, deletion(instance.get("type", "Property"), dataset, stamp)))
    gone: Iterable[tuple[str, list[Instance]]] = (
        (() if old_attrs.keys() <= new_attrs.keys() else old_attrs.items())
        if relisted is None  # else only a relisted attribute can be gone
        else [(attr, old_attrs[attr]) for attr in ordered(relisted, old_attrs, new_attrs) if attr in old_attrs]
    )
    for attr, instances in gone:
        if attr in new_attrs:
            continue
        for dataset, instance in _by_dataset(instances).items():
            stamp = stamp or now()
            found.append((attr, deletion(instance.get("type", "Property"), dataset, stamp)))
    old_scope = before.get("scope") if before else None
    new_scope = after.get("scope") if after else None
    if new_scope and new_scope != old_scope:
        found.append((SCOPE_ATTR, scope_instance(new_scope, stamp or now())))
    elif old_scope and not new_scope:
        found.append((SCOPE_ATTR, scope_deletion(stamp or now())))
    return found


def history_rows(change: EntityChange) -> list[HistoryRow]:
    """The instances one change adds to the history. An annotation (a write whose mutator said it
    only marks what is stored, such as the anomaly detector's flag on a reading) adds none: the
    history is a record of observations, and the reading it annotates was recorded when it was
    written; recording it again, with or without the mark, would count one observation twice in
    every temporal aggregation."""
    entity = change.after or change.before
    if entity is None or change.annotation:
        return []
    types = list(entity.get("type", []))
    return [
        HistoryRow(change.tenant, change.entity_id, types, attr, instance)
        for attr, instance in changed_instances(change.before, change.after, change.relisted)
    ]


def parse_disabled(setting: str) -> frozenset[str]:
    """The temporal_disabled_tenants setting: tenant names, `@default` for the default tenant, `*` for all."""
    names = {name.strip() for name in setting.split(",") if name.strip()}
    return frozenset("" if name == DEFAULT_TENANT else name for name in names)


class HistoryRecorder:
    """The store's change listener that records history, in the transaction of each change."""

    def __init__(self, disabled: frozenset[str] = frozenset()) -> None:
        self.disabled = disabled
        self.rows = 0  # instances made (on the writer: one thread adds), read by the metrics

    def __call__(self, change: EntityChange, lookup: EntityLookup) -> Sequence[OutboxRow | HistoryRow]:
        if ALL_TENANTS in self.disabled or change.tenant in self.disabled or MARK in change.tenant:
            return []  # a snapshot's copy records no history: its history is what it froze (snapshots/history.py)
        rows = history_rows(change)
        self.rows += len(rows)
        return rows
