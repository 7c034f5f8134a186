"""The outbox worker: delivers queued sends to Graph, durably and paced.

Every send is a row in the outbox before the API answers ``202``. This worker leases due rows
(a crashed worker's lease expires, so another process or the restarted one takes over), paces
them per business number and per recipient, and records the outcome:

- Graph accepts → the wamid is stored, parked statuses apply, ``on_message_sent`` fires.
- Retryable error (network, 5xx, 429, 130429, 131000, 131056, …) → tried again after an
  exponential backoff with jitter (``Retry-After`` honoured), up to ``max_attempts``.
- Permanent error (131047, 131026, 100, 190, …) or the last attempt → the message becomes
  ``failed`` and ``on_status_changed`` fires with Meta's code and title.
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

from core.errors import UpstreamError
from core.host import Host
from core.storage import OutboxItem
from plugins.whatsapp.client import GraphClient, backoff_delay, is_auth_error
from plugins.whatsapp.config import WhatsAppSettings
from plugins.whatsapp.models import callback_data
from plugins.whatsapp.outbound import build_send_body
from plugins.whatsapp.pacing import Pacer

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
    ) -> None:
        self.host = host
        self.settings = settings
        self.client = client
        self.pacer = Pacer(
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
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                self._inflight.difference_update(tasks)

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
        wait = self.pacer.try_acquire(message.phone_number_id, item.recipient)
        if wait > 0:
            await storage.outbox_defer(item.id, delay=wait, attempt=False)
            return
        body = build_send_body(
            to=item.recipient,
            type_=message.type,
            content=message.content or {},
            context_wamid=message.context_wamid,
            biz_opaque_callback_data=callback_data(message.id),
        )
        try:
            result = await self.client.send(message.phone_number_id, body)
        except UpstreamError as exc:
            await self._failed_attempt(item, exc)
            return
        except Exception as exc:  # a bug, not Meta: keep the row and retry later, loudly
            log.exception("sending message %s crashed", message.id)
            await storage.outbox_defer(
                item.id, delay=backoff_delay(item.attempts + 1), error=repr(exc), attempt=True
            )
            return
        self.auth_problem = None
        accepted, changes = await storage.outbox_sent(item.id, result.wamid)
        self.host.metrics.outbound.labels(outcome="accepted").inc()
        if accepted is not None:
            await self.host.events.publish(
                "on_message_sent", message=accepted.message, conversation=accepted.conversation
            )
        for change in changes:
            await self.host.events.publish_status(change)

    async def _failed_attempt(self, item: OutboxItem, exc: UpstreamError) -> None:
        storage = self.host.storage
        attempt = item.attempts + 1
        if is_auth_error(exc.code, exc.status):
            self.auth_problem = (
                f"Graph rejected the access token (code {exc.code}): renew plugins.whatsapp.access_token "
                "(WHATSAPP_ACCESS_TOKEN)"
            )
        if exc.retryable and attempt < self.settings.max_attempts:
            if exc.ambiguous:
                delay = max(
                    self.settings.ambiguous_retry_seconds, backoff_delay(attempt, retry_after=exc.retry_after)
                )
            else:
                delay = backoff_delay(attempt, retry_after=exc.retry_after, code=exc.code)
            log.warning(
                "message %s: attempt %d failed (%s); retrying in %.1f s", item.message.id, attempt, exc, delay
            )
            self.host.metrics.outbound.labels(outcome="retried").inc()
            await storage.outbox_defer(item.id, delay=delay, error=str(exc), attempt=True)
            return
        log.error("message %s failed for good after %d attempt(s): %s", item.message.id, attempt, exc)
        self.host.metrics.outbound.labels(outcome="failed").inc()
        event = await storage.outbox_failed(item.id, code=exc.code, title=exc.title)
        if event is not None:
            await self.host.events.publish_status(event)
