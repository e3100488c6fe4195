"""The audit trail of one open store: installs the write recorder, signs checkpoints, applies
retention, exports, and takes the events that are not writes (StoreAudit, the AuditSink).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cityos.audit import recorder
from cityos.audit.chain import AuditCheckpoint, AuditQuery, AuditRecord, AuditRow, utc_now
from cityos.audit.events import AuditEvent
from cityos.audit.signing import key_path, load_or_create, sign_anchor, sign_checkpoint
from cityos.errors import log_failure
from cityos.settings import Settings
from cityos.store.base import EntityStore
from cityos.tasks import stop_tasks

log = logging.getLogger("cityos.audit")
SYSTEM = "cityos"  # the principal of what the trail does by itself (retention)
RETENTION_SECONDS = 3600.0
EXPORT_PAGE = 5000


def time_key(moment: datetime) -> str:
    """A datetime in the records' time form (chain.utc_now)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> str | None:
    """An ISO 8601 time (a parameter, an option) in the records' form; no offset means UTC."""
    if text is None:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return time_key(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


class StoreAudit:
    """The AuditSink: events sealed into the chain through the store, in a small transaction of
    their own (the caller awaits it, so a recorded denial is durable before the answer)."""

    def __init__(self, store: EntityStore) -> None:
        self.store = store

    async def record(self, events: Sequence[AuditEvent]) -> None:
        await self.store.append_audit(
            [
                AuditRow(
                    operation=e.operation,
                    tenant=e.tenant,
                    targets=tuple(e.targets),
                    principal=e.principal,
                    request_id=e.request_id,
                    outcome=e.outcome,
                    detail=dict(e.detail),
                )
                for e in events
            ]
        )


class AuditTrail:
    def __init__(self, store: EntityStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.path = key_path(settings.database, settings.audit_key)
        self._key: Ed25519PrivateKey | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._serving = False  # a server signs; a command (import, demo) leaves its records to the server

    @property
    def key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = load_or_create(self.path)
        return self._key

    def existing_key(self) -> Ed25519PrivateKey | None:
        """The key if the deployment has one (a command never makes one: a key made by a command run
        elsewhere than the server would sign with a key no verifier knows)."""
        if self._key is None and self.path.exists():
            self._key = load_or_create(self.path)
        return self._key

    def install(self) -> None:
        """Before the first write: with --audit on, every entity and temporal write makes a record."""
        if self.settings.audit == "on":
            self.store.set_change_listener(recorder.change_listener, None, name=recorder.LISTENER)

    async def start(self) -> None:
        """A server: the key exists from here on (made on first start), checkpoints and retention run."""
        self.key  # noqa: B018 - made now, so a bad key path fails the start, not a checkpoint later
        self._serving = True
        self._tasks = [asyncio.create_task(self._checkpoints())]
        if self.settings.audit_retention_days > 0:
            self._tasks.append(asyncio.create_task(self._retention()))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await stop_tasks(tasks)
        if not self._serving:
            return
        try:
            await self.checkpoint()  # what was written since the last one is signed on the way out
        except Exception:
            log_failure(log, "the closing audit checkpoint failed")

    async def checkpoint(self) -> AuditCheckpoint | None:
        """Sign the chain's head (None: the chain is empty, or no key); the same head is signed once."""
        key = self.existing_key()
        if key is None:
            return None
        head = await self.store.audit_head()
        if head.seq == 0:
            return None
        existing = await self.store.audit_checkpoints(head.seq, head.seq)
        if existing:
            return existing[0]
        checkpoint = sign_checkpoint(key, AuditCheckpoint(head.seq, head.hash, utc_now(), ""))
        await self.store.save_audit_checkpoint(checkpoint)
        return checkpoint

    async def _checkpoints(self) -> None:
        """Every audit_checkpoint_seconds, or sooner once audit_checkpoint_records were appended."""
        interval = self.settings.audit_checkpoint_seconds
        poll = min(interval, 5.0)
        signed_seq, signed_at = 0, asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(poll)
            try:
                head = await self.store.audit_head()
                due = asyncio.get_running_loop().time() - signed_at >= interval
                if head.seq > signed_seq and (due or head.seq - signed_seq >= self.settings.audit_checkpoint_records):
                    checkpoint = await self.checkpoint()
                    signed_seq = checkpoint.seq if checkpoint is not None else signed_seq
                    signed_at = asyncio.get_running_loop().time()
            except Exception:
                log_failure(log, "audit checkpoint failed")

    async def _retention(self) -> None:
        while True:
            try:
                await self.apply_retention()
            except Exception:
                log_failure(log, "audit retention failed")
            await asyncio.sleep(RETENTION_SECONDS)

    async def apply_retention(self, now: datetime | None = None) -> int:
        """Remove records older than audit_retention_days; a signed anchor takes their place."""
        now = now or datetime.now(UTC)
        cutoff = time_key(now - timedelta(days=self.settings.audit_retention_days))
        key = self.key

        def anchor(last: AuditRecord) -> AuditRecord:
            return sign_anchor(
                key,
                AuditRecord(
                    seq=last.seq,
                    time=utc_now(),
                    principal=SYSTEM,
                    operation="audit.truncate",
                    tenant="",
                    targets=[],
                    outcome="ok",
                    request_id="",
                    detail={"before": cutoff, "last_removed_time": last.time},
                    prev=last.prev,
                    hash=last.hash,  # the chain goes on from the last removed record's hash
                ),
            )

        note = AuditRow("audit.retention", "", (), SYSTEM, detail={"before": cutoff})
        removed = await self.store.truncate_audit(cutoff, anchor, note)
        if removed:
            log.info("audit retention removed %d records older than %s", removed, cutoff)
        return removed

    async def export(self, since: str | None = None, until: str | None = None) -> AsyncIterator[bytes]:
        """JSON Lines: the records (in a time range, if given) with the checkpoints among them, and
        one signed now for the last record exported, so removing records from the end shows."""
        after, first, last = 0, None, None
        while True:
            page = await self.store.read_audit(AuditQuery(since=since, until=until, after_seq=after, limit=EXPORT_PAGE))
            for record in page:
                first = record.seq if first is None else first
                last = record
                yield orjson.dumps(record.as_dict()) + b"\n"
            if len(page) < EXPORT_PAGE:
                break
            after = page[-1].seq
        if first is None or last is None:
            return
        checkpoints = await self.store.audit_checkpoints(first, last.seq)
        key = self.existing_key()
        if key is not None and (not checkpoints or checkpoints[-1].seq != last.seq):
            fresh = sign_checkpoint(key, AuditCheckpoint(last.seq, last.hash, utc_now(), ""))
            await self.store.save_audit_checkpoint(fresh)
            checkpoints.append(fresh)
        for checkpoint in checkpoints:
            yield orjson.dumps({"checkpoint": checkpoint.as_dict()}) + b"\n"
