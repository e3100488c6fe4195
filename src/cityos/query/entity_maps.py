"""Entity maps (spec 5.2.39, 5.14): the ids a query selected, kept for a while so that a client can
page over a stable result. Framework-free: the model, its lifetime rules and its representation.

A map keeps the ids in the order the query returned them; paging over the map follows that order
and drops (prunes) ids whose entity no longer matches (5.5.9.3).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

from cityos.entities.model import Entity
from cityos.entities.values import parse_datetime
from cityos.errors import BadRequestData

ID_PREFIX = "urn:ngsi-ld:entitymap:"
KEY_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
LOCAL = "@none"  # the "source" of an entity held by this broker rather than a registered context source
# Parameters that choose the entities (5.7.2); a map is pruned only by the selection that built it.
SELECTION_PARAMS = frozenset(
    {"id", "type", "idPattern", "attrs", "q", "scopeQ", "georel", "geometry", "coordinates", "geoproperty"}
    | {"csf", "local", "datasetId", "expandValues"}
)
# Parameters about the map or the page, never part of the query a map records.
NOT_RECORDED = frozenset({"entityMap", "entityMapLifetime", "limit", "offset"})
# Members of an EntityMap the broker generates: a PATCH may carry them but they change nothing (5.14.2).
OUTPUT_ONLY = frozenset({"id", "type", "entityMap", "linkedMaps", "@context"})
_NUMBER = r"(\d+(?:[.,]\d+)?)"
DURATION_RE = re.compile(
    rf"^P(?!$)(?:{_NUMBER}Y)?(?:{_NUMBER}M)?(?:{_NUMBER}W)?(?:{_NUMBER}D)?"
    rf"(?:T(?=\d)(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?$"
)
# Calendar units have no fixed length; a lifetime only needs an approximation (it is clamped anyway).
DURATION_SECONDS = (365 * 86400, 30 * 86400, 7 * 86400, 86400, 3600, 60, 1)


@dataclass(frozen=True, slots=True)
class EntityMap:
    """One stored map: its id, when it expires, the selected ids in query order, the query string
    (without paging and map parameters) that selected them, and the principal that made it (None
    with auth off): a map belongs to its maker, like a subscription."""

    id: str
    expires_at: datetime
    entity_ids: tuple[str, ...]
    query: str = ""
    owner: str | None = None

    def live(self, now: datetime) -> bool:
        """An expired map cannot be accessed (5.5.14): it answers as if it never existed."""
        return self.expires_at > now


def expiry_key(moment: datetime) -> str:
    """A sortable UTC string for a store column, the form the expiry sweep compares (now_key)."""
    return moment.astimezone(UTC).strftime(KEY_FORMAT)


def from_expiry_key(key: str) -> datetime:
    return datetime.strptime(key, KEY_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Lifetime:
    """The broker's lifetime policy: the default, and the longest it grants (Table 6.4.3.2-1 lets the
    broker override the requested duration)."""

    default: timedelta
    maximum: timedelta

    def expiry(self, now: datetime, requested: timedelta | None) -> datetime:
        wanted = self.default if requested is None else requested
        return _whole_second(now + min(wanted, self.maximum))

    def clamp(self, now: datetime, requested: datetime) -> datetime:
        """A new expiresAt from an update: past values are kept (the map expires at once)."""
        return min(requested, _whole_second(now + self.maximum))


def _whole_second(moment: datetime) -> datetime:
    """Rounded up, so expiresAt renders without fractions and a map never lives shorter than granted."""
    return moment if not moment.microsecond else moment.replace(microsecond=0) + timedelta(seconds=1)


def new_map(ids: Iterable[str], expires_at: datetime, query: str, owner: str | None = None) -> EntityMap:
    return EntityMap(ID_PREFIX + uuid.uuid4().hex, expires_at, tuple(dict.fromkeys(ids)), query, owner)


def parse_lifetime(raw: str) -> timedelta:
    """entityMapLifetime: a positive ISO 8601 duration such as PT1H or P1DT12H."""
    match = DURATION_RE.match(raw.strip())
    if match is None:
        raise BadRequestData(f"entityMapLifetime must be an ISO 8601 duration such as PT1H, got {raw!r}")
    seconds = sum(
        float(part.replace(",", ".")) * unit
        for part, unit in zip(match.groups(), DURATION_SECONDS, strict=True)
        if part is not None
    )
    if seconds <= 0:
        raise BadRequestData("entityMapLifetime must be longer than zero")
    return timedelta(seconds=seconds)


def parse_update(body: Any) -> datetime:
    """The new expiresAt of a PATCH (5.14.2). Output-only members are ignored; anything else is an error."""
    if not isinstance(body, dict):
        raise BadRequestData("an EntityMap update must be a JSON object")
    unknown = set(body) - OUTPUT_ONLY - {"expiresAt"}
    if unknown:
        raise BadRequestData(f"an EntityMap update may only change expiresAt, not {', '.join(sorted(unknown))}")
    if "expiresAt" not in body:
        raise BadRequestData("an EntityMap update needs expiresAt")
    return parse_datetime(body["expiresAt"], "expiresAt")


def recorded_query(params: Iterable[tuple[str, str]]) -> str:
    """The query a map records: the request's parameters without paging and map parameters."""
    return urlencode(sorted((k, v) for k, v in params if k not in NOT_RECORDED))


def query_params(query: str) -> dict[str, str]:
    return dict(parse_qsl(query, keep_blank_values=True))


def same_selection(entity_map: EntityMap, params: Mapping[str, str]) -> bool:
    """Whether a request selects as the map's own query did (then a non-match may be pruned)."""
    original = query_params(entity_map.query)
    return all(original.get(name) == params.get(name) for name in SELECTION_PARAMS)


def follow(entity_map: EntityMap, matched: Sequence[Entity]) -> tuple[list[Entity], EntityMap | None]:
    """The matched entities in the map's order, and the pruned map if some ids no longer matched."""
    by_id = {entity["id"]: entity for entity in matched}
    ordered = [by_id[i] for i in entity_map.entity_ids if i in by_id]
    if len(ordered) == len(entity_map.entity_ids):
        return ordered, None
    return ordered, replace(entity_map, entity_ids=tuple(e["id"] for e in ordered))


def format_expiry(moment: datetime) -> str:
    """Whole seconds unless the client asked for fractions: YYYY-MM-DDThh:mm:ss[.sss]Z."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def render(entity_map: EntityMap) -> dict[str, Any]:
    """The EntityMap data type (5.2.39); every entity here is held locally, hence "@none"."""
    return {
        "id": entity_map.id,
        "type": "EntityMap",
        "expiresAt": format_expiry(entity_map.expires_at),
        "entityMap": {entity_id: [LOCAL] for entity_id in entity_map.entity_ids},
    }
