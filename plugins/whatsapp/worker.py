"""The outbox worker: delivers queued sends to Graph, durably and paced.

Every send is a row in the outbox before the API answers ``202``. This worker leases due rows
(a crashed worker's lease expires, so another process or the restarted one takes over), paces
them per business number and per recipient (across processes through Redis when ``redis.url`` is
set, :mod:`plugins.whatsapp.pacing`), and records the outcome:

- Graph accepts → the wamid is stored, parked statuses apply, ``on_message_sent`` fires.
- Retryable error (network, 5xx, 429, 130429, 131000, 131056, …) → tried again after a capped
  exponential backoff with full jitter (``Retry-After`` honoured) while the send is younger than
  ``retry_window_seconds`` (and, if set, has made fewer than ``max_attempts``); the last try is
  made at the window's end, so a Graph outage shorter than the window delays a send, never fails it.
- Permanent error (131047, 131026, 100, 190, …) or the window is over → the message becomes
  ``failed`` and ``on_status_changed`` fires with Meta's code and title.
- An unexpected exception (a bug, not Meta) counts as an attempt under the same bounds and is
  logged with its traceback; past them the message fails with ``internal error``.
- An error after Graph accepted a send (recording the wamid, publishing the event) is logged
  with the wamid; recording is retried until the row's lease is nearly over.
- **Ambiguous** (a timeout after the request left: Graph has no idempotency key) → not resent at
  once. Every send carries ``biz_opaque_callback_data = "zaphub:<message id>"``, which Meta echoes
  in status webhooks; if one arrives within ``ambiguous_retry_seconds`` it links the wamid and the
  send is done. Only if none arrives is it sent again: at-least-once, with duplicates limited to
  sends that Meta accepted but never reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta

from redis.asyncio import Redis

from core.config import redact_url
from core.errors import UpstreamError, ValidationFailed
from core.host import Host
from core.models import utcnow
from core.storage import OutboxItem
from plugins.whatsapp.client import GraphClient, backoff_delay, is_auth_error
from plugins.whatsapp.config import WhatsAppSettings
from plugins.whatsapp.models import callback_data
from plugins.whatsapp.outbound import build_send_body
from plugins.whatsapp.pacing import Pacer, SharedPacer

__all__ = ["OutboxWorker"]

log = logging.getLogger("zaphub.whatsapp.outbox")


class OutboxWorker:
    """See the module docstring. One per process; several processes share the outbox safely."""

    def __init__(
        self,
        host: Host,
        settings: WhatsAppSettings,
        client: GraphClient,
        *,
        batch_size: int = 50,
        poll_seconds: float = 1.0,
        redis: Redis | None = None,
    ) -> None:
        self.host = host
        self.settings = settings
        self.client = client
        self.pacer = Pacer(
            rate=settings.messages_per_second,
            pair_interval=settings.pair_interval_seconds,
            pair_burst=settings.pair_burst,
        )
        self.redis = redis
        self.shared_pacer: SharedPacer | None = None
        """With ``redis.url``: the pacing budget shared by every process (``self.pacer`` is its fallback)."""
        if redis is not None:
            self.shared_pacer = SharedPacer(
                redis,
                fallback=self.pacer,
                registry=host.metrics.registry,
                describe=redact_url(host.config.redis.url or ""),
                rate=settings.messages_per_second,
                pair_interval=settings.pair_interval_seconds,
                pair_burst=settings.pair_burst,
            )
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.lease_seconds = settings.request_timeout_seconds * 2 + 10
        self.auth_problem: str | None = None
        """Set while Graph rejects the access token (``/ready`` reports it)."""
        self._stopping = asyncio.Event()
        self._wakeup = asyncio.Event()
        host.sender.on_queued(self.wake)
        self._inflight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Deliver until :meth:`stop`; database hiccups are logged and retried."""
        wakeup = self._wakeup
        while not self._stopping.is_set():
            try:
                items = await self.host.storage.claim_outbox(
                    limit=self.batch_size, lease_seconds=self.lease_seconds
                )
            except Exception:
                log.exception("claiming outbox rows failed; retrying in %.0f s", self.poll_seconds)
                items = []
            if not items:
                wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), timeout=self.poll_seconds)
                continue
            tasks = [asyncio.create_task(self._deliver(item)) for item in items]
            self._inflight.update(tasks)
            try:
                results = await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                self._inflight.difference_update(tasks)
            for item, result in zip(items, results, strict=True):
                if isinstance(result, Exception):  # its lease expires and another try follows
                    log.error("delivering message %s crashed", item.message.id, exc_info=result)

    def wake(self) -> None:
        """Look for due sends now instead of at the next poll (called when a send is queued)."""
        self._wakeup.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; let sends already on the wire finish (their outcome is recorded)."""
        self._stopping.set()
        self._wakeup.set()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=timeout)

    async def _deliver(self, item: OutboxItem) -> None:
        storage = self.host.storage
        message = item.message
        if self.shared_pacer is not None:
            wait = await self.shared_pacer.try_acquire(message.phone_number_id, item.recipient)
        else:
            wait = self.pacer.try_acquire(message.phone_number_id, item.recipient)
        if wait > 0:
            await storage.outbox_defer(item.id, delay=wait, attempt=False)
            return
        try:
            body = build_send_body(
                to=item.recipient,
                type_=message.type,
                content=message.content or {},
                context_wamid=message.context_wamid,
                biz_opaque_callback_data=callback_data(message.id),
            )
        except ValidationFailed as exc:  # stored before a rule changed: no retry can fix it
            await self._fail(item, code=None, title=f"invalid message: {exc}", attempt=item.attempts + 1)
            return
        try:
            result = await self.client.send(message.phone_number_id, body)
        except UpstreamError as exc:
            await self._failed_attempt(item, exc)
            return
        except Exception as exc:  # a bug, not Meta: an attempt like any other, loudly
            log.exception("sending message %s crashed", message.id)
            await self._retry_or_fail(
                item,
                delay=self._backoff(item.attempts + 1),
                error=repr(exc),
                code=None,
                title="internal error",
            )
            return
        self.auth_problem = None
        self.host.metrics.outbound.labels(outcome="accepted").inc()
        await self._record_sent(item, result.wamid)

    async def _record_sent(self, item: OutboxItem, wamid: str) -> None:
        """Store what Graph accepted; a failure here would resend a delivered message, so insist."""
        deadline = time.monotonic() + self.lease_seconds / 2
        delay = 0.5
        while True:
            try:
                accepted, changes = await self.host.storage.outbox_sent(item.id, wamid)
                break
            except Exception:
                if time.monotonic() + delay >= deadline:
                    log.exception(
                        "message %s: Graph accepted it as %s but storing that failed; it will be sent "
                        "again when its lease expires unless a status webhook links it first",
                        item.message.id,
                        wamid,
                    )
                    return
                log.warning(
                    "message %s: Graph accepted it as %s; storing that failed, retrying in %.1f s",
                    item.message.id,
                    wamid,
                    delay,
                    exc_info=True,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        try:
            if accepted is not None:
                self.host.events.message_sent(accepted)
            for change in changes:
                self.host.events.status_changed(change)
        except Exception:
            log.exception(
                "message %s: sent as %s and stored, but publishing its events failed", item.message.id, wamid
            )

    def _backoff(self, attempt: int, *, retry_after: float | None = None, code: int | None = None) -> float:
        return backoff_delay(
            attempt,
            base=self.settings.retry_backoff_seconds,
            cap=self.settings.retry_backoff_max_seconds,
            retry_after=retry_after,
            code=code,
        )

    def _deadline(self, item: OutboxItem) -> datetime:
        return item.queued_at + timedelta(seconds=self.settings.retry_window_seconds)

    async def _failed_attempt(self, item: OutboxItem, exc: UpstreamError) -> None:
        attempt = item.attempts + 1
        if is_auth_error(exc.code, exc.status):
            self.auth_problem = (
                f"Graph rejected the access token (code {exc.code}): renew plugins.whatsapp.access_token "
                "(WHATSAPP_ACCESS_TOKEN)"
            )
        if not exc.retryable:
            await self._fail(item, code=exc.code, title=exc.title, attempt=attempt, cause=str(exc))
            return
        if exc.ambiguous:
            delay = max(
                self.settings.ambiguous_retry_seconds, self._backoff(attempt, retry_after=exc.retry_after)
            )
        else:
            delay = self._backoff(attempt, retry_after=exc.retry_after, code=exc.code)
        await self._retry_or_fail(item, delay=delay, error=str(exc), code=exc.code, title=exc.title)

    async def _retry_or_fail(
        self, item: OutboxItem, *, delay: float, error: str, code: int | None, title: str
    ) -> None:
        """Try again after ``delay`` (at the latest at the window's end) if the bounds allow it."""
        attempt = item.attempts + 1
        max_attempts = self.settings.max_attempts
        left = (self._deadline(item) - utcnow()).total_seconds()
        if left <= 0 or (max_attempts is not None and attempt >= max_attempts):
            await self._fail(item, code=code, title=title, attempt=attempt, cause=error)
            return
        delay = min(delay, left)  # one last try when the window ends, not a failure before it
        log.warning(
            "message %s: attempt %d failed (%s); retrying in %.1f s", item.message.id, attempt, error, delay
        )
        self.host.metrics.outbound.labels(outcome="retried").inc()
        await self.host.storage.outbox_defer(item.id, delay=delay, error=error, attempt=True)

    async def _fail(
        self, item: OutboxItem, *, code: int | None, title: str, attempt: int, cause: str | None = None
    ) -> None:
        log.error(
            "message %s failed for good after %d attempt(s): %s", item.message.id, attempt, cause or title
        )
        self.host.metrics.outbound.labels(outcome="failed").inc()
        event = await self.host.storage.outbox_failed(item.id, code=code, title=title)
        if event is not None:
            self.host.events.status_changed(event)
