"""The SQLite writer's decoded documents of the entities it writes again and again (sensors).

A write reads the entity's stored document and decodes it (zstd, then JSON) before its mutator
runs: for an MQTT measure that changes one attribute of ten this decode is about 90 K of the 700 K
instructions of the whole measure (docs/performance.md, issue 15 eleventh pass). The writer has just
made the very document it would decode, as the `after` of the entity's last write, so it keeps that
object beside the stored bytes it wrote and hands it to the next write of the entity when the row
read still holds those bytes.

Why this is exact:
- A hit needs the stored bytes to be equal to the bytes the object was written as. Equal bytes
  decode to equal JSON, so every other way the row can change (another write path, a rolled-back
  transaction, another process on the same file, a migration) is a miss, never a stale document:
  nothing has to invalidate the entries.
- The object is what `orjson.loads` of those bytes would give (an entity document holds JSON types
  only, in the order they are encoded) as long as nobody changes it in place: the mutators do not
  change their `before` (entities/update.py `_require`), and the change listeners and the writers'
  callers only read `before` and `after`. `check = True` (set by the tests' conftest) compares every
  hit with a fresh decode, so a test that changed a document in place would fail.

Bounded: at most CAPACITY documents (about 7 KB each for the benchmark's OffStreetParking; an entry
is moved to the end on every write, the oldest is dropped), only documents of writes that changed
some attributes and left the others (a reading, a partial update; `wrote`), and only from an
entity's second write (of any kind) among the last SEEN written: writes spread over many entities (a partial
update of random entities at 1,000,000) and bulk refreshes of whole entities leave the cache nearly
empty, so the server's memory at that size does not grow by CAPACITY documents (its RSS target is
300 MB, met at 291), while a sensor reporting again is served from its second write on. Writer
thread only: no lock.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

from cityos.entities.model import Entity
from cityos.store.sqlite_layout import inflate

CAPACITY = 1024  # documents kept
SEEN = 4096  # entities whose last write is remembered (a key each), for admission on the second write


class WrittenDocuments:
    """(tenant, entity id) -> (the stored bytes written, the decoded document they hold)."""

    check: ClassVar[bool] = False  # compare each hit with a fresh decode (the tests set it)

    def __init__(self, capacity: int = CAPACITY, seen: int = SEEN) -> None:
        self.capacity = capacity
        self.seen_capacity = seen
        self._documents: dict[tuple[str, str], tuple[bytes, Entity]] = {}
        self._seen: dict[tuple[str, str], None] = {}

    def __len__(self) -> int:
        return len(self._documents)

    def get(self, key: tuple[str, str], stored: bytes) -> Entity | None:
        """The decoded document of `stored`, if it is the one this writer wrote last for `key`."""
        held = self._documents.get(key)
        if held is None or held[0] != stored:
            return None
        if self.check and orjson.loads(inflate(stored)) != held[1]:
            raise AssertionError(f"the writer's kept document of {key} was changed in place")
        return held[1]

    def wrote(self, key: tuple[str, str], stored: bytes, document: Entity, relisted: tuple[str, ...] | None) -> None:
        """`document` was just written as `stored` (not committed yet: a rollback leaves other bytes
        in the row, which `get` then does not match). Kept only when the write changed some of its
        attributes and left the others (`relisted`, EntityChange.relisted): a reading or a partial
        update, which is what an entity written again and again gets; a whole entity rewritten (a
        batch refresh, a replace) is not kept, so bulk refreshes of stored ids do not fill the cache."""
        if relisted is not None and len(relisted) < len(document["attrs"]):
            self.put(key, stored, document)
        elif self._documents.pop(key, None) is None:
            self._see(key)  # written (a create, say): its next partial write is kept

    def put(self, key: tuple[str, str], stored: bytes, document: Entity) -> None:
        """Keep `document`, written as `stored`, if the key was written lately (kept, or seen)."""
        documents = self._documents
        if documents.pop(key, None) is None:  # (kept: popped, put back at the end)
            seen = self._seen
            if key not in seen:  # not written lately: remember the key only
                self._see(key)
                return
            del seen[key]
            if len(documents) >= self.capacity:
                del documents[next(iter(documents))]
        documents[key] = (stored, document)

    def _see(self, key: tuple[str, str]) -> None:
        seen = self._seen
        seen.pop(key, None)
        seen[key] = None
        if len(seen) > self.seen_capacity:
            del seen[next(iter(seen))]

    def clear(self) -> None:
        self._documents.clear()
        self._seen.clear()
