"""The temporal store on SQLite, mixed into SQLiteStore (same file, writer thread and readers).

Each attribute instance is one compact row (sqlite_history.py): interned attribute, datasetId and
type, its times as integer microseconds (observedAt, createdAt, modifiedAt, deletedAt, expiresAt),
its value as a number (for sums and averages) or JSON text (for distinct counts). One index on
(entity, attribute, observedAt) serves the default window and every per-entity lookup; aggregation
is one GROUP BY over period numbers computed in SQL, so a year of hourly readings never travels to
Python row by row. History rows made by entity changes are appended in bulk when the transaction's
writes are drained (sqlite_writes.py).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from cityos.audit.chain import AuditRow
from cityos.audit.recorder import row as audit_row
from cityos.entities.model import Entity, Instance
from cityos.store.base import HistoryRow
from cityos.store.paging import bounded
from cityos.store.sqlite_downsample import WEIGHTED
from cityos.store.sqlite_history import (
    DECODED,
    INSERT_INSTANCE,
    VALUE_TEXT,
    VREF,
    Names,
    TimeCodec,
    decode,
    encode,
    encode_row,
    kind_of,
    pk_of,
    prune_values,
)
from cityos.store.sqlite_query import LOOP_BACKOFF, _NotOnLoop, _slow_shapes
from cityos.store.sqlite_temporal_periods import (
    LOOP_PERIODS,
    _period_range,
    _period_stats,
    _select,
    _truncated,
)
from cityos.store.temporal_base import (
    SCOPE_ATTR,
    STATS,
    AggregatedEntity,
    AggregatedSeries,
    AggregatePage,
    AggregationSpec,
    PeriodStats,
    Scoped,
    Selection,
    TemporalEntityInfo,
    TemporalPage,
    TemporalQuery,
    assemble,
)
from cityos.store.temporal_downsample import SAMPLES
from cityos.temporal.query import to_micros

T = TypeVar("T")
COLUMNS = {  # the time columns (PostgreSQL's names; SQLite reads them through TIMES)
    "observedAt": "observed_us",
    "createdAt": "created_us",
    "modifiedAt": "modified_us",
    "deletedAt": "deleted_us",
}
# each time of a row of `i` (temporal_rows) in SQL: createdAt is stored as its distance to modifiedAt
# when there is one (sqlite_history.encode)
TIMES = {
    "observedAt": "i.observed_us",
    "createdAt": "(CASE WHEN i.modified_us IS NULL THEN i.created_us ELSE i.modified_us - i.created_us END)",
    "modifiedAt": "i.modified_us",
    "deletedAt": "i.deleted_us",
}
FOREVER = 2**62  # an open end of a validity interval, in microseconds
TEMPORAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS temporal_entities (  -- types: a JSON list of temporal_names ids (IRIs before layout 5)
    pk INTEGER PRIMARY KEY, tenant TEXT NOT NULL, id TEXT NOT NULL, types BLOB NOT NULL, UNIQUE (tenant, id)
);
CREATE TABLE IF NOT EXISTS temporal_types (  -- type: its IRI's id in temporal_names (layout 5)
    type INTEGER NOT NULL, epk INTEGER NOT NULL, PRIMARY KEY (type, epk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS temporal_datasets ON temporal_rows (epk, attr, dataset) WHERE dataset > 0;
"""  # the instances (temporal_rows, temporal_names): sqlite_history.LAYOUT_SCHEMA
_MONTH = (
    "(CAST(strftime('%Y', {x} / 1000000, 'unixepoch') AS INTEGER) * 12"
    " + CAST(strftime('%m', {x} / 1000000, 'unixepoch') AS INTEGER))"
)
_MONTH_START = "(CAST(unixepoch(strftime('%Y-%m-01', {x} / 1000000, 'unixepoch')) AS INTEGER) * 1000000)"


def types_of(connection: sqlite3.Connection, names: Names, stored: bytes) -> list[str]:
    """A temporal entity's types from its `types` column: a JSON list of their interned ids (layout 5),
    or of the IRIs themselves (rows written before)."""
    return [t if isinstance(t, str) else names.name(connection, t) for t in orjson.loads(stored)]


TYPE_LISTS_LIMIT = 1024  # distinct `types` columns remembered by the writer (a city has a few dozen)


def _known_types(connection: sqlite3.Connection, names: Names, stored: bytes) -> list[str]:
    """types_of, remembered by the column's bytes once every id in it is committed (never renamed
    after): most entities of a city share a handful of type lists. The list is not to be changed."""
    found = names.type_lists.get(stored)
    if found is None:
        ids = orjson.loads(stored)
        found = [t if isinstance(t, str) else names.name(connection, t) for t in ids]
        committed = names.names
        if len(names.type_lists) < TYPE_LISTS_LIMIT and all(isinstance(t, str) or t in committed for t in ids):
            names.type_lists[stored] = found
    return found


