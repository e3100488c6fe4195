"""Query pages whose every filter is exact in SQL (store.py decides): the page's keys chosen over
the keys alone, only the page's documents read, and the answer handed back as stored text when the
caller takes stored forms (the render cache).

`page_at_once` is the common case in one round trip: no BEGIN, no COMMIT, no statement before the
page. What decides whether the page may be answered from SQL alone (an expired part the sweeper has
not removed, a shape the geo-query's Python predicate must judge, the listings' version that the
cached offset anchors belong to) and the count ride in the page's own statement, so they are read in
the page's snapshot; when one of them says no, its answer is dropped and store.py runs the query in
a read-only transaction statement by statement (`page_in_sql` or the Python-filtered cursor).

A page of at most DIRECT_ROWS (offset and limit) is read by the statement that chooses its rows,
the checks as columns of each row: no MATERIALIZED CTEs and no second probe of `entities` per key,
which halved the backend's CPU of a type page (mostly planning: PostgreSQL plans every run of these
statements anew, docs/performance.md, issue 15 tenth pass). An empty page has no row to carry the
checks, so they are read again in the CTE form below (a second statement, only when some check
can say no); longer pages take that form at once, so a sort in their plan holds keys, not documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from cityos.entities.expiry import now_key, visible_at
from cityos.entities.model import Entity
from cityos.query import budget
from cityos.store.base import EntityQuery, QueryResult
from cityos.store.postgres.sql import Params, geo_rows, near_point

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

ANCHOR_STEP = 64  # listing positions between two remembered primary keys
# A page whose offset and limit stay under this is read in the statement that chooses its rows (a
# sort of the plan then holds at most this many documents, not keys alone)
DIRECT_ROWS = 1000
_NO_CHECKS = ["NULL::bigint", "false", "false", "NULL::bigint"]  # page_at_once's checks when none is asked


@dataclass(frozen=True, slots=True)
class Anchors:
    """A listing's keys at positions 0, ANCHOR_STEP, 2 * ANCHOR_STEP, ... at a listings' version:
    an offset is a seek to the anchor before it and at most ANCHOR_STEP - 1 steps."""

    version: int
    pks: list[int]
    total: int


async def geo_in_python(connection: Connection, query: EntityQuery) -> bool:
    """Whether the geo-query needs the Python predicate: SQL tests only the distance of point rows
    (sql.py geo_rows), so any other shape in the box (a partial GiST index finds them) needs it."""
    if query.geo is None:
        return False
    if not near_point(query.geo):
        return True
    p = Params()
    found = await connection.fetchval(
        f"SELECT 1 FROM entity_geo g WHERE {geo_rows(query, p, shapes=True)} LIMIT 1", *p.values
    )
    return found is not None


def _seek(condition: str, query: EntityQuery, anchors: Anchors | None, p: Params) -> tuple[str, int] | None:
    """The page's condition and offset from the anchor before the offset; None when the anchors
    say the page is empty (past the end, or limit=0)."""
    if anchors is None:
        return condition, query.offset
    if query.offset >= anchors.total or query.limit == 0:
        return None
    step = query.offset // ANCHOR_STEP
    return f"{condition} AND e.pk >= {p(anchors.pks[step])}", query.offset - step * ANCHOR_STEP


def _past_the_end(query: EntityQuery, anchors: Anchors) -> QueryResult:
    more = query.limit is not None and query.offset + query.limit < anchors.total
    return QueryResult([], anchors.total if query.count else None, more)


def _paging(offset: int, query: EntityQuery, p: Params) -> str:
    return "" if query.limit is None else f" LIMIT {p(query.limit + 1)} OFFSET {p(offset)}"


def _page_sql(condition: str, paging: str, columns: str = "e.pk") -> str:
    return f"SELECT {columns} FROM entities e WHERE {condition} ORDER BY e.pk{paging}"


async def page_in_sql(
    connection: Connection, condition: str, params: list[Any], query: EntityQuery, anchors: Anchors | None
) -> QueryResult:
    """Every filter is exact in SQL: the page's keys are chosen over the keys alone (the offset
    steps over keys, not documents; from the anchor before it when the listing has anchors), and
    only the page's documents are read, in the same statement."""
    p = Params()
    p.values = list(params)
    seek = _seek(condition, query, anchors, p)
    if seek is None:
        assert anchors is not None
        return _past_the_end(query, anchors)
    rows = await connection.fetch(
        f"WITH page AS MATERIALIZED ({_page_sql(seek[0], _paging(seek[1], query, p))})"
        " SELECT e.doc, e.next_expiry FROM page JOIN entities e ON e.pk = page.pk ORDER BY page.pk",
        *p.values,
    )
    total = None
    if query.count:
        if anchors is not None:
            total = anchors.total
        else:
            total = await connection.fetchval(f"SELECT count(*) FROM entities e WHERE {condition}", *params)
    return _result([(row[0], row[1]) for row in rows], query, total)


