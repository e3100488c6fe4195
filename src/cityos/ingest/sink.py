"""Where ingested entities go: one small contract and two implementations.

Adapters hand a Sink NGSI-LD entity bodies (normalized or concise, no @context: the terms of the
sink apply). StoreSink writes in-process through the same path as the API (parse_entity, the
upsert mutator, store.mutate), each entity in its own savepoint, so a bad entity is reported and
nothing of it is stored. HttpSink posts the same bodies to a running broker's batch upsert.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import orjson

from cityos.entities import update
from cityos.entities.model import parse_entity, parse_instance
from cityos.entities.values import now
from cityos.errors import DatabaseBusy, NgsiLdError
from cityos.jsonld.termmap import TermMap
from cityos.store.base import EntityStore

Body = dict[str, Any]
BATCH_PATH = "/ngsi-ld/v1/entityOperations/upsert"


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What happened to one body: stored (error None) or refused, with the reason."""

    entity_id: str
    error: str | None = None


class Sink(Protocol):
    async def upsert(
        self, tenant: str, bodies: Sequence[Body], *, replace: bool = False, atomic: bool = False
    ) -> list[WriteResult]:
        """Create each entity, or merge its attributes into the stored one (replace=True replaces
        the whole entity). One result per body, in order. atomic=True: all bodies or none, the
        first refusal raised as its NgsiLdError."""

    async def add_attribute_instances(
        self, tenant: str, entity_id: str, entity_type: str, attrs: Mapping[str, Sequence[Body]]
    ) -> None:
        """Append attribute instances to the entity's history (see history.TemporalSink)."""


def _id_of(body: Any) -> str:
    entity_id = body.get("id", body.get("@id")) if isinstance(body, dict) else None
    return entity_id if isinstance(entity_id, str) else ""


def error_text(error: NgsiLdError) -> str:
    return f"{error.type_name}: {error.detail}" if error.detail else error.type_name


class StoreSink:
    """Writes in-process into an open EntityStore."""

    def __init__(self, store: EntityStore, terms: TermMap) -> None:
        self.store = store
        self.terms = terms

    async def upsert(
        self, tenant: str, bodies: Sequence[Body], *, replace: bool = False, atomic: bool = False
    ) -> list[WriteResult]:
        stamp = now()
        results: list[WriteResult | None] = [None] * len(bodies)
        planned: list[tuple[str, update.Mutator]] = []
        positions: list[int] = []
        for index, body in enumerate(bodies):
            try:
                entity = parse_entity(body, self.terms, stamp=stamp)
            except NgsiLdError as error:
                if atomic:
                    raise
                results[index] = WriteResult(_id_of(body), error_text(error))
                continue
            planned.append((entity["id"], update.upsert(entity, mode="replace" if replace else "update")))
            positions.append(index)
        if planned:
            outcomes = await self.store.mutate(tenant, planned, atomic=atomic)
            for index, outcome in zip(positions, outcomes, strict=True):
                detail = error_text(outcome.error) if outcome.error is not None else None
                results[index] = WriteResult(outcome.entity_id, detail)
        return [result for result in results if result is not None]

    async def upsert_units(self, tenant: str, units: Sequence[Sequence[Body]]) -> list[str | None]:
        """Merge many units of bodies (each unit all or nothing: one device message) in one
        transaction, in order: two bodies of one entity are applied one after the other, as if
        written one by one. One result per unit: None (stored) or why it was refused.

        Bodies that do not parse refuse their unit before the write. A refusal inside the store
        (rare: an upsert of a parsed entity does not refuse) rolls the whole transaction back, and
        the units are then written again one transaction each, so only the refused unit is lost."""
        stamp = now()
        errors: list[str | None] = [None] * len(units)
        operations: list[tuple[str, update.Mutator]] = []
        planned: list[int] = []
        for index, bodies in enumerate(units):
            try:
                entities = [parse_entity(body, self.terms, stamp=stamp) for body in bodies]
            except NgsiLdError as error:
                errors[index] = error_text(error)
                continue
            operations.extend((entity["id"], update.upsert(entity, mode="update")) for entity in entities)
            planned.append(index)
        if not operations:
            return errors
        try:
            await self.store.mutate(tenant, operations, atomic=True)
            return errors
        except DatabaseBusy:  # nothing was written, and no unit is to blame: the caller decides
            raise
        except NgsiLdError as error:
            if len(planned) == 1:  # that unit alone was refused
                errors[planned[0]] = error_text(error)
                return errors
        for index in planned:  # the careful way: each unit in a transaction of its own
            try:
                await self.upsert(tenant, units[index], atomic=True)
            except NgsiLdError as error:
                errors[index] = error_text(error)
        return errors

    async def add_attribute_instances(
        self, tenant: str, entity_id: str, entity_type: str, attrs: Mapping[str, Sequence[Body]]
    ) -> None:
        """History straight into the temporal store (history.TemporalSink), in one transaction."""
        stamp = now()
        instances = [
            (self.terms.expand(name), parse_instance(name, raw, self.terms, stamp=stamp))
            for name, raws in attrs.items()
            for raw in raws
        ]
        await self.store.temporal_write(tenant, entity_id, [self.terms.expand(entity_type)], instances)


