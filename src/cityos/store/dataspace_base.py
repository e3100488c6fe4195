"""The storage contract of the data channel between cities (dataspace/): the deployment's key,
partners, offers and agreements as versioned documents in one append-only table, so an agreement's
whole life (made, countersigned, revoked) stays provable; and the nonces seen and the rate buckets
of partners' signed requests, kept here so every worker and every process on the database shares
them (a replay to another worker is refused, a rate is not multiplied by the workers). Back-ends:
sqlite_dataspace.py, postgres/dataspace.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

DATASPACE_KINDS = ("key", "partner", "offer", "agreement")
RATE_ROW_SECONDS = 3600.0  # a bucket untouched this long is full again: its row goes


def refill(tokens: float | None, at: float, now: float, per_minute: int) -> float:
    """A token bucket of `per_minute` tokens, refilled continuously (None: a new, full bucket)."""
    if tokens is None:
        return float(per_minute)
    return min(float(per_minute), tokens + max(0.0, now - at) * per_minute / 60.0)


def take(tokens: float, per_minute: int) -> tuple[float, float]:
    """(the tokens left, 0 when a request may go now else the seconds to wait)."""
    if tokens < 1.0:
        return tokens, (1.0 - tokens) * 60.0 / per_minute
    return tokens - 1.0, 0.0


@dataclass(frozen=True, slots=True)
class DataspaceRow:
    """One version of one record. `document` None: the record was removed in this version."""

    kind: str  # one of DATASPACE_KINDS
    id: str
    version: int  # increases with every change of any record (the set's version is the largest)
    document: dict[str, Any] | None
    changed_by: str
    changed_at: str  # ISO 8601 UTC


class DataspaceStore(Protocol):
    async def change_record(
        self, kind: str, record_id: str, document: dict[str, Any] | None, *, by: str, create: bool = False
    ) -> DataspaceRow | None:
        """Write a new version in one transaction: with `create`, AlreadyExists if the record
        exists; `document` None removes it (None if it does not exist)."""

    async def load_records(self, kind: str) -> tuple[int, list[DataspaceRow]]:
        """(the latest version of any record, 0 if none; every existing record of `kind`, by id)."""

    async def record_history(self, kind: str, record_id: str) -> list[DataspaceRow]:
        """Every version of one record, oldest first (removals included)."""

    async def first_use(self, keyid: str, nonce: str, until: float, now: float) -> bool:
        """Remember `nonce` of `keyid` until `until` (epoch seconds); False if it is remembered
        already (a replay). Nonces whose time has passed are forgotten in the same transaction."""

    async def take_token(self, key: str, per_minute: int, now: float) -> float:
        """One request from the bucket `key` (`per_minute` a minute, epoch seconds): 0 when it may
        go now, else the seconds to wait."""
