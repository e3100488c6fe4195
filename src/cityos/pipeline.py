"""The write pipeline: what every write to a store goes through, whatever the entry point.

`cityos serve` (the API, the IoT Agent, the demo on an empty database) and the `cityos import` /
`cityos demo` commands writing straight into a database open their store the same way, through
open_pipeline or WritePipeline: before the first write the change listeners are installed, so each
change is recorded as history and matched against the subscriptions (outbox rows) inside its own
transaction. A server then delivers the outbox continuously; a command delivers what it produces
while it runs and before it exits (drain), bounded in time, and leaves the rest to a server.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from cityos.audit.service import AuditTrail
from cityos.jsonld.registry import ContextRegistry, StoredContext
from cityos.net import OutboundPolicy
from cityos.settings import Settings
from cityos.store import open_store
from cityos.store.base import EntityStore
from cityos.subscriptions.service import SubscriptionService
from cityos.temporal.service import HistoryService


def context_registry(settings: Settings) -> ContextRegistry:
    """The @context registry under the settings' outgoing-request policy (remote contexts)."""
    policy = OutboundPolicy(
        allow_private_networks=settings.allow_private_networks,
        timeout=settings.context_fetch_timeout,
        max_bytes=settings.context_max_bytes,
    )
    return ContextRegistry(
        policy,
        default_core=settings.core_context,
        cache_size=settings.context_cache_size,
        preload_manifest=settings.context_preload,
        failure_ttl=settings.context_failure_ttl,
        request_budget=settings.context_request_budget,
    )


def settings_store(settings: Settings, *, client_share: int = 0) -> EntityStore:
    """The store the settings name, with every store setting applied (not opened yet)."""
    return open_store(
        settings.database,
        query_timeout=settings.query_timeout,
        worker_timeout=settings.worker_timeout,
        busy_timeout=settings.db_busy_timeout,
        durability=settings.durability,
        client_share=client_share,
        sqlite_cache_mb=(settings.sqlite_writer_cache_mb, settings.sqlite_reader_cache_mb),
    )


class WritePipeline:
    """The change listeners of one open store: the history recorder, the subscription matcher
    (with the dispatcher that delivers the outbox they fill) and the audit trail."""

    def __init__(self, store: EntityStore, contexts: ContextRegistry, settings: Settings) -> None:
        self.store = store
        self.contexts = contexts
        self.subscriptions = SubscriptionService(store, contexts, settings)
        self.history = HistoryService(store, settings)
        self.audit = AuditTrail(store, settings)

    async def restore_hosted(self) -> None:
        """Load the hosted and implicit @contexts saved in the store (subscriptions may name them),
        replacing those held: at start, and when another worker changed them."""
        rows = await self.store.load_contexts()
        self.contexts.replace_hosted(
            [StoredContext("", row.local_id, row.kind, row.document, row.tenant, row.created_at) for row in rows]
        )

    async def install(self) -> None:
        """Before the first write: every change is matched and recorded from here on."""
        await self.restore_hosted()
        await self.subscriptions.install()
        self.history.install()
        self.audit.install()

    async def start(self) -> None:
        """A server: install, then deliver the outbox (what it holds first), run the periodic
        notifications and the history retention sweep."""
        await self.install()
        await self.subscriptions.start()
        await self.history.start()
        await self.audit.start()

    async def drain(self, timeout: float) -> int:
        """A command that wrote through this pipeline: deliver the outbox before leaving, for at
        most `timeout` seconds; returns how many notifications are left for a server to deliver."""
        return await self.subscriptions.drain(timeout)

    async def stop(self) -> None:
        await self.audit.stop()
        await self.history.stop()
        await self.subscriptions.stop()


@contextlib.asynccontextmanager
async def open_pipeline(settings: Settings, *, deliver: bool = False) -> AsyncIterator[WritePipeline]:
    """The settings' store, opened with its write pipeline installed (closed on the way out).
    deliver: notifications go out while the block runs (finish with drain()); otherwise they stay
    in the outbox for a server."""
    store = settings_store(settings)
    await store.open()
    try:
        pipeline = WritePipeline(store, context_registry(settings), settings)
        await pipeline.install()
        if deliver:
            await pipeline.subscriptions.follow()
        try:
            yield pipeline
        finally:
            await pipeline.stop()
            await pipeline.contexts.aclose()
    finally:
        await store.close()
