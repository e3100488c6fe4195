"""The SQLite store's catalogue tables: hosted @contexts, subscriptions and their outbox, context
source registrations, entity maps, discovery aggregates and ingestion configuration. A mixin:
SQLiteStore supplies the connections and transactions, so each method here is one SQL statement
group."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from cityos.audit.chain import AuditRow
from cityos.audit.recorder import ingest_row
from cityos.audit.recorder import row as audit_row
from cityos.entities.expiry import now_key
from cityos.errors import AlreadyExists
from cityos.query.entity_maps import EntityMap, expiry_key, from_expiry_key
from cityos.store.base import (
    AttributeStats,
    EntityTypeStats,
    EventListener,
    IngestRecord,
    OutboxRow,
    RegistrationRow,
    StoredContextRow,
    StoreEvent,
    SubscriptionRow,
)
from cityos.store.registration_cache import RegistrationCache
from cityos.store.sqlite_layout import NAME_ID

T = TypeVar("T")
VISIBLE = "e.tenant = ? AND (e.expires_at IS NULL OR e.expires_at > ?)"


class SQLiteCatalog:
    """Catalogue methods of the storage contract, mixed into SQLiteStore."""

    registrations_kept: RegistrationCache  # made by SQLiteStore.__init__

    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _read_with_deadline(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        def _audit_note(self, row: Callable[[], AuditRow | None]) -> None: ...

    # -- hosted @contexts --------------------------------------------------------------------------
    async def save_context(self, row: StoredContextRow) -> None:
        await self._write(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO jsonld_contexts VALUES (?, ?, ?, ?, ?)",
                (row.tenant, row.local_id, row.kind, orjson.dumps(row.document), row.created_at),
            )
        )

    async def delete_context(self, tenant: str, local_id: str) -> None:
        await self._write(
            lambda c: c.execute("DELETE FROM jsonld_contexts WHERE tenant = ? AND local_id = ?", (tenant, local_id))
        )

    async def load_contexts(self) -> list[StoredContextRow]:
        def run(connection: sqlite3.Connection) -> list[StoredContextRow]:
            rows = connection.execute("SELECT tenant, local_id, kind, doc, created_at FROM jsonld_contexts").fetchall()
            return [StoredContextRow(t, i, k, orjson.loads(d), c) for t, i, k, d, c in rows]

        return await self._read(run)

    # -- subscriptions and their outbox ----------------------------------------------------------
    def set_catalog_refresher(self, refresher: Callable[[list[SubscriptionRow]], Awaitable[None]] | None) -> None:
        """Never needed: this process makes every subscription change itself."""

    def set_event_listener(self, listener: EventListener | None) -> None:
        """Nothing to listen to: one process owns a SQLite database, and its caches are its own."""

    async def publish(self, event: StoreEvent) -> None:
        """Nobody to tell: one process owns a SQLite database."""

    async def claim_periodic(self, tenant: str, subscription_id: str, interval: float) -> bool:
        return True  # the only worker

    async def save_subscription(self, row: SubscriptionRow, *, create: bool) -> None:
        def run(connection: sqlite3.Connection) -> None:
            values = (orjson.dumps(row.document), orjson.dumps(row.status), row.tenant, row.id)
            if not create:
                sql = "UPDATE subscriptions SET doc = ?, status = ? WHERE tenant = ? AND id = ?"
                if connection.execute(sql, values).rowcount:
                    self._audit_note(lambda: audit_row("subscription.update", row.tenant, [row.id]))
                return
            connection.execute(
                "INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, datetime('now'))", (row.tenant,)
            )
            try:
                connection.execute("INSERT INTO subscriptions (doc, status, tenant, id) VALUES (?, ?, ?, ?)", values)
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"subscription {row.id} already exists") from exc
            self._audit_note(lambda: audit_row("subscription.create", row.tenant, [row.id]))

        await self._write(run)

    async def get_subscription(self, tenant: str, subscription_id: str) -> SubscriptionRow | None:
        def run(connection: sqlite3.Connection) -> SubscriptionRow | None:
            found = connection.execute(
                "SELECT doc, status FROM subscriptions WHERE tenant = ? AND id = ?", (tenant, subscription_id)
            ).fetchone()
            if found is None:
                return None
            return SubscriptionRow(tenant, subscription_id, orjson.loads(found[0]), orjson.loads(found[1]))

        return await self._read(run)

    async def save_subscription_status(self, row: SubscriptionRow) -> None:
        await self._write(
            lambda c: c.execute(
                "UPDATE subscriptions SET status = ? WHERE tenant = ? AND id = ?",
                (orjson.dumps(row.status), row.tenant, row.id),
            )
        )

    async def delete_subscription(self, tenant: str, subscription_id: str) -> bool:
        def run(connection: sqlite3.Connection) -> bool:
            key = (tenant, subscription_id)
            connection.execute("DELETE FROM outbox WHERE tenant = ? AND subscription_id = ?", key)
            if connection.execute("DELETE FROM subscriptions WHERE tenant = ? AND id = ?", key).rowcount == 0:
                return False
            self._audit_note(lambda: audit_row("subscription.delete", tenant, [subscription_id]))
            return True

        return await self._write(run)

    async def load_subscriptions(self) -> list[SubscriptionRow]:
        def run(connection: sqlite3.Connection) -> list[SubscriptionRow]:
            rows = connection.execute("SELECT tenant, id, doc, status FROM subscriptions ORDER BY pk").fetchall()
            return [SubscriptionRow(t, i, orjson.loads(d), orjson.loads(s)) for t, i, d, s in rows]

        return await self._read(run)

    async def release_outbox(self) -> None:
        await self._write(lambda c: c.execute("UPDATE outbox SET claimed = 0 WHERE claimed = 1"))

    async def release_claims(self, ids: Sequence[int]) -> None:
        if ids:
            await self._write(
                lambda c: c.executemany("UPDATE outbox SET claimed = 0 WHERE id = ?", [(i,) for i in ids])
            )

    async def claim_outbox(self, limit: int) -> list[OutboxRow]:
        def run(connection: sqlite3.Connection) -> list[OutboxRow]:
            rows = connection.execute(
                "SELECT id, tenant, subscription_id, lane, payload, attempts FROM outbox"
                " WHERE claimed = 0 ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
            if rows:
                connection.executemany("UPDATE outbox SET claimed = 1 WHERE id = ?", [(r[0],) for r in rows])
            return [OutboxRow(t, s, lane, orjson.loads(p), i, a) for i, t, s, lane, p, a in rows]

        return await self._write(run)

    async def finish_outbox(self, row: OutboxRow, *, done: bool, status: SubscriptionRow | None = None) -> None:
        def run(connection: sqlite3.Connection) -> None:
            if done:
                connection.execute("DELETE FROM outbox WHERE id = ?", (row.id,))
            else:
                connection.execute("UPDATE outbox SET attempts = ? WHERE id = ?", (row.attempts, row.id))
            if status is not None:
                connection.execute(
                    "UPDATE subscriptions SET status = ? WHERE tenant = ? AND id = ?",
                    (orjson.dumps(status.status), status.tenant, status.id),
                )

        await self._write(run)

    # -- context source registrations ---------------------------------------------------------------
    async def save_registration(self, row: RegistrationRow, *, create: bool) -> None:
        def run(connection: sqlite3.Connection) -> None:
            values = (orjson.dumps(row.document), row.tenant, row.id)
            if not create:
                if connection.execute("UPDATE registrations SET doc = ? WHERE tenant = ? AND id = ?", values).rowcount:
                    self._audit_note(lambda: audit_row("registration.update", row.tenant, [row.id]))
                return
            connection.execute(
                "INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, datetime('now'))", (row.tenant,)
            )
            try:
                connection.execute("INSERT INTO registrations (doc, tenant, id) VALUES (?, ?, ?)", values)
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"context source registration {row.id} already exists") from exc
            self._audit_note(lambda: audit_row("registration.create", row.tenant, [row.id]))

        try:
            await self._write(run)
        finally:
            self.registrations_kept.forget(row.tenant)

    async def get_registration(self, tenant: str, registration_id: str) -> RegistrationRow | None:
        sql = "SELECT doc FROM registrations WHERE tenant = ? AND id = ?"

        def run(connection: sqlite3.Connection) -> RegistrationRow | None:
            row = connection.execute(sql, (tenant, registration_id)).fetchone()
            return None if row is None else RegistrationRow(tenant, registration_id, orjson.loads(row[0]))

        return await self._read(run)

    async def delete_registration(self, tenant: str, registration_id: str) -> bool:
        def run(connection: sqlite3.Connection) -> bool:
            if connection.execute(sql, (tenant, registration_id)).rowcount == 0:
                return False
            self._audit_note(lambda: audit_row("registration.delete", tenant, [registration_id]))
            return True

        sql = "DELETE FROM registrations WHERE tenant = ? AND id = ?"
        try:
            return await self._write(run)
        finally:
            self.registrations_kept.forget(tenant)

    def registrations_none(self, tenant: str) -> bool:
        return tenant in self.registrations_kept.none

    async def list_registrations(self, tenant: str) -> list[RegistrationRow]:
        kept = self.registrations_kept.get(tenant)
        if kept is not None:
            return kept
        sql = "SELECT id, doc FROM registrations WHERE tenant = ? ORDER BY pk"
        generation = self.registrations_kept.generation

        def run(connection: sqlite3.Connection) -> list[tuple[str, bytes]]:
            return [(i, d.encode() if isinstance(d, str) else d) for i, d in connection.execute(sql, (tenant,))]

        return self.registrations_kept.keep(tenant, await self._read(run), generation)

    # -- entity maps ---------------------------------------------------------------------------------
    async def save_entity_map(self, tenant: str, entity_map: EntityMap) -> None:
        row = (
            tenant,
            entity_map.id,
            expiry_key(entity_map.expires_at),
            orjson.dumps(entity_map.entity_ids),
            entity_map.query,
            entity_map.owner,
        )
        sql = (
            "INSERT OR REPLACE INTO entity_maps (tenant, id, expires_at, entity_ids, query, owner)"
            " VALUES (?, ?, ?, ?, ?, ?)"
        )
        await self._write(lambda c: c.execute(sql, row))

    async def get_entity_map(self, tenant: str, map_id: str) -> EntityMap | None:
        def fetch(connection: sqlite3.Connection) -> EntityMap | None:
            row = connection.execute(
                "SELECT expires_at, entity_ids, query, owner FROM entity_maps WHERE tenant = ? AND id = ?",
                (tenant, map_id),
            ).fetchone()
            if row is None:
                return None
            return EntityMap(map_id, from_expiry_key(row[0]), tuple(orjson.loads(row[1])), row[2], row[3])

        return await self._read(fetch)

    async def update_entity_map(
        self, tenant: str, map_id: str, *, expires_at: datetime | None = None, entity_ids: Sequence[str] | None = None
    ) -> bool:
        changes: dict[str, Any] = {}
        if expires_at is not None:
            changes["expires_at"] = expiry_key(expires_at)
        if entity_ids is not None:
            changes["entity_ids"] = orjson.dumps(list(entity_ids))
        if not changes:
            return await self.get_entity_map(tenant, map_id) is not None
        assignments = ", ".join(f"{column} = ?" for column in changes)
        sql = f"UPDATE entity_maps SET {assignments} WHERE tenant = ? AND id = ?"
        params = (*changes.values(), tenant, map_id)
        return await self._write(lambda c: c.execute(sql, params).rowcount > 0)

    async def delete_entity_map(self, tenant: str, map_id: str) -> bool:
        sql = "DELETE FROM entity_maps WHERE tenant = ? AND id = ?"
        return await self._write(lambda c: c.execute(sql, (tenant, map_id)).rowcount > 0)

    # -- discovery: aggregated in SQL over the side tables; documents are read only for attribute types --
    async def entity_types(self, tenant: str) -> list[str]:
        sql = (
            "SELECT DISTINCT n.name FROM entity_types t JOIN entities e ON e.pk = t.pk"
            f" JOIN temporal_names n ON n.id = t.type WHERE {VISIBLE} ORDER BY 1"
        )
        params = (tenant, now_key())
        return await self._read_with_deadline(lambda c: [row[0] for row in c.execute(sql, params)])

    async def entity_type_attributes(self, tenant: str) -> dict[str, list[str]]:
        sql = (
            "SELECT n.name, m.name FROM entity_types t JOIN entities e ON e.pk = t.pk JOIN temporal_names n"
            " ON n.id = t.type LEFT JOIN entity_attrs a ON a.pk = t.pk LEFT JOIN temporal_names m ON m.id = a.attr"
            f" WHERE {VISIBLE} GROUP BY 1, 2 ORDER BY 1, 2"
        )
        params = (tenant, now_key())

        def run(connection: sqlite3.Connection) -> dict[str, list[str]]:
            result: dict[str, list[str]] = {}
            for entity_type, attr in connection.execute(sql, params):
                names = result.setdefault(entity_type, [])
                if attr is not None:
                    names.append(attr)
            return result

        return await self._read_with_deadline(run)

    async def entity_type_stats(self, tenant: str, entity_type: str) -> EntityTypeStats | None:
        count_sql = (
            f"SELECT COUNT(*) FROM entity_types t JOIN entities e ON e.pk = t.pk WHERE t.type = {NAME_ID} AND {VISIBLE}"
        )
        types_sql = (
            "SELECT a.key, json_extract(i.value, '$.type') FROM entity_types t JOIN entities e ON e.pk = t.pk,"
            " json_each(doc_json(e.doc), '$.attrs') a, json_each(a.value) i"
            f" WHERE t.type = {NAME_ID} AND {VISIBLE} GROUP BY 1, 2 ORDER BY 1, 2"
        )
        params = (entity_type, tenant, now_key())

        def run(connection: sqlite3.Connection) -> EntityTypeStats | None:
            count: int = connection.execute(count_sql, params).fetchone()[0]
            if count == 0:
                return None
            attribute_types: dict[str, list[str]] = {}
            for attr, kind in connection.execute(types_sql, params):
                attribute_types.setdefault(attr, []).append(kind)
            return EntityTypeStats(entity_type, count, attribute_types)

        return await self._read_with_deadline(run)

    async def attribute_names(self, tenant: str) -> list[str]:
        sql = (
            "SELECT DISTINCT n.name FROM entity_attrs a JOIN entities e ON e.pk = a.pk"
            f" JOIN temporal_names n ON n.id = a.attr WHERE {VISIBLE} ORDER BY 1"
        )
        params = (tenant, now_key())
        return await self._read_with_deadline(lambda c: [row[0] for row in c.execute(sql, params)])

    async def attribute_type_names(self, tenant: str) -> dict[str, list[str]]:
        sql = (
            "SELECT m.name, n.name FROM entity_attrs a JOIN entities e ON e.pk = a.pk"
            " JOIN entity_types t ON t.pk = a.pk JOIN temporal_names m ON m.id = a.attr"
            " JOIN temporal_names n ON n.id = t.type"
            f" WHERE {VISIBLE} GROUP BY 1, 2 ORDER BY 1, 2"
        )
        params = (tenant, now_key())

        def run(connection: sqlite3.Connection) -> dict[str, list[str]]:
            result: dict[str, list[str]] = {}
            for attr, entity_type in connection.execute(sql, params):
                result.setdefault(attr, []).append(entity_type)
            return result

        return await self._read_with_deadline(run)

    async def attribute_stats(self, tenant: str, attr: str) -> AttributeStats | None:
        kinds_sql = (
            "SELECT json_extract(i.value, '$.type'), COUNT(*) FROM entity_attrs x JOIN entities e ON e.pk = x.pk,"
            " json_each(doc_json(e.doc), '$.attrs') a, json_each(a.value) i"
            f" WHERE x.attr = {NAME_ID} AND a.key = ? AND {VISIBLE} GROUP BY 1 ORDER BY 1"
        )
        types_sql = (
            "SELECT DISTINCT n.name FROM entity_attrs x JOIN entities e ON e.pk = x.pk JOIN entity_types t"
            f" ON t.pk = x.pk JOIN temporal_names n ON n.id = t.type WHERE x.attr = {NAME_ID} AND {VISIBLE} ORDER BY 1"
        )
        params = (attr, tenant, now_key())

        def run(connection: sqlite3.Connection) -> AttributeStats | None:
            kinds = connection.execute(kinds_sql, (attr, *params)).fetchall()
            if not kinds:
                return None
            type_names = [row[0] for row in connection.execute(types_sql, params)]
            return AttributeStats(attr, sum(n for _, n in kinds), [kind for kind, _ in kinds], type_names)

        return await self._read_with_deadline(run)

    # -- ingestion configuration ---------------------------------------------------------------------
    async def add_ingest_records(self, rows: Sequence[IngestRecord]) -> None:
        def run(connection: sqlite3.Connection) -> None:
            for row in rows:
                try:
                    connection.execute(
                        "INSERT INTO ingest_records (kind, tenant, key, doc) VALUES (?, ?, ?, ?)",
                        (row.kind, row.tenant, row.key, orjson.dumps(row.document)),
                    )
                except sqlite3.IntegrityError as exc:
                    raise AlreadyExists(f"{row.kind} {row.key} already exists") from exc
                self._audit_note(lambda row=row: ingest_row(row.kind, "create", row.tenant, row.key))  # type: ignore[misc]

        await self._write(run)

    async def delete_ingest_record(self, kind: str, tenant: str, key: str) -> bool:
        def run(connection: sqlite3.Connection) -> bool:
            if connection.execute(sql, (kind, tenant, key)).rowcount == 0:
                return False
            self._audit_note(lambda: ingest_row(kind, "delete", tenant, key))
            return True

        sql = "DELETE FROM ingest_records WHERE kind = ? AND tenant = ? AND key = ?"
        return await self._write(run)

    async def load_ingest_records(self, kind: str) -> list[IngestRecord]:
        def run(connection: sqlite3.Connection) -> list[IngestRecord]:
            rows = connection.execute(
                "SELECT tenant, key, doc FROM ingest_records WHERE kind = ? ORDER BY pk", (kind,)
            ).fetchall()
            return [IngestRecord(kind, tenant, key, orjson.loads(doc)) for tenant, key, doc in rows]

        return await self._read(run)


# the tenant's entities a reader may see (parameters: tenant, now); expired attributes wait for the sweeper
