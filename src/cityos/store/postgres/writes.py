"""The entity write path on PostgreSQL (mutate, and the expiry sweep), mixed into PostgresStore.

One transaction per call, a handful of round trips whatever its size:
1. in one statement: every entity's advisory lock in id order (two writes that
   share entities queue behind each other instead of deadlocking; the lock also covers an entity
   that does not exist yet, so two creates of one id serialise instead of failing on the unique
   index), the stored rows (FOR UPDATE, in a snapshot taken after the locks), the subscriptions'
   catalogue version, pks for the rows that may be created, the retention lock and which of the
   temporal partitions the history will likely go to are attached (and, for a one-entity write,
   the entity's temporal pk and types, so its history needs no upsert of the temporal entity);
2. every mutator and change listener, in Python, against a WritePlan (write_plan.py): on the
   store's sync thread in one hand-off, since a listener's lookup of another entity must await
   this transaction's connection on the event loop;
3. one statement for `entities`, its side tables, the outbox rows (outbox.py), the audit queue
   (audit.py), the tenant's row (the first time) and the history (temporal.history_ctes) when it
   is small and goes to the partitions the first statement locked (those of the process's last
   history write: the month's, in practice); else the history takes two statements more.

An operation that fails (its mutator or a listener raised an NgsiLdError) is taken out of the
plan, its rows dropped, and the others go on (atomic=False): no SAVEPOINT, since nothing of it had
reached the database. Conflicts and lost connections run the whole transaction again (busy.py).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from cityos.audit.chain import AuditRow
from cityos.entities.expiry import visible
from cityos.entities.model import Entity
from cityos.entities.update import Mutator, Outcome
from cityos.errors import NgsiLdError
from cityos.store.base import (
    AfterCommit,
    ChangeListener,
    EntityChange,
    HistoryRow,
    MutationResult,
    OutboxRow,
    StoreEvent,
)
from cityos.store.postgres.audit import pending_cte
from cityos.store.postgres.busy import Transactions
from cityos.store.postgres.events import EventFollower, payload_of
from cityos.store.postgres.outbox import outbox_cte
from cityos.store.postgres.sql import Params, entity_lock
from cityos.store.postgres.write_plan import Key, WritePlan

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from cityos.store.postgres.schema import Connection
    from cityos.store.postgres.temporal import HistoryCtes, _Put

# One statement: every entity's advisory lock in id order (a one-time filter, so all
# are held before the first row is locked), then the stored rows FOR UPDATE. The first row: the
# subscriptions' catalogue version and as many pks as ids have no row (a create uses one; an
# operation that fails leaves a gap, as a rolled-back INSERT does); then the rows. The statement's
# snapshot is taken before the locks are, and would miss a row created meanwhile by a write it
# waited for: the rows are read by entities_for_update (migration 11), whose query takes a snapshot
# of its own, after the locks.
# $4: the temporal partitions the last history write went to (None: none known): the retention lock
# is taken (shared) and those not attached named (temporal_partitions_missing, migration 21, after
# the entity locks), so that a history going only to the others is written by the write's one
# statement (temporal.history_ctes), whose first lock of temporal_instances in this transaction
# reads the catalogue's invalidations (a partition attached since is routed to).
_READ = f"""
WITH locks AS MATERIALIZED (
    SELECT count(pg_advisory_xact_lock({entity_lock("$1", "id")})) AS held
    FROM (SELECT u.id FROM unnest($2::text[]) AS u(id) ORDER BY u.id COLLATE "C") AS ids
),
locked AS (
    SELECT pk, id, doc FROM entities_for_update($1, $2::text[]) WHERE (SELECT held FROM locks) IS NOT NULL
)
SELECT NULL::bigint AS pk, NULL::text AS id, NULL::json AS doc,
    (SELECT version FROM catalog_versions WHERE name = 'subscriptions') AS version,
    ARRAY(SELECT nextval('entities_pk_seq') FROM generate_series(1, $3 - (SELECT count(*) FROM locked))) AS pks,
    CASE WHEN $4::text[] IS NOT NULL AND (SELECT held FROM locks) IS NOT NULL
        THEN temporal_partitions_missing($4::text[]) END AS missing
