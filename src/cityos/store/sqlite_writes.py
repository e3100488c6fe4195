"""The SQLite write path of entities, mixed into SQLiteStore (runs on its writer thread).

A mutation reads each entity, runs its mutator (pure: it raises before anything is written), writes
the document at once (so the change listeners' lookups see it), and buffers everything else: the
side-table rows that changed (per attribute), the outbox rows and the history rows the listeners
return. The store's commit loop drains the buffer with one `executemany` per statement at the end
of each write (`_drain`; the INSERTs as multi-row statements), inside that write's transaction or
savepoint, and drops it on a rollback (`_forget`). A batch takes one savepoint, not one per entity:
a mutator that refuses an entity has written nothing, and only if an entity fails after its writes
began is the batch redone with a savepoint per entity.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import orjson

from cityos.audit.chain import AuditRow
from cityos.entities.expiry import next_expiry, visible, visible_at
from cityos.entities.model import Entity
from cityos.entities.update import Mutator
from cityos.errors import NgsiLdError
from cityos.store.base import AfterCommit, ChangeListener, EntityChange, HistoryRow, MutationResult, OutboxRow
from cityos.store.cell_key import cell_key
from cityos.store.side_rows import (
    Boxed,
    changed_values,
    geo_keys,
    geo_untouched,
    geo_values,
    instance_boxes,
    own_expiry,
)
from cityos.store.sqlite_history import INSERT_INSTANCE, Names
from cityos.store.sqlite_layout import deflate, entity_rows, inflate, value_rows
from cityos.store.sqlite_query import WALK_INSERT, first_type_id, walk_row
from cityos.store.sqlite_written import WrittenDocuments

SMALL_WRITE = 8  # mutations with at most this many entities may share a transaction
# the buffered statements, in the order they are drained: every delete before every insert (a pk
# whose rows are buffered is drained before it is touched again, so this order is always right)
DRAIN_ORDER = (
    "DELETE FROM entity_types WHERE pk = ?",
    "DELETE FROM entity_attrs WHERE pk = ?",
    "DELETE FROM entity_attrs WHERE attr = ? AND pk = ?",
    "DELETE FROM attr_values WHERE pk = ?",
    "DELETE FROM attr_values WHERE pk = ? AND attr = ?",
    # a GeoProperty whose box moved, its attribute and instance kept (_moved_geo)
    "UPDATE entity_geo SET min_x = ?, max_x = ?, min_y = ?, max_y = ?"
    " WHERE gid = (SELECT gid FROM entity_geo_attrs WHERE pk = ? AND attr = ?)",
    "UPDATE entity_geo_walk SET min_x = ?, max_x = ?, min_y = ?, max_y = ?, shapes = ?, cell = ?"
    " WHERE attr = ? AND pk = ?",
    # an entity whose first type changed: its walk rows' type (a no-op without geo rows)
    "UPDATE entity_geo_walk SET type = ?1 WHERE attr IN (SELECT attr FROM entity_geo_attrs WHERE pk = ?2) AND pk = ?2",
    # an attribute whose values changed, as many rows as before (a sensor's reading): rewritten in place
    "UPDATE attr_values SET num = ?, txt = ? WHERE pk = ? AND attr = ? AND seq = ?",
    "INSERT OR IGNORE INTO entity_types (type, pk) VALUES (?, ?)",
    "INSERT OR IGNORE INTO entity_attrs (attr, pk) VALUES (?, ?)",
    "INSERT INTO attr_values (pk, attr, seq, num, txt) VALUES (?, ?, ?, ?, ?)",
    "INSERT INTO outbox (tenant, subscription_id, lane, payload) VALUES (?, ?, ?, ?)",
    INSERT_INSTANCE,
)
(
    DEL_TYPES,
    DEL_ATTRS,
    DEL_ATTR,
    DEL_VALUES,
    DEL_VALUE,
    SET_BOX,
    SET_WALK,
    SET_WALK_TYPE,
    SET_VALUE,
    INS_TYPES,
    INS_ATTRS,
    INS_VALUES,
    OUTBOX,
    HISTORY,
) = DRAIN_ORDER
# the buffered INSERTs drained as multi-row statements, up to MULTI_ROWS rows each, not one execution
# a row: a create drains some thirty rows (its attributes, their values, its history), and each
# execution costs its own reset, and for temporal_rows (AUTOINCREMENT) its own read and write of
# sqlite_sequence. The same rows in the same order: the same rowids, the same triggers fired.
MULTI_ROWS = 64  # 64 rows of temporal_rows' 15 columns: under 999 parameters, the oldest SQLite's limit
# A history row whose deleted_us, expires_us, rest and instance_id are NULL (nearly every row) is
# inserted without those columns, which have no default: sqlite3 binds a None through its adapter
# look-up (about 1,200 instructions a parameter: four a row). Their places in an INSERT_INSTANCE
# row are 7, 8, 13 and 14 (sqlite_history.INSTANCE_COLUMNS).
PLAIN_INSTANCE = (
    "INSERT INTO temporal_rows (epk, attr, dataset, shape, observed_us, created_us, modified_us, num, vtext, vref,"
    f" vkind) VALUES ({', '.join('?' * 11)})"
)
MULTI_INSERTS = frozenset({INS_TYPES, INS_ATTRS, INS_VALUES, OUTBOX, HISTORY, PLAIN_INSTANCE})


# an entity's row and its temporal entity's (pk, types), in one statement: a write reads the first and
# its history listener the second (sqlite_temporal._temporal_pk); one row always, of NULLs for what is not there
ENTITY_ROW = (
    "SELECT e.pk, e.doc, e.next_expiry, t.pk, t.types FROM (SELECT 1)"
    " LEFT JOIN entities AS e ON e.tenant = ?1 AND e.id = ?2"
    " LEFT JOIN temporal_entities AS t ON t.tenant = ?1 AND t.id = ?2"
)

# a document without this key has no expiresAt anywhere: nothing of it expires, so the walks of
# visible() and next_expiry() are skipped (a substring test in C, exact: the key is never escaped)
TRANSIENT = b'"expiresAt"'


def _unindex_geo(connection: sqlite3.Connection, pk: int, gids: list[tuple[int]]) -> None:
    """Delete an entity's geo rows: its R*Tree boxes (`gids`), their attributes and walk rows."""
    connection.execute(
        "DELETE FROM entity_geo_walk WHERE attr IN (SELECT attr FROM entity_geo_attrs WHERE pk = ?1) AND pk = ?1", (pk,)
    )
    connection.executemany("DELETE FROM entity_geo WHERE gid = ?", gids)
    connection.execute("DELETE FROM entity_geo_attrs WHERE pk = ?", (pk,))


