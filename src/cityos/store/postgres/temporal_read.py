"""Reading the temporal store on PostgreSQL: the same selection, windows, lastN, scope validity,
instance cap and aggregation as sqlite_temporal.py, statement for statement, so the answers are
identical. A mixin of PostgresTemporal (temporal.py).

Every read runs in one REPEATABLE READ, READ ONLY transaction (the page, its count and its instances
see one snapshot) under the store's query_timeout, enforced both by statement_timeout in the server
and by asyncio.timeout around the whole call (QueryTimeout either way).

Aggregation is one statement: the windowed instances get a period number computed in SQL (calendar
months between the instance's time and the origin, or microseconds / the period's length), and one
GROUP BY per entity, attribute, datasetId and period returns count, distinct, sum, avg, min, max,
the sum of squares and the textual min/max; the instances never travel to Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import orjson

from cityos.entities.model import Entity, Instance
from cityos.errors import BadRequestData, QueryTimeout
from cityos.query.patterns import id_pattern_in_python
from cityos.store.fair import FairShare
from cityos.store.paging import bounded
from cityos.store.postgres.busy import Transactions, read_again_once
from cityos.store.postgres.sql import Params
from cityos.store.sqlite_temporal import COLUMNS, FOREVER
from cityos.store.temporal_base import (
    SCOPE_ATTR,
    STATS,
    AggregatedEntity,
    AggregatedSeries,
    AggregationSpec,
    PeriodStats,
    Scoped,
    Selection,
    TemporalQuery,
    assemble,
)
from cityos.store.temporal_downsample import GREATEST, LEAST, SAMPLES, SQUARES

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

T = TypeVar("T")
CHUNK = 100  # entities judged together by a predicate or a scopeQ (one query for their instances)


def _utc(x: str) -> str:
    # `/` on bigints truncates toward zero, like SQLite's integer division in sqlite_temporal._MONTH
    return f"(to_timestamp(({x}) / 1000000) AT TIME ZONE 'UTC')"


def _month(x: str) -> str:
    return f"(extract(year FROM {_utc(x)})::bigint * 12 + extract(month FROM {_utc(x)})::bigint)"


def _month_start(x: str) -> str:
    return f"(extract(epoch FROM date_trunc('month', {_utc(x)}))::bigint * 1000000)"


def months_between(months: int) -> str:
    """Period number of `p.t` counted in calendar months from `p.origin` (a partial month does not
    count): sqlite_temporal._months_between, term for term."""
    t, o = "p.t", "p.origin"
    offset_t = f"({t} - {_month_start(t)})"
    offset_o = f"({o} - {_month_start(o)})"
    return f"(({_month(t)} - {_month(o)} - ({offset_t} < {offset_o})::int) / {int(months)})"


def column_of(query: TemporalQuery) -> str:
    return "i." + COLUMNS[query.window.column]


def instance_filter(
    query: TemporalQuery, now: int, p: Params, *, selection: bool = True, scoped: dict[int, Scoped] | None = None
) -> str:
    """SQL over `i` (temporal_instances) for the window, visibility, (selection) attrs/datasetIds
    and (scoped) the times each entity's matching scopes were valid."""
    column = column_of(query)
    clauses = [f"{column} IS NOT NULL", f"(i.expires_us IS NULL OR i.expires_us > {p(now)}::bigint)"]
    start, end = query.window.start, query.window.end
    if start is not None:
        clauses.append(f"{column} >= {p(start)}::bigint")
    if end is not None:
        clauses.append(f"{column} < {p(end)}::bigint")
    if query.window.column == "observedAt":
        # an instance with observedAt is partitioned by it: the same bounds prune whole months
        if start is not None:
            clauses.append(f"i.retained_us >= {p(start)}::bigint")
        if end is not None:
            clauses.append(f"i.retained_us < {p(end)}::bigint")
    if selection and query.attrs is not None:
        clauses.append(f"i.attr = ANY({p(list(query.attrs))}::text[])")
    if selection and query.datasets is not None:
        clauses.append(f"i.dataset = ANY({p([d or '' for d in query.datasets])}::text[])")
    if scoped:
        epks = [epk for epk, valid in scoped.items() for _ in valid.intervals]
        lows = [low for valid in scoped.values() for low, _ in valid.intervals]
        highs = [high for valid in scoped.values() for _, high in valid.intervals]
        clauses.append(
            f"i.attr <> {p(SCOPE_ATTR)} AND EXISTS (SELECT 1 FROM unnest({p(epks)}::bigint[], {p(lows)}::bigint[],"
            f" {p(highs)}::bigint[]) AS r(e, lo, hi) WHERE r.e = i.epk AND {column} >= r.lo AND {column} < r.hi)"
        )
    return " AND ".join(clauses)


