"""Feeding the ``on_*`` event hooks from the event log: at least once, in order, off the write path.

Storage appends every event to the log in the transaction of its change
(:mod:`core.storage.events`). The dispatcher calls the hooks for those events in id order and
remembers how far it got in a persisted cursor (``hooks`` in ``event_cursors``), so after a crash
or ``kill -9`` it resumes from the cursor: every committed event reaches the hooks, and the few
dispatched since the last saved position are dispatched again (at least once).

Two paths feed it:

- **memory** (the fast path): right after a commit, the writer hands over the events it just
  wrote with their models, already in memory (:meth:`EventDispatcher.message_received` and
  friends). Handing over never waits: the backlog is bounded, and when it is full the event is
  simply not kept; the log has it.
- **log** (the slow path): at startup, after the backlog overflowed, when an id is missing from
  memory (written by another process), and after a short while without events in memory (a
  poll), the dispatcher reads the log after its position and reloads the models from storage in
  batches.

Ids are dense and in commit order, so "the next event is ``position + 1``" is all the
bookkeeping needed: an in-memory event that is not next is either already dispatched (dropped)
or comes after a gap the log fills first. A slow hook delays the hooks after it, never a writer.

With several processes (PostgreSQL) one of them dispatches at a time: the holder of a session
advisory lock. The others skip the memory path; the dispatching process reads their events from
the log (within ``poll_seconds``) and takes over the moment the holder's connection goes away.
Socket.IO emits reach every process through Redis, so which process dispatches does not matter.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from core.event_payloads import (
    CHANGE_EVENT_TYPES,
    EVENT_CONVERSATION,
    EVENT_MESSAGE,
    EVENT_REACTION,
    EVENT_SENT,
    EVENT_STATUS,
)
from core.models import Contact, Conversation, Event, Message, MessageChange, StatusChange
from core.storage.events import LeaderLock

if TYPE_CHECKING:
    from core.host import Host
    from core.storage import ChangeEvent, MessageEvent, ModeEvent, StatusEvent

__all__ = ["HOOKS_CURSOR", "Dispatch", "EventDispatcher", "Wakeup", "register_event_loader"]

log = logging.getLogger("zaphub.events")

HOOKS_CURSOR = "hooks"
"""The name of the dispatcher's cursor in ``event_cursors``."""


class Wakeup:
    """An ``asyncio.Event`` for one waiting task, with a timeout built in.

    ``asyncio.wait_for(event.wait(), timeout)`` wraps every wait in a task of its own (Python
    3.11); a loop that wakes per event at a paced rate pays that on each one. Here a wait is one
    future and one timer (about half the CPU per wake-up).
    """

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[bool] | None = None

    def set(self) -> None:
        """Wake the waiting task (or the next one to wait)."""
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def clear(self) -> None:
        """Forget an earlier :meth:`set`."""
        self._set = False

    async def wait(self, timeout: float) -> bool:
        """Until :meth:`set` (``True``, at once if already set) or ``timeout`` seconds (``False``)."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        # call_at rather than call_later: on uvloop the latter costs about twice as much.
        timer = loop.call_at(loop.time() + timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Dispatch:
    """One hook call for one event: the hook's name and its keyword arguments (``event`` included)."""

    __slots__ = ("event", "hook", "kwargs")

    def __init__(self, event: Event, hook: str | None, kwargs: dict[str, Any]) -> None:
        self.event = event
        self.hook = hook
        """``None`` for an event no per-type hook reports (only ``on_event`` sees it)."""
        self.kwargs = kwargs


#: Rebuilds the hook call of an event read back from the log, from the models as stored now.
EventLoader = Callable[[Event, Message | None, Conversation | None, Contact | None], Dispatch | None]


def _load_message(
    event: Event, message: Message | None, conv: Conversation | None, contact: Contact | None
) -> Dispatch | None:
    if message is None or conv is None or contact is None:
        return None
    return Dispatch(
        event, "on_message_received", {"message": message, "conversation": conv, "contact": contact}
    )