def _moved_geo(
    buffer: dict[str, list[tuple[Any, ...]]], pk: int, was: Boxed, now: Boxed, ids: Callable[[str], int]
) -> bool:
    """Buffer the new boxes of GeoProperty attributes that moved, in place (their R*Tree rows by the
    gid their attribute already has, their walk rows by key), when the entity has the same boxed
    attributes as before, one instance each (a vehicle or a sensor that moved); False otherwise,
    for the general way (delete the entity's geo rows, insert them again)."""
    attrs = [attr for attr, _, _ in now]
    if [attr for attr, _, _ in was] != attrs or len(set(attrs)) != len(attrs):
        return False
    for attr, box, _ in now:
        buffer[SET_BOX].append((*box, pk, ids(attr)))
    buffer[SET_WALK].extend((*box, shapes, cell_key(*box), ids(attr), pk) for attr, *box, shapes in geo_keys(now))
    return True


class _Refused(Exception):
    """A mutator refused its entity (before anything was written)."""

    def __init__(self, error: NgsiLdError) -> None:
        super().__init__(str(error))
        self.error = error


class _Redo(Exception):
    """An entity failed after its writes began: redo the batch with a savepoint per entity."""


class SQLiteWrites:
    """mutate, purge_expired's per-entity work, and the buffer the commit loop drains."""

    if TYPE_CHECKING:
        _listeners: dict[str, tuple[ChangeListener, Callable[[], None] | None]]
        _to_wake: list[Callable[[], None]]
        _after_commit: list[Callable[[], None]]
        _audit_rows: list[AuditRow]
        _wnames: Names

        async def _write(self, fn: Callable[[sqlite3.Connection], Any], *, groupable: bool = True) -> Any: ...

        def _append_history(self, connection: sqlite3.Connection, rows: Sequence[HistoryRow]) -> None: ...

    def _start_buffer(self) -> None:
        self._buffer: dict[str, list[tuple[Any, ...]]] = {sql: [] for sql in DRAIN_ORDER}
        self._history = self._buffer[HISTORY]
        self._buffered_pks: set[int] = set()  # entities with side rows in the buffer
        self._epks: dict[tuple[str, str], int] = {}
        self._temporal_read: tuple[tuple[str, str], tuple[tuple[int, bytes] | None]] | None = None
        # tenants a committed transaction holds (never deleted): a write of theirs needs no insert
        self._tenants: set[str] = set()
        self._new_tenants: set[str] = set()  # inserted by this transaction, known once it commits
        self._written = WrittenDocuments()  # the documents of entities written again (sqlite_written.py)

    def _ensure_tenant(self, connection: sqlite3.Connection, tenant: str) -> None:
        """The tenant's row, inserted by the first write of a tenant (writer thread)."""
        if tenant not in self._tenants:
            connection.execute(
                "INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, datetime('now'))", (tenant,)
            )
            self._new_tenants.add(tenant)

    def _drain(self, connection: sqlite3.Connection) -> None:
        """Write what the buffer holds, one executemany per statement (writer thread)."""
        for sql, rows in self._buffer.items():
            if rows:
                drained = rows
                if sql == HISTORY and all(
                    r[7] is None and r[8] is None and r[13] is None and r[14] is None for r in rows
                ):
                    sql, drained = PLAIN_INSTANCE, [r[:7] + r[9:13] for r in rows]  # PLAIN_INSTANCE's columns
                if len(drained) > 1 and sql in MULTI_INSERTS:
                    _insert_rows(connection, sql, drained)
                else:
                    connection.executemany(sql, drained)
                rows.clear()
        self._buffered_pks.clear()
        self._epks.clear()

    def _forget(self, *, committed: bool = False) -> None:
        """After a commit or a rollback: nothing buffered stands, and names made in a transaction
        that did not commit are forgotten."""
        for rows in self._buffer.values():
            rows.clear()
        self._buffered_pks.clear()
        self._epks.clear()
        if committed:
            self._wnames.committed()
            self._tenants |= self._new_tenants
        else:
            self._wnames.rolled_back()
        self._new_tenants.clear()

    def _marks(self) -> tuple[int, ...]:
        return (len(self._audit_rows), *(len(rows) for rows in self._buffer.values()), len(self._after_commit))

    def _back_to(self, marks: tuple[int, ...]) -> None:
        """Drop what was buffered after `marks` (its savepoint was rolled back)."""
        del self._audit_rows[marks[0] :]
        for rows, mark in zip(self._buffer.values(), marks[1:-1], strict=True):
            del rows[mark:]
        del self._after_commit[marks[-1] :]
        self._buffered_pks.clear()  # the buffer was drained before the savepoint: nothing of it is left
        self._epks.clear()
        self._wnames.rolled_back()

    async def mutate(
        self, tenant: str, operations: Sequence[tuple[str, Mutator]], *, atomic: bool
    ) -> list[MutationResult]:
        def run(connection: sqlite3.Connection) -> list[MutationResult]:
            self._ensure_tenant(connection, tenant)
            if atomic:
                return [self._apply(connection, tenant, entity_id, mutator) for entity_id, mutator in operations]
            self._drain(connection)  # nothing buffered before the savepoint may be rolled back with it
            connection.execute("SAVEPOINT batch")
            marks = self._marks()
            try:
                results = [self._refusable(connection, tenant, entity_id, mutator) for entity_id, mutator in operations]
            except _Redo:
                connection.execute("ROLLBACK TO batch")
                self._back_to(marks)
                results = [self._isolated(connection, tenant, index, op) for index, op in enumerate(operations)]
            connection.execute("RELEASE batch")
            return results

        results: list[MutationResult] = await self._write(run, groupable=len(operations) <= SMALL_WRITE)
        return results

    def _refusable(
        self, connection: sqlite3.Connection, tenant: str, entity_id: str, mutator: Mutator
    ) -> MutationResult:
        """One entity of a batch without a savepoint of its own: a refusal is its result; a failure
        after its writes began redoes the batch (_Redo)."""
        mark = len(self._audit_rows)
        try:
            return self._apply(connection, tenant, entity_id, mutator, refusable=True)
        except _Refused as refused:
            del self._audit_rows[mark:]
            return MutationResult(entity_id, error=refused.error)
        except NgsiLdError as error:
            raise _Redo from error

    def _isolated(
        self, connection: sqlite3.Connection, tenant: str, index: int, operation: tuple[str, Mutator]
    ) -> MutationResult:
        """One entity of a batch in its own savepoint (the careful way, after a _Redo)."""
        entity_id, mutator = operation
        self._drain(
            connection
        )  # what earlier entities buffered must not be drained inside, and lost with, this savepoint
        connection.execute(f"SAVEPOINT op{index}")
        marks = self._marks()
        try:
            result = self._apply(connection, tenant, entity_id, mutator)
        except NgsiLdError as error:
            connection.execute(f"ROLLBACK TO op{index}")
            self._back_to(marks)
            result = MutationResult(entity_id, error=error)
        connection.execute(f"RELEASE op{index}")
        return result

    def _apply(
        self,
        connection: sqlite3.Connection,
        tenant: str,
        entity_id: str,
        mutator: Mutator,
        *,
        refusable: bool = False,
    ) -> MutationResult:
        found: tuple[Any, ...] = connection.execute(ENTITY_ROW, (tenant, entity_id)).fetchone()  # always one row
        row = found if found[0] is not None else None
        key = (tenant, entity_id)
        stored = (self._written.get(key, row[1]) or orjson.loads(inflate(row[1]))) if row else None
        # the row's next_expiry (the earliest expiresAt inside) says whether anything may have
        # expired, as for readers: no scan of the document for the key
        # no next_expiry (nothing in it expires, most documents): the document itself, without a call
        before = stored if found[2] is None else visible_at(stored, found[2]) if stored is not None else None
        try:
            outcome = mutator(before)
        except NgsiLdError as error:
            if refusable:
                raise _Refused(error) from error
            raise
        after = outcome.entity
        if after is None:
            if row is not None:
                self._unindex(connection, row[0])
                connection.execute("DELETE FROM entities WHERE pk = ?", (row[0],))
        else:
            encoded = orjson.dumps(after)
            own, earliest = (own_expiry(after), next_expiry(after)) if TRANSIENT in encoded else (None, None)
            doc = deflate(encoded)
            if row is None:
                pk = connection.execute(
                    "INSERT INTO entities (tenant, id, doc, modified_at, expires_at, next_expiry)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (tenant, entity_id, doc, after["modifiedAt"], own, earliest),
                ).lastrowid
                assert pk is not None
            else:
                pk = row[0]
                connection.execute(
                    "UPDATE entities SET doc = ?, modified_at = ?, expires_at = ?, next_expiry = ? WHERE pk = ?",
                    (doc, after["modifiedAt"], own, earliest, pk),
                )
            # the mutator's relisted attributes hold against `before`: against `stored` if it is the same
            self._index(connection, pk, stored, after, outcome.relisted if before is stored else None)
            self._written.wrote(key, doc, after, outcome.relisted)
        change = EntityChange(tenant, entity_id, before, after, outcome.annotation, outcome.relisted)
        # nothing wrote the temporal entity since it was read: its history rows need not read it again
        self._temporal_read = ((tenant, entity_id), (None if found[3] is None else (found[3], found[4]),))
        try:
            self._emit(connection, change)
        finally:
            self._temporal_read = None
        return MutationResult(entity_id, outcome=outcome, change=change)

    def _emit(self, connection: sqlite3.Connection, change: EntityChange) -> None:
        """Hand a change to every listener and buffer the outbox and history rows they return, for
        this transaction."""
        listeners = self._listeners
        if not listeners:
            return

        def lookup(entity_id: str) -> Entity | None:
            row = connection.execute(
                "SELECT doc FROM entities WHERE tenant = ? AND id = ?", (change.tenant, entity_id)
            ).fetchone()
            return visible(orjson.loads(inflate(row[0]))) if row else None

        outbox = self._buffer[OUTBOX]
        for listener, wake in listeners.values():
            rows = listener(change, lookup)
            if not rows:
                continue
            history = []
            for r in rows:
                if isinstance(r, HistoryRow):
                    history.append(r)
                elif isinstance(r, OutboxRow):
                    outbox.append((r.tenant, r.subscription_id, r.lane, orjson.dumps(r.payload)))
                    if wake is not None and wake not in self._to_wake:
                        self._to_wake.append(wake)
                elif isinstance(r, AuditRow):
                    self._audit_rows.append(r)
                elif isinstance(r, AfterCommit):
                    self._after_commit.append(r.call)
            if history:
                self._append_history(connection, history)

    def _touch(self, connection: sqlite3.Connection, pk: int) -> dict[str, list[tuple[Any, ...]]]:
        """The buffer, drained first if it already holds rows of this entity."""
        if pk in self._buffered_pks:
            self._drain(connection)
        self._buffered_pks.add(pk)
        return self._buffer

    def _unindex(self, connection: sqlite3.Connection, pk: int) -> None:
        buffer = self._touch(connection, pk)
        for sql in (DEL_TYPES, DEL_ATTRS, DEL_VALUES):
            buffer[sql].append((pk,))
        gids = connection.execute("SELECT gid FROM entity_geo_attrs WHERE pk = ?", (pk,)).fetchall()
        if gids:
            _unindex_geo(connection, pk, gids)

    def _index(
        self,
        connection: sqlite3.Connection,
        pk: int,
        before: Entity | None,
        after: Entity,
        relisted: tuple[str, ...] | None = None,
    ) -> None:
        """Bring the side tables from `before` (the stored document) to `after`, rewriting only the
        rows that change: a sensor update usually rewrites one attribute's attr_values rows. Names are
        interned (sqlite_layout.py) by the writer's own cache. `relisted`: EntityChange.relisted."""
        buffer = self._touch(connection, pk)
        names = self._wnames

        def ids(name: str) -> int:
            return names.id(connection, name)

        if before is None:
            types, attrs, values = entity_rows(ids, pk, after)
            buffer[INS_TYPES].extend(types)
            buffer[INS_ATTRS].extend(attrs)
            buffer[INS_VALUES].extend(values)
        else:
            if before["type"] != after["type"]:
                buffer[DEL_TYPES].append((pk,))
                buffer[INS_TYPES].extend((ids(t), pk) for t in after["type"])
                if first_type_id(ids, before["type"]) != (first := first_type_id(ids, after["type"])):
                    buffer[SET_WALK_TYPE].append((first, pk))
            old, new = before["attrs"], after["attrs"]
            if old.keys() != new.keys():
                buffer[DEL_ATTR].extend((ids(a), pk) for a in old if a not in new)
                buffer[INS_ATTRS].extend((ids(a), pk) for a in new if a not in old)
            for attr, rows, count in changed_values(old, new, relisted):
                attr_id = ids(attr)
                if count == len(rows):
                    buffer[SET_VALUE].extend((num, txt, pk, attr_id, seq) for seq, (_, num, txt) in enumerate(rows))
                else:
                    buffer[DEL_VALUE].append((pk, attr_id))
                    buffer[INS_VALUES].extend(value_rows(pk, attr_id, rows))
        if before is not None:
            if geo_untouched(before["attrs"], after["attrs"], relisted) or geo_values(before) == geo_values(after):
                return
            boxed = instance_boxes(after)
            if _moved_geo(buffer, pk, instance_boxes(before), boxed, ids):
                return
            gids = connection.execute("SELECT gid FROM entity_geo_attrs WHERE pk = ?", (pk,)).fetchall()
            _unindex_geo(connection, pk, gids)
        else:
            boxed = instance_boxes(after)
        for attr, box, _ in boxed:
            gid = connection.execute("INSERT INTO entity_geo_attrs (pk, attr) VALUES (?, ?)", (pk, ids(attr))).lastrowid
            connection.execute("INSERT INTO entity_geo VALUES (?, ?, ?, ?, ?)", (gid, *box))
        if boxed:
            connection.executemany(
                WALK_INSERT,
                [walk_row(ids(key[0]), pk, key, first_type_id(ids, after["type"])) for key in geo_keys(boxed)],
            )

    async def purge_expired(self, now: str) -> list[EntityChange]:
        def run(connection: sqlite3.Connection) -> list[EntityChange]:
            rows = connection.execute(
                "SELECT pk, tenant, id, doc FROM entities WHERE next_expiry IS NOT NULL AND next_expiry <= ?",
                (now,),
            ).fetchall()
            changes = []
            for pk, tenant, entity_id, doc in rows:
                before = orjson.loads(inflate(doc))
                after = visible(before, now)
                if after is None:
                    self._unindex(connection, pk)
                    connection.execute("DELETE FROM entities WHERE pk = ?", (pk,))
                else:
                    connection.execute(
                        "UPDATE entities SET doc = ?, expires_at = ?, next_expiry = ? WHERE pk = ?",
                        (deflate(orjson.dumps(after)), own_expiry(after), next_expiry(after), pk),
                    )
                    self._index(connection, pk, before, after)
                change = EntityChange(tenant, entity_id, before, after)
                self._emit(connection, change)
                changes.append(change)
            connection.execute("DELETE FROM entity_maps WHERE expires_at <= ?", (now,))
            return changes

        changes: list[EntityChange] = await self._write(run)
        return changes


def _insert_rows(connection: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """`executemany(sql, rows)` for an INSERT of MULTI_INSERTS, in statements of MULTI_ROWS rows."""
    for start in range(0, len(rows), MULTI_ROWS):
        chunk = rows[start : start + MULTI_ROWS]
        connection.execute(multi_row(sql, len(chunk)), [value for row in chunk for value in row])


@cache
def multi_row(sql: str, count: int) -> str:
    """`INSERT ... VALUES (?, ...)` for `count` rows: its VALUES tuple written `count` times (at most
    MULTI_ROWS forms of each of the few MULTI_INSERTS)."""
    head, _, values = sql.rpartition(" VALUES ")
    return f"{head} VALUES {', '.join([values] * count)}"