def series_of(query: TemporalQuery, pks: str, p: Params) -> str:
    """(epk, attr, dataset) of every series the query may select from the entities `pks` (a
    parameter), found by skip scans of the (entity, attribute, datasetId) index, one index seek a
    step, not by reading the instances; some may have nothing in the window."""
    if query.attrs is None:
        attrs = (
            f"a AS (SELECT e.pk AS epk, (SELECT min(i.attr) FROM temporal_instances i WHERE i.epk = e.pk) AS attr"
            f" FROM unnest({pks}::bigint[]) e(pk) UNION ALL SELECT a.epk, (SELECT min(i.attr) FROM temporal_instances i"
            " WHERE i.epk = a.epk AND i.attr > a.attr) FROM a WHERE a.attr IS NOT NULL)"
        )
    else:
        attrs = (
            f"a AS (SELECT e.pk AS epk, n.attr FROM unnest({pks}::bigint[]) e(pk)"
            f" CROSS JOIN unnest({p(list(query.attrs))}::text[]) n(attr))"
        )
    if query.datasets is not None:
        datasets = p([d or "" for d in query.datasets])
        return (
            f"WITH {attrs} SELECT a.epk, a.attr, n.dataset FROM a CROSS JOIN unnest({datasets}::text[]) n(dataset)"
            " WHERE a.attr IS NOT NULL"
        )
    return (
        f"WITH RECURSIVE {attrs}, d AS (SELECT a.epk, a.attr, (SELECT min(i.dataset) FROM temporal_instances i"
        " WHERE i.epk = a.epk AND i.attr = a.attr) AS dataset FROM a WHERE a.attr IS NOT NULL"
        " UNION ALL SELECT d.epk, d.attr, (SELECT min(i.dataset) FROM temporal_instances i WHERE i.epk = d.epk"
        " AND i.attr = d.attr AND i.dataset > d.dataset) FROM d WHERE d.dataset IS NOT NULL)"
        " SELECT epk, attr, dataset FROM d WHERE dataset IS NOT NULL"
    )


# The read's transaction and its settings in one round trip (a simple-query string: asyncpg's
# transaction() sends BEGIN alone, and set_config would be one more). No JIT: the skip scans'
# recursive row estimates are large enough to compile a plan that runs in a millisecond (seconds of
# compilation on a busy machine).
_BEGIN_READ = (
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = {ms};"
    " SET LOCAL jit = off; SET LOCAL plan_cache_mode = force_generic_plan"
)


@contextlib.asynccontextmanager
async def read_snapshot(connection: Connection, statement_ms: int) -> AsyncIterator[None]:
    """A REPEATABLE READ, READ ONLY transaction under statement_timeout (ms), rolled back when the
    block fails (also when asyncio.timeout cancelled it: asyncpg waits for the cancelled statement)."""
    await connection.execute(_BEGIN_READ.format(ms=int(statement_ms)))
    try:
        yield
    except BaseException:
        if not connection.is_closed():
            with contextlib.suppress(Exception):  # a lost connection: the pool discards it
                await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")


def _judge(predicate: Callable[[Entity], bool], entities: list[Entity]) -> list[bool]:
    return [predicate(entity) for entity in entities]