_ASSIGN = (
    "dataset = ?, shape = ?, observed_us = ?, created_us = ?, modified_us = ?, deleted_us = ?, expires_us = ?,"
    " num = ?, vtext = ?, vref = ?, vkind = ?, rest = ?"
)
_COLUMNS = ", ".join(f"i.{name}" for name in DECODED)
# skip scans (each step one index seek): an entity's attributes, and an attribute's datasetIds other
# than the default one (through the partial index temporal_datasets, whose condition they repeat)
_ATTRS_OF = (
    "WITH RECURSIVE a(x) AS (SELECT MIN(attr) FROM temporal_rows WHERE epk = ?"
    " UNION ALL SELECT (SELECT MIN(attr) FROM temporal_rows WHERE epk = ? AND attr > a.x) FROM a WHERE a.x IS NOT NULL)"
    " SELECT x FROM a"
)
_DATASETS_OF = (
    "WITH RECURSIVE d(x) AS (SELECT MIN(dataset) FROM temporal_rows WHERE epk = ? AND attr = ? AND dataset > 0"
    " UNION ALL SELECT (SELECT MIN(dataset) FROM temporal_rows WHERE epk = ? AND attr = ? AND dataset > 0"
    " AND dataset > d.x) FROM d WHERE d.x IS NOT NULL) SELECT x FROM d"
)


def _months_between(months: int) -> str:
    """Period number of `p.t` counted in calendar months from `p.origin` (a partial month does not count)."""
    t, o = "p.t", "p.origin"
    offset_t = f"({t} - {_MONTH_START.format(x=t)})"
    offset_o = f"({o} - {_MONTH_START.format(x=o)})"
    return f"(({_MONTH.format(x=t)} - {_MONTH.format(x=o)} - ({offset_t} < {offset_o})) / {int(months)})"