class HttpSink:
    """Writes to a running broker through POST /entityOperations/upsert (each entity on its own)."""

    def __init__(self, base_url: str, client: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client

    async def upsert(
        self, tenant: str, bodies: Sequence[Body], *, replace: bool = False, atomic: bool = False
    ) -> list[WriteResult]:
        if atomic and len(bodies) > 1:
            raise ValueError("a broker's batch API stores entities one by one: atomic writes need a local store")
        if not bodies:
            return []
        headers = {"Content-Type": "application/json"}
        if tenant:
            headers["NGSILD-Tenant"] = tenant
        url = self.base_url + BATCH_PATH + ("" if replace else "?options=update")
        try:
            response = await self.client.post(url, content=orjson.dumps(list(bodies)), headers=headers)
        except httpx.HTTPError as exc:
            return [WriteResult(_id_of(body), f"cannot reach {self.base_url}: {exc}") for body in bodies]
        if response.status_code in (200, 201, 204):
            return [WriteResult(_id_of(body)) for body in bodies]
        if response.status_code != 207:
            detail = f"HTTP {response.status_code}: {response.text[:300]}"
            return [WriteResult(_id_of(body), detail) for body in bodies]
        failed = {
            item.get("entityId", ""): _problem_text(item.get("error", {})) for item in response.json().get("errors", [])
        }
        return [WriteResult(_id_of(body), failed.get(_id_of(body))) for body in bodies]

    async def add_attribute_instances(
        self, tenant: str, entity_id: str, entity_type: str, attrs: Mapping[str, Sequence[Body]]
    ) -> None:
        """History through POST /temporal/entities (which extends an existing temporal entity)."""
        await _post_history(self, tenant, entity_id, entity_type, attrs)


async def _post_history(
    sink: HttpSink, tenant: str, entity_id: str, entity_type: str, attrs: Mapping[str, Sequence[Body]]
) -> None:
    headers = {"Content-Type": "application/json"}
    if tenant:
        headers["NGSILD-Tenant"] = tenant
    body = {"id": entity_id, "type": entity_type, **{name: list(raws) for name, raws in attrs.items()}}
    response = await sink.client.post(
        sink.base_url + "/ngsi-ld/v1/temporal/entities", content=orjson.dumps(body), headers=headers
    )
    if response.status_code not in (201, 204):
        raise RuntimeError(f"history of {entity_id}: HTTP {response.status_code}: {response.text[:300]}")


def _problem_text(problem: Any) -> str:
    if not isinstance(problem, dict):
        return str(problem)
    name = str(problem.get("type", "")).rsplit("/", 1)[-1] or "Error"
    return f"{name}: {problem['detail']}" if problem.get("detail") else name


@dataclass(slots=True)
class WriteSummary:
    written: int = 0
    failed: list[WriteResult] = field(default_factory=list)

    def add(self, results: Iterable[WriteResult]) -> None:
        for result in results:
            if result.error is None:
                self.written += 1
            else:
                self.failed.append(result)


async def write_batches(
    sink: Sink, tenant: str, bodies: Iterable[Body], *, batch_size: int = 500, replace: bool = False
) -> WriteSummary:
    """Write bodies in batches of batch_size (one transaction each); every refusal is kept."""
    summary = WriteSummary()
    batch: list[Body] = []
    for body in bodies:
        batch.append(body)
        if len(batch) >= batch_size:
            summary.add(await sink.upsert(tenant, batch, replace=replace))
            batch = []
    if batch:
        summary.add(await sink.upsert(tenant, batch, replace=replace))
    return summary