UNION ALL SELECT pk, id, doc, NULL, NULL, NULL FROM locked
"""
# The same for one entity (most writes): entity_for_update (migration 21) takes one id, so its plan
# is cached, and reads the entity's temporal pk and types with its row ($3 unused, kept so both
# statements take the same arguments).
_READ_ONE = f"""
WITH locks AS MATERIALIZED (SELECT count(pg_advisory_xact_lock({entity_lock("$1", "$2::text")})) AS held),
locked AS (
    SELECT pk, id, doc, temporal_pk, temporal_types FROM entity_for_update($1, $2::text)
    WHERE (SELECT held FROM locks) IS NOT NULL
)
SELECT NULL::bigint AS pk, NULL::text AS id, NULL::json AS doc, NULL::bigint AS temporal_pk,
    NULL::text[] AS temporal_types,
    (SELECT version FROM catalog_versions WHERE name = 'subscriptions') AS version,
    ARRAY(SELECT nextval('entities_pk_seq') FROM generate_series(1, $3 - (SELECT count(*) FROM locked))) AS pks,
    CASE WHEN $4::text[] IS NOT NULL AND (SELECT held FROM locks) IS NOT NULL
        THEN temporal_partitions_missing($4::text[]) END AS missing
UNION ALL SELECT pk, id, doc, temporal_pk, temporal_types, NULL, NULL, NULL FROM locked
"""
_MORE_PKS = "SELECT ARRAY(SELECT nextval('entities_pk_seq') FROM generate_series(1, $1))"
_LOCK_SWEPT = f"""
SELECT k.n FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(tenant, id, n)
WHERE pg_try_advisory_xact_lock({entity_lock("k.tenant", "k.id")}) ORDER BY k.n
"""

Wake = Callable[[], None]
Step = tuple[Key, Mutator]


@dataclass(slots=True)
class _Owed:
    """What the listeners returned for the operations that succeeded, to insert in the write."""

    outbox: list[OutboxRow] = field(default_factory=list)
    history: list[HistoryRow] = field(default_factory=list)
    audit: list[AuditRow] = field(default_factory=list)
    wakes: list[Wake] = field(default_factory=list)
    events: list[StoreEvent] = field(default_factory=list)  # told the other workers at commit (NOTIFY)
    after: list[Wake] = field(default_factory=list)  # the listeners' AfterCommit calls

    def mark(self) -> tuple[int, int, int, int, int, int]:
        return len(self.outbox), len(self.history), len(self.audit), len(self.wakes), len(self.events), len(self.after)

    def undo(self, mark: tuple[int, int, int, int, int, int]) -> None:
        del self.outbox[mark[0] :], self.history[mark[1] :], self.audit[mark[2] :], self.wakes[mark[3] :]
        del self.events[mark[4] :], self.after[mark[5] :]

    def add(
        self, rows: Sequence[OutboxRow | HistoryRow | AuditRow | StoreEvent | AfterCommit], wake: Wake | None
    ) -> None:
        outbox = [r for r in rows if isinstance(r, OutboxRow)]
        if outbox:
            self.outbox.extend(outbox)
            if wake is not None and wake not in self.wakes:
                self.wakes.append(wake)
        self.history.extend(r for r in rows if isinstance(r, HistoryRow))
        self.audit.extend(r for r in rows if isinstance(r, AuditRow))
        self.events.extend(r for r in rows if isinstance(r, StoreEvent))
        self.after.extend(r.call for r in rows if isinstance(r, AfterCommit))


class PostgresWrites(Transactions):
    """mutate and purge_expired; PostgresStore supplies the listeners, the sync thread and the
    outbox, history and audit inserts."""

    if TYPE_CHECKING:
        _listeners: dict[str, tuple[ChangeListener, Wake | None]]
        _sync_pool: ThreadPoolExecutor
        _tenants_made: set[str]  # tenants whose row this process has seen committed (_flush)
        _events: EventFollower
        worker_id: str

        def _block_on(self, coroutine: Any) -> Any: ...

        async def _fresh_subscriptions(self, connection: Connection, version: int | None = None) -> None: ...

        async def _outbox_due(self, connection: Connection, rows: Sequence[OutboxRow]) -> list[OutboxRow]: ...

        def _wake_sealer(self) -> None: ...

        _recent_partitions: tuple[str, ...]

        async def _append_history(
            self, connection: Connection, rows: Sequence[HistoryRow], puts: Sequence[_Put] | None = None
        ) -> None: ...

        def history_ctes(
            self,
            rows: Sequence[HistoryRow],
            p: Params,
            locked: Sequence[str],
            tenants_known: Container[str] = (),
            temporal: Mapping[Key, tuple[int, Sequence[str]]] | None = None,
        ) -> HistoryCtes | None: ...

        async def history_lost(
            self, connection: Connection, rows: Sequence[HistoryRow], history: HistoryCtes, lost: Sequence[int] | None
        ) -> None: ...

        async def _purge_expired_maps(self, connection: Connection, now: str) -> None: ...

    async def mutate(
        self, tenant: str, operations: Sequence[tuple[str, Mutator]], *, atomic: bool
    ) -> list[MutationResult]:
        ids = sorted({entity_id for entity_id, _ in operations})
        steps = [((tenant, entity_id), mutator) for entity_id, mutator in operations]
        wakes: list[Wake] = []
        after: list[Wake] = []  # the AfterCommit calls, made once the write has committed

        async def work(connection: Connection) -> list[MutationResult]:
            plan = WritePlan()
            version = pks = None
            speculated = list(self._recent_partitions) or None
            locked: list[str] = []
            temporal: dict[Key, tuple[int, Sequence[str]]] = {}  # temporal pk and types, where read
            if len(ids) == 1:
                rows = await connection.fetch(_READ_ONE, tenant, ids[0], 1, speculated)
            else:
                rows = await connection.fetch(_READ, tenant, ids, len(ids), speculated)
            for row in rows:
                if row["id"] is None:
                    version, pks = row["version"], list(row["pks"])
                    if speculated is not None:
                        locked = [name for name in speculated if name not in (row["missing"] or ())]
                else:
                    plan.load(tenant, row["id"], row["pk"], row["doc"])
                    if len(ids) == 1 and row["temporal_pk"] is not None:
                        temporal[(tenant, row["id"])] = (row["temporal_pk"], row["temporal_types"])
            for entity_id in ids:
                if not plan.holds((tenant, entity_id)):
                    plan.load(tenant, entity_id, None, None)
            await self._fresh_subscriptions(connection, version)
            results, owed = await self._run(connection, plan, steps, atomic=atomic)
            await self._flush(connection, plan, pks or [], owed, tenant, locked, temporal)
            wakes[:] = owed.wakes
            after[:] = owed.after  # the last attempt's (a retried transaction ran the listeners again)
            return results

        results = await self._write(work)
        if len(self._tenants_made) > 10_000:  # a bound: forgetting one costs one more CTE
            self._tenants_made.clear()
        self._tenants_made.add(tenant)  # committed: its row exists (tenant rows are never deleted)
        for wake in wakes:  # after the commit: the rows are there to claim
            wake()
        for call in after:
            call()
        return results

    async def purge_expired(self, now: str) -> list[EntityChange]:
        """Sweep transient entities and attributes; SKIP LOCKED lets several workers sweep at once."""
        wakes: list[Wake] = []
        after: list[Wake] = []

        async def work(connection: Connection) -> list[EntityChange]:
            await self._fresh_subscriptions(connection)
            rows = await connection.fetch(
                "SELECT pk, tenant, id, doc FROM entities WHERE next_expiry IS NOT NULL AND next_expiry <= $1"
                " ORDER BY next_expiry, pk FOR UPDATE SKIP LOCKED",
                now,
            )
            # the entity lock writers take (mutate, the temporal API, retention): an entity being
            # written now is left to the next sweep
            locked = await connection.fetch(_LOCK_SWEPT, [r["tenant"] for r in rows], [r["id"] for r in rows])
            plan = WritePlan()
            steps: list[Step] = []
            for found in locked:
                row = rows[found["n"] - 1]
                key = (row["tenant"], row["id"])
                plan.load(*key, row["pk"], row["doc"])
                steps.append((key, _becomes(visible(plan.slots[key].stored, now))))
            results, owed = await self._run(connection, plan, steps, atomic=True, stored_before=True)
            await self._flush(connection, plan, [], owed)
            await self._purge_expired_maps(connection, now)
            wakes[:] = owed.wakes
            after[:] = owed.after
            return [result.change for result in results if result.change is not None]

        changes = await self._write(work)
        for wake in wakes:
            wake()
        for call in after:
            call()
        return changes

    async def _run(
        self,
        connection: Connection,
        plan: WritePlan,
        steps: Sequence[Step],
        *,
        atomic: bool,
        stored_before: bool = False,
    ) -> tuple[list[MutationResult], _Owed]:
        """Every operation in turn, in Python; the listeners (and so the whole run, which must see
        their effects in order) on the sync thread, in the request's context."""
        listeners = list(self._listeners.values())  # a snapshot: one set of listeners per write

        async def fetch(tenant: str, entity_id: str) -> Entity | None:
            doc = await connection.fetchval("SELECT doc FROM entities WHERE tenant = $1 AND id = $2", tenant, entity_id)
            return visible(orjson.loads(doc)) if doc is not None else None

        def lookup_in(tenant: str) -> Callable[[str], Entity | None]:
            def lookup(entity_id: str) -> Entity | None:
                if plan.holds((tenant, entity_id)):
                    return plan.current((tenant, entity_id))
                found: Entity | None = self._block_on(fetch(tenant, entity_id))
                return found

            return lookup

        def run() -> tuple[list[MutationResult], _Owed]:
            return _apply(plan, steps, listeners, lookup_in, atomic=atomic, stored_before=stored_before)

        if not listeners:
            return run()
        loop = asyncio.get_running_loop()
        done: tuple[list[MutationResult], _Owed] = await loop.run_in_executor(
            self._sync_pool, contextvars.copy_context().run, run
        )
        return done

    async def _flush(
        self,
        connection: Connection,
        plan: WritePlan,
        pks: list[int],
        owed: _Owed,
        tenant: str | None = None,
        locked: Sequence[str] = (),
        temporal: Mapping[Key, tuple[int, Sequence[str]]] | None = None,
    ) -> None:
        """Write the plan and what the listeners owe, in this transaction, and the tenant's row
        (when this process has not seen it committed yet); the history too when it is small and
        goes to partitions `locked` already (else in two statements after it). The tenant comes last, not first: an
        insert that meets another transaction's uncommitted row of the same tenant waits for that
        transaction to end, so two batches into a new tenant (a fresh database's default one, while
        loading) wait for each other's last statements only, not for each other's whole work (which
        on a loaded machine outlasted the busy timeout: a 503)."""
        needed = plan.new_rows()
        if needed > len(pks):  # an entity deleted and created again in this write: a new row, a new pk
            pks = pks + list(await connection.fetchval(_MORE_PKS, needed - len(pks)))
        replaced = plan.replaced()
        if replaced:
            await connection.execute("DELETE FROM entities WHERE pk = ANY($1::bigint[])", replaced)
        p = Params()
        ctes = plan.ctes(pks[:needed], p)
        outbox = await self._outbox_due(connection, owed.outbox) if owed.outbox else []
        if outbox:
            ctes.append(outbox_cte(outbox, p))
        if owed.audit:  # queued with the write, sealed after COMMIT
            ctes.append(pending_cte(owed.audit, p))
        if tenant is not None and tenant not in self._tenants_made:
            ctes.append(f"tenant_added AS (INSERT INTO tenants (name) VALUES ({p(tenant)}) ON CONFLICT DO NOTHING)")
        history = (
            self.history_ctes(owed.history, p, locked, self._tenants_made, temporal or {}) if owed.history else None
        )
        if history is not None and history.cte:
            ctes.append(history.cte)
            lost = await connection.fetchval("WITH " + ", ".join(ctes) + " SELECT lost FROM th_lost", *p.values)
            await self.history_lost(connection, owed.history, history, lost)
        elif ctes:
            await connection.execute("WITH " + ", ".join(ctes) + " SELECT 1", *p.values)
        if owed.events:  # one statement for the write's events, delivered when it commits
            payloads = [payload_of(self.worker_id, event) for event in owed.events]
            await connection.execute(
                "SELECT pg_notify($1, x) FROM unnest($2::text[]) x", self._events.channel, payloads
            )
        if owed.audit:
            self._wake_sealer()
        if owed.history and (history is None or not history.cte):
            await self._append_history(connection, owed.history, history.puts if history is not None else None)


