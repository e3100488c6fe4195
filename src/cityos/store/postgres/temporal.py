"""The temporal store on PostgreSQL: attribute instances in a table partitioned by time, windows
and aggregations in SQL. A mixin: PostgresStore supplies the pool (and mutate's transaction, inside
which history is appended). Semantics are SQLite's (sqlite_temporal.py), answer for answer.

Layout (schema_temporal.py): temporal_entities (tenant, id, types in first-seen order, GIN on types)
and temporal_instances, one row per attribute instance, PARTITIONED BY RANGE (retained_us) in
calendar months (temporal_partitions.py). The partition key is the instance's retention time as
integer microseconds -- observedAt, else modifiedAt, createdAt, deletedAt, the very expression
temporal_purge judges by -- because:
- retention then drops whole partitions (a month of readings goes with one DETACH and DROP TABLE,
  no row deletes, no vacuum) and deletes rows only in the boundary month;
- most windows are on observedAt, which is the key for every observed instance, so a window prunes
  the months it does not cover;
- integers are what the contract speaks and what SQLite stores: comparisons, period numbers and
  the partition bounds are exact integer arithmetic, with no time zone or rounding in between.
Per partition, partial B-trees on (entity, attribute, time) serve each time property's windows and
lastN (read backwards), (entity, attribute, datasetId) serves series and deletes, instance_id the
instance PATCH/DELETE.

Writes: the instances of one call go in one INSERT ... SELECT FROM unnest(...) (a write's history,
a temporal POST); its temporal entities are upserted first, all in one statement (INSERT ... ON
CONFLICT DO NOTHING, types unioned by an UPDATE that runs only when a type is new, so appends
normally take no row lock).
Every writer of one temporal entity holds the advisory lock mutate takes on (tenant, id), so two
workers never interleave their read-modify-write of one entity, and the upserts never wait on each
other in a cycle. The months a write goes to are locked (and created first if missing) in the same
statement as the upsert; see temporal_partitions.py for why, and why creation and retention cannot
deadlock writers.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from cityos.audit.chain import AuditRow
from cityos.audit.recorder import row as audit_row
from cityos.entities.model import Instance
from cityos.store.base import HistoryRow
from cityos.store.postgres.instance_columns import columns, new_instance_id, new_instance_ids
from cityos.store.postgres.sql import Params, entity_lock
from cityos.store.postgres.temporal_partitions import (
    DAY_US,
    create_partitions,
    drop_leftovers,
    drop_partition,
    droppable,
    month_of,
    month_of_name,
    partition_name,
)
from cityos.store.postgres.temporal_read import PostgresTemporalReads
from cityos.store.postgres.write_plan import number, recordset
from cityos.store.sqlite_temporal import FOREVER, _now
from cityos.store.temporal_base import (
    AggregatePage,
    AggregationSpec,
    TemporalEntityInfo,
    TemporalPage,
    TemporalQuery,
)
from cityos.store.temporal_downsample import HOUR, chunks, fold

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

# the key of mutate's per-entity lock (store.py _apply): one writer of an entity at a time
# a numeric Property instance of `i` (downsampling folds them)
_NUMERIC = "i.kind = 'Property' AND i.num IS NOT NULL"
PURGE_ENTITIES = 200  # entities whose old history one transaction of a per-type purge deletes
_LOCK_ENTITY = f"SELECT pg_advisory_xact_lock({entity_lock('$1', '$2')})"
# The temporal entities of a write, created or their types extended, as CTEs named {p}k, {p}ins,
# {p}tenant and {p}upd over {keys}, a FROM item k(tenant, id, types, n) (types: JSON arrays): used
# alone (_ENTITIES) and inside a write's one statement (_HISTORY_CTES).
_ENTITY_CTES = """{p}k AS (
    SELECT k.tenant, k.id, k.n, ARRAY(
        SELECT t FROM json_array_elements_text(k.types) WITH ORDINALITY AS j(t, m) ORDER BY m
    ) AS types
    FROM {keys}
), {p}ins AS (
    INSERT INTO temporal_entities (tenant, id, types) SELECT tenant, id, types FROM {p}k ORDER BY n
    ON CONFLICT (tenant, id) DO NOTHING RETURNING pk, tenant, id
), {p}tenant AS (
    INSERT INTO tenants (name) SELECT DISTINCT tenant FROM {p}ins ON CONFLICT DO NOTHING
), {p}upd AS (
    UPDATE temporal_entities e
    SET types = e.types || ARRAY(
        SELECT u.t FROM unnest(k.types) WITH ORDINALITY AS u(t, n) WHERE u.t <> ALL(e.types) ORDER BY u.n
    )
    FROM {p}k k WHERE e.tenant = k.tenant AND e.id = k.id AND NOT e.types @> k.types
)"""
# The pks of temporal entities (created if needed, in the order given, their types unioned in
# order; types travel as JSON arrays, which unnest can carry) and, when $4 names the partitions the
# write goes to, those not attached (the others are locked: temporal_lock_partitions). An entity
# comes back without a pk only if another transaction created it after this statement's snapshot was
# taken (a writer without the entity lock: the expiry sweep); the caller then asks again.
_ENTITIES = (
    "WITH "
    + _ENTITY_CTES.format(
        p="", keys="unnest($1::text[], $2::text[], $3::json[]) WITH ORDINALITY AS k(tenant, id, types, n)"
    )
    + """
