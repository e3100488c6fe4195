"""The PostgreSQL store's subscriptions, their outbox and worker liveness: what lets several worker
processes deliver one outbox together. A mixin of PostgresStore (through PostgresCatalog).

Every worker has a row in `workers` whose heartbeat it refreshes every `worker_heartbeat` seconds;
one whose heartbeat is older than `worker_timeout` is dead, and the outbox rows it had claimed may
be claimed again. An outbox row is claimed by writing the claimant's id into `claimed_by`, under
`FOR UPDATE SKIP LOCKED`, so concurrent claimers never take the same row. Rows of one lane (one
subscription) are delivered in id order by one worker at a time: a worker claims a row only if it
holds (or is claiming in the same statement) every earlier row of that lane.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import asyncpg
import orjson

from cityos.audit.chain import AuditRow
from cityos.audit.recorder import row as audit_row
from cityos.errors import AlreadyExists, DatabaseBusy
from cityos.store.base import OutboxRow, StoreEvent, SubscriptionRow
from cityos.store.postgres.busy import Transactions, read_again_once
from cityos.store.postgres.events import EventFollower, payload_of
from cityos.store.postgres.sql import Params
from cityos.tasks import stop_task

if TYPE_CHECKING:
    from cityos.store.postgres.schema import Connection

log = logging.getLogger("cityos.store.postgres")
WORKER_FORGOTTEN = "1 day"  # a worker silent this long (and claiming nothing) is deregistered
PERIODIC_SLACK = "100 milliseconds"  # timers of several workers fire a little apart
TENANT_INSERT = "INSERT INTO tenants (name) VALUES ($1) ON CONFLICT DO NOTHING"

# The claim, in one statement (one snapshot). `locked`: the oldest claimable rows (unclaimed, or
# claimed by a dead worker, {claimable}), skipping rows another claimer holds and rows whose lane
# another live worker is delivering (the lane's first row is claimed by it: claimed rows of a lane
# form a prefix). `blocked`: per lane, the first row neither claimed by this worker nor locked by
# this statement: a row is claimed only if it comes before it, so a lane is never split between
# workers, and never overtakes an earlier row that a concurrent claimer holds. (It is found without
# walking the rows this worker holds: the first unclaimed one, or the first held by another worker.)
_CLAIM = """
WITH locked AS MATERIALIZED (
    SELECT o.id, o.lane FROM outbox o
    WHERE {claimable}
      AND NOT EXISTS (
          SELECT 1 FROM (SELECT f.claimed_by FROM outbox f WHERE f.lane = o.lane ORDER BY f.id LIMIT 1) first
          WHERE first.claimed_by <> $2 AND first.claimed_by <> ALL($3::text[]))
    ORDER BY o.id
    LIMIT $1
    FOR UPDATE OF o SKIP LOCKED
), blocked AS MATERIALIZED (
    SELECT l.lane, least(
        (SELECT e.id FROM outbox e
         WHERE e.lane = l.lane AND e.claimed_by IS NULL AND e.id NOT IN (SELECT id FROM locked)
         ORDER BY e.id LIMIT 1),
        (SELECT min(e.id) FROM outbox e
         WHERE e.lane = l.lane AND e.claimed_by < $2 AND e.id NOT IN (SELECT id FROM locked)),
        (SELECT min(e.id) FROM outbox e
         WHERE e.lane = l.lane AND e.claimed_by > $2 AND e.id NOT IN (SELECT id FROM locked))
    ) AS first
    FROM (SELECT DISTINCT lane FROM locked) l
)
UPDATE outbox o SET claimed_by = $2
FROM locked k JOIN blocked b ON b.lane = k.lane
WHERE o.id = k.id AND (b.first IS NULL OR k.id < b.first)
RETURNING o.id, o.tenant, o.subscription_id, o.lane, o.payload, o.attempts
"""
_UNCLAIMED = "o.claimed_by IS NULL"


def outbox_cte(rows: Sequence[OutboxRow], p: Params) -> str:
    """A data-modifying CTE inserting outbox rows (ids in row order), for the write's statement."""
    columns = (
        p([row.tenant for row in rows]),
        p([row.subscription_id for row in rows]),
        p([row.lane for row in rows]),
        p([orjson.dumps(row.payload).decode() for row in rows]),
    )
    return (
        "outbox_added AS (INSERT INTO outbox (tenant, subscription_id, lane, payload)"
        f" SELECT t, s, l, p FROM unnest({columns[0]}::text[], {columns[1]}::text[], {columns[2]}::text[],"
        f" {columns[3]}::json[]) WITH ORDINALITY AS r(t, s, l, p, n) ORDER BY n)"
    )