async def page_at_once(
    connection: Connection,
    tenant: str,
    condition: str,
    params: list[Any],
    query: EntityQuery,
    *,
    now: str,
    check_stale: bool,
    anchors: Anchors | None,
) -> QueryResult | None:
    """The page in one statement outside a transaction (one snapshot), or None when it must be
    answered another way: a part expired and not swept yet (`check_stale`: the side rows or the
    anchors would still count it), a shape other than a point in the geo-query's box, or `anchors`
    (the cached ones of the listing) older than the listings' version. `query.geo`, when given,
    is a near query around a point (sql.near_point)."""
    p = Params()
    p.values = list(params)
    checks = [
        "(SELECT version FROM listing_version WHERE id = 0)" if anchors is not None else "NULL::bigint",
        (
            f"EXISTS (SELECT 1 FROM entities WHERE next_expiry IS NOT NULL AND next_expiry <= {p(now)}"
            f" AND tenant = {p(tenant)})"
            if check_stale
            else "false"
        ),
        f"EXISTS (SELECT 1 FROM entity_geo g WHERE {geo_rows(query, p, shapes=True)})" if query.geo else "false",
        f"(SELECT count(*) FROM entities e WHERE {condition})" if query.count and anchors is None else "NULL::bigint",
    ]
    seek = _seek(condition, query, anchors, p)
    paging = "" if seek is None else _paging(seek[1], query, p)
    rows: list[Any] = []
    if seek is not None and query.limit is not None and seek[1] + query.limit < DIRECT_ROWS:
        # the checks as columns of each row of the page (uncorrelated: each computed once); the
        # documents read by the walk that chose the rows, not by a second probe of each key
        columns = f"{', '.join(checks)}, e.doc, e.next_expiry"
        rows = await connection.fetch(_page_sql(seek[0], paging, columns), *p.values)
        if not rows and checks == _NO_CHECKS:
            return _result([], query, None)
    if not rows:  # an empty page (its checks still to read), a page past the anchors' end, or a long one
        rows = await connection.fetch(_at_once_sql(condition, seek, paging, checks), *p.values)
    version, stale, shapes, total = rows[0][0], rows[0][1], rows[0][2], rows[0][3]
    if stale or shapes or (anchors is not None and version != anchors.version):
        return None
    if anchors is not None:
        if seek is None:
            return _past_the_end(query, anchors)
        total = anchors.total if query.count else None
    documents = [(row[4], row[5]) for row in rows if row[4] is not None]  # none: one row of NULLs
    return _result(documents, query, total)


def _at_once_sql(condition: str, seek: tuple[str, int] | None, paging: str, checks: list[str]) -> str:
    """The page's keys chosen over the keys alone (a sort of keys, not of documents, whatever the
    offset), the checks in a row of their own that stays when the page is empty."""
    # past the anchors' end: no page, but the condition's parameters still typed by their use
    page = f"SELECT e.pk FROM entities e WHERE false AND {condition}" if seek is None else _page_sql(seek[0], paging)
    return (
        f"WITH first AS MATERIALIZED (SELECT {', '.join(checks)}), page AS MATERIALIZED ({page})"
        " SELECT f.*, e.doc, e.next_expiry FROM first f"
        " LEFT JOIN (page JOIN entities e ON e.pk = page.pk) ON true ORDER BY page.pk"
    )


def _result(rows: list[tuple[str, str | None]], query: EntityQuery, total: int | None) -> QueryResult:
    """The page of (document text, next_expiry) rows, one more than the limit when there are more."""
    has_more = query.limit is not None and len(rows) > query.limit
    if has_more:
        rows = rows[: query.limit]
    now = now_key()  # the expiry walk only for rows whose next_expiry says something may be gone
    if query.stored_form:
        return QueryResult([], total, has_more, stored=stored(rows, now), decode=decode)
    decoded = (visible_at(orjson.loads(row[0]), row[1], now) for row in budget.checked(rows))  # decoded on the loop
    entities = [entity for entity in decoded if entity is not None]
    return QueryResult(entities, total, has_more)


def stored(rows: list[tuple[str, str | None]] | list[asyncpg.Record], now: str) -> list[bytes | Entity]:
    """The page for a caller that takes stored forms (EntityQuery.stored_form), as SQLite's
    sqlite_query._stored: a document with nothing expired in it stays as the json column's text
    (its UTF-8 bytes: PostgreSQL keeps a json value's text as written, so another document is other
    bytes); only the others are decoded here, with their expired parts removed."""
    return [form for doc, expiry in rows if (form := stored_form(doc, expiry, now)) is not None]


def stored_form(doc: str, expiry: str | None, now: str) -> bytes | Entity | None:
    """One row's stored form (the rule of `stored`), None when nothing of it is visible any more."""
    if expiry is None or expiry > now:
        return doc.encode()
    return visible_at(orjson.loads(doc), expiry, now)


def decode(stored: bytes) -> Entity:
    """The entity of a document's stored bytes (QueryResult.decode)."""
    entity: Entity = orjson.loads(stored)
    return entity