SELECT k.n, coalesce(i.pk, e.pk) AS pk, i.pk IS NOT NULL AS created,
    (SELECT CASE WHEN $4::text[] IS NULL THEN NULL ELSE temporal_lock_partitions($4::text[]) END) AS missing
FROM k LEFT JOIN ins i ON i.tenant = k.tenant AND i.id = k.id
LEFT JOIN temporal_entities e ON e.tenant = k.tenant AND e.id = k.id
ORDER BY k.n
"""
)
_COLUMNS = (
    "epk", "attr", "dataset", "instance_id", "retained_us", "kind", "observed_us", "created_us", "modified_us",
    "deleted_us", "expires_us", "num", "vtext", "doc",
)  # fmt: skip
_INSERT = f"""
INSERT INTO temporal_instances ({", ".join(_COLUMNS)})
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bigint[],
    $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::float8[], $13::text[], $14::json[])
"""
# the instances inserted for the pks of th_pk, and those of an entity without one (th_lost)
_HISTORY_ROWS = """th_rows AS (
    INSERT INTO temporal_instances ({columns})
    SELECT t.pk, u.attr, u.dataset, u.instance_id, u.retained_us, u.kind, u.observed_us, u.created_us, u.modified_us,
        u.deleted_us, u.expires_us, u.num, u.vtext, u.doc
    FROM {rows}
    JOIN th_pk t ON t.n = u.e AND t.pk IS NOT NULL
    ORDER BY u.n
), th_lost AS (SELECT array_agg(n ORDER BY n) AS lost FROM th_pk WHERE pk IS NULL)"""
COPY_FROM = 64  # instances; from this many on a write's history goes by COPY
# A write's history as CTEs of its one statement (writes.py _flush), when every partition it goes to
# was locked by the write's first statement: _ENTITIES and _INSERT joined, the instances of an
# entity that comes back without a pk (created meanwhile by a writer without its lock) left out and
# named by the statement's answer (th_lost), for _append_history to write as before.
_HISTORY_CTES = (
    _ENTITY_CTES.format(p="th_", keys="{keys}")
    + """, th_pk AS (
    SELECT k.n, coalesce(i.pk, e.pk) AS pk FROM th_k k
    LEFT JOIN th_ins i ON i.tenant = k.tenant AND i.id = k.id
    LEFT JOIN temporal_entities e ON e.tenant = k.tenant AND e.id = k.id
), """
    + _HISTORY_ROWS
)
# The same without th_tenant, for a write whose tenants this process has seen committed (tenant rows
# are never deleted): an INSERT ... ON CONFLICT that could insert nothing still opened `tenants` and
# its index in every write's statement.
_TENANT_CTE = """, th_tenant AS (
    INSERT INTO tenants (name) SELECT DISTINCT tenant FROM th_ins ON CONFLICT DO NOTHING
)"""
assert _TENANT_CTE in _HISTORY_CTES
_HISTORY_CTES_KNOWN_TENANTS = _HISTORY_CTES.replace(_TENANT_CTE, "")
# The history's CTEs when the write read every temporal entity's pk and types under its lock
# (writes.py _READ_ONE) and the rows bring no new type: no upsert (th_k, th_ins, th_upd, whose
# executor start-up and speculative insert every write paid), only a probe that the pk is still there
# (a writer without the entity lock may have deleted it meanwhile: its instances are then `lost` and
# written after the statement, as when the upsert found no pk). VALUES, not unnest: the planner
# counts its rows and probes the pk index instead of scanning the table.
_HISTORY_CTES_KNOWN = (
    """th_pk AS (
    SELECT k.n, e.pk FROM (VALUES {pks}) AS k(n, pk) LEFT JOIN temporal_entities e ON e.pk = k.pk
), """
    + _HISTORY_ROWS
)
# an instance as history_ctes sends it (recordset), `e` numbering its temporal entity
_RECORD_COLUMNS = (
    "e bigint, attr text, dataset text, instance_id text, retained_us bigint, kind text, observed_us bigint,"
    " created_us bigint, modified_us bigint, deleted_us bigint, expires_us bigint, num float8, vtext text, doc json"
)
# per (attribute, datasetId, observedAt) of a temporal POST, the stored instance it replaces
_SAME_TIME = """
SELECT k.n, (
    SELECT min(i.pk) FROM temporal_instances i
    WHERE i.epk = $1 AND i.attr = k.a AND i.dataset = k.d AND i.observed_us = k.o AND i.retained_us = k.o
) AS pk
FROM unnest($2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY AS k(a, d, o, n)
"""
_REPLACE = """
UPDATE temporal_instances i SET kind = u.kind, observed_us = u.o, created_us = u.created, modified_us = u.modified,
    deleted_us = u.deleted, expires_us = u.expires, num = u.num, vtext = u.vtext, doc = u.doc
FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bigint[], $8::bigint[],
    $9::bigint[], $10::bigint[], $11::float8[], $12::text[], $13::json[])
    AS u(pk, a, d, o, kind, created, modified, deleted, expires, num, vtext, doc)
