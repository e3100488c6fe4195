"""The parts of the storage contract the PostgreSQL back-end does not implement yet (issue 8).

Each raises BackendIncomplete naming itself, so a caller learns exactly what is missing instead of
getting a silent empty answer; open_store refuses PostgreSQL unless CITYOS_EXPERIMENTAL_POSTGRES=1.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NoReturn

from cityos.entities.model import Entity, Instance
from cityos.query.entity_maps import EntityMap
from cityos.store.base import (
    AttributeStats,
    EntityTypeStats,
    IngestRecord,
    OutboxRow,
    RegistrationRow,
    SubscriptionRow,
)
from cityos.store.temporal_base import (
    AggregatePage,
    AggregationSpec,
    TemporalEntityInfo,
    TemporalPage,
    TemporalQuery,
)


class BackendIncomplete(NotImplementedError):
    """A storage-contract method the PostgreSQL back-end does not have yet."""


def missing(method: str) -> NoReturn:
    raise BackendIncomplete(
        f"PostgresStore.{method} is not implemented yet: the PostgreSQL back-end covers entities, queries, "
        "expiry and hosted @contexts only (see docs/deployment.md)"
    )


class Unfinished:
    """Subscriptions and outbox, context source registrations, entity maps, discovery, ingestion
    records and the temporal store."""

    def lookup_in_query(self, tenant: str, entity_id: str) -> Entity | None:
        missing("lookup_in_query")

    async def save_subscription(self, row: SubscriptionRow, *, create: bool) -> None:
        missing("save_subscription")

    async def delete_subscription(self, tenant: str, subscription_id: str) -> bool:
        missing("delete_subscription")

    async def load_subscriptions(self) -> list[SubscriptionRow]:
        missing("load_subscriptions")

    async def release_outbox(self) -> None:
        missing("release_outbox")

    async def claim_outbox(self, limit: int) -> list[OutboxRow]:
        missing("claim_outbox")

    async def finish_outbox(self, row: OutboxRow, *, done: bool, status: SubscriptionRow | None = None) -> None:
        missing("finish_outbox")

    async def save_registration(self, row: RegistrationRow, *, create: bool) -> None:
        missing("save_registration")

    async def get_registration(self, tenant: str, registration_id: str) -> RegistrationRow | None:
        missing("get_registration")

    async def delete_registration(self, tenant: str, registration_id: str) -> bool:
        missing("delete_registration")

    async def list_registrations(self, tenant: str) -> list[RegistrationRow]:
        missing("list_registrations")

    async def save_entity_map(self, tenant: str, entity_map: EntityMap) -> None:
        missing("save_entity_map")

    async def get_entity_map(self, tenant: str, map_id: str) -> EntityMap | None:
        missing("get_entity_map")

    async def update_entity_map(
        self, tenant: str, map_id: str, *, expires_at: datetime | None = None, entity_ids: Sequence[str] | None = None
    ) -> bool:
        missing("update_entity_map")

    async def delete_entity_map(self, tenant: str, map_id: str) -> bool:
        missing("delete_entity_map")

    async def entity_types(self, tenant: str) -> list[str]:
        missing("entity_types")

    async def entity_type_attributes(self, tenant: str) -> dict[str, list[str]]:
        missing("entity_type_attributes")

    async def entity_type_stats(self, tenant: str, entity_type: str) -> EntityTypeStats | None:
        missing("entity_type_stats")

    async def attribute_names(self, tenant: str) -> list[str]:
        missing("attribute_names")

    async def attribute_type_names(self, tenant: str) -> dict[str, list[str]]:
        missing("attribute_type_names")

    async def attribute_stats(self, tenant: str, attr: str) -> AttributeStats | None:
        missing("attribute_stats")

    async def add_ingest_records(self, rows: Sequence[IngestRecord]) -> None:
        missing("add_ingest_records")

    async def delete_ingest_record(self, kind: str, tenant: str, key: str) -> bool:
        missing("delete_ingest_record")

    async def load_ingest_records(self, kind: str) -> list[IngestRecord]:
        missing("load_ingest_records")

    async def temporal_write(
        self, tenant: str, entity_id: str, types: Sequence[str], instances: Sequence[tuple[str, Instance]]
    ) -> bool:
        missing("temporal_write")

    async def temporal_entity(self, tenant: str, entity_id: str) -> TemporalEntityInfo | None:
        missing("temporal_entity")

    async def temporal_query(self, tenant: str, query: TemporalQuery) -> TemporalPage:
        missing("temporal_query")

    async def temporal_aggregate(self, tenant: str, query: TemporalQuery, spec: AggregationSpec) -> AggregatePage:
        missing("temporal_aggregate")

    async def temporal_modify_instance(
        self, tenant: str, entity_id: str, attr: str, instance_id: str, instance: Instance
    ) -> bool:
        missing("temporal_modify_instance")

    async def temporal_delete_instance(self, tenant: str, entity_id: str, attr: str, instance_id: str) -> bool:
        missing("temporal_delete_instance")

    async def temporal_delete_attribute(
        self, tenant: str, entity_id: str, attr: str, *, dataset: str | None, delete_all: bool
    ) -> bool:
        missing("temporal_delete_attribute")

    async def temporal_delete_entity(self, tenant: str, entity_id: str) -> bool:
        missing("temporal_delete_entity")

    async def temporal_purge(self, before: int) -> int:
        missing("temporal_purge")