class PostgresTemporalReads(Transactions):
    """The reading half of the PostgreSQL temporal store; PostgresStore supplies the pool."""

    if TYPE_CHECKING:
        query_timeout: float
        _sync_pool: ThreadPoolExecutor
        _fair: FairShare

    # whether history was ever downsampled (temporal_marks, schema 17): then aggregations weight
    # each instance by what it stands for. Once true it stays true; while false it is read again at
    # most every MARKS_SECONDS (another worker's first fold is seen that late), so the readings of a
    # database never downsampled pay neither a round trip nor a text search per instance
    _downsampled = False
    _marks_read = -math.inf

    async def _weighted(self, connection: Connection) -> bool:
        if not self._downsampled and time.monotonic() >= self._marks_read + MARKS_SECONDS:
            self._marks_read = time.monotonic()
            marked = await connection.fetchval("SELECT EXISTS (SELECT FROM temporal_marks WHERE mark = 'downsampled')")
            self._downsampled = bool(marked)
        return self._downsampled

    @read_again_once
    async def _temporal_read(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run `fn` in a read-only snapshot under query_timeout, like query_entities."""
        timeout = self.query_timeout
        try:
            async with (
                self._fair.slot(),
                asyncio.timeout(timeout),
                self._lane.lease(self.pool) as connection,
                read_snapshot(connection, max(1, int(timeout * 1000))),
            ):
                return await fn(connection)
        except (TimeoutError, asyncpg.QueryCanceledError) as exc:
            raise QueryTimeout(f"the query took longer than {timeout} s") from exc
        except asyncpg.InvalidRegularExpressionError as exc:
            raise BadRequestData(f"idPattern is not a valid regular expression: {exc}") from exc

    async def _select(self, connection: Connection, tenant: str, query: TemporalQuery, now: int) -> Selection:
        """The page of matching entities (SQL filters, then the predicate and the scope test)."""
        query = id_pattern_in_python(query)  # PostgreSQL's regex dialect gets only what it reads as RE2 does
        query = bounded(query, self.query_timeout)  # the predicate stops at the deadline too
        p = Params()
        clauses = [f"e.tenant = {p(tenant)}"]
        if query.ids is not None:
            clauses.append(f"e.id = ANY({p(list(query.ids))}::text[])")
        if query.id_pattern is not None:
            clauses.append(f"e.id ~ {p(query.id_pattern)}")
        if query.types is not None:
            clauses.append(f"e.types && {p(list(query.types))}::text[]")
        # "has an instance" as a scalar subquery with LIMIT 1: one index probe per candidate entity.
        # Written as EXISTS, PostgreSQL turns it into a semi-join and, once the instances have
        # statistics, may plan the generic plan as a hash of every matching instance of every entity
        # (one entity's avg/day over 20,000 instances, 2,001 temporal entities: 9 ms of backend CPU
        # against 0.25 ms as probes; docs/performance.md, issue 15 sixth pass)
        if query.require_instances:
            where = instance_filter(query, now, p)
            clauses.append(f"(SELECT true FROM temporal_instances i WHERE i.epk = e.pk AND {where} LIMIT 1)")
        if query.any_of_attrs is not None:
            attrs = p(list(query.any_of_attrs))
            clauses.append(
                f"(SELECT true FROM temporal_instances h WHERE h.epk = e.pk AND h.attr = ANY({attrs}::text[])"
                f" AND (h.expires_us IS NULL OR h.expires_us > {p(now)}::bigint) LIMIT 1)"
            )
        sql = f"FROM temporal_entities e WHERE {' AND '.join(clauses)}"
        order = f" ORDER BY e.id {'DESC' if query.descending else 'ASC'}"
        start, limit = query.offset, query.limit
        if query.predicate is None and query.scope_test is None:
            paging, params = "", p.values
            if limit is not None:
                paging = f" LIMIT ${len(params) + 1} OFFSET ${len(params) + 2}"
                params = [*params, limit + 1, start]
            rows = await connection.fetch(f"SELECT e.pk, e.id, e.types {sql}{order}{paging}", *params)
            total = await connection.fetchval(f"SELECT count(*) {sql}", *p.values) if query.count else None
            has_more = limit is not None and len(rows) > limit
            picked = rows[:limit] if limit is not None else rows
            page = [(int(r["pk"]), str(r["id"]), list(r["types"])) for r in picked]
            return Selection(page, total, has_more, {})
        candidates = [
            (int(r["pk"]), str(r["id"]), list(r["types"]))
            for r in await connection.fetch(f"SELECT e.pk, e.id, e.types {sql}{order}", *p.values)
        ]
        stop = None if limit is None else start + limit
        matched: list[tuple[int, str, list[str]]] = []
        scoped: dict[int, Scoped] = {}
        loop = asyncio.get_running_loop()
        for first in range(0, len(candidates), CHUNK):
            chunk = candidates[first : first + CHUNK]
            if query.scope_test is not None:
                valid = await self._scope_validity(connection, [pk for pk, _, _ in chunk], query, now)
                chunk = [row for row in chunk if valid[row[0]].intervals]
                scoped.update((row[0], valid[row[0]]) for row in chunk)
            if query.predicate is not None and chunk:
                entities = await self._windowed(connection, chunk, query, now)
                # a predicate is user code that may block: it runs on the store's sync thread
                verdicts = await loop.run_in_executor(self._sync_pool, _judge, query.predicate, entities)
                chunk = [row for row, keep in zip(chunk, verdicts, strict=True) if keep]
            matched.extend(chunk)
            if not query.count and stop is not None and len(matched) > stop:
                break  # the page and has_more are known
        chosen = matched[start:stop]
        count = len(matched) if query.count else None
        more = stop is not None and len(matched) > stop
        return Selection(chosen, count, more, {pk: scoped[pk] for pk, _, _ in chosen if pk in scoped})

    async def _scope_validity(
        self, connection: Connection, pks: list[int], query: TemporalQuery, now: int
    ) -> dict[int, Scoped]:
        """scopeQ over time (4.18, 5.7.4.4 S4): each scope instance is valid from its time until the
        next one; per entity, the parts of the window in which a matching scope was valid, and those
        instances."""
        assert query.scope_test is not None
        column = column_of(query)
        rows = await connection.fetch(
            f"SELECT i.epk, {column} AS t, i.instance_id, i.doc FROM temporal_instances i"
            f" WHERE i.epk = ANY($1::bigint[]) AND i.attr = $2 AND {column} IS NOT NULL"
            f" AND (i.expires_us IS NULL OR i.expires_us > $3::bigint) ORDER BY i.epk, {column}, i.pk",
            pks,
            SCOPE_ATTR,
            now,
        )
        low = query.window.start if query.window.start is not None else -FOREVER
        high = query.window.end if query.window.end is not None else FOREVER
        found = {pk: Scoped([], []) for pk in pks}
        for index, row in enumerate(rows):
            since = row["t"]
            following = rows[index + 1] if index + 1 < len(rows) else None
            until = following["t"] if following is not None and following["epk"] == row["epk"] else FOREVER
            instance = orjson.loads(row["doc"])
            values = instance.get("value")
            values = values if isinstance(values, list) else [values]
            if since < high and until > low and values and query.scope_test(values):
                valid = found[row["epk"]]
                valid.intervals.append((max(since, low), min(until, high)))
                valid.instances.append({**instance, "instanceId": row["instance_id"]})
        return found

    async def _windowed(
        self, connection: Connection, rows: list[tuple[int, str, list[str]]], query: TemporalQuery, now: int
    ) -> list[Entity]:
        """The entities a predicate judges: every windowed instance of every attribute (the scope's
        values under "scope"), so q holds when any instance in the window satisfies it."""
        p = Params()
        pks = p([pk for pk, _, _ in rows])
        where = instance_filter(query, now, p, selection=False)
        column = column_of(query)
        attrs: dict[int, dict[str, list[Instance]]] = {pk: {} for pk, _, _ in rows}
        scopes: dict[int, list[str]] = {pk: [] for pk, _, _ in rows}
        for row in await connection.fetch(
            f"SELECT i.epk, i.attr, i.doc FROM temporal_instances i WHERE i.epk = ANY({pks}::bigint[]) AND {where}"
            f" ORDER BY i.epk, {column}, i.pk",
            *p.values,
        ):
            instance = orjson.loads(row["doc"])
            if row["attr"] == SCOPE_ATTR:
                values = instance.get("value")
                scopes[row["epk"]].extend(
                    v for v in (values if isinstance(values, list) else [values]) if isinstance(v, str)
                )
            else:
                attrs[row["epk"]].setdefault(row["attr"], []).append(instance)
        entities = []
        for pk, entity_id, types in rows:
            entity: Entity = {"id": entity_id, "type": types, "attrs": attrs[pk]}
            if scopes[pk]:
                entity["scope"] = list(dict.fromkeys(scopes[pk]))
            entities.append(entity)
        return entities

    @staticmethod
    def _kept_source(query: TemporalQuery, selection: Selection, now: int, p: Params, columns: str) -> str:
        """The selected instances of the page's entities (with lastN, the newest n of each series,
        each series read backwards through its (entity, attribute, time) index)."""
        where = instance_filter(query, now, p, scoped=selection.scoped)
        pks = p([pk for pk, _, _ in selection.rows])
        column = column_of(query)
        if query.last_n is None:
            return (
                f"SELECT {columns}, {column} AS t FROM temporal_instances i"
                f" WHERE i.epk = ANY({pks}::bigint[]) AND {where}"
            )
        return (
            f"SELECT x.* FROM ({series_of(query, pks, p)}) s CROSS JOIN LATERAL"
            f" (SELECT {columns}, {column} AS t FROM temporal_instances i"
            f" WHERE i.epk = s.epk AND i.attr = s.attr AND i.dataset = s.dataset AND {where}"
            f" ORDER BY {column} DESC, i.pk DESC LIMIT {p(query.last_n)}::bigint) x"
        )

    async def _kept(
        self, connection: Connection, selection: Selection, query: TemporalQuery, now: int
    ) -> tuple[list[Entity], tuple[int, int] | None]:
        """The selected instances of the page's entities, at most max_instances of them: the oldest
        (or, with lastN, the newest) are kept; attributes the cut emptied stay, empty. Under a scopeQ
        only instances of the times a matching scope was valid count, and the scope shows those scopes."""
        selected = selection.rows
        if query.max_instances <= 0 or not selected:
            return [{"id": entity_id, "type": types, "attrs": {}} for _, entity_id, types in selected], None
        columns = "i.pk, i.epk, i.attr, i.instance_id, i.doc"
        if query.last_n is not None and query.last_n <= query.max_instances + 1:
            # the newest n of each series are few: one statement gives them and the attribute order
            p = Params()
            source = self._kept_source(query, selection, now, p, columns)
            newest = await connection.fetch(
                f"SELECT b.epk, b.attr, b.t, b.pk, b.instance_id, b.doc,"
                f" min(b.pk) OVER (PARTITION BY b.epk, b.attr) AS first FROM ({source}) b ORDER BY b.t DESC, b.pk DESC",
                *p.values,
            )
            order = {(row["epk"], row["attr"]): row["first"] for row in newest}
            keys = sorted(order, key=order.__getitem__)
            rows = newest[: query.max_instances + 1]
        else:
            p = Params()
            source = self._kept_source(query, selection, now, p, "i.pk, i.epk, i.attr")
            keys = [
                (row["epk"], row["attr"])
                for row in await connection.fetch(
                    f"SELECT b.epk, b.attr FROM ({source}) b GROUP BY b.epk, b.attr ORDER BY min(b.pk)", *p.values
                )
            ]
            p = Params()
            source = self._kept_source(query, selection, now, p, columns)
            direction = "DESC" if query.last_n is not None else "ASC"
            rows = await connection.fetch(
                f"SELECT b.epk, b.attr, b.t, b.pk, b.instance_id, b.doc FROM ({source}) b"
                f" ORDER BY b.t {direction}, b.pk {direction} LIMIT {p(query.max_instances + 1)}::bigint",
                *p.values,
            )
        cut = None
        if len(rows) > query.max_instances:
            rows = rows[: query.max_instances]
            cut = (int(rows[0]["t"]), int(rows[-1]["t"]))
        found: dict[int, dict[str, list[tuple[int, int, Instance]]]] = {}
        for epk, attr in keys:
            found.setdefault(epk, {})[attr] = []
        for row in rows:
            instance = orjson.loads(row["doc"])
            instance["instanceId"] = row["instance_id"]
            found[row["epk"]][row["attr"]].append((row["t"], row["pk"], instance))
        return assemble(selection, found), cut

    async def _aggregate(
        self, connection: Connection, selection: Selection, query: TemporalQuery, spec: AggregationSpec, now: int
    ) -> list[AggregatedEntity]:
        """Per series of the page's entities, a GROUP BY over the period number of its windowed
        instances, computing only the statistics spec.stats asks for."""
        selected = selection.rows
        if not selected:
            return []
        weighted = await self._weighted(connection)
        sql_of = STAT_WEIGHTED if weighted else STAT_SQL
        more = f", {WEIGHTED}" if weighted else ""
        p = Params()
        # attrs and datasetIds are those of the series already
        where = instance_filter(query, now, p, selection=False, scoped=selection.scoped)
        pks = p([pk for pk, _, _ in selected])
        column = column_of(query)
        if spec.months:
            period = months_between(spec.months)
        elif spec.micros:
            period = f"((p.t - p.origin) / {int(spec.micros)}::bigint)"
        else:
            period = "0::bigint"
        # per series (a skip scan finds them), one GROUP BY on the period number alone: hashed
        same = f"i.epk = s.epk AND i.attr = s.attr AND i.dataset = s.dataset AND {where}"
        if spec.origin is None:  # each series' periods count from its first instance in the window
            origin = f"(SELECT min({column}) FROM temporal_instances i WHERE {same})"
        else:
            origin = f"{p(spec.origin)}::bigint"
        stats = ", ".join(
            f'{sql_of[stat] if spec.wants(stat) else NOT_ASKED.get(stat, "NULL")} AS "{stat}"' for stat in STATS
        )
        # a period's first and last times bound only the one period of no duration (period_bounds):
        # when the statistics are named and periods have a length, they are skipped (two aggregates
        # over every instance, ~7% of the statement; AggregationSpec)
        times = "min(t) AS first, max(t) AS last" if spec.wants_times() else "0 AS first, 0 AS last"
        sql = (
            f"SELECT s.epk, s.attr, s.dataset, x.* FROM ({series_of(query, pks, p)}) s CROSS JOIN LATERAL"
            f" (SELECT max(kind) AS kind, {period} AS k, origin, {times}, {stats}"
            f" FROM (SELECT i.kind, {column} AS t, i.num, i.vtext{more}, o.origin FROM temporal_instances i,"
            f" (SELECT {origin} AS origin) o WHERE {same}) p GROUP BY k, origin) x"
            " ORDER BY s.epk, s.attr, s.dataset, x.k"
        )
        series: dict[int, dict[str, dict[str, AggregatedSeries]]] = {}
        for row in await connection.fetch(sql, *p.values):
            by_dataset = series.setdefault(row["epk"], {}).setdefault(row["attr"], {})
            dataset = row["dataset"]
            if dataset not in by_dataset:
                by_dataset[dataset] = AggregatedSeries(dataset or None, row["kind"], [])
            by_dataset[dataset].periods.append(_stats(row))
        return [
            AggregatedEntity(entity_id, types, {attr: list(d.values()) for attr, d in series.get(pk, {}).items()})
            for pk, entity_id, types in selected
        ]


def _folded(member: str, otherwise: str, cast: str = "float8") -> str:
    """SQL of a number a downsampled hourly instance (store/temporal_downsample.py) keeps in its
    doc as sub-property `member`, else `otherwise`: a text search first, so that the readings'
    documents are not parsed."""
    found = f"(i.doc -> '{member}' ->> 'value')::{cast}"
    marked = f"strpos(i.doc::text, '{_MARK}') > 0"
    return f"CASE WHEN {marked} THEN COALESCE({found}, {otherwise}) ELSE {otherwise} END"


_MARK = SAMPLES.rsplit("/", 1)[1]  # "history#sampleCount": only a downsampled instance has it
MARKS_SECONDS = 60.0  # how stale a worker's "never downsampled" may be (PostgresTemporalReads)
# what each row stands for (as sqlite_temporal.WEIGHTED): w readings, their least and greatest
# value (lo, hi) and the sum of their squares (sq)
WEIGHTED = (
    f"{_folded(SAMPLES, '1')} AS w, {_folded(LEAST, 'i.num')} AS lo, {_folded(GREATEST, 'i.num')} AS hi,"
    f" {_folded(SQUARES, 'i.num * i.num')} AS sq"
)
# statistic -> SQL over the period's rows (p: t, num, vtext), as sqlite_temporal.STAT_SQL
STAT_SQL = {
    "count": "count(*)",
    "distinct": "count(DISTINCT vtext)",
    "numbers": "count(num)",
    "sum": "sum(num)",
    "avg": "avg(num)",
    "min": "min(num)",
    "max": "max(num)",
    "sumsq": "sum(num * num)",
    "min_text": "min(vtext)",
    "max_text": "max(vtext)",
}
# the same over rows with WEIGHTED's columns too (w, a float8: no numeric sums), once downsampled
STAT_WEIGHTED = {
    **STAT_SQL,
    "count": "sum(w)",
    "numbers": "coalesce(sum(CASE WHEN num IS NOT NULL THEN w END), 0)",
    "sum": "sum(num * w)",
    "avg": "sum(num * w) / sum(CASE WHEN num IS NOT NULL THEN w END)",
    "min": "min(lo)",
    "max": "max(hi)",
    "sumsq": "sum(CASE WHEN num IS NOT NULL THEN sq END)",
}
NOT_ASKED = {"count": "0::bigint", "distinct": "0::bigint", "numbers": "0::bigint"}


def _stats(row: Any) -> PeriodStats:
    def number(name: str) -> float | None:
        value = row[name]
        return None if value is None else float(value)

    return PeriodStats(
        int(row["k"]),
        int(row["origin"]),
        int(row["first"]),
        int(row["last"]),
        int(row["count"]),
        int(row["distinct"]),
        int(row["numbers"]),
        number("sum"),
        number("avg"),
        number("min"),
        number("max"),
        number("sumsq"),
        row["min_text"],
        row["max_text"],
    )