WHERE i.epk = $1 AND i.attr = u.a AND i.dataset = u.d AND i.observed_us = u.o AND i.retained_us = u.o AND i.pk = u.pk
"""
_ASSIGN = (
    "kind = $1, observed_us = $2, created_us = $3, modified_us = $4, deleted_us = $5, expires_us = $6,"
    " num = $7, vtext = $8, doc = $9::json, retained_us = $10"
)


MAX_SPECULATED = 4  # partitions a write locks in its first statement, at most (_learn_partitions)


@dataclass(slots=True)
class _Put:
    """One instance to store: instance_columns.columns' answer, plus where it goes."""

    attr: str
    dataset: str
    instance_id: str
    columns: tuple[Any, ...]  # kind, observed, created, modified, deleted, expires, num, vtext, doc (str)
    retained: int  # the partition key (temporal_partitions.retained of the columns' times)

    @classmethod
    def of(cls, attr: str, instance: Instance, instance_id: str | None = None) -> _Put:
        dataset, values, key = columns(instance)
        return cls(attr, dataset, instance.get("instanceId") or instance_id or new_instance_id(), values, key)

    @classmethod
    def many(cls, rows: Sequence[HistoryRow]) -> list[_Put]:
        """The instances of a write's history rows, their new instanceIds drawn at once."""
        ids = new_instance_ids(len(rows))
        return [cls.of(row.attr, row.instance, instance_id) for row, instance_id in zip(rows, ids, strict=True)]

    @property
    def observed(self) -> int | None:
        observed: int | None = self.columns[1]
        return observed

    def record(self) -> dict[str, Any]:
        """The instance as a row of _RECORD_COLUMNS, for recordset (its document as stored)."""
        kind, observed, created, modified, deleted, expires, num, vtext, doc = self.columns
        return {
            "attr": self.attr,
            "dataset": self.dataset,
            "instance_id": self.instance_id,
            "retained_us": self.retained,
            "kind": kind,
            "observed_us": observed,
            "created_us": created,
            "modified_us": modified,
            "deleted_us": deleted,
            "expires_us": expires,
            "num": number(num),
            "vtext": vtext,
            "doc": orjson.Fragment(doc),
        }

    def values(self) -> tuple[Any, ...]:
        """The columns as statement parameters (the document as JSON text)."""
        return self.columns


@dataclass(slots=True)
class HistoryCtes:
    """history_ctes' answer: the CTEs (empty: the history goes by _append_history), the instances
    (made once), the temporal entities in the order th_lost numbers them, the partitions."""

    puts: list[_Put]
    cte: str
    keys: list[tuple[str, str]] = field(default_factory=list)
    names: list[str] | None = None


@functools.lru_cache(maxsize=4096)
def _month_of_day(day: int) -> int | None:
    """The month of the partition keys of one UTC day (day * DAY_US on): months begin at a day's
    start, so a day lies in one month; a batch's some 10,000 keys fall on a few days."""
    return month_of(day * DAY_US)


