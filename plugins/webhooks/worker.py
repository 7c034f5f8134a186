"""Delivery: one task per subscriber, fed from the event log behind a durable cursor.

Why it is built this way:

- **From the log, not from hooks.** Each subscriber reads ``storage.read_events`` after its own
  cursor (``webhooks:<key>`` in the event log's cursor table), so a subscriber that is down for
  a day only falls behind; the hook dispatcher and the webhook path never wait on it. Hooks
  merely *wake* the tasks early; polling finds what other processes wrote.
- **In order, at least once.** A task POSTs one event at a time and moves its cursor past an
  event only after a 2xx or after dead-lettering it, so ``kill -9`` at any moment loses nothing;
  the event in flight may be delivered again (receivers dedupe by ``X-Zaphub-Event-Id``).
- **One delivering process.** With several processes on one database, a :class:`LeaderLock`
  (PostgreSQL advisory lock, ``flock`` on SQLite) elects the process that runs the tasks; it is
  released with the connection or process, so after ``kill -9`` another process takes over at
  its next check.
- **Retries** back off exponentially with jitter up to ``backoff_max_seconds``, honour
  ``Retry-After``, and are bounded by ``retry_window_seconds`` counted from the event's first
  attempt (kept in the store, so a restart does not reset it). Then the event is dead-lettered
  and the subscriber moves on: one poison event never stops the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from core.event_payloads import feed_event
from core.models import Event
from core.storage import LeaderLock, PluginStore
from plugins.webhooks.client import WebhookClient, encode_body
from plugins.webhooks.config import Subscriber, WebhooksSettings
from plugins.webhooks.deadletters import DeadLetter, now, save_dead_letter

if TYPE_CHECKING:
    from core.host import Host

__all__ = ["PLUGIN", "WebhookMetrics", "Webhooks", "cursor_name"]

log = logging.getLogger("zaphub.webhooks")

PLUGIN = "webhooks"
_BATCH = 100
_LEADER_CHECK_SECONDS = 2.0
_ERROR_PAUSE_SECONDS = 2.0


def cursor_name(sub: Subscriber) -> str:
    """The event-log cursor of a subscriber: every event up to it was delivered or dead-lettered."""
    return f"webhooks:{sub.key}"


class WebhookMetrics:
    """``zaphub_webhook_*`` in the host's registry."""

    def __init__(self, host: Host) -> None:
        r = host.metrics.registry
        self.deliveries = Counter(
            "zaphub_webhook_deliveries",
            "Outgoing webhook POSTs by subscriber and outcome (delivered, failed, dead_lettered).",
            ["subscriber", "outcome"],
            registry=r,
        )
        self.lag = Gauge(
            "zaphub_webhook_lag_events",
            "Events in the log not yet delivered (or dead-lettered) to the subscriber.",
            ["subscriber"],
            registry=r,
        )
        self.expired = Counter(
            "zaphub_webhook_events_expired",
            "Events pruned by retention before the subscriber received them.",
            ["subscriber"],
            registry=r,
        )


class _LostLead(Exception):
    """Another process runs the subscribers now."""


