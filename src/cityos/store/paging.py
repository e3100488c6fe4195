"""The engine-independent half of query_entities: what a back-end does with the candidate rows its
SQL selected when part of the query (attrs over expired instances, predicate, orderBy) must run in
Python. Every back-end pages through the same Pager, so their answers are identical.

"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from cityos.entities.expiry import visible
from cityos.entities.model import Entity
from cityos.errors import QueryTimeout
from cityos.query import budget
from cityos.store.base import EntityQuery, QueryResult


def listed_type(query: EntityQuery) -> str | None:
    """The type of a plain listing (`type=X`, nothing else): the listing whose offsets the back-ends
    serve from anchors (the key at every Nth position), since nothing but a create, a delete or a
    change of types (or expiry) moves an entity's position in it."""
    if (
        query.types is None
        or len(query.types) != 1
        or query.ids is not None
        or query.id_pattern is not None
        or query.attrs is not None
        or query.value_filters
        or query.geo_box is not None
        or query.access is not None
    ):
        return None
    return query.types[0]


class _Evaluated(Protocol):
    predicate: Callable[[Entity], bool] | None


Q = TypeVar("Q", bound=_Evaluated)


def bounded(query: Q, timeout: float) -> Q:
    """`query` whose predicate (q, geo-query, type expression, linked lookups) and sort raise
    QueryTimeout once `timeout` seconds have passed since the store began evaluating them: the SQL
    half of a query has the back-end's own timeout, this bounds the Python half (whatever part is
    slow), and stops the thread that runs it instead of leaving it busy after the answer."""
    deadline: list[float] = []
    request_end = budget.deadline()  # read here, on the request's task: the checks run in a store thread

    def check() -> None:
        now = time.monotonic()
        if not deadline:
            deadline.append(now + timeout if request_end is None else min(now + timeout, request_end))
        elif now > deadline[0]:
            raise QueryTimeout(f"the query took longer than {timeout} s")

    changes: dict[str, Any] = {}
    predicate = query.predicate
    if predicate is not None:

        def timed(entity: Entity) -> bool:
            check()
            return predicate(entity)

        changes["predicate"] = timed
    sort: Callable[[list[Entity]], list[Entity]] | None = getattr(query, "sort", None)
    if sort is not None:

        def timed_sort(entities: list[Entity]) -> list[Entity]:
            check()
            ordered = sort(entities)
            check()
            return ordered

        changes["sort"] = timed_sort
    return dataclasses.replace(query, **changes) if changes else query  # type: ignore[type-var]


def exact_in_sql(query: EntityQuery) -> bool:
    """True when the back-end's WHERE clause is the whole query, so it can page and count in SQL,
    provided no expired attribute instance still has side rows (attrs and q's value filters read
    them): the back-end checks that. Call it before bounded(), which replaces the predicate."""
    predicate = query.predicate
    return query.sort is None and (predicate is None or predicate is query.predicate_in_sql)


class Pager:
    """Fed the stored documents in storage order (from a sync or an async cursor); says when it has
    read enough: the page and one more match, unless a count or a sort needs every match."""

    def __init__(self, query: EntityQuery, now: str) -> None:
        self._query = query
        self._now = now
        self._attrs = set(query.attrs) if query.attrs is not None else None
        self._start = query.offset
        self._stop = None if query.limit is None else query.offset + query.limit
        self._matched: list[Entity] = []
        self._total = 0

    def _accepted(self, entity: Entity) -> bool:
        if self._attrs is not None and not self._attrs.intersection(entity["attrs"]):
            return False
        return self._query.predicate is None or self._query.predicate(entity)

    def offer(self, document: Entity) -> bool:
        """Take one stored document; False once no further document can change the result."""
        entity = visible(document, self._now)
        if entity is None or not self._accepted(entity):
            return True
        if self._query.sort is not None:
            self._matched.append(entity)
            return True
        if self._start <= self._total and (self._stop is None or self._total < self._stop):
            self._matched.append(entity)
        self._total += 1
        return self._stop is None or self._total <= self._stop or self._query.count

    def result(self) -> QueryResult:
        stop = self._stop
        if self._query.sort is not None:
            ordered = self._query.sort(self._matched)
            total = len(ordered)
            return QueryResult(
                ordered[self._start : stop], total if self._query.count else None, stop is not None and total > stop
            )
        total = self._total
        return QueryResult(self._matched, total if self._query.count else None, stop is not None and total > stop)


def unfiltered(query: EntityQuery) -> bool:
    """The query selects every visible entity of its tenant (no type, id, attribute, q or policy)."""
    return (
        query.types is None
        and query.ids is None
        and query.id_pattern is None
        and query.attrs is None
        and not query.value_filters
        and query.geo is None
        and query.predicate is None
        and query.access is None
    )


def allowed_types(query: EntityQuery) -> Sequence[str] | None:
    """The types an entity must have one of, by the query's `type` and its access policy (None:
    any)."""
    types = query.types
    limited = query.access.types if query.access is not None else None
    if limited is None:
        return types
    if types is None:
        return limited
    return [t for t in types if t in set(limited)]


def untyped(query: EntityQuery) -> EntityQuery:
    """The query without its type filters (the geo rows' types answer them: map clusters)."""
    access = query.access
    if access is not None:
        access = None if access.id_patterns is None else dataclasses.replace(access, types=None)
    return dataclasses.replace(query, types=None, access=access)
