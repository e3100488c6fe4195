"""The contract between policy enforcement points (handlers, the store, notification delivery) and
the policy engine. Handlers never interpret policies: they ask an Authorizer.

With auth off every answer is the unrestricted one (OpenAuthorizer), so an open broker pays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from cityos.auth.principal import Principal
from cityos.entities.model import Entity

Action = Literal["read", "create", "update", "delete", "subscribe", "administer"]
ACTIONS: tuple[Action, ...] = ("read", "create", "update", "delete", "subscribe", "administer")


@dataclass(frozen=True, slots=True)
class Target:
    """What a request acts on, in expanded IRIs. `attrs` are the attributes a write touches."""

    tenant: str
    entity_id: str | None = None
    types: tuple[str, ...] = ()
    attrs: tuple[str, ...] = ()
    resource: str | None = None  # non-entity resources: "subscription", "registration", "context", "iot", ...


@dataclass(frozen=True, slots=True)
class AccessPrefilter:
    """The part of a read view the store can push into SQL (so counts and paging are right):
    an entity is visible only if its type is one of `types` (None: any type) and, when
    `id_patterns` is set, its id matches one of them (RE2 syntax)."""

    types: Sequence[str] | None = None
    id_patterns: Sequence[str] | None = None


class ReadView(Protocol):
    """What one principal may read (or be notified of) in one tenant, compiled once per request."""

    @property
    def unrestricted(self) -> bool:
        """True: every entity and attribute is visible; callers skip visible/project entirely."""
        ...

    def prefilter(self) -> AccessPrefilter | None:
        """The SQL-able part; None when nothing can be pushed down (visible() still decides)."""
        ...

    def visible(self, entity: Entity) -> bool:
        """May the entity be seen at all (an invisible entity answers 404, never 403)."""
        ...

    def project(self, entity: Entity) -> Entity:
        """The entity without the attributes the principal may not read (a copy when it changes)."""
        ...


class Authorizer(Protocol):
    def read_view(self, principal: Principal, tenant: str, action: Action = "read") -> ReadView: ...

    def allows(self, principal: Principal, action: Action, target: Target) -> bool:
        """Deny wins; no matching allow is a deny."""
        ...


class _Everything:
    unrestricted = True

    def prefilter(self) -> AccessPrefilter | None:
        return None

    def visible(self, entity: Entity) -> bool:
        return True

    def project(self, entity: Entity) -> Entity:
        return entity


EVERYTHING: ReadView = _Everything()


class OpenAuthorizer:
    """Auth off: everything is allowed."""

    def read_view(self, principal: Principal, tenant: str, action: Action = "read") -> ReadView:
        return EVERYTHING

    def allows(self, principal: Principal, action: Action, target: Target) -> bool:
        return True
