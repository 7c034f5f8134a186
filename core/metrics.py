"""Prometheus metrics of one host, in a registry of its own (no global state between apps).

Plugins add theirs to ``host.metrics.registry``; ``GET /metrics`` exposes them all.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "MESSAGE_TYPES", "Metrics"]

MESSAGE_TYPES = frozenset(
    {
        "text",
        "image",
        "audio",
        "video",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "button",
        "reaction",
        "order",
        "system",
        "request_welcome",
        "unsupported",
    }
)
"""Message types counted under their own name; any other (a type added later, or a forged one)
is counted as ``other``. Label values come from fixed sets: a value chosen outside would add a
series per value and grow ``/metrics`` without bound."""


class Metrics:
    """The host's own metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hook_errors = Counter(
            "zaphub_hook_errors",
            "Hook implementations that raised, by plugin and hook.",
            ["plugin", "hook"],
            registry=r,
        )
        self.inbound_messages = Counter(
            "zaphub_inbound_messages",
            "Inbound messages stored for the first time, by type.",
            ["type"],
            registry=r,
        )
        self.duplicates = Counter(
            "zaphub_duplicates_absorbed",
            "Repeated messages/statuses absorbed by unique keys.",
            ["kind"],
            registry=r,
        )
        self.set_aside = Counter(
            "zaphub_inbound_set_aside",
            "Inbound messages/statuses the database cannot hold (an id over its column), logged, not stored.",
            registry=r,
        )
        self.statuses = Counter(
            "zaphub_statuses",
            "Status webhooks by outcome: applied, stale, pending (message not known yet).",
            ["outcome"],
            registry=r,
        )
        self.ingest_batch = Histogram(
            "zaphub_ingest_batch_webhooks",
            "Webhooks stored per database transaction.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "zaphub_ingest_seconds",
            "Duration of one ingest transaction.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.processing_lag = Histogram(
            "zaphub_processing_lag_seconds",
            "Meta's message timestamp to stored (includes Meta's own delay).",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 3600, 86400),
            registry=r,
        )
        self.event_queue = Gauge(
            "zaphub_event_queue_depth",
            "Hook events handed over in memory, waiting to be dispatched.",
            registry=r,
        )
        self.event_lag = Gauge(
            "zaphub_event_dispatch_lag",
            "Events committed to the log but not yet dispatched to hooks (as last seen by the dispatcher).",
            registry=r,
        )
        self.events_dispatched = Counter(
            "zaphub_events_dispatched",
            "Events dispatched to hooks, by path: memory (handed over after commit) or log (read back).",
            ["path"],
            registry=r,
        )
        self.events_pruned = Counter(
            "zaphub_events_pruned", "Events deleted from the log by retention.", registry=r
        )
        self.outbound = Counter(
            "zaphub_outbound_messages",
            "Outbound messages by outcome: queued, accepted, retried, failed, requeued.",
            ["outcome"],
            registry=r,
        )

    def count_inbound(self, message_type: str) -> None:
        """Count one stored inbound message under its type (or ``other``, see :data:`MESSAGE_TYPES`)."""
        label = message_type if message_type in MESSAGE_TYPES else "other"
        self.inbound_messages.labels(type=label).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every registered metric."""
        return generate_latest(self.registry)