class SQLiteTemporal:
    """The TemporalStore methods; SQLiteStore supplies the connections and transactions."""

    if TYPE_CHECKING:
        query_timeout: float
        _names: Names  # interned names, as the readers see them
        _wnames: Names  # interned names, as the writer sees them
        _times: TimeCodec
        _instance_prefix: str
        _history: list[tuple[Any, ...]]  # writer thread: INSERT_INSTANCE rows to drain
        _epks: dict[tuple[str, str], int]  # writer thread: temporal entities of this transaction
        # writer thread: the temporal entity row of the entity being written, read with its document
        _temporal_read: tuple[tuple[str, str], tuple[tuple[int, bytes] | None]] | None

        async def _write(self, fn: Callable[[sqlite3.Connection], T], *, groupable: bool = True) -> T: ...

        def _ensure_tenant(self, connection: sqlite3.Connection, tenant: str) -> None: ...

        async def _read_with_deadline(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        def _on_loop(self, run: Callable[[sqlite3.Connection, float], T]) -> T | None: ...

        def _audit_note(self, row: Callable[[], AuditRow | None]) -> None: ...

    # -- writing -------------------------------------------------------------------------------------
    def _temporal_pk(
        self,
        connection: sqlite3.Connection,
        tenant: str,
        entity_id: str,
        types: Sequence[str],
        read: tuple[tuple[int, bytes] | None] | None = None,
    ) -> tuple[int, bool]:
        """The temporal entity's row (created if needed, types unioned) and whether it is new;
        `read`: that row (pk, types), or (None,) when there is none, read by the caller in this
        transaction (sqlite_writes.ENTITY_ROW), so it is not read again."""
        names = self._wnames
        row = (
            read[0]
            if read is not None
            else connection.execute(
                "SELECT pk, types FROM temporal_entities WHERE tenant = ? AND id = ?", (tenant, entity_id)
            ).fetchone()
        )
        if row is None:
            self._ensure_tenant(connection, tenant)
            ids = [names.id(connection, t) for t in types]
            pk = connection.execute(
                "INSERT INTO temporal_entities (tenant, id, types) VALUES (?, ?, ?)",
                (tenant, entity_id, orjson.dumps(ids)),
            ).lastrowid
            assert pk is not None
            connection.executemany("INSERT OR IGNORE INTO temporal_types VALUES (?, ?)", [(t, pk) for t in ids])
            return pk, True
        pk, stored = row
        known = _known_types(connection, names, stored)
        added = [t for t in types if t not in known] if types != known else None  # the same types: none added
        if added:
            ids = [names.id(connection, t) for t in [*known, *added]]
            connection.execute("UPDATE temporal_entities SET types = ? WHERE pk = ?", (orjson.dumps(ids), pk))
            connection.executemany("INSERT OR IGNORE INTO temporal_types VALUES (?, ?)", [(t, pk) for t in ids])
        return pk, False

    def _put_instance(self, connection: sqlite3.Connection, epk: int, attr: str, instance: Instance) -> None:
        """Store an instance now, in place of one of the same attribute, datasetId and observedAt."""
        row = encode(connection, self._wnames, self._times, epk, attr, instance)
        observed = row[4]
        if observed is not None:
            found = connection.execute(
                "SELECT pk FROM temporal_rows WHERE epk = ? AND attr = ? AND observed_us = ? AND dataset = ?",
                (epk, row[1], observed, row[2]),
            ).fetchone()
            if found is not None:
                connection.execute(f"UPDATE temporal_rows SET {_ASSIGN} WHERE pk = ?", (*row[2:14], found[0]))
                return
        connection.execute(INSERT_INSTANCE, row)

    def _append_history(self, connection: sqlite3.Connection, rows: Sequence[HistoryRow]) -> None:
        """Called inside a write transaction with the history a change listener produced: the rows
        are encoded now and inserted in bulk when the transaction's writes are drained."""
        epks = self._epks
        pending = self._history
        names, times = self._wnames, self._times
        for row in rows:
            key = (row.tenant, row.entity_id)
            epk = epks.get(key)
            if epk is None:
                read = self._temporal_read
                known = read[1] if read is not None and read[0] == key else None
                epk = epks[key] = self._temporal_pk(connection, row.tenant, row.entity_id, row.types, known)[0]
            pending.append(encode_row(connection, names, times, epk, row.attr, row.instance))

    async def temporal_write(
        self, tenant: str, entity_id: str, types: Sequence[str], instances: Sequence[tuple[str, Instance]]
    ) -> bool:
        def run(connection: sqlite3.Connection) -> bool:
            pk, created = self._temporal_pk(connection, tenant, entity_id, types)
            for attr, instance in instances:
                self._put_instance(connection, pk, attr, instance)
            self._audit_note(lambda: audit_row("temporal.write", tenant, [entity_id]))
            return created

        return await self._write(run)

    def _locate(self, connection: sqlite3.Connection, tenant: str, entity_id: str) -> int | None:
        row = connection.execute(
            "SELECT pk FROM temporal_entities WHERE tenant = ? AND id = ?", (tenant, entity_id)
        ).fetchone()
        return None if row is None else int(row[0])

    def _instance_row(
        self, connection: sqlite3.Connection, epk: int | None, attr: str, instance_id: str
    ) -> tuple[Any, ...] | None:
        """(pk, *DECODED) of an instance of an entity's attribute, by its instanceId."""
        if epk is None:
            return None
        pk = pk_of(self._instance_prefix, instance_id)
        which = "i.pk = ? AND i.instance_id IS NULL" if pk is not None else "i.instance_id = ?"
        row: tuple[Any, ...] | None = connection.execute(
            f"SELECT i.pk, {_COLUMNS} FROM temporal_rows i WHERE {which} AND i.epk = ? AND i.attr = ?",
            (pk if pk is not None else instance_id, epk, self._wnames.find(connection, attr)),
        ).fetchone()
        return row

    async def temporal_modify_instance(
        self, tenant: str, entity_id: str, attr: str, instance_id: str, instance: Instance
    ) -> bool:
        def run(connection: sqlite3.Connection) -> bool:
            epk = self._locate(connection, tenant, entity_id)
            row = self._instance_row(connection, epk, attr, instance_id)
            if epk is None or row is None:
                return False
            stored = decode(connection, self._wnames, self._times, self._instance_prefix, row[0], row[1:])
            merged = {**stored, **instance}
            merged.pop("instanceId", None)
            columns = encode(connection, self._wnames, self._times, epk, attr, merged)
            connection.execute(f"UPDATE temporal_rows SET {_ASSIGN} WHERE pk = ?", (*columns[2:14], row[0]))
            old_ref = row[1 + DECODED.index("vref")]
            if old_ref is not None and old_ref != columns[VREF]:
                prune_values(connection, self._wnames, {old_ref})
            self._audit_note(lambda: audit_row("temporal.modify-instance", tenant, [entity_id], {"attr": attr}))
            return True

        return await self._write(run)

    async def temporal_delete_instance(self, tenant: str, entity_id: str, attr: str, instance_id: str) -> bool:
        def run(connection: sqlite3.Connection) -> bool:
            row = self._instance_row(connection, self._locate(connection, tenant, entity_id), attr, instance_id)
            if row is None:
                return False
            self._delete_rows(connection, "pk = ?", (row[0],))
            self._audit_note(lambda: audit_row("temporal.delete-instance", tenant, [entity_id], {"attr": attr}))
            return True

        return await self._write(run)

    async def temporal_delete_attribute(
        self, tenant: str, entity_id: str, attr: str, *, dataset: str | None, delete_all: bool
    ) -> bool:
        def run(connection: sqlite3.Connection) -> bool:
            epk = self._locate(connection, tenant, entity_id)
            if epk is None:
                return False
            attr_id = self._wnames.find(connection, attr)
            if delete_all:
                done = self._delete_rows(connection, "epk = ? AND attr = ?", (epk, attr_id)) > 0
            else:
                number = self._wnames.find(connection, dataset) if dataset else 0
                done = self._delete_rows(connection, "epk = ? AND attr = ? AND dataset = ?", (epk, attr_id, number)) > 0
            if done:
                self._audit_note(lambda: audit_row("temporal.delete-attribute", tenant, [entity_id], {"attr": attr}))
            return done

        return await self._write(run)

    async def temporal_delete_entity(self, tenant: str, entity_id: str) -> bool:
        def run(connection: sqlite3.Connection) -> bool:
            epk = self._locate(connection, tenant, entity_id)
            if epk is None:
                return False
            self._delete_rows(connection, "epk = ?", (epk,))
            connection.execute("DELETE FROM temporal_types WHERE epk = ?", (epk,))
            connection.execute("DELETE FROM temporal_entities WHERE pk = ?", (epk,))
            self._audit_note(lambda: audit_row("temporal.delete-entity", tenant, [entity_id]))
            return True

        return await self._write(run)

    def _delete_rows(self, connection: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> int:
        """Delete history rows, and the long values that were theirs alone; returns how many rows."""
        refs = connection.execute(f"DELETE FROM temporal_rows WHERE {where} RETURNING vref", params).fetchall()
        prune_values(connection, self._wnames, {ref for (ref,) in refs if ref is not None})
        return len(refs)

    # -- reading -------------------------------------------------------------------------------------
    async def temporal_entity(self, tenant: str, entity_id: str) -> TemporalEntityInfo | None:
        now = _now()

        def run(connection: sqlite3.Connection) -> TemporalEntityInfo | None:
            row = connection.execute(
                "SELECT pk, types FROM temporal_entities WHERE tenant = ? AND id = ?", (tenant, entity_id)
            ).fetchone()
            if row is None:
                return None
            attrs: dict[str, dict[str | None, str]] = {}
            latest = connection.execute(
                "SELECT attr, dataset, shape, MAX(pk) FROM temporal_rows"
                " WHERE epk = ? AND (expires_us IS NULL OR expires_us > ?) GROUP BY attr, dataset",
                (row[0], now),
            )
            names = self._names
            series = sorted(  # by IRI and datasetId, as their ids do not sort
                (names.name(connection, attr), names.name(connection, dataset) if dataset else "", shape)
                for attr, dataset, shape, _ in latest.fetchall()
            )
            for attr, dataset, shape in series:
                attrs.setdefault(attr, {})[dataset or None] = kind_of(names.name(connection, shape))
            return TemporalEntityInfo(entity_id, types_of(connection, names, row[1]), attrs)

        return await self._read_with_deadline(run)

    async def temporal_query(self, tenant: str, query: TemporalQuery) -> TemporalPage:
        now = _now()

        def run(connection: sqlite3.Connection, loop_end: float | None = None) -> TemporalPage:
            selection = self._select(connection, tenant, query, now)
            cap = None if loop_end is None else LOOP_ROWS
            entities, cut = self._kept(connection, selection, query, now, cap)
            return TemporalPage(entities, selection.total, selection.has_more, cut)

        if _on_loop_shape(query):  # lastN of one entity: a few index seeks, read on the loop
            shape = ("temporal-last", tenant)
            if _slow_shapes.get(shape, 0.0) < time.monotonic():
                page = self._on_loop(run)
                if page is not None:
                    return page
                _slow_shapes[shape] = time.monotonic() + LOOP_BACKOFF
        return await self._read_with_deadline(run)

    async def temporal_aggregate(self, tenant: str, query: TemporalQuery, spec: AggregationSpec) -> AggregatePage:
        now = _now()

        def run(connection: sqlite3.Connection) -> AggregatePage:
            selection = self._select(connection, tenant, query, now)
            entities = self._aggregate(connection, selection, query, spec, now)
            return AggregatePage(entities, selection.total, selection.has_more)

        return await self._read_with_deadline(run)

    def _filter(
        self,
        connection: sqlite3.Connection,
        query: TemporalQuery,
        now: int,
        *,
        selection: bool = True,
        scoped: dict[int, Scoped] | None = None,
        bounds: bool = True,
    ) -> tuple[str, list[Any]]:
        """SQL over `i` (temporal_rows) for the window (without its bounds: the caller states them),
        visibility, (selection) attrs/datasetIds and (scoped) the times each entity's matching
        scopes were valid."""
        column = TIMES[query.window.column]
        clauses = [f"{column} IS NOT NULL", "(i.expires_us IS NULL OR i.expires_us > ?)"]
        params: list[Any] = [now]
        if bounds and query.window.start is not None:
            clauses.append(f"{column} >= ?")
            params.append(query.window.start)
        if bounds and query.window.end is not None:
            clauses.append(f"{column} < ?")
            params.append(query.window.end)
        if selection and query.attrs is not None:
            clauses.append(f"i.attr IN ({','.join('?' * len(query.attrs))})")
            params.extend(self._names.find(connection, attr) for attr in query.attrs)
        if selection and query.datasets is not None:
            clauses.append(f"i.dataset IN ({','.join('?' * len(query.datasets))})")
            params.extend(self._names.find(connection, d) if d else 0 for d in query.datasets)
        if scoped:
            ranges = []
            params.append(self._names.find(connection, SCOPE_ATTR))
            for epk, valid in scoped.items():
                spans = " OR ".join(f"({column} >= ? AND {column} < ?)" for _ in valid.intervals)
                ranges.append(f"(i.epk = ? AND ({spans}))")
                params.extend([epk, *(bound for span in valid.intervals for bound in span)])
            clauses.append(f"i.attr != ? AND ({' OR '.join(ranges)})")
        return " AND ".join(clauses), params

    def _select(self, connection: sqlite3.Connection, tenant: str, query: TemporalQuery, now: int) -> Selection:
        """The page of matching entities (SQL filters, then the predicate and the scope test)."""
        query = bounded(query, self.query_timeout)  # the predicate stops at the deadline too
        clauses = ["e.tenant = ?"]
        params: list[Any] = [tenant]
        if query.ids is not None:
            clauses.append(f"e.id IN ({','.join('?' * len(query.ids))})")
            params.extend(query.ids)
        if query.id_pattern is not None:
            clauses.append("regexp(?, e.id)")
            params.append(query.id_pattern)
        if query.types is not None:
            marks = ",".join("?" * len(query.types))
            clauses.append(f"e.pk IN (SELECT epk FROM temporal_types WHERE type IN ({marks}))")
            params.extend(self._names.find(connection, t) for t in query.types)
        if query.require_instances:
            where, extra = self._filter(connection, query, now)
            clauses.append(f"EXISTS (SELECT 1 FROM temporal_rows i WHERE i.epk = e.pk AND {where})")
            params.extend(extra)
        if query.any_of_attrs is not None:
            marks = ",".join("?" * len(query.any_of_attrs))
            clauses.append(
                f"EXISTS (SELECT 1 FROM temporal_rows h WHERE h.epk = e.pk AND h.attr IN ({marks})"
                " AND (h.expires_us IS NULL OR h.expires_us > ?))"
            )
            params.extend([*(self._names.find(connection, attr) for attr in query.any_of_attrs), now])
        sql = f"FROM temporal_entities e WHERE {' AND '.join(clauses)}"
        order = f" ORDER BY e.id {'DESC' if query.descending else 'ASC'}"
        start, limit = query.offset, query.limit
        scoped: dict[int, Scoped] = {}
        if query.predicate is None and query.scope_test is None:
            paging = "" if limit is None else " LIMIT ? OFFSET ?"
            page_params = params if limit is None else [*params, limit + 1, start]
            rows = connection.execute(f"SELECT e.pk, e.id, e.types {sql}{order}{paging}", page_params).fetchall()
            total = connection.execute(f"SELECT COUNT(*) {sql}", params).fetchone()[0] if query.count else None
            has_more = limit is not None and len(rows) > limit
            picked = rows[:limit] if limit is not None else rows
        else:
            candidates = connection.execute(f"SELECT e.pk, e.id, e.types {sql}{order}", params).fetchall()
            matched = []
            for row in candidates:
                if query.scope_test is not None:
                    valid = self._scope_validity(connection, row[0], query, now)
                    if not valid.intervals:
                        continue
                    scoped[row[0]] = valid
                if query.predicate is None or query.predicate(self._windowed(connection, row, query, now)):
                    matched.append(row)
            stop = None if limit is None else start + limit
            picked, total = matched[start:stop], len(matched) if query.count else None
            has_more = stop is not None and len(matched) > stop
        names = self._names
        rows = [(pk, entity_id, types_of(connection, names, types)) for pk, entity_id, types in picked]
        return Selection(rows, total, has_more, {pk: scoped[pk] for pk, _, _ in rows if pk in scoped})

    def _scope_validity(self, connection: sqlite3.Connection, epk: int, query: TemporalQuery, now: int) -> Scoped:
        """scopeQ over time (4.18, 5.7.4.4 S4): each scope instance is valid from its time until the
        next one; the parts of the window in which a matching scope was valid, and those instances."""
        assert query.scope_test is not None
        column = TIMES[query.window.column]
        rows = connection.execute(
            f"SELECT {column}, i.pk, {_COLUMNS} FROM temporal_rows i WHERE i.epk = ? AND i.attr = ?"
            f" AND {column} IS NOT NULL AND (i.expires_us IS NULL OR i.expires_us > ?) ORDER BY {column}, i.pk",
            (epk, self._names.find(connection, SCOPE_ATTR), now),
        ).fetchall()
        low = query.window.start if query.window.start is not None else -FOREVER
        high = query.window.end if query.window.end is not None else FOREVER
        valid = Scoped([], [])
        for index, (since, pk, *columns) in enumerate(rows):
            until = rows[index + 1][0] if index + 1 < len(rows) else FOREVER
            instance = decode(connection, self._names, self._times, self._instance_prefix, pk, columns)
            values = instance.get("value")
            values = values if isinstance(values, list) else [values]
            if since < high and until > low and values and query.scope_test(values):
                valid.intervals.append((max(since, low), min(until, high)))
                valid.instances.append(instance)
        return valid

    def _windowed(
        self, connection: sqlite3.Connection, row: tuple[int, str, bytes], query: TemporalQuery, now: int
    ) -> Entity:
        """The entity a predicate judges: every windowed instance of every attribute (the scope's
        values under "scope"), so q holds when any instance in the window satisfies it."""
        where, params = self._filter(connection, query, now, selection=False)
        column = TIMES[query.window.column]
        attrs: dict[str, list[Instance]] = {}
        scope: list[str] = []
        for number, pk, *columns in connection.execute(
            f"SELECT i.attr, i.pk, {_COLUMNS} FROM temporal_rows i WHERE i.epk = ? AND {where} ORDER BY {column}, i.pk",
            [row[0], *params],
        ).fetchall():
            attr = self._names.name(connection, number)
            instance = decode(connection, self._names, self._times, self._instance_prefix, pk, columns)
            del instance["instanceId"]  # the predicate judges the instance as it was stored
            if attr == SCOPE_ATTR:
                values = instance.get("value")
                scope.extend(v for v in (values if isinstance(values, list) else [values]) if isinstance(v, str))
            else:
                attrs.setdefault(attr, []).append(instance)
        entity: Entity = {"id": row[1], "type": types_of(connection, self._names, row[2]), "attrs": attrs}
        if scope:
            entity["scope"] = list(dict.fromkeys(scope))
        return entity

    def _series(
        self, connection: sqlite3.Connection, pks: Sequence[int], query: TemporalQuery
    ) -> list[tuple[int, int, int]]:
        """(entity, attribute, datasetId) of every series the query may select from these entities,
        found through the indexes in O(series) steps, not by reading the instances: the attributes
        by a skip scan of the (entity, attribute, time) index, the datasetIds other than the default
        one by a skip scan of the partial index on them. Some may have nothing in the window."""
        names = self._names
        found: list[tuple[int, int, int]] = []
        wanted = (
            None if query.attrs is None else [a for a in (names.find(connection, x) for x in query.attrs) if a >= 0]
        )
        datasets = None
        if query.datasets is not None:
            datasets = [d for d in (names.find(connection, x) if x else 0 for x in query.datasets) if d >= 0]
        for epk in pks:
            attrs = wanted
            if attrs is None:
                attrs = [row[0] for row in connection.execute(_ATTRS_OF, (epk, epk)) if row[0] is not None]
            for attr in attrs:
                if datasets is not None:
                    found.extend((epk, attr, dataset) for dataset in datasets)
                    continue
                found.append((epk, attr, 0))
                found.extend(
                    (epk, attr, row[0])
                    for row in connection.execute(_DATASETS_OF, (epk, attr, epk, attr))
                    if row[0] is not None
                )
        return found

    def _newest(
        self, connection: sqlite3.Connection, pks: Sequence[int], query: TemporalQuery, where: str, params: list[Any]
    ) -> tuple[list[tuple[int, str]], list[Any]]:
        """lastN: the newest n of each series (read backwards through the (entity, attribute, time)
        index), the newest max_instances + 1 of them all first, and the (entity, attribute) pairs
        in the order of the first stored instance among their newest n."""
        assert query.last_n is not None
        column = TIMES[query.window.column]
        limit = min(query.last_n, query.max_instances + 1)  # the cut keeps no more of any series
        series = f"FROM temporal_rows i WHERE i.epk = ? AND i.attr = ? AND i.dataset = ? AND {where}"
        newest = f"SELECT i.epk, i.attr, {column} AS t, i.pk, {_COLUMNS} {series} ORDER BY {column} DESC, i.pk DESC"
        rows: list[Any] = []
        first: dict[tuple[int, int], int] = {}
        for epk, attr, dataset in self._series(connection, pks, query):
            got = connection.execute(f"{newest} LIMIT ?", [epk, attr, dataset, *params, limit]).fetchall()
            if not got:
                continue
            oldest = min(row[3] for row in got)
            if len(got) == limit < query.last_n:  # the first stored of the n lies beyond the rows read
                oldest = connection.execute(
                    f"SELECT MIN(pk) FROM (SELECT i.pk {series} ORDER BY {column} DESC, i.pk DESC LIMIT ?)",
                    [epk, attr, dataset, *params, query.last_n],
                ).fetchone()[0]
            rows.extend(got)
            key = (epk, attr)
            first[key] = min(first.get(key, oldest), oldest)
        rows.sort(key=lambda row: (row[2], row[3]), reverse=True)
        names = self._names
        keys = [(epk, names.name(connection, attr)) for epk, attr in sorted(first, key=first.__getitem__)]
        return keys, rows[: query.max_instances + 1]

    def _kept(
        self,
        connection: sqlite3.Connection,
        selection: Selection,
        query: TemporalQuery,
        now: int,
        cap: int | None = None,
    ) -> tuple[list[Entity], tuple[int, int] | None]:
        """The selected instances of the page's entities, at most max_instances of them: the oldest
        (or, with lastN, the newest) are kept; attributes the cut emptied stay, empty. Under a scopeQ
        only instances of the times a matching scope was valid count, and the scope shows those scopes."""
        selected = selection.rows
        if query.max_instances <= 0 or not selected:
            return [{"id": entity_id, "type": types, "attrs": {}} for _, entity_id, types in selected], None
        where, params = self._filter(connection, query, now, scoped=selection.scoped)
        pks = [pk for pk, _, _ in selected]
        names = self._names
        if query.last_n is not None:
            keys, rows = self._newest(connection, pks, query, where, params)
            if cap is not None and len(rows) > cap:  # read on the loop: too many to decode there
                raise _NotOnLoop
        else:
            column = TIMES[query.window.column]
            base = (
                f"SELECT i.pk, i.epk, i.attr, i.dataset, {column} AS t FROM temporal_rows i"
                f" WHERE i.epk IN ({','.join('?' * len(pks))}) AND {where}"
            )
            base_params: list[Any] = [*pks, *params]
            keys = [
                (epk, names.name(connection, attr))
                for epk, attr in connection.execute(
                    f"SELECT epk, attr FROM ({base}) GROUP BY epk, attr ORDER BY MIN(pk)", base_params
                ).fetchall()
            ]
            rows = connection.execute(
                f"SELECT w.epk, w.attr, w.t, w.pk, {_COLUMNS} FROM ({base}) w"
                f" JOIN temporal_rows i ON i.pk = w.pk ORDER BY w.t, w.pk LIMIT ?",
                [*base_params, query.max_instances + 1],
            ).fetchall()
        cut = None
        if len(rows) > query.max_instances:
            rows = rows[: query.max_instances]
            cut = (rows[0][2], rows[-1][2])
        found: dict[int, dict[str, list[tuple[int, int, Instance]]]] = {}
        for epk, attr in keys:
            found.setdefault(epk, {})[attr] = []
        for epk, attr, t, pk, *columns in rows:
            instance = decode(connection, names, self._times, self._instance_prefix, pk, columns)
            found[epk][names.name(connection, attr)].append((t, pk, instance))
        return assemble(selection, found), cut

    def _aggregate(
        self,
        connection: sqlite3.Connection,
        selection: Selection,
        query: TemporalQuery,
        spec: AggregationSpec,
        now: int,
    ) -> list[AggregatedEntity]:
        """Per series of the page's entities, its periods' statistics (only those spec.stats asks for)."""
        selected = selection.rows
        if not selected:
            return []
        # the window's bounds are stated by each statement, so that the index range is the tightest
        where, params = self._filter(connection, query, now, scoped=selection.scoped, bounds=False)
        names = self._names
        found: dict[int, list[tuple[str, str, AggregatedSeries]]] = {}
        for epk, attr, dataset in self._series(connection, [pk for pk, _, _ in selected], query):
            periods = self._periods(connection, query, spec, where, [epk, attr, dataset, *params])
            if periods:
                attr_name, dataset_name = (
                    names.name(connection, attr),
                    names.name(connection, dataset) if dataset else "",
                )
                kind = self._kind(connection, query, where, [epk, attr, dataset, *params], periods[0])
                series = AggregatedSeries(dataset_name or None, kind, [stats for stats, _ in periods])
                found.setdefault(epk, []).append((attr_name, dataset_name, series))
        entities = []
        for pk, entity_id, types in selected:
            attrs: dict[str, list[AggregatedSeries]] = {}
            for attr_name, _, series in sorted(found.get(pk, []), key=lambda item: item[:2]):  # by IRI, datasetId
                attrs.setdefault(attr_name, []).append(series)
            entities.append(AggregatedEntity(entity_id, types, attrs))
        return entities

    def _periods(
        self, connection: sqlite3.Connection, query: TemporalQuery, spec: AggregationSpec, where: str, params: list[Any]
    ) -> list[tuple[PeriodStats, tuple[int, int]]]:
        """The periods of one series (params: entity, attribute, datasetId, then where's), oldest
        first, each with its MIN and MAX shape. With observedAt (indexed) and periods of fixed
        length, one statement per period between index seeks, so no instance goes through a sort;
        otherwise, or when there would be many periods, one GROUP BY over the period number."""
        column = TIMES[query.window.column]
        start = -FOREVER if query.window.start is None else query.window.start
        end = FOREVER if query.window.end is None else query.window.end
        series = f"FROM temporal_rows i WHERE i.epk = ? AND i.attr = ? AND i.dataset = ? AND {where}"
        between = f"{series} AND {column} >= ? AND {column} < ?"
        first = connection.execute(f"SELECT {column} {between} ORDER BY {column} LIMIT 1", [*params, start, end])
        at: int | None = (first.fetchone() or (None,))[0]
        if at is None:
            return []
        origin = at if spec.origin is None else spec.origin
        stats = [stat for stat in STATS if spec.wants(stat)]
        text = VALUE_TEXT.format(r="i")
        # once history was downsampled (sqlite_downsample interns SAMPLES as a name then: a look-up
        # in the readers' cache), each row is weighted by what it stands for; else the plain
        # statistics, so that the readings of a file never downsampled pay no byte search
        weighted = self._names.find(connection, SAMPLES) >= 0
        more = f", {WEIGHTED}" if weighted else ""
        rows = f"SELECT {column} AS t, i.num AS num, {text} AS vtext, i.vkind AS v, i.shape AS shape{more} {between}"
        if not spec.months and not spec.micros:  # one period
            one = f"SELECT {_select(stats, True, weighted=weighted)} FROM ({rows}) p"
            row = connection.execute(one, [*params, start, end])
            return [_period_stats(0, origin, row.fetchone(), stats)]
        indexed = query.window.column == "observedAt" and not spec.months
        if indexed:
            last = connection.execute(
                f"SELECT {column} {between} ORDER BY {column} DESC LIMIT 1", [*params, start, end]
            ).fetchone()[0]
            span = _truncated(last - origin, spec.micros) - _truncated(at - origin, spec.micros)
            indexed = span < LOOP_PERIODS
        if not indexed:
            period = _months_between(spec.months) if spec.months else f"((p.t - p.origin) / {int(spec.micros)})"
            grouped = connection.execute(
                f"SELECT {period} AS k, {_select(stats, True, weighted=weighted)}"
                f" FROM (SELECT *, {int(origin)} AS origin FROM ({rows})) p GROUP BY k ORDER BY k",
                [*params, start, end],
            ).fetchall()
            return [_period_stats(row[0], origin, row[1:], stats) for row in grouped]
        # the first and last time of a period come from index seeks, its shapes matter in the first only
        found: list[tuple[PeriodStats, tuple[int, int]]] = []
        statements = [f"SELECT {_select(stats, False, shapes, weighted)} FROM ({rows}) p" for shapes in (True, False)]
        newest = f"SELECT {column} {between} ORDER BY {column} DESC LIMIT 1"
        oldest = f"SELECT {column} {between} ORDER BY {column} LIMIT 1"
        while at is not None:
            index = _truncated(at - origin, spec.micros)
            low, high = _period_range(index, origin, spec.micros)
            low, high = max(low, start), min(high, end)
            last = connection.execute(newest, [*params, low, high]).fetchone()[0]
            row = connection.execute(statements[1 if found else 0], [*params, low, high]).fetchone()
            found.append(_period_stats(index, origin, (at, last, *row), stats, shapes=not found))
            following = connection.execute(oldest, [*params, high, end]).fetchone() if high < end else None
            at = None if following is None else following[0]
        return found

    def _kind(
        self,
        connection: sqlite3.Connection,
        query: TemporalQuery,
        where: str,
        params: list[Any],
        period: tuple[PeriodStats, tuple[int, int]],
    ) -> str:
        """The attribute type of a series: the greatest among the instances of its first period
        (as PostgreSQL's max(kind)); those lie between its first and last time, as periods do not overlap."""
        names = self._names
        stats, (low, high) = period
        shapes = {low, high}
        if low != high:
            column = TIMES[query.window.column]
            shapes = {
                row[0]
                for row in connection.execute(
                    f"SELECT DISTINCT i.shape FROM temporal_rows i WHERE i.epk = ? AND i.attr = ? AND i.dataset = ?"
                    f" AND {where} AND {column} >= ? AND {column} <= ?",
                    [*params, stats.first, stats.last],
                )
            }
        return max(kind_of(names.name(connection, shape)) for shape in shapes)


def _now() -> int:
    return to_micros(datetime.now(UTC))


LOOP_LAST_N = 100  # lastN up to this, of one entity, is read on the event loop's connection
LOOP_ROWS = 200  # instances decoded there at most (more: read again on a reader thread)


def _on_loop_shape(query: TemporalQuery) -> bool:
    """A retrieval's lastN (one entity by id, no q, no scopeQ): a few index seeks per attribute and
    at most LOOP_ROWS instances decoded, less work than the hand-off to a reader thread and back,
    as for a retrieve or a query page (SQLiteQueries._on_loop bounds the SQL steps and wall time)."""
    return (
        query.last_n is not None
        and query.last_n <= LOOP_LAST_N
        and query.ids is not None
        and len(query.ids) == 1
        and query.id_pattern is None
        and query.predicate is None
        and query.scope_test is None
    )
