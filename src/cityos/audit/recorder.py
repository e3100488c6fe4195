"""What turns a write into an audit row: the change listener for entity writes (installed by the
write pipeline like the history and subscription listeners) and the row for the store's other
writes (temporal API). Both run inside the write transaction, on the store's writer (SQLite) or
sync thread (PostgreSQL), where the request's principal and request id are current: the stores
run each write in a copy of the submitting request's context (contextvars).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from cityos.audit.chain import AuditRow, utc_now
from cityos.auth.principal import current_principal, current_request_id
from cityos.store.base import EntityChange, EntityLookup, HistoryRow, OutboxRow

LISTENER = "audit"  # the change listener's name in the store


def row(operation: str, tenant: str, targets: Sequence[str], detail: dict[str, Any] | None = None) -> AuditRow:
    """A row for the current principal and request."""
    return AuditRow(
        operation=operation,
        tenant=tenant,
        targets=targets,
        principal=current_principal.get().id,
        request_id=current_request_id.get(),
        detail=detail or {},
        time=utc_now(),
    )


def operation_of(change: EntityChange) -> str:
    if change.before is None:
        return "entity.create"
    return "entity.delete" if change.after is None else "entity.update"


def change_listener(change: EntityChange, lookup: EntityLookup) -> Sequence[OutboxRow | HistoryRow | AuditRow]:
    """Every entity change (API, batch, import, IoT, expiry sweep) makes one row (positional
    arguments, in AuditRow's order: this runs for every write)."""
    principal, request_id = current_principal.get().id, current_request_id.get()
    return (
        AuditRow(operation_of(change), change.tenant, (change.entity_id,), principal, request_id, "ok", {}, utc_now()),
    )


def ingest_row(kind: str, verb: str, tenant: str, key: str) -> AuditRow | None:
    """The row of an IoT provisioning change. A service group's key is its API key, a secret: the
    record names it by a digest (`sha256:` and 16 hex digits), never by itself. None: not recorded
    (the demo load's bookkeeping)."""
    if kind == "demo":
        return None
    target = key if kind == "iot-device" else "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return row(f"{kind}.{verb}", tenant, [target])
