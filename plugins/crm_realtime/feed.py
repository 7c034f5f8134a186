"""The emit path: every logged event to this process's sockets, once and in id order.

Events reach a process three ways:

- **locally**: the hook dispatcher (one process at a time, see :mod:`core.events`) hands each
  event to :meth:`SocketFeed.offer` right after its commit; that process also relays it;
- **relayed**: the other processes hear it on the Redis channel (``zaphub:event`` messages);
- **from the log**: when an event arrives after a gap (ids are dense and in commit order, so a
  gap is always real: the relay lost something, or the queue was full), and after
  ``TICK_SECONDS`` without any event (Redis down, or the last event of a burst lost), the feed
  reads the log after its cursor.

The cursor (:attr:`SocketFeed.position`) is the highest id delivered with every id below it
delivered too; anything at or below it is a duplicate and skipped. Offering never waits: when the
queue is full the event is left to the log. Sockets therefore get every event whether Redis is up,
down, or back with a backlog; ``zaphub_crm_events_from_log_total`` counts the ones the relay or the
queue missed, and ``GET /ready`` reports the relay itself (check ``relay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client import Counter

from core.events import Wakeup
from core.logs import Throttle
from core.metrics import Children
from core.models import Event

if TYPE_CHECKING:
    from plugins.crm_realtime.realtime import Realtime

__all__ = ["RELAY_METHOD", "TICK_SECONDS", "SocketFeed"]

log = logging.getLogger("zaphub.crm_realtime")

TICK_SECONDS = 1.0
"""How long the feed waits without events before it checks the log."""
LOG_PAGE = 500
BATCH = 500
"""At most this many queued events are emitted together (bounds a burst's pause of the event loop)."""
RELAY_METHOD = "zaphub:event"
"""The ``method`` of the Redis messages carrying an event between processes."""


class SocketFeed:
    """Delivers logged events to the sockets of this process; see the module docstring."""

    def __init__(self, realtime: Realtime, queue_size: int) -> None:
        self.rt = realtime
        self.position: int | None = None
        """The last event id delivered, every one below it delivered too (``None`` before start)."""
        self.queue: asyncio.Queue[tuple[Event, bool] | None] = asyncio.Queue(queue_size)
        self._throttle = Throttle(log)
        registry = realtime.host.metrics.registry
        self.m_events = Counter(
            "zaphub_crm_events", "Events emitted to CRM clients, by event.", ["event"], registry=registry
        )
        self.m_from_log = Counter(
            "zaphub_crm_events_from_log",
            "Events this process read from the event log because neither the relay nor its own queue "
            "brought them in time (Redis down, a gap, a full queue), by event.",
            ["event"],
            registry=registry,
        )
        self.m_queue_full = Counter(
            "zaphub_crm_events_dropped",
            "Events not queued because the emit queue was full (logged ones are delivered later from "
            "the event log).",
            registry=registry,
        )
        self.m_emit_errors = Counter("zaphub_crm_emit_errors", "Emits that raised.", registry=registry)
        self._events_by_type = Children(self.m_events)
        self._from_log_by_type = Children(self.m_from_log)
        # Not asyncio.wait_for(queue.get(), TICK_SECONDS): it wraps every wait in a task, and
        # at a paced rate every event is a wait.
        self._wake = Wakeup()

    def offer(self, event: Event, *, relay: bool) -> None:
        """Queue ``event`` for delivery (``relay``: publish it to the other processes too); never waits."""
        try:
            self.queue.put_nowait((event, relay))
        except asyncio.QueueFull:
            self.m_queue_full.inc()  # the log has it: the next gap or tick reads it back
        self._wake.set()

    async def run(self) -> None:
        """Deliver until :meth:`stop`; starts at the end of the log (earlier events are replays)."""
        while self.position is None:
            try:
                self.position = (await self.rt.host.storage.event_bounds()).last
            except Exception as exc:
                self._throttle.error("the CRM feed cannot read the event log yet", exc_info=exc)
                await asyncio.sleep(TICK_SECONDS)
        queue, wake = self.queue, self._wake
        while True:
            if queue.empty():
                wake.clear()
                if not await wake.wait(TICK_SECONDS):  # TICK_SECONDS without an event
                    await self._guarded(self._catch_up(None))
                    continue
                if queue.empty():  # woken without an event (never expected): wait again
                    continue
            # Everything queued meanwhile goes as one batch: each socket gets its frames of the
            # batch in one write instead of one per event.
            items = [queue.get_nowait()]
            while len(items) < BATCH and not queue.empty():
                items.append(queue.get_nowait())
            try:
                stop = await self._take_batch(items)
            finally:
                for _ in items:
                    queue.task_done()
            if stop:
                return

    def stop(self) -> None:
        """Stop after what is queued (the sentinel waits its turn)."""
        with contextlib.suppress(asyncio.QueueFull):  # then run() ends cancelled instead
            self.queue.put_nowait(None)
        self._wake.set()

    async def _guarded(self, work: Any) -> None:
        try:
            await work
        except Exception as exc:  # the database or an emit failed: the next tick retries from the log
            self._throttle.error("delivering events to CRM sockets failed", exc_info=exc)

    async def _take_batch(self, items: list[tuple[Event, bool] | None]) -> bool:
        """Deliver queued events in order; ``True`` when the stop sentinel was among them."""
        stop = None in items
        if stop:
            items = items[: items.index(None)]
        events = [item for item in items if item is not None]
        if events:
            await self._guarded(self._take(events))
        return stop

    async def _take(self, items: list[tuple[Event, bool]]) -> None:
        """Deliver the events of ``items`` that follow the cursor, reading any gap from the log."""
        if self.rt.relay is not None:  # with Redis; first: the other processes need not wait for our sockets
            for event, relay in items:
                if relay:
                    await self.rt.relay_event(event)
        assert self.position is not None
        top = self.position
        batch: list[Event] = []
        for event, _ in items:
            if event.id <= top:
                continue  # already delivered (read from the log before the relay brought it)
            if event.id > top + 1:  # a gap: what is batched goes first, then the log fills it
                await self._deliver(batch)
                batch = []
                await self._catch_up(event.id - 1)
                top = self.position
            if event.id == top + 1:
                batch.append(event)
                top = event.id
        await self._deliver(batch)

    async def _catch_up(self, until: int | None) -> None:
        """Deliver the logged events after the cursor (up to ``until``)."""
        assert self.position is not None
        while True:
            page = await self.rt.host.storage.read_events(self.position, LOG_PAGE, until=until)
            self._from_log_by_type.inc_each([event.type for event in page])
            await self._deliver(page)
            if len(page) < LOG_PAGE:
                return

    async def _deliver(self, events: list[Event]) -> None:
        """Emit consecutive events (the cursor's next ones) as one batch; the cursor moves past them."""
        if not events:
            return
        try:
            await self.rt.emit_local(events)
        except Exception as exc:
            self.m_emit_errors.inc()
            self._throttle.error("emitting %d events failed", len(events), exc_info=exc)
        else:
            self._events_by_type.inc_each([event.type for event in events])
        self.position = events[-1].id


def relay_message(event: Event, host_id: str) -> dict[str, Any]:
    """The Redis message carrying ``event`` to the other processes."""
    return {"method": RELAY_METHOD, "host_id": host_id, "event": msgspec.json.encode(event).decode()}


def relayed_event(message: dict[str, Any]) -> Event | None:
    """The event of a relay message (``None`` when it is not one, or malformed)."""
    if message.get("method") != RELAY_METHOD:
        return None
    try:
        return msgspec.json.decode(message["event"], type=Event)
    except (KeyError, TypeError, msgspec.DecodeError):
        return None