def _affected(status: str) -> int:
    """The row count of a command tag ("DELETE 3")."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresTemporal(PostgresTemporalReads):
    """The TemporalStore methods; the reads live in PostgresTemporalReads (temporal_read.py)."""

    _recent_partitions: tuple[str, ...] = ()  # the last history write's partitions (_learn_partitions)

    if TYPE_CHECKING:
        dsn: str

        @property
        def _audit_on(self) -> bool: ...

        async def _seal_audit(self, connection: Connection, rows: Sequence[AuditRow]) -> None: ...

    async def _audited(
        self, connection: Connection, operation: str, tenant: str, entity_id: str, detail: dict[str, Any] | None = None
    ) -> None:
        """The write's audit record, sealed as the transaction's last step (when the trail is on)."""
        if self._audit_on:
            await self._seal_audit(connection, [audit_row(operation, tenant, [entity_id], detail)])

    # -- partitions ----------------------------------------------------------------------------------
    @staticmethod
    def _partitions(puts: Sequence[_Put]) -> list[str] | None:
        """The monthly partitions instances go to (None: only the timeless one, made by migration)."""
        days = {key // DAY_US for key in {put.retained for put in puts} if key < FOREVER}
        months = {m for day in days if (m := _month_of_day(day)) is not None}
        return [partition_name(m) for m in sorted(months)] or None

    async def _create_missing(self, connection: Connection, missing: Sequence[str]) -> None:
        """Create the partitions temporal_lock_partitions found missing (in a transaction of their
        own, see temporal_partitions.py), then lock them in this one."""
        if not missing:
            return
        await create_partitions(self.dsn, [m for name in missing if (m := month_of_name(name)) is not None])
        still: list[str] = await connection.fetchval("SELECT temporal_lock_partitions($1::text[])", list(missing))
        if still:
            raise RuntimeError(f"the temporal partitions {still} could not be created")

    async def _lock_partitions(self, connection: Connection, puts: Sequence[_Put]) -> None:
        """For a write that upserts no entity: lock (create if needed) the partitions it writes to."""
        names = self._partitions(puts)
        if names is not None:
            missing = await connection.fetchval("SELECT temporal_lock_partitions($1::text[])", names)
            await self._create_missing(connection, missing)

    # -- writing -------------------------------------------------------------------------------------
    @staticmethod
    async def _upsert_entities(
        connection: Connection, entities: Mapping[tuple[str, str], Sequence[str]], check: list[str] | None
    ) -> tuple[dict[tuple[str, str], tuple[int, bool]], list[str]]:
        """(pk, created) of each temporal entity, created if needed (in the order given), and the
        partitions missing among `check`; one statement for all of them."""
        found: dict[tuple[str, str], tuple[int, bool]] = {}
        missing: list[str] = []
        for _ in range(3):
            asked = [key for key in entities if key not in found]
            rows = await connection.fetch(
                _ENTITIES,
                [tenant for tenant, _ in asked],
                [entity_id for _, entity_id in asked],
                [orjson.dumps(list(entities[key])).decode() for key in asked],
                check,
            )
            for row in rows:
                if row["pk"] is not None:
                    found[asked[row["n"] - 1]] = (int(row["pk"]), bool(row["created"]))
            if rows and check is not None:
                missing.extend(rows[0]["missing"] or [])
                check = None  # locked for the whole transaction already
            if len(found) == len(entities):
                return found, missing
        lost = [key[1] for key in entities if key not in found]
        raise RuntimeError(f"the temporal entities {lost!r} could not be created or found")

    @staticmethod
    async def _insert(connection: Connection, rows: Sequence[tuple[int, _Put]]) -> None:
        """Every instance of a write in one statement (its partitions are locked already): COPY
        for a batch's history (binary, routed to the partitions by the server), an INSERT from
        arrays for a few rows (COPY takes two round trips)."""
        if not rows:
            return
        records = [(epk, put.attr, put.dataset, put.instance_id, put.retained, *put.columns) for epk, put in rows]
        if len(records) >= COPY_FROM:
            await connection.copy_records_to_table("temporal_instances", records=records, columns=_COLUMNS)
            return
        await connection.execute(_INSERT, *(list(column) for column in zip(*records, strict=True)))

    async def _append_history(
        self, connection: Connection, rows: Sequence[HistoryRow], puts: Sequence[_Put] | None = None
    ) -> None:
        """Called inside mutate's transaction (which holds the entity's lock) with the history its
        changes make: one upsert for all the temporal entities, one INSERT for all the instances.
        puts: the rows' instances, when history_ctes made them already."""
        if not rows:
            return
        types: dict[tuple[str, str], list[str]] = {}
        for row in rows:  # as on SQLite, the first row of an entity brings its types
            types.setdefault((row.tenant, row.entity_id), row.types)
        if puts is None:
            puts = _Put.many(rows)
        names = self._partitions(puts)
        self._learn_partitions(names)
        pks, missing = await self._upsert_entities(connection, types, names)
        await self._create_missing(connection, missing)
        await self._insert(
            connection, [(pks[(row.tenant, row.entity_id)][0], put) for row, put in zip(rows, puts, strict=True)]
        )

    def _learn_partitions(self, names: Sequence[str] | None) -> None:
        """Remember the partitions of this history write: the next write locks them in its first
        statement (writes.py _READ), so its history can go in its one statement (history_ctes)."""
        if names is not None and len(names) <= MAX_SPECULATED:
            self._recent_partitions = tuple(names)

    def history_ctes(
        self,
        rows: Sequence[HistoryRow],
        p: Params,
        locked: Sequence[str],
        tenants_known: Container[str] = (),
        temporal: Mapping[tuple[str, str], tuple[int, Sequence[str]]] | None = None,
    ) -> HistoryCtes | None:
        """A write's history as CTEs of its one statement, when it is small (below COPY_FROM) and
        every partition it goes to is among `locked` (attached by the write's first statement,
        which holds the retention lock); None: it goes by _append_history, after that statement.
        `tenants_known`: tenants whose row is committed, which the statement then does not insert;
        `temporal`: temporal entities' pk and types read under their locks, not upserted when the
        rows bring no new type."""
        if not rows or len(rows) >= COPY_FROM:
            return None
        puts = _Put.many(rows)
        names = self._partitions(puts)
        if names is not None and not set(names) <= set(locked):
            return HistoryCtes(puts=puts, cte="")
        keys: dict[tuple[str, str], int] = {}
        entities: list[dict[str, Any]] = []
        for row in rows:  # as on SQLite, the first row of an entity brings its types
            key = (row.tenant, row.entity_id)
            if key not in keys:
                keys[key] = len(keys) + 1
                entities.append({"tenant": row.tenant, "id": row.entity_id, "types": list(row.types)})
        instances = [
            {"e": keys[(row.tenant, row.entity_id)], **put.record()} for row, put in zip(rows, puts, strict=True)
        ]
        if temporal and all(
            (stored := temporal.get((row.tenant, row.entity_id))) is not None and set(row.types) <= set(stored[1])
            for row in rows
        ):
            cte = _HISTORY_CTES_KNOWN.format(
                pks=", ".join(f"({n}, {p(temporal[key][0])}::bigint)" for key, n in keys.items()),
                columns=", ".join(_COLUMNS),
                rows=recordset(p, instances, "u", _RECORD_COLUMNS),
            )
            return HistoryCtes(puts=puts, cte=cte, keys=list(keys), names=names)
        known = all(row.tenant in tenants_known for row in rows)
        cte = (_HISTORY_CTES_KNOWN_TENANTS if known else _HISTORY_CTES).format(
            keys=recordset(p, entities, "k", "tenant text, id text, types json"),
            columns=", ".join(_COLUMNS),
            rows=recordset(p, instances, "u", _RECORD_COLUMNS),
        )
        return HistoryCtes(puts=puts, cte=cte, keys=list(keys), names=names)

    async def history_lost(
        self, connection: Connection, rows: Sequence[HistoryRow], history: HistoryCtes, lost: Sequence[int] | None
    ) -> None:
        """After the statement with history_ctes: learn its partitions, and write the instances of
        the entities it found no pk for (`lost`, numbered from 1) as _append_history does."""
        self._learn_partitions(history.names)
        if not lost:
            return
        gone = {history.keys[n - 1] for n in lost}
        paired = zip(rows, history.puts, strict=True)
        chosen = [(row, put) for row, put in paired if (row.tenant, row.entity_id) in gone]
        await self._append_history(connection, [row for row, _ in chosen], [put for _, put in chosen])

    @staticmethod
    def _plan(instances: Sequence[tuple[str, Instance]]) -> list[_Put]:
        """A temporal POST's instances as SQLite writes them one after the other: a later instance
        with the attribute, datasetId and observedAt of an earlier one replaces its columns (the
        earlier one's place and instanceId stay)."""
        puts: list[_Put] = []
        timed: dict[tuple[str, str, int], _Put] = {}
        for attr, instance in instances:
            put = _Put.of(attr, instance)
            observed = put.observed
            if observed is not None and (attr, put.dataset, observed) in timed:
                earlier = timed[(attr, put.dataset, observed)]
                earlier.columns, earlier.retained = put.columns, put.retained
                continue
            puts.append(put)
            if observed is not None:
                timed[(attr, put.dataset, observed)] = put
        return puts

    async def temporal_write(
        self, tenant: str, entity_id: str, types: Sequence[str], instances: Sequence[tuple[str, Instance]]
    ) -> bool:
        puts = self._plan(instances)

        async def work(connection: Connection) -> bool:
            await connection.execute(_LOCK_ENTITY, tenant, entity_id)
            found, missing = await self._upsert_entities(
                connection, {(tenant, entity_id): types}, self._partitions(puts)
            )
            pk, created = found[(tenant, entity_id)]
            await self._create_missing(connection, missing)
            timed = [put for put in puts if put.observed is not None]
            replaced: dict[int, int] = {}  # index in `timed` -> pk of the stored instance it replaces
            if timed and not created:
                for row in await connection.fetch(
                    _SAME_TIME, pk, [p.attr for p in timed], [p.dataset for p in timed], [p.observed for p in timed]
                ):
                    if row["pk"] is not None:
                        replaced[int(row["n"]) - 1] = int(row["pk"])
            if replaced:
                chosen = [(timed[n], stored) for n, stored in replaced.items()]
                values = [put.values() for put, _ in chosen]
                await connection.execute(
                    _REPLACE,
                    pk,
                    [stored for _, stored in chosen],
                    [put.attr for put, _ in chosen],
                    [put.dataset for put, _ in chosen],
                    [put.observed for put, _ in chosen],
                    *([v[i] for v in values] for i in (0, *range(2, 9))),
                )
            kept = {id(timed[n]) for n in replaced}
            await self._insert(connection, [(pk, put) for put in puts if id(put) not in kept])
            await self._audited(connection, "temporal.write", tenant, entity_id)
            return created

        return await self._write(work)

    @staticmethod
    async def _locate(connection: Connection, tenant: str, entity_id: str) -> int | None:
        pk = await connection.fetchval(
            "SELECT pk FROM temporal_entities WHERE tenant = $1 AND id = $2", tenant, entity_id
        )
        return None if pk is None else int(pk)

    async def temporal_modify_instance(
        self, tenant: str, entity_id: str, attr: str, instance_id: str, instance: Instance
    ) -> bool:
        async def work(connection: Connection) -> bool:
            await connection.execute(_LOCK_ENTITY, tenant, entity_id)
            epk = await self._locate(connection, tenant, entity_id)
            if epk is None:
                return False
            row = await connection.fetchrow(
                "SELECT pk, retained_us, doc FROM temporal_instances WHERE epk = $1 AND attr = $2 AND instance_id = $3"
                " ORDER BY pk LIMIT 1",
                epk,
                attr,
                instance_id,
            )
            if row is None:
                return False
            put = _Put.of(attr, {**orjson.loads(row["doc"]), **instance})  # the dataset column stays
            key = put.retained
            await self._lock_partitions(connection, [put])
            # a new retention time may move the row to another month's partition
            await connection.execute(
                f"UPDATE temporal_instances SET {_ASSIGN} WHERE epk = $11 AND attr = $12 AND pk = $13"
                " AND retained_us = $14",
                *put.values(),
                key,
                epk,
                attr,
                row["pk"],
                row["retained_us"],
            )
            await self._audited(connection, "temporal.modify-instance", tenant, entity_id, {"attr": attr})
            return True

        return await self._write(work)

    async def temporal_delete_instance(self, tenant: str, entity_id: str, attr: str, instance_id: str) -> bool:
        async def work(connection: Connection) -> bool:
            await connection.execute(_LOCK_ENTITY, tenant, entity_id)
            epk = await self._locate(connection, tenant, entity_id)
            if epk is None:
                return False
            status = await connection.execute(
                "DELETE FROM temporal_instances WHERE epk = $1 AND attr = $2 AND instance_id = $3",
                epk,
                attr,
                instance_id,
            )
            if _affected(status) == 0:
                return False
            await self._audited(connection, "temporal.delete-instance", tenant, entity_id, {"attr": attr})
            return True

        return await self._write(work)

    async def temporal_delete_attribute(
        self, tenant: str, entity_id: str, attr: str, *, dataset: str | None, delete_all: bool
    ) -> bool:
        async def work(connection: Connection) -> bool:
            await connection.execute(_LOCK_ENTITY, tenant, entity_id)
            epk = await self._locate(connection, tenant, entity_id)
            if epk is None:
                return False
            if delete_all:
                status = await connection.execute(
                    "DELETE FROM temporal_instances WHERE epk = $1 AND attr = $2", epk, attr
                )
            else:
                status = await connection.execute(
                    "DELETE FROM temporal_instances WHERE epk = $1 AND attr = $2 AND dataset = $3",
                    epk,
                    attr,
                    dataset or "",
                )
            if _affected(status) == 0:
                return False
            await self._audited(connection, "temporal.delete-attribute", tenant, entity_id, {"attr": attr})
            return True

        return await self._write(work)

    async def temporal_delete_entity(self, tenant: str, entity_id: str) -> bool:
        async def work(connection: Connection) -> bool:
            await connection.execute(_LOCK_ENTITY, tenant, entity_id)
            epk = await self._locate(connection, tenant, entity_id)
            if epk is None:
                return False
            await connection.execute("DELETE FROM temporal_instances WHERE epk = $1", epk)
            await connection.execute("DELETE FROM temporal_entities WHERE pk = $1", epk)
            await self._audited(connection, "temporal.delete-entity", tenant, entity_id)
            return True

        return await self._write(work)

    async def temporal_purge(self, before: int, types: Sequence[str] | None = None) -> int:
        """Drop the partitions entirely older than `before` whole, delete the older rows of the
        others (the boundary month; a partition writers kept busy), then the temporal entities
        left without instances. Of some types only: their entities' older rows, PURGE_ENTITIES
        entities per transaction (the partitions stay, other types' rows live in them)."""
        if types is not None:
            return await self._purge_types(before, list(types))
        removed = 0
        touched: set[int] = set()
        async with self.pool.acquire() as connection:
            touched.update(await drop_leftovers(connection))
            for _, table in await droppable(connection, before):
                dropped = await drop_partition(connection, table)
                if dropped is not None:
                    removed += dropped[0]
                    touched.update(dropped[1])
            async with connection.transaction():
                row = await connection.fetchrow(
                    "WITH d AS (DELETE FROM temporal_instances WHERE retained_us < $1 RETURNING epk)"
                    " SELECT count(*) AS n, array_agg(DISTINCT epk) AS epks FROM d",
                    before,
                )
            assert row is not None
            removed += int(row["n"])
            touched.update(row["epks"] or [])
            await self._forget_emptied(connection, touched)
        return removed

    async def _purge_types(self, before: int, types: list[str]) -> int:
        if not types:
            return 0
        removed = 0
        async with self.pool.acquire() as connection:
            epks = [
                row["pk"]
                for row in await connection.fetch(
                    "SELECT pk FROM temporal_entities WHERE types && $1::text[] ORDER BY pk", types
                )
            ]
            for start in range(0, len(epks), PURGE_ENTITIES):
                chunk = epks[start : start + PURGE_ENTITIES]
                async with connection.transaction():
                    row = await connection.fetchrow(
                        "WITH d AS (DELETE FROM temporal_instances WHERE epk = ANY($1::bigint[]) AND retained_us < $2"
                        " RETURNING epk) SELECT count(*) AS n, array_agg(DISTINCT epk) AS epks FROM d",
                        chunk,
                        before,
                    )
                assert row is not None
                removed += int(row["n"])
                await self._forget_emptied(connection, set(row["epks"] or []))
        return removed

    async def temporal_downsample(self, before: int, types: Sequence[str], after: int | None = None) -> int:
        """Fold the hours of numeric Property instances observed in [after, before) of the entities
        of these types that hold more than one instance (store/temporal_downsample.py): found by one
        GROUP BY, then folded a chunk of hours per transaction, under the entities' write locks.
        Returns how many instances went (those folded, less the hourly ones made)."""
        if not types:
            return 0
        low = 0 if after is None else max(after, 0)  # hours before 1970 are left alone
        async with self.pool.acquire() as connection:
            found = await connection.fetch(
                f"SELECT i.epk, e.tenant, e.id, e.types, i.attr, i.dataset, div(i.observed_us, {HOUR}) AS hour,"
                " count(*) AS n FROM temporal_instances i JOIN temporal_entities e ON e.pk = i.epk"
                " WHERE e.types && $1::text[] AND i.retained_us >= $2 AND i.retained_us < $3"
                f" AND i.observed_us >= $2 AND i.observed_us < $3 AND {_NUMERIC}"
                " GROUP BY 1, 2, 3, 4, 5, 6, 7 HAVING count(*) > 1 ORDER BY 1, 5, 6, 7",
                list(types),
                low,
                before,
            )
            # the mark that aggregations weight instances from now on (temporal_read.WEIGHTED): set
            # by every run, so a database folded by a CityOS before the mark gets it at the next run
            await connection.execute("INSERT INTO temporal_marks VALUES ('downsampled') ON CONFLICT DO NOTHING")
            self._downsampled = True
        hours = [(row, int(row["n"])) for row in found]
        removed = 0
        for group in chunks(hours):
            removed += await self._write(self._fold([hours[n][0] for n in group]))
        return removed

    def _fold(self, chunk: Sequence[Any]) -> Callable[[Connection], Awaitable[int]]:
        """The transaction folding a chunk of hours (rows of temporal_downsample's GROUP BY)."""

        async def work(connection: Connection) -> int:
            entities = {(row["tenant"], row["id"]): row["types"] for row in chunk}
            for tenant, entity_id in sorted(entities):  # the writers' lock, always taken in one order
                await connection.execute(_LOCK_ENTITY, tenant, entity_id)
            keys = [(row["epk"], row["attr"], row["dataset"], int(row["hour"])) for row in chunk]
            stored = await connection.fetch(
                f"SELECT i.pk, i.epk, i.attr, i.dataset, div(i.observed_us, {HOUR}) AS hour, i.doc"
                " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[]) AS k(epk, attr, dataset, hour)"
                " JOIN temporal_instances i ON i.epk = k.epk AND i.attr = k.attr AND i.dataset = k.dataset"
                f" AND i.observed_us >= k.hour * {HOUR} AND i.observed_us < (k.hour + 1) * {HOUR}"
                f" WHERE i.retained_us >= $5 AND i.retained_us < $6 AND {_NUMERIC}"
                " ORDER BY i.epk, i.attr, i.dataset, i.observed_us, i.pk",
                *(list(column) for column in zip(*keys, strict=True)),
                min(key[3] for key in keys) * HOUR,
                (max(key[3] for key in keys) + 1) * HOUR,
            )
            hours: dict[tuple[int, str, str, int], list[Any]] = {}
            for found in stored:
                hours.setdefault((found["epk"], found["attr"], found["dataset"], int(found["hour"])), []).append(found)
            removed = 0
            gone: list[int] = []
            puts: list[tuple[int, _Put]] = []
            for (epk, attr, _, hour), rows in hours.items():
                if len(rows) < 2:  # changed since it was found
                    continue
                gone.extend(r["pk"] for r in rows)
                folded = fold([orjson.loads(r["doc"]) for r in rows], hour)
                puts.extend((epk, put) for put in self._plan([(attr, folded)]))
                removed += len(rows) - 1
            if gone:
                await connection.execute(
                    "DELETE FROM temporal_instances WHERE pk = ANY($1::bigint[]) AND retained_us >= $2"
                    " AND retained_us < $3",
                    gone,
                    min(key[3] for key in keys) * HOUR,
                    (max(key[3] for key in keys) + 1) * HOUR,
                )
            if puts:
                made = [put for _, put in puts]
                _, missing = await self._upsert_entities(connection, entities, self._partitions(made))
                await self._create_missing(connection, missing)
                await self._insert(connection, puts)
            return removed

        return work

    async def _forget_emptied(self, connection: Connection, touched: set[int]) -> None:
        """Delete the temporal entities of `touched` left without instances."""
        if not touched:
            return
        async with connection.transaction():
            # an entity a writer holds (its lock is taken) is getting instances: it stays. The
            # locks are taken first, in a statement of their own, so that the emptiness test
            # below sees every instance committed by the writers that held them before.
            locked = await connection.fetch(
                "SELECT s.pk FROM (SELECT pk, tenant, id FROM temporal_entities"
                " WHERE pk = ANY($1::bigint[]) OFFSET 0) s"
                f" WHERE pg_try_advisory_xact_lock({entity_lock('s.tenant', 's.id')})",
                sorted(touched),
            )
            await connection.execute(
                "DELETE FROM temporal_entities e WHERE e.pk = ANY($1::bigint[])"
                " AND NOT EXISTS (SELECT 1 FROM temporal_instances i WHERE i.epk = e.pk)",
                [r["pk"] for r in locked],
            )

    # -- reading -------------------------------------------------------------------------------------
    async def temporal_entity(self, tenant: str, entity_id: str) -> TemporalEntityInfo | None:
        now = _now()

        async def run(connection: Connection) -> TemporalEntityInfo | None:
            row = await connection.fetchrow(
                "SELECT pk, types FROM temporal_entities WHERE tenant = $1 AND id = $2", tenant, entity_id
            )
            if row is None:
                return None
            attrs: dict[str, dict[str | None, str]] = {}
            # per attribute and datasetId, the kind of the instance stored last (SQLite's MAX(pk))
            for latest in await connection.fetch(
                "SELECT DISTINCT ON (attr, dataset) attr, dataset, kind FROM temporal_instances"
                " WHERE epk = $1 AND (expires_us IS NULL OR expires_us > $2) ORDER BY attr, dataset, pk DESC",
                row["pk"],
                now,
            ):
                attrs.setdefault(latest["attr"], {})[latest["dataset"] or None] = latest["kind"]
            return TemporalEntityInfo(entity_id, list(row["types"]), attrs)

        return await self._temporal_read(run)

    async def temporal_query(self, tenant: str, query: TemporalQuery) -> TemporalPage:
        now = _now()

        async def run(connection: Connection) -> TemporalPage:
            selection = await self._select(connection, tenant, query, now)
            entities, cut = await self._kept(connection, selection, query, now)
            return TemporalPage(entities, selection.total, selection.has_more, cut)

        return await self._temporal_read(run)

    async def temporal_aggregate(self, tenant: str, query: TemporalQuery, spec: AggregationSpec) -> AggregatePage:
        now = _now()

        async def run(connection: Connection) -> AggregatePage:
            selection = await self._select(connection, tenant, query, now)
            entities = await self._aggregate(connection, selection, query, spec, now)
            return AggregatePage(entities, selection.total, selection.has_more)

        return await self._temporal_read(run)
