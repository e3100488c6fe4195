"""The storage contract every back-end implements, and the types it speaks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cityos.entities.model import Entity
from cityos.entities.update import Mutator, Outcome
from cityos.errors import NgsiLdError
from cityos.query.pushdown import ValueFilter


@dataclass(frozen=True, slots=True)
class EntityChange:
    """One committed change, emitted once for subscriptions, history and federation to consume."""

    tenant: str
    entity_id: str
    before: Entity | None
    after: Entity | None


@dataclass(slots=True)
class EntityQuery:
    """What to select. Fields left None do not filter. `predicate` runs on the narrowed candidates
    for the parts of a query that are not pushed into the back-end."""

    types: Sequence[str] | None = None  # any of these expanded types
    ids: Sequence[str] | None = None
    id_pattern: str | None = None
    attrs: Sequence[str] | None = None  # entities having at least one of these attributes
    value_filters: Sequence[ValueFilter] = ()  # sound prefilters taken from q (query/pushdown.py)
    geo_box: tuple[str, tuple[float, float, float, float]] | None = None  # (attr, min_x, max_x, min_y, max_y)
    predicate: Callable[[Entity], bool] | None = None
    limit: int | None = None
    offset: int = 0
    count: bool = False


@dataclass(slots=True)
class QueryResult:
    entities: list[Entity]
    total: int | None = None
    has_more: bool = False  # more matches follow this page


@dataclass(slots=True)
class StoredContextRow:
    tenant: str
    local_id: str
    kind: str
    document: dict[str, Any]
    created_at: str


@dataclass(slots=True)
class MutationResult:
    entity_id: str
    outcome: Outcome | None = None
    error: NgsiLdError | None = None
    change: EntityChange | None = field(default=None, repr=False)


class EntityStore(Protocol):
    async def open(self) -> None:
        """Create or migrate the schema and start the connections."""

    async def close(self) -> None: ...

    async def tenant_exists(self, tenant: str) -> bool: ...

    async def get_entity(self, tenant: str, entity_id: str) -> Entity | None: ...

    async def mutate(
        self, tenant: str, operations: Sequence[tuple[str, Mutator]], *, atomic: bool
    ) -> list[MutationResult]:
        """Apply mutators in one transaction. atomic=True: the first error aborts all and is raised;
        atomic=False: each operation stands alone and failures are returned in its result."""

    async def query_entities(self, tenant: str, query: EntityQuery) -> QueryResult: ...

    async def purge_expired(self, now: str) -> list[EntityChange]:
        """Delete entities whose expiresAt has passed (transient entities)."""

    async def save_context(self, row: StoredContextRow) -> None: ...

    async def delete_context(self, tenant: str, local_id: str) -> None: ...

    async def load_contexts(self) -> list[StoredContextRow]: ...
