"""Prometheus metrics of one host, in a registry of its own (no global state between apps).

Plugins add theirs to ``host.metrics.registry``; ``GET /metrics`` exposes them all.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "MESSAGE_TYPES", "BatchHistogram", "Children", "Metrics"]

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


class Children:
    """The children of a one-label metric, each looked up once: ``children["text"].inc()``.

    prometheus_client's ``labels()`` builds a key and takes a lock on every call, which costs
    microseconds on paths that count every batch or event (ingest, hook dispatch, the CRM feed).
    Values must come from a bounded set, as for ``labels()`` itself (see :data:`MESSAGE_TYPES`).
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter) -> None:
        self._metric = metric
        self._children: dict[str, Any] = {}

    def __getitem__(self, value: str) -> Any:
        """The child for the label ``value`` (created, with its series, on first use)."""
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = self._metric.labels(value)
        return child

    def inc_each(self, values: Sequence[str]) -> None:
        """Count a batch by label value: one increment per distinct value, not per item."""
        if len(values) == 1:  # at a paced rate most batches are one item
            self[values[0]].inc()
            return
        # A dict, not collections.Counter: for a few items its constructor (a Mapping check, a
        # generator) costs more than the counting: 1.3 µs against 0.2-0.4.
        counts: dict[str, int] = {}
        for value in values:
            counts[value] = counts.get(value, 0) + 1
        for value, count in counts.items():
            self[value].inc(count)


class BatchHistogram(Collector):
    """A Prometheus histogram fed a batch of observations at a time.

    ``prometheus_client.Histogram`` takes one value per call, each behind a lock: per stored
    message on the ingest path that cost more than the bucket arithmetic. This one counts a whole
    batch in plain Python (it is only fed from the event loop) and is exposed like any histogram
    (``_bucket``, ``_count``, ``_sum``).
    """

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry
    ) -> None:
        """Register the histogram ``name`` with upper bounds ``buckets`` (``+Inf`` is added)."""
        self.name = name
        self.documentation = documentation
        self._bounds = [float(b) for b in buckets if b != math.inf] + [math.inf]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        """Count each of ``values`` in its bucket (upper bounds are inclusive, as in Prometheus)."""
        bounds, counts = self._bounds, self._counts
        total = 0.0
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1
            total += value
        self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The cumulative buckets, count and sum."""
        cumulative, running = [], 0
        for bound, count in zip(self._bounds, self._counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == math.inf else repr(bound), running))  # "1.0", as Histogram
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self._sum)


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
        self._inbound_by_type = Children(self.inbound_messages)
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
        self.processing_lag = BatchHistogram(
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
        self.dispatched_by_path = Children(self.events_dispatched)
        """:attr:`events_dispatched` by path, its children looked up once."""
        self.events_pruned = Counter(
            "zaphub_events_pruned", "Events deleted from the log by retention.", registry=r
        )
        self.outbound = Counter(
            "zaphub_outbound_messages",
            "Outbound messages by outcome: queued, accepted, retried, failed, requeued.",
            ["outcome"],
            registry=r,
        )

    def count_inbound(self, message_type: str, count: int = 1) -> None:
        """Count ``count`` stored inbound messages of a type (or as ``other``, see :data:`MESSAGE_TYPES`)."""
        label = message_type if message_type in MESSAGE_TYPES else "other"
        self._inbound_by_type[label].inc(count)

    def count_inbound_batch(self, message_types: Sequence[str]) -> None:
        """Count a batch's stored inbound messages by type (see :meth:`count_inbound`), once per type."""
        self._inbound_by_type.inc_each([t if t in MESSAGE_TYPES else "other" for t in message_types])

    def render(self) -> bytes:
        """The Prometheus text exposition of every registered metric."""
        return generate_latest(self.registry)
