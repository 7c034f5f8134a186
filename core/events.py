"""Turning stored changes into hook calls: the event dispatcher.

:class:`EventDispatcher` calls the ``on_*`` hooks in commit order from a single task, so a
conversation's events reach plugins in order. Hooks run after the answer, never inside it.
Across a crash, storage is exactly-once but hooks are at-most-once: a client that reconnects
resyncs over REST (``after_id``). Inbound batches reach it from the group-commit writer,
:class:`core.ingest.IngestBatcher`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from core.storage import StatusEvent

if TYPE_CHECKING:
    from core.host import Host

__all__ = ["EventDispatcher"]

log = logging.getLogger("zaphub.events")


class EventDispatcher:
    """Calls hooks for stored events, in order, off the request path."""

    def __init__(self, host: Host, *, max_queue: int = 20_000) -> None:
        self.host = host
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the dispatch task."""
        self._task = asyncio.create_task(self._run(), name="zaphub-event-dispatcher")

    async def stop(self) -> None:
        """Dispatch what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.put(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
        except TimeoutError:
            self._task.cancel()
        self._task = None

    async def publish(self, hook: str, **kwargs: Any) -> None:
        """Queue a hook call; waits when the queue is full (back-pressure on producers)."""
        await self._queue.put((hook, kwargs))
        self.host.metrics.event_queue.set(self._queue.qsize())

    async def publish_status(self, event: StatusEvent) -> None:
        """Queue ``on_status_changed`` for a status event."""
        await self.publish(
            "on_status_changed", message=event.message, conversation=event.conversation, change=event.change
        )

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            hook, kwargs = item
            self.host.metrics.event_queue.set(self._queue.qsize())
            try:
                await self.host.hooks.call(hook, host=self.host, **kwargs)
            except Exception:  # the runner isolates hook failures; this guards the loop itself
                log.exception("dispatching %s failed", hook)
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every event queued so far has been dispatched and its hooks returned."""
        if self._task is None or self._task.done():
            return  # not running: nothing will take the queue
        await self._queue.join()