class SubscriberTask:
    """Delivers the log to one subscriber, in order."""

    def __init__(
        self, host: Host, sub: Subscriber, client: WebhookClient, metrics: WebhookMetrics, poll: float
    ) -> None:
        self.host = host
        self.sub = sub
        self.client = client
        self.metrics = metrics
        self.poll = poll
        self.store: PluginStore = host.store(PLUGIN)
        self.wake = asyncio.Event()
        self._retry_key = f"retry:{sub.key}"

    async def run(self) -> None:
        """Deliver until cancelled; errors of our own (the database down…) pause and retry."""
        storage = self.host.storage
        while True:
            try:
                cursor = await storage.get_cursor(cursor_name(self.sub))
                if cursor is None:  # placed at startup; deleted by hand since: start from now
                    cursor = await storage.set_cursor(
                        cursor_name(self.sub), (await storage.event_bounds()).last
                    )
                while True:
                    cursor, progressed = await self._step(cursor)
                    if not progressed:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.wake.wait(), self.poll)
                        self.wake.clear()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database down, a bug: logged, retried; never kills the task
                log.exception("webhooks: subscriber %s: delivery loop failed; retrying", self.sub.label)
                await asyncio.sleep(_ERROR_PAUSE_SECONDS)

    async def _step(self, cursor: int) -> tuple[int, bool]:
        storage = self.host.storage
        name = cursor_name(self.sub)
        bounds = await storage.event_bounds()
        if bounds.oldest is not None and bounds.oldest > cursor + 1:
            lost = bounds.oldest - 1 - cursor
            log.error(
                "webhooks: subscriber %s was %d events behind the retention (storage.event_log); "
                "events %d..%d were pruned before delivery",
                self.sub.label,
                lost,
                cursor + 1,
                bounds.oldest - 1,
            )
            self.metrics.expired.labels(self.sub.label).inc(lost)
            cursor = await storage.set_cursor(name, bounds.oldest - 1)
        self.metrics.lag.labels(self.sub.label).set(max(0, bounds.last - cursor))
        if cursor >= bounds.last:
            return cursor, False
        events = await storage.read_events(cursor, _BATCH, types=self.sub.events, until=bounds.last)
        for event in events:
            await self._deliver(event)
            cursor = await storage.set_cursor(name, event.id)
            self.metrics.lag.labels(self.sub.label).set(max(0, bounds.last - cursor))
        if len(events) < _BATCH and cursor < bounds.last:
            # Every event this subscriber wants up to bounds.last was read: skip the others.
            cursor = await storage.set_cursor(name, bounds.last)
            self.metrics.lag.labels(self.sub.label).set(0)
        return cursor, True

    def _backoff(self, attempts: int) -> float:
        doubled = self.sub.backoff_initial_seconds * 2.0 ** min(attempts - 1, 30)
        base = min(self.sub.backoff_max_seconds, doubled)
        return base * random.uniform(0.5, 1.0)  # jitter: receivers recovering are not hit in lockstep

    async def _deliver(self, event: Event) -> None:
        sub = self.sub
        body = encode_body(feed_event(event))
        state: Any = await self.store.get(self._retry_key)
        if isinstance(state, dict) and state.get("eventId") == event.id:
            first_at, attempts = float(state["firstAttemptAt"]), int(state["attempts"])
        else:
            first_at, attempts = now(), 0
        while True:
            attempt = await self.client.post(sub.url, sub.secret, event.id, body, timeout=sub.timeout_seconds)
            attempts += 1
            if attempt.delivered:
                self.metrics.deliveries.labels(sub.label, "delivered").inc()
                if attempts > 1:
                    await self.store.delete(self._retry_key)
                    log.info(
                        "webhooks: subscriber %s accepted event %d after %d attempts",
                        sub.label,
                        event.id,
                        attempts,
                    )
                return
            self.metrics.deliveries.labels(sub.label, "failed").inc()
            elapsed = now() - first_at
            if elapsed >= sub.retry_window_seconds:
                await save_dead_letter(
                    self.store,
                    sub.key,
                    DeadLetter(
                        subscriber=sub.label,
                        url=sub.url,
                        event_id=event.id,
                        type=event.type,
                        attempts=attempts,
                        last_error=attempt.error,
                        first_attempt_at=first_at,
                        dead_at=now(),
                        body=body.decode(),
                    ),
                )
                await self.store.delete(self._retry_key)
                self.metrics.deliveries.labels(sub.label, "dead_lettered").inc()
                log.error(
                    "webhooks: subscriber %s: event %d (%s) dead-lettered after %d attempts over %.0fs "
                    "(last: %s); moving on (zaphub webhooks dead-letters / replay)",
                    sub.label,
                    event.id,
                    event.type,
                    attempts,
                    elapsed,
                    attempt.error,
                )
                return
            delay = self._backoff(attempts)
            if attempt.retry_after is not None:
                delay = max(delay, min(attempt.retry_after, sub.backoff_max_seconds))
            delay = min(delay, sub.retry_window_seconds - elapsed)  # one last try at the window's end
            await self.store.set(
                self._retry_key,
                {
                    "eventId": event.id,
                    "firstAttemptAt": first_at,
                    "attempts": attempts,
                    "lastError": attempt.error,
                },
            )
            log.warning(
                "webhooks: subscriber %s: event %d attempt %d failed (%s); retrying in %.1fs",
                sub.label,
                event.id,
                attempts,
                attempt.error,
                delay,
            )
            await asyncio.sleep(delay)


class Webhooks:
    """The plugin's running part: the leader check and one :class:`SubscriberTask` per subscriber."""

    def __init__(self, host: Host, settings: WebhooksSettings, client: WebhookClient | None = None) -> None:
        self.host = host
        self.settings = settings
        self.client = client or WebhookClient()
        self.metrics = WebhookMetrics(host)
        self.subscribers = [
            SubscriberTask(host, sub, self.client, self.metrics, settings.poll_interval_seconds)
            for sub in settings.subscribers
        ]
        self._lock = LeaderLock(host.storage, "webhooks")
        self._tasks: list[asyncio.Task[None]] = []
        self._supervisor: asyncio.Task[None] | None = None

    async def place_new_subscribers(self) -> None:
        """Give each subscriber without a cursor one at the end of the log.

        A subscriber starts with the events written from its first start on, not the whole history.
        """
        storage = self.host.storage
        last: int | None = None
        for task in self.subscribers:
            if await storage.get_cursor(cursor_name(task.sub)) is None:
                last = (await storage.event_bounds()).last if last is None else last
                await storage.set_cursor(cursor_name(task.sub), last)

    def start(self) -> None:
        """Start the leader check (subscribers run while this process holds the lead)."""
        if self.subscribers:
            self._supervisor = self.host.spawn(self._supervise(), name="zaphub-webhooks")

    def nudge(self) -> None:
        """An event was written here: look now instead of at the next poll."""
        for task in self.subscribers:
            task.wake.set()

    async def _supervise(self) -> None:
        try:
            while True:
                held = await self._lock.held()
                if held and not self._tasks:
                    log.info(
                        "webhooks: delivering to %d subscriber(s) from this process", len(self.subscribers)
                    )
                    self._tasks = [
                        self.host.spawn(t.run(), name=f"zaphub-webhooks-{t.sub.label}")
                        for t in self.subscribers
                    ]
                elif not held and self._tasks:
                    log.warning("webhooks: another process delivers now; stopping here")
                    await self._cancel_tasks()
                if held:
                    await self._measure_lag()
                await asyncio.sleep(_LEADER_CHECK_SECONDS)
        finally:
            await self._cancel_tasks()

    async def _measure_lag(self) -> None:
        """Refresh every subscriber's lag, a stuck one's included (its task is busy retrying)."""
        try:
            last = (await self.host.storage.event_bounds()).last
            cursors = await self.host.storage.list_cursors()
        except Exception:  # lag is best effort; the delivery loop reports real trouble
            log.debug("webhooks: measuring lag failed", exc_info=True)
            return
        for task in self.subscribers:
            cursor = cursors.get(cursor_name(task.sub))
            if cursor is not None:
                self.metrics.lag.labels(task.sub.label).set(max(0, last - cursor))

    async def _cancel_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def stop(self) -> None:
        """Stop delivering (an event in flight is delivered again by the next leader), release the lead."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None
        await self._cancel_tasks()
        await self._lock.release()
        await self.client.aclose()
