"""Transient entities and attributes (expiresAt): expired data is invisible at once, swept later."""

from __future__ import annotations

import time
from datetime import UTC
from typing import Any

from cityos.clock import second_text
from cityos.entities.model import Entity, Instance
from cityos.entities.values import parse_datetime


def normalize(value: str) -> str:
    """A sortable UTC form of a timestamp, for the store's expiry column."""
    return parse_datetime(value, "expiresAt").astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_key() -> str:
    """Now in the expiry column's form (microseconds). Every read asks it (what has expired is
    invisible at once): the date and time of day are formatted once per second (clock.second_text),
    about a fifth of `datetime.now(UTC).strftime`'s instructions."""
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{second_text(second)}.{micro:06d}Z"


def _expired(holder: dict[str, Any], now: str) -> bool:
    expires = holder.get("expiresAt")
    return expires is not None and normalize(expires) <= now


def next_expiry(entity: Entity) -> str | None:
    """The earliest expiresAt of the entity or any of its attribute instances."""
    stamps = [normalize(entity["expiresAt"])] if entity.get("expiresAt") else []

    def walk(instance: Instance) -> None:
        if instance.get("expiresAt"):
            stamps.append(normalize(instance["expiresAt"]))
        for key, sub in instance.items():
            if ":" in key and isinstance(sub, dict):
                walk(sub)

    for instances in entity["attrs"].values():
        for instance in instances:
            walk(instance)
    return min(stamps) if stamps else None


def _prune_instance(instance: Instance, now: str) -> Instance:
    subs = [k for k, v in instance.items() if ":" in k and isinstance(v, dict) and _expired(v, now)]
    if not subs:
        return instance
    return {k: v for k, v in instance.items() if k not in subs}


def visible(entity: Entity | None, now: str | None = None) -> Entity | None:
    """The entity as readers may see it at `now`: None if it expired, expired instances removed."""
    if entity is None:
        return None
    now = now or now_key()
    if _expired(entity, now):
        return None
    pruned: dict[str, list[Instance]] | None = None
    for attr, instances in entity["attrs"].items():
        kept = [_prune_instance(i, now) for i in instances if not _expired(i, now)]
        if len(kept) != len(instances) or any(a is not b for a, b in zip(kept, instances, strict=False)):
            if pruned is None:
                pruned = dict(entity["attrs"])
            if kept:
                pruned[attr] = kept
            else:
                del pruned[attr]
    if pruned is None:
        return entity
    return {**entity, "attrs": pruned}


def visible_at(entity: Entity, expiry: str | None, now: str | None = None) -> Entity | None:
    """A stored document as readers may see it, given its row's next_expiry: the walk of visible()
    runs only once something in it has expired (next_expiry is the earliest expiresAt inside)."""
    if expiry is None:
        return entity
    now = now or now_key()
    return visible(entity, now) if expiry <= now else entity
