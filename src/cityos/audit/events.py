"""What an audit record says, and the sink enforcement points hand records to.

Writes are recorded by the store in the write's own transaction (so an acknowledged write always has
its record); everything else (denied requests, admin changes made outside the entity store, reads of
personal data) is handed to an AuditSink.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class AuditEvent:
    principal: str  # Principal.id
    operation: str  # e.g. "entity.create", "entity.read-personal", "key.revoke", "request.denied"
    tenant: str
    targets: Sequence[str] = ()  # entity ids, key ids, policy ids, ...
    outcome: str = "ok"  # "ok", "denied", "failed"
    request_id: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class AuditSink(Protocol):
    async def record(self, events: Sequence[AuditEvent]) -> None: ...


class NullAudit:
    """No audit trail (the default until the audit package installs its sink)."""

    async def record(self, events: Sequence[AuditEvent]) -> None:
        return None