def _load_sent(
    event: Event, message: Message | None, conv: Conversation | None, _: Contact | None
) -> Dispatch | None:
    if message is None or conv is None:
        return None
    return Dispatch(event, "on_message_sent", {"message": message, "conversation": conv})


def _load_status(
    event: Event, message: Message | None, conv: Conversation | None, _: Contact | None
) -> Dispatch | None:
    if message is None or conv is None:
        return None
    data = event.payload()
    error = data.get("error") or {}
    change = StatusChange(
        message_id=message.id,
        status=data["status"],
        timestamp=data["timestamp"],
        error_code=error.get("code"),
        error_title=error.get("title"),
    )
    return Dispatch(event, "on_status_changed", {"message": message, "conversation": conv, "change": change})


def _load_conversation(
    event: Event, _: Message | None, conv: Conversation | None, __: Contact | None
) -> Dispatch | None:
    if conv is None:
        return None
    # The conversation as stored now, in the mode this event reports (it may have changed since).
    conversation = msgspec.structs.replace(conv, mode=event.payload()["mode"])
    return Dispatch(event, "on_conversation_updated", {"conversation": conversation})


_CHANGE_KINDS = {event_type: kind for kind, event_type in CHANGE_EVENT_TYPES.items()}


def _load_change(
    event: Event, message: Message | None, conv: Conversation | None, _: Contact | None
) -> Dispatch | None:
    if message is None or conv is None:
        return None
    data = event.payload()
    kind = _CHANGE_KINDS[event.type]
    at = data.get("editedAt") or data.get("deletedAt") or data.get("at")
    change = MessageChange(
        message_id=message.id,
        kind=kind,  # type: ignore[arg-type]  # the values of CHANGE_EVENT_TYPES' keys
        at=datetime.fromisoformat(at) if at else event.created_at,
        body=data.get("body"),
        emoji=(data.get("emoji") or None) if event.type == EVENT_REACTION else None,
        reactor=data.get("from"),
    )
    return Dispatch(event, "on_message_changed", {"message": message, "conversation": conv, "change": change})


_LOADERS: dict[str, EventLoader] = {
    EVENT_MESSAGE: _load_message,
    EVENT_SENT: _load_sent,
    EVENT_STATUS: _load_status,
    EVENT_CONVERSATION: _load_conversation,
    **dict.fromkeys(CHANGE_EVENT_TYPES.values(), _load_change),
}


def register_event_loader(event_type: str, loader: EventLoader) -> None:
    """Teach the slow path which hook an event type feeds (for event types added later)."""
    _LOADERS[event_type] = loader