_UNCLAIMED_OR_DEAD = "(o.claimed_by IS NULL OR o.claimed_by = ANY($3::text[]))"


class PostgresOutbox(Transactions):
    """Subscriptions, the outbox and worker liveness, mixed into PostgresStore."""

    worker_heartbeat: float = 2.0  # seconds between heartbeats
    worker_timeout: float = 10.0  # a worker silent this long is dead: its claims are up for grabs
    _heartbeat_task: asyncio.Task[None] | None = None

    if TYPE_CHECKING:
        dsn: str
        durability: str
        worker_id: str
        _events: EventFollower

        async def _notify(self, connection: Connection, event: StoreEvent) -> None: ...

        async def _audit_after(self, connection: Connection, made: Callable[[], AuditRow | None]) -> None: ...

        async def _audit_after_all(self, connection: Connection, rows: Sequence[AuditRow]) -> None: ...

    # -- worker liveness ---------------------------------------------------------------------------
    async def _start_worker(self) -> None:
        """Called by open(): register this worker and keep its heartbeat fresh."""
        await self._beat()
        self._heartbeat_task = asyncio.create_task(self._keep_beating(), name=f"cityos-heartbeat-{self.worker_id}")

    async def _beat(self, connection: Connection | None = None) -> None:
        # an upsert: a worker stalled long enough to have been deregistered comes back
        sql = "INSERT INTO workers (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET heartbeat = now()"
        if connection is None:
            await self.pool.execute(sql, self.worker_id)
        else:
            await connection.execute(sql, self.worker_id, timeout=self.worker_timeout)

    async def _keep_beating(self) -> None:
        """On a connection of its own: a pool busy with long queries must not make this worker
        look dead (its lanes would be delivered by two workers at once)."""
        connection: asyncpg.Connection[asyncpg.Record] | None = None
        try:
            while True:
                await asyncio.sleep(self.worker_heartbeat)
                try:
                    if connection is None or connection.is_closed():
                        connection = await asyncpg.connect(self.dsn, timeout=self.worker_timeout)
                    await self._beat(connection)
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    asyncpg.exceptions.InternalClientError,  # a protocol state broken by a cut connection
                    TimeoutError,
                ) as exc:
                    log.warning("refreshing the heartbeat of worker %s failed: %s", self.worker_id, exc)
                    if connection is not None:
                        connection.terminate()
                        connection = None
        finally:
            if connection is not None:
                connection.terminate()

    async def _stop_worker(self) -> None:
        """Called by close(), before the pool closes: release this worker's claims and deregister it."""
        task, self._heartbeat_task = self._heartbeat_task, None
        await stop_task(task)

        async def work(connection: Connection) -> None:
            await connection.execute("UPDATE outbox SET claimed_by = NULL WHERE claimed_by = $1", self.worker_id)
            await connection.execute("DELETE FROM workers WHERE id = $1", self.worker_id)

        try:
            await self._write(work)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, DatabaseBusy) as exc:
            # its claims are released anyway once its heartbeat is old enough
            log.warning("deregistering worker %s failed: %s", self.worker_id, exc)

    async def _dead_workers(self, connection: Connection) -> list[str]:
        rows = await connection.fetch(
            "SELECT id FROM workers WHERE id <> $1 AND heartbeat < now() - make_interval(secs => $2)",
            self.worker_id,
            self.worker_timeout,
        )
        return [row["id"] for row in rows]

    # -- the outbox ----------------------------------------------------------------------------------
    async def _insert_outbox(self, connection: Connection, rows: Sequence[OutboxRow]) -> None:
        """Insert the notifications a write owes, in the caller's transaction (ids in row order)."""
        due = await self._outbox_due(connection, rows)
        if due:
            p = Params()
            await connection.execute(f"WITH {outbox_cte(due, p)} SELECT 1", *p.values)

    @staticmethod
    async def _outbox_due(connection: Connection, rows: Sequence[OutboxRow]) -> list[OutboxRow]:
        """The rows to insert, inside mutate's transaction: a throttled subscription's row is kept
        only if its period has passed, decided on the subscription's row (locked until this
        transaction ends), so workers throttle as one."""
        kept = list(rows)
        for row in rows:
            if row.throttling <= 0:
                continue
            passed = await connection.fetchval(
                "UPDATE subscriptions SET throttled_until = clock_timestamp() + make_interval(secs => $3)"
                " WHERE tenant = $1 AND id = $2 AND (throttled_until IS NULL OR throttled_until <= clock_timestamp())"
                " RETURNING true",
                row.tenant,
                row.subscription_id,
                row.throttling,
            )
            if not passed:
                kept = [other for other in kept if other is not row]
        return kept

    async def release_outbox(self) -> None:
        """At start-up: un-claim the rows of this worker and of workers not alive (also of claimants
        no longer listed), and deregister the workers silent for WORKER_FORGOTTEN."""

        async def work(connection: Connection) -> None:
            await connection.execute(
                "UPDATE outbox SET claimed_by = NULL WHERE id IN (SELECT id FROM outbox"
                " WHERE claimed_by = $1 OR claimed_by NOT IN (SELECT id FROM workers"
                "  WHERE id <> $1 AND heartbeat >= now() - make_interval(secs => $2))"
                " FOR UPDATE SKIP LOCKED)",
                self.worker_id,
                self.worker_timeout,
            )
            # only once nothing is claimed in its name: every claimant stays listed, so its
            # claims are found by the dead-worker test above
            await connection.execute(
                f"DELETE FROM workers w WHERE id <> $1 AND heartbeat < now() - interval '{WORKER_FORGOTTEN}'"
                " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.claimed_by = w.id)",
                self.worker_id,
            )

        await self._write(work)

    async def release_claims(self, ids: Sequence[int]) -> None:
        if ids:
            await self._write_one(
                "UPDATE outbox SET claimed_by = NULL WHERE id = ANY($1::bigint[]) AND claimed_by = $2",
                list(ids),
                self.worker_id,
            )

    async def claim_outbox(self, limit: int) -> list[OutboxRow]:
        """Up to `limit` rows, oldest first, that are unclaimed or claimed by a dead worker, now
        claimed by this one; rows of a lane only in order and only by the worker holding the lane."""

        async def work(connection: Connection) -> list[asyncpg.Record]:
            dead = await self._dead_workers(connection)
            # without dead workers, the partial index of unclaimed rows gives them oldest first
            sql = _CLAIM.format(claimable=_UNCLAIMED_OR_DEAD if dead else _UNCLAIMED)
            return list(await connection.fetch(sql, limit, self.worker_id, dead))

        rows = await self._write(work)
        claimed = [
            OutboxRow(r["tenant"], r["subscription_id"], r["lane"], orjson.loads(r["payload"]), r["id"], r["attempts"])
            for r in rows
        ]
        claimed.sort(key=lambda row: row.id)
        return claimed

    async def finish_outbox(self, row: OutboxRow, *, done: bool, status: SubscriptionRow | None = None) -> None:
        """One statement: the row deleted (delivered) or its attempts counted, and the subscription's
        delivery status saved, the other workers told of it at commit. Autocommitted (one round
        trip, not three): running it twice (a connection lost after its commit) changes nothing more.

        Its commit does not wait for the WAL flush unless --durability full: a lane delivers one
        notification after the other, so that wait (an fdatasync) was a part of every notification's
        time. A crash of the database losing this commit leaves the row to be delivered again, what
        a crash between the delivery and this statement does in any case (at least once)."""
        p = Params()
        relaxed = "" if self.durability == "full" else ", set_config('synchronous_commit', 'off', true)"
        if done:
            finished = f"finished AS (DELETE FROM outbox WHERE id = {p(row.id)})"
        else:
            finished = f"finished AS (UPDATE outbox SET attempts = {p(row.attempts)} WHERE id = {p(row.id)})"
        if status is None:
            sql = f"WITH {finished} SELECT 1{relaxed}"
        else:
            event = StoreEvent("subscription-status", status.tenant, status.id, data=status.status)
            saved = p(orjson.dumps(status.status).decode())
            sql = (
                f"WITH {finished}, saved AS (UPDATE subscriptions SET status = {saved}"
                f" WHERE tenant = {p(status.tenant)} AND id = {p(status.id)} RETURNING true)"
                f" SELECT pg_notify({p(self._events.channel)}, {p(payload_of(self.worker_id, event))}){relaxed}"
                " FROM saved"
            )

        async def work(connection: Connection) -> None:
            await connection.execute(sql, *p.values)

        await self._write(work, autocommit=True)

    # -- subscriptions -------------------------------------------------------------------------------
    async def claim_periodic(self, tenant: str, subscription_id: str, interval: float) -> bool:
        """The first worker to ask in a period moves the subscription's `periodic_due` one interval on."""
        return await self._write_one(
            "UPDATE subscriptions SET periodic_due = now() + make_interval(secs => $3)"
            " WHERE tenant = $1 AND id = $2"
            f" AND (periodic_due IS NULL OR periodic_due <= now() + interval '{PERIODIC_SLACK}') RETURNING true",
            tenant,
            subscription_id,
            float(interval),
        )

    async def save_subscription(self, row: SubscriptionRow, *, create: bool) -> None:
        """Other workers hear of it: a replace that leaves the document as it was (the delivery
        bookkeeping of a periodic report) as "subscription-status" with the status, which they
        apply without reloading; any other save as "subscription"."""
        values = (orjson.dumps(row.document).decode(), orjson.dumps(row.status).decode(), row.tenant, row.id)

        async def work(connection: Connection) -> None:
            if create:
                await connection.execute(TENANT_INSERT, row.tenant)
                created = await connection.fetchval(
                    "INSERT INTO subscriptions (doc, status, tenant, id) VALUES ($1, $2, $3, $4)"
                    " ON CONFLICT (tenant, id) DO NOTHING RETURNING true",
                    *values,
                )
                if not created:
                    raise AlreadyExists(f"subscription {row.id} already exists")
                event = StoreEvent("subscription", row.tenant, row.id)
                await self._audit_after(connection, lambda: audit_row("subscription.create", row.tenant, [row.id]))
            else:
                # the document as it was, from the row this UPDATE locks (json keeps its text)
                same = await connection.fetchval(
                    "WITH old AS (SELECT pk, doc::text AS doc FROM subscriptions WHERE tenant = $3 AND id = $4"
                    " FOR UPDATE) UPDATE subscriptions s SET doc = $1, status = $2 FROM old WHERE s.pk = old.pk"
                    " RETURNING old.doc = $5::text",
                    *values,
                    values[0],
                )
                if same is None:  # no such subscription
                    return
                if same:
                    event = StoreEvent("subscription-status", row.tenant, row.id, data=row.status)
                else:
                    event = StoreEvent("subscription", row.tenant, row.id)
                await self._audit_after(connection, lambda: audit_row("subscription.update", row.tenant, [row.id]))
            await self._notify(connection, event)

        await self._write(work)

    async def delete_subscription(self, tenant: str, subscription_id: str) -> bool:
        async def work(connection: Connection) -> bool:
            await connection.execute(
                "DELETE FROM outbox WHERE tenant = $1 AND subscription_id = $2", tenant, subscription_id
            )
            deleted = await connection.fetchval(
                "DELETE FROM subscriptions WHERE tenant = $1 AND id = $2 RETURNING true", tenant, subscription_id
            )
            if deleted:
                await self._notify(connection, StoreEvent("subscription", tenant, subscription_id))
                await self._audit_after(connection, lambda: audit_row("subscription.delete", tenant, [subscription_id]))
            return bool(deleted)

        return await self._write(work)

    @read_again_once
    async def load_subscriptions(self) -> list[SubscriptionRow]:
        async with self.pool.acquire() as connection:
            return await subscription_rows(connection)

    @read_again_once
    async def get_subscription(self, tenant: str, subscription_id: str) -> SubscriptionRow | None:
        found = await self.pool.fetchrow(
            "SELECT doc, status FROM subscriptions WHERE tenant = $1 AND id = $2", tenant, subscription_id
        )
        if found is None:
            return None
        return SubscriptionRow(tenant, subscription_id, orjson.loads(found["doc"]), orjson.loads(found["status"]))

    async def save_subscription_status(self, row: SubscriptionRow) -> None:
        """Only the delivery bookkeeping: a concurrent change of the document by another worker stays."""

        async def work(connection: Connection) -> None:
            updated = await connection.fetchval(
                "UPDATE subscriptions SET status = $1 WHERE tenant = $2 AND id = $3 RETURNING true",
                orjson.dumps(row.status).decode(),
                row.tenant,
                row.id,
            )
            if updated:
                await self._notify(connection, StoreEvent("subscription-status", row.tenant, row.id, data=row.status))

        await self._write(work)


async def subscription_rows(connection: Connection) -> list[SubscriptionRow]:
    """Every subscription of every tenant, in creation order, read through `connection`."""
    rows = await connection.fetch("SELECT tenant, id, doc, status FROM subscriptions ORDER BY pk")
    return [SubscriptionRow(r["tenant"], r["id"], orjson.loads(r["doc"]), orjson.loads(r["status"])) for r in rows]
