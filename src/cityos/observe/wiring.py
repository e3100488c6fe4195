"""The metrics of a server (metrics.py) wired to the counts and sizes each subsystem keeps: called
once by app.create_app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cityos.observe.metrics import Metrics, StoreTimer

if TYPE_CHECKING:
    from cityos.federation.client import Forwarder
    from cityos.ingest.service import IngestService
    from cityos.ngsild.common import Services
    from cityos.pipeline import WritePipeline
    from cityos.settings import Settings


def metrics_for(
    settings: Settings, services: Services, pipeline: WritePipeline, ingest: IngestService, federation: Forwarder
) -> Metrics | None:
    """The metrics (observe/metrics.py), and the counts and sizes each subsystem keeps for them."""
    if not settings.metrics:
        return None
    metrics = Metrics(max_labels=settings.metrics_max_labels)
    store: Any = services.store
    StoreTimer.install(store, metrics)
    if hasattr(store, "queue_depth"):  # the SQLite writer thread's queue and group commits
        metrics.queue_depth = store.queue_depth
        store.on_group = metrics.group_committed
    metrics.agent_stats = lambda: ingest.agent.stats
    metrics.context_counts = lambda: services.contexts.counts
    metrics.federation_counts = lambda: federation.counts
    metrics.history_count = lambda: pipeline.history.recorder.rows
    subscriptions = pipeline.subscriptions
    metrics.lanes = subscriptions.backlog
    metrics.delivery_counts = subscriptions.delivery_counts
    return metrics