class EventDispatcher:
    """Calls the ``on_*`` hooks for logged events; see the module docstring.

    Args:
        host: the running host.
        max_backlog: events kept in memory for the fast path; beyond it they are read back.
        batch: events read from the log (and models reloaded) at a time.
        poll_seconds: how long without events handed over in order before the log is checked
            for events handed over by no one (other processes; while events are handed over,
            such an event shows as a gap before the next one and is read at once).
        save_every / save_seconds: the cursor is saved after this many events or this long,
            whichever comes first: at most that much is dispatched again after a crash.
    """

    def __init__(
        self,
        host: Host,
        *,
        max_backlog: int = 10_000,
        batch: int = 500,
        poll_seconds: float = 0.2,
        save_every: int = 1_000,
        save_seconds: float = 0.5,
    ) -> None:
        self.host = host
        self.max_backlog = max_backlog
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.save_every = save_every
        self.save_seconds = save_seconds
        self.position = 0
        """The last event id dispatched (or stepped over)."""
        self.leader: bool | None = None
        """Whether this process dispatches (``None`` until known)."""
        self._saved = 0
        self._saved_at = time.monotonic()
        self._backlog: collections.deque[Dispatch] = collections.deque()
        self._behind = False
        self._offered = 0
        self._held: dict[int, int] = {}
        self._wake = Wakeup()
        self._progress = asyncio.Event()
        self._polled_at = 0.0
        self._checked_at = 0.0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._lock: LeaderLock | None = None

    # -- producers (after commit, never waiting) ---------------------------------------------

    def message_received(self, stored: MessageEvent) -> None:
        """Hand over a stored inbound message (``on_message_received``)."""
        if stored.event is not None:
            self.offer(
                Dispatch(
                    stored.event,
                    "on_message_received",
                    {
                        "message": stored.message,
                        "conversation": stored.conversation,
                        "contact": stored.contact,
                    },
                )
            )

    def message_sent(self, accepted: StatusEvent) -> None:
        """Hand over a send Graph accepted (``on_message_sent``)."""
        if accepted.event is not None:
            self.offer(
                Dispatch(
                    accepted.event,
                    "on_message_sent",
                    {"message": accepted.message, "conversation": accepted.conversation},
                )
            )

    def status_changed(self, change: StatusEvent) -> None:
        """Hand over a status that moved a message forward (``on_status_changed``)."""
        if change.event is not None:
            self.offer(
                Dispatch(
                    change.event,
                    "on_status_changed",
                    {"message": change.message, "conversation": change.conversation, "change": change.change},
                )
            )

    def conversation_updated(self, change: ModeEvent) -> None:
        """Hand over a conversation whose mode changed (``on_conversation_updated``)."""
        self.offer(Dispatch(change.event, "on_conversation_updated", {"conversation": change.conversation}))

    def message_changed(self, changed: ChangeEvent) -> None:
        """Hand over an edit, deletion or reaction applied to a message (``on_message_changed``)."""
        if changed.event is not None:
            self.offer(
                Dispatch(
                    changed.event,
                    "on_message_changed",
                    {
                        "message": changed.message,
                        "conversation": changed.conversation,
                        "change": changed.change,
                    },
                )
            )

    def hold(self, event: Event, work: asyncio.Future[Any]) -> None:
        """Keep the saved cursor before ``event`` until ``work`` is done.

        For a hook that returns quickly and finishes in a task of its own (``autoreply``): if the
        process dies before the task is done, the event is dispatched again after the restart,
        instead of being lost with the task; a task cancelled at shutdown keeps the cursor
        before its event for the same reason. The task must then tolerate a repeat.
        """
        self._held[event.id] = self._held.get(event.id, 0) + 1

        def release(done: asyncio.Future[Any]) -> None:
            if done.cancelled():  # not done (stopped at shutdown): keep the cursor before it
                return
            left = self._held.get(event.id, 0) - 1
            if left > 0:
                self._held[event.id] = left
            else:
                self._held.pop(event.id, None)

        work.add_done_callback(release)

    def offer(self, item: Dispatch) -> None:
        """Keep ``item`` for the fast path if there is room; never waits, never fails."""
        if self.leader is False or (self._stopping and self._task is None):
            return
        if len(self._backlog) >= self.max_backlog:
            self._behind = True  # the log has it; read it back once the backlog drains
        else:
            self._offered = max(self._offered, item.event.id)
            self._backlog.append(item)
            self.host.metrics.event_queue.set(len(self._backlog))
        self._wake.set()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start dispatching (resumes from the persisted cursor)."""
        storage = self.host.storage
        self._lock = LeaderLock(storage, "zaphub.hooks")
        self._task = asyncio.create_task(self._run(), name="zaphub-event-dispatcher")

    stop_timeout = 10.0
    """How long :meth:`stop` may take by default."""

    async def stop(self, timeout: float | None = None) -> None:
        """Dispatch every event committed so far (bounded by ``timeout``), save the cursor, stop.

        Call it after the producers stopped; whatever is left when the time is up stays in the
        log and is dispatched at the next start.
        """
        timeout = self.stop_timeout if timeout is None else timeout
        task, self._task = self._task, None
        self._stopping = True
        self._wake.set()
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=timeout)
        except TimeoutError:
            log.warning(
                "event dispatch did not finish within %.0f s; the rest is dispatched at the next start",
                timeout,
            )
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until every event committed before the call was dispatched and its hooks returned.

        Returns at once when the dispatcher is not running (nothing would dispatch) or another
        process dispatches.

        Raises:
            TimeoutError: not done within ``timeout`` seconds.
        """
        target = self._offered
        try:
            target = max(target, (await self.host.storage.event_bounds()).last)
        except Exception:  # the database is gone: what was handed over in memory is all we know
            log.debug("drain: the event log is unreadable; waiting for events handed over only")
        deadline = time.monotonic() + timeout
        while self.position < target and self.leader is not False:
            if self._task is None or self._task.done():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"events up to {target} not dispatched within {timeout} s (at {self.position})"
                )
            self._progress.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), timeout=min(remaining, 0.5))

    def problem(self) -> str | None:
        """``None`` while dispatching works; else what is wrong (for ``GET /ready``)."""
        if self._task is None or self._task.done():
            return "the event dispatcher is not running"
        return None

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._lock is not None
        try:
            while True:
                try:
                    if not await self._lead():
                        if self._stopping:
                            return
                        await self._idle(max(1.0, self.poll_seconds))
                        continue
                    # Producers have all stopped once stop() is called; only a step begun after
                    # that has seen their last events (a log read begun before may have missed
                    # the final commit, whose event is then still in the backlog).
                    stopping = self._stopping
                    progressed = await self._step()
                    # Every save_seconds / save_every, as documented; saving each time the
                    # dispatcher caught up cost a write transaction (and an fsync) per group
                    # commit under load. Stopping saves what it got to.
                    await self._save(force=not progressed and self._stopping)
                except Exception:  # database trouble or a bug: keep the loop alive, retry soon
                    log.exception("event dispatch failed at %d; retrying", self.position)
                    if self._stopping:
                        return
                    await self._idle(1.0)
                    continue
                if not progressed:
                    if stopping:
                        return
                    if not self._stopping:  # else one more step right away, seeing everything
                        await self._idle(self.poll_seconds)
        finally:
            await self._lock.release()

    async def _lead(self) -> bool:
        """Whether this process dispatches; checked at most once a second."""
        assert self._lock is not None
        now = time.monotonic()
        if self.leader and now - self._checked_at < 1.0:
            return True
        self._checked_at = now
        held = await self._lock.held()
        if held and not self.leader:
            stored = await self.host.storage.get_cursor(HOOKS_CURSOR)
            self.position = self._saved = stored or 0
            log.info("dispatching events to hooks from event %d", self.position)
        if not held:
            self._backlog.clear()
        self.leader = held
        return held

    async def _idle(self, seconds: float) -> None:
        self._wake.clear()
        if self._backlog and self._backlog[0].event.id == self.position + 1:
            return
        await self._wake.wait(seconds)

    async def _step(self) -> bool:
        """Dispatch what is next; ``False`` when there was nothing to do."""
        backlog = self._backlog
        while backlog and backlog[0].event.id <= self.position:
            backlog.popleft()  # already dispatched from the log
        now = time.monotonic()
        if backlog and not self._behind and backlog[0].event.id == self.position + 1:
            while backlog and backlog[0].event.id == self.position + 1:
                await self._call(backlog.popleft(), "memory")
            self.host.metrics.event_queue.set(len(backlog))
            # The poll is for events no one hands over; while handed-over events keep coming
            # in order, any other event shows up as a gap before the next of them, so there is
            # no need to read the log (at 1,000 webhooks/s a poll mostly read back, and reloaded
            # the models of, events committed and about to be handed over).
            self._polled_at = now
            return True
        gap = bool(backlog) and not self._behind
        if not (gap or self._behind or self._stopping or now - self._polled_at >= (self.poll_seconds)):
            return False
        self._polled_at = now
        until = backlog[0].event.id - 1 if gap else None
        events = await self.host.storage.read_events(self.position, self.batch, until=until)
        if events:
            for item in await self._reload(events):
                await self._call(item, "log")
            if until is None and len(events) < self.batch:
                self._behind = False
            return True
        if until is not None:
            # Ids are dense, so only pruning can remove ids below a committed one.
            log.error(
                "events %d..%d are gone from the log before dispatch (pruned?)", self.position + 1, until
            )
            self.position = until
            return True
        self._behind = False
        self.host.metrics.event_lag.set(0)
        return False

    async def _reload(self, events: Sequence[Event]) -> list[Dispatch]:
        storage = self.host.storage
        messages = await storage.get_messages(e.message_id for e in events if e.message_id is not None)
        convs = await storage.get_conversations(
            e.conversation_id for e in events if e.conversation_id is not None
        )
        contacts = await storage.get_contacts(c.contact_id for c in convs.values())
        items = []
        for event in events:
            loader = _LOADERS.get(event.type)
            conv = convs.get(event.conversation_id) if event.conversation_id is not None else None
            item = None
            if loader is not None:
                item = loader(
                    event,
                    messages.get(event.message_id) if event.message_id is not None else None,
                    conv,
                    contacts.get(conv.contact_id) if conv is not None else None,
                )
                if item is None:
                    log.warning(
                        "event %d (%s): its message or conversation is gone; skipped", event.id, event.type
                    )
            items.append(item or Dispatch(event, None, {}))
        return items

    async def _call(self, item: Dispatch, path: str) -> None:
        try:
            if item.hook is not None:
                await self.host.hooks.call(item.hook, host=self.host, event=item.event, **item.kwargs)
            # Every logged event, whatever its type: plugins that forward events need no per-type hook.
            await self.host.hooks.call("on_event", host=self.host, event=item.event)
        except Exception:  # the runner isolates hook failures; this guards the loop itself
            log.exception("dispatching event %d (%s) failed", item.event.id, item.event.type)
        self.host.metrics.dispatched_by_path[path].inc()
        self.position = item.event.id
        self._progress.set()

    async def _save(self, *, force: bool) -> None:
        target = self.position
        if self._held:  # work handed to a task (hold()) is not done: stay before its event
            target = min(target, min(self._held) - 1)
        if target <= self._saved:
            return
        now = time.monotonic()
        if force or target - self._saved >= self.save_every or now - self._saved_at >= self.save_seconds:
            await self.host.storage.set_cursor(HOOKS_CURSOR, target)
            self._saved, self._saved_at = target, now
            backlog = self._backlog
            self.host.metrics.event_lag.set(backlog[-1].event.id - self.position if backlog else 0)

    # -- retention -------------------------------------------------------------------------

    async def prune(self) -> int:
        """Apply ``storage.event_log`` retention once (the dispatching process only).

        Events the hooks have not seen yet are kept whatever their age.

        Returns:
            How many events were deleted.
        """
        if not self.leader:
            return 0
        config = self.host.config.storage.event_log
        deleted = await self.host.storage.prune_events(
            max_age=timedelta(hours=config.max_age_hours) if config.max_age_hours is not None else None,
            max_count=config.max_events,
            keep_after=self._saved,
        )
        if deleted:
            self.host.metrics.events_pruned.inc(deleted)
            log.info("pruned %d events from the log", deleted)
        return deleted

    async def prune_forever(self) -> None:
        """Prune every ``storage.event_log.prune_interval_seconds`` (a host task)."""
        interval = self.host.config.storage.event_log.prune_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await self.prune()
            except Exception:  # the database may be down for a while; try again next time
                log.exception("pruning the event log failed")