def _becomes(after: Entity | None) -> Mutator:
    """The sweep's operation: the entity becomes its visible part (None: it expired whole)."""

    def run(_current: Entity | None) -> Outcome:
        return Outcome(after)

    return run


def _apply(
    plan: WritePlan,
    steps: Sequence[Step],
    listeners: Sequence[tuple[ChangeListener, Wake | None]],
    lookup_in: Callable[[str], Callable[[str], Entity | None]],
    *,
    atomic: bool,
    stored_before: bool,
) -> tuple[list[MutationResult], _Owed]:
    """Run each operation's mutator and the listeners of its change against the plan. An
    NgsiLdError undoes that operation (atomic=False) or the whole write (atomic=True)."""
    owed = _Owed()
    results: list[MutationResult] = []
    for key, mutator in steps:
        saved, mark = plan.mark(key), owed.mark()
        try:
            before = plan.before(key)
            outcome = mutator(before)
            plan.stage(key, outcome.entity, before, outcome.relisted)
            # the sweep reports the stored document, expired parts included, as what changed
            # relisted holds against what the mutator started from (`before`), as on SQLite
            change = EntityChange(
                key[0],
                key[1],
                saved.stored if stored_before else before,
                outcome.entity,
                outcome.annotation,
                None if stored_before else outcome.relisted,
            )
            lookup = lookup_in(key[0])
            for listener, wake in listeners:
                owed.add(listener(change, lookup), wake)
        except NgsiLdError as error:
            if atomic:
                raise
            plan.undo(key, saved)
            owed.undo(mark)
            results.append(MutationResult(key[1], error=error))
            continue
        results.append(MutationResult(key[1], outcome=outcome, change=change))
    return results, owed
