"""What a partner notifies this city's inbox under an agreement, written into this city's own store.

The write goes through the store's one mutation path (`Store.mutate`, as the NGSI-LD API's batch
upsert does), so the change listeners see it as any other write: the temporal history, this
city's own subscriptions, and the audit trail, which attributes it to the agreement
(`agreement:<id>`, the partner as its client). Only the agreement's entity types and attributes are
written (what the partner may send is what was agreed; anything else is dropped and said in the
record), each entity an upsert that updates the attributes it carries (mode=update).
"""

from __future__ import annotations

from typing import Any

from cityos.auth.principal import Principal, current_principal
from cityos.dataspace import model
from cityos.dataspace.model import Agreement
from cityos.entities import update
from cityos.entities.model import parse_entity
from cityos.entities.values import now
from cityos.errors import NgsiLdError
from cityos.jsonld.termmap import TermMap
from cityos.store.base import EntityStore

TENANT = ""  # received entities go to the default tenant (docs/federation.md, "Limits")


def consumer_principal(agreement: Agreement) -> Principal:
    """Who the writes of an agreement's notifications act as, in this city's audit trail."""
    return Principal(
        id=model.principal_id(agreement.id),
        kind="partner",
        tenants=frozenset({TENANT}),
        client=agreement.doc["provider"],
    )


def _agreed(entity: dict[str, Any], types: set[str], attrs: set[str] | None) -> dict[str, Any] | None:
    """The entity cut to the agreed attributes, or None when its type is not an agreed one."""
    given = entity.get("type")
    named = given if isinstance(given, list) else [given]
    if not any(isinstance(t, str) and t in types for t in named):
        return None
    return {
        k: v for k, v in entity.items() if k in ("id", "type") or (k != "@context" and (attrs is None or k in attrs))
    }


async def write_received(
    store: EntityStore, agreement: Agreement, entities: list[dict[str, Any]], terms: TermMap
) -> tuple[list[str], dict[str, str]]:
    """(ids written, {id: why not} for those refused)."""
    data = agreement.doc["dataset"]
    types = set(data["types"])
    attrs = set(data["attrs"]) if "attrs" in data else None
    stamp = now()
    planned: list[tuple[str, update.Mutator]] = []
    refused: dict[str, str] = {}
    for item in entities:
        entity_id = str(item.get("id", item.get("@id")))
        kept = _agreed(item, types, attrs)
        if kept is None:
            refused[entity_id] = "not a type of the agreement"
            continue
        try:
            entity = parse_entity(kept, terms, stamp=stamp)
        except NgsiLdError as error:
            refused[entity_id] = error.detail or error.title
            continue
        planned.append((entity["id"], update.upsert(entity, mode="update")))
    if not planned:
        return [], refused
    token = current_principal.set(consumer_principal(agreement))
    try:
        results = await store.mutate(TENANT, planned, atomic=False)
    finally:
        current_principal.reset(token)
    for result in results:
        if result.error is not None:
            refused[result.entity_id] = result.error.detail or result.error.title
    return [r.entity_id for r in results if r.error is None], refused
