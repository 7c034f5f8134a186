"""The group-commit writer: concurrent inbound webhooks stored together, one transaction per batch.

Inbound webhooks arrive concurrently. :class:`IngestBatcher` gathers whatever is waiting while
the previous transaction runs and stores it in one transaction (group commit), so throughput
grows with load instead of queueing behind one fsync per webhook. Each caller's ``submit`` returns
only after its data and its events (rows of the event log, same transaction) are committed: that is
when the webhook may answer ``200``. It then hands the new events to
:class:`core.events.EventDispatcher`, which calls the hooks, without ever waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.logs import Throttle
from core.models import InboundMessage, InboundStatus, utcnow
from core.storage import IngestResult

if TYPE_CHECKING:
    from core.host import Host

__all__ = ["IngestBatcher"]

log = logging.getLogger("zaphub.events")  # the name it had in core/events.py; log filters rely on names


class _Submission:
    __slots__ = ("future", "messages", "rest", "statuses")

    def __init__(
        self,
        messages: Sequence[InboundMessage],
        statuses: Sequence[InboundStatus],
        future: asyncio.Future[None],
        rest: list[tuple[Sequence[InboundMessage], Sequence[InboundStatus]]] | None = None,
    ) -> None:
        self.messages = messages
        self.statuses = statuses
        self.future = future
        self.rest = rest or []
        """Later chunks of a large webhook: queued (at the back) once this one is committed."""

    @property
    def size(self) -> int:
        return len(self.messages) + len(self.statuses)


def _chunks(
    messages: Sequence[InboundMessage], statuses: Sequence[InboundStatus], size: int
) -> list[tuple[Sequence[InboundMessage], Sequence[InboundStatus]]]:
    """Messages then statuses, at most ``size`` items per chunk (statuses after their messages)."""
    out: list[tuple[Sequence[InboundMessage], Sequence[InboundStatus]]] = [
        (messages[i : i + size], []) for i in range(0, len(messages), size)
    ]
    start = 0
    if out and len(out[-1][0]) < size:  # top up the last message chunk with statuses
        start = size - len(out[-1][0])
        out[-1] = (out[-1][0], statuses[:start])
    out.extend(([], statuses[i : i + size]) for i in range(start, len(statuses), size))
    return out


class IngestBatcher:
    """Group commit of inbound batches; see the module docstring."""

    def __init__(self, host: Host, *, max_webhooks: int = 200, max_items: int = 500) -> None:
        self.host = host
        self.max_webhooks = max_webhooks
        self.max_items = max_items
        """Messages + statuses per transaction. A larger webhook is stored in chunks, each queued
        behind the webhooks that arrived meanwhile, so one huge batch (15,000 new contacts) cannot
        hold small webhooks for the whole of its transaction; it is answered once every chunk is
        committed (a crash in between is harmless: Meta retries it, unique keys absorb the rest)."""
        self._pending: list[_Submission] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._idle = asyncio.Event()
        # While the database is down every webhook fails alike: one traceback a minute, with a count.
        self._failures = Throttle(log)
        self._idle.set()

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="zaphub-ingest")

    async def stop(self) -> None:
        """Store what was submitted, then stop."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(self, messages: Sequence[InboundMessage], statuses: Sequence[InboundStatus]) -> None:
        """Store messages and statuses durably; returns once committed.

        Raises:
            StorageError: the database failed; nothing of this submission was stored.
        """
        if not messages and not statuses:
            return
        if self._closed:
            raise RuntimeError("the host is shutting down")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if len(messages) + len(statuses) > self.max_items:
            (first_msgs, first_statuses), *rest = _chunks(messages, statuses, self.max_items)
            self._pending.append(_Submission(first_msgs, first_statuses, future, rest))
        else:
            self._pending.append(_Submission(messages, statuses, future))
        self._idle.clear()
        self._wake.set()
        await future

    async def drain(self) -> None:
        """Wait until everything submitted so far is stored and its events published (tests)."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._take()
                try:
                    await self._store(batch)
                except Exception as exc:  # never leave a webhook waiting on a dead writer
                    log.exception("ingest writer failed")
                    for sub in batch:
                        if not sub.future.done():
                            sub.future.set_exception(exc)
            if not self._pending:
                self._idle.set()
            if self._closed and not self._pending:
                return

    def _take(self) -> list[_Submission]:
        """The next transaction's submissions: at most ``max_webhooks`` and ``max_items`` (at least one)."""
        taken, items = 0, 0
        for sub in self._pending:
            if taken and (taken >= self.max_webhooks or items + sub.size > self.max_items):
                break
            taken += 1
            items += sub.size
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch

    async def _store(self, batch: list[_Submission]) -> None:
        started = time.perf_counter()
        try:
            result = await self.host.storage.ingest(
                [m for s in batch for m in s.messages], [st for s in batch for st in s.statuses]
            )
        except Exception as exc:
            if len(batch) == 1:
                self._failures.error("storing a webhook failed", exc_info=exc)
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            # One bad submission must not fail its neighbours: store them one by one.
            for sub in batch:
                await self._store([sub])
            return
        metrics = self.host.metrics
        metrics.ingest_seconds.observe(time.perf_counter() - started)
        metrics.ingest_batch.observe(len(batch))
        for sub in batch:
            if sub.rest:  # a large webhook: its next chunk waits behind what arrived meanwhile
                (msgs, sts), *rest = sub.rest
                self._pending.append(_Submission(msgs, sts, sub.future, rest))
            elif not sub.future.done():
                sub.future.set_result(None)
        try:
            self._publish(result)
        except Exception:  # stored and acknowledged; a publishing bug must not stop the writer
            log.exception("publishing events of a stored batch failed")

    def _publish(self, result: IngestResult) -> None:
        metrics = self.host.metrics
        now = utcnow()
        if result.set_aside:
            metrics.set_aside.inc(result.set_aside)
        if result.duplicate_messages:
            metrics.duplicates.labels(kind="message").inc(result.duplicate_messages)
        if result.duplicate_statuses:
            metrics.duplicates.labels(kind="status").inc(result.duplicate_statuses)
        if result.stale_statuses:
            metrics.statuses.labels(outcome="stale").inc(result.stale_statuses)
        if result.pending_statuses:
            metrics.statuses.labels(outcome="pending").inc(result.pending_statuses)
        events = self.host.events
        new = result.new_messages
        if new:  # metrics once per batch: a labelled counter costs microseconds per call
            metrics.count_inbound_batch([ev.message.type for ev in new])
            metrics.processing_lag.observe_many(
                max(0.0, (now - ev.message.delivered_at).total_seconds())
                for ev in new
                if ev.message.delivered_at is not None
            )
        for ev in new:
            events.message_received(ev)
        for sent in result.sent_messages:
            events.message_sent(sent)
        if result.status_changes:
            metrics.statuses.labels(outcome="applied").inc(len(result.status_changes))
        for st in result.status_changes:
            events.status_changed(st)
        for changed in result.message_changes:
            events.message_changed(changed)
