"""Hooks fed from the event log, on SQLite and PostgreSQL: in order, at least once across stops and
restarts, never holding the writer, one dispatching process at a time, producers stopped first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from core import hookimpl
from core.app import create_app
from core.config import parse_config
from core.events import HOOKS_CURSOR, Wakeup
from core.host import Host
from core.models import Event, Message
from tests.core.test_storage import inbound
from tests.helpers import wait_for


class Recorder:
    """Records every event it is given; ``gate`` (when closed) makes the hook hang like a stuck one."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.gate = gate
        self.seen: list[tuple[int, str, int]] = []

    async def _record(self, event: Event, message: Message) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.seen.append((event.id, event.type, message.id))

    @hookimpl
    async def on_message_received(self, event: Event, message: Message) -> None:
        await self._record(event, message)

    @hookimpl
    async def on_status_changed(self, event: Event, message: Message) -> None:
        await self._record(event, message)

    @hookimpl
    async def on_message_sent(self, event: Event, message: Message) -> None:
        await self._record(event, message)

    @property
    def ids(self) -> list[int]:
        return [i for i, _, _ in self.seen]


def make_host(storage_url: str, *plugins: tuple[str, object]) -> Host:
    data = {"storage": {"url": storage_url}, "plugins": {name: {} for name, _ in plugins}}
    app = create_app(parse_config(data, env={}), extra_plugins=dict(plugins))
    host: Host = app.state.host
    return host


@contextlib.asynccontextmanager
async def running(host: Host) -> AsyncIterator[Host]:
    await host.start()
    try:
        yield host
    finally:
        if host.started:
            await host.stop()


async def ingest(host: Host, *tags: str) -> None:
    """One webhook per tag, each from its own contact, through the group-commit writer."""
    for tag in tags:
        await host.ingest.submit([inbound(f"wamid.{tag}", wa_id=f"55{abs(hash(tag)) % 10**11:011d}")], [])


async def test_hooks_get_every_event_once_in_order_with_its_id(storage_url: str) -> None:
    recorder = Recorder()
    async with running(make_host(storage_url, ("recorder", recorder))) as host:
        await asyncio.gather(*(ingest(host, f"{w}-{i}") for w in range(4) for i in range(5)))
        await host.events.drain()
        logged = await host.storage.read_events(0, 100)
        assert recorder.ids == [e.id for e in logged] == list(range(1, 21))
        assert [m for _, _, m in recorder.seen] == [e.message_id for e in logged]
    # A clean stop saved the position: nothing is dispatched twice at the next start.
    again = Recorder()
    async with running(make_host(storage_url, ("recorder", again))) as host:
        assert await host.storage.get_cursor(HOOKS_CURSOR) == 20
        await ingest(host, "after-restart")
        await host.events.drain()
    assert again.ids == [21]


async def test_a_stuck_hook_never_holds_the_writer_and_nothing_is_lost(storage_url: str) -> None:
    gate = asyncio.Event()
    recorder = Recorder(gate)
    host = make_host(storage_url, ("recorder", recorder))
    host.events.max_backlog = 5  # a burst far beyond what is kept in memory
    async with running(host):
        # Every webhook is stored and answered while the hook hangs.
        await asyncio.wait_for(asyncio.gather(*(ingest(host, f"burst-{i}") for i in range(60))), 60)
        assert recorder.seen == []
        gate.set()
        await host.events.drain()
        assert recorder.ids == list(range(1, 61))  # in order, none twice, none missing
        metrics = host.metrics.render().decode()
        assert 'zaphub_events_dispatched_total{path="log"}' in metrics  # the overflow came from the log


async def test_events_left_undispatched_at_stop_reach_hooks_after_the_restart(storage_url: str) -> None:
    stuck = Recorder(asyncio.Event())  # never opens: the process stops with everything pending
    host = make_host(storage_url, ("recorder", stuck))
    host.events.stop_timeout = 0.5
    async with running(host):
        await ingest(host, "a", "b", "c")
        await wait_for(lambda: host.events.position == 0 and host.events.leader, what="dispatcher to lead")
    assert stuck.seen == []
    recorder = Recorder()
    async with running(make_host(storage_url, ("recorder", recorder))) as host:
        await host.events.drain()
    assert recorder.ids == [1, 2, 3]


async def test_a_redelivered_event_has_its_id_and_payload_and_models_reloaded(storage_url: str) -> None:
    first = Recorder()
    async with running(make_host(storage_url, ("recorder", first))) as host:
        await ingest(host, "a", "b", "c", "d")
        await host.events.drain()
        originals = await host.storage.read_events(0, 10)
    assert first.ids == [1, 2, 3, 4]

    class Payloads(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.events: list[Event] = []

        @hookimpl
        async def on_message_received(self, event: Event, message: Message) -> None:
            self.events.append(event)
            await self._record(event, message)

    again = Payloads()
    host = make_host(storage_url, ("recorder", again))
    # What a crash after dispatching 4 but saving only 2 leaves behind.
    await host.storage.set_cursor(HOOKS_CURSOR, 2, forward_only=False)
    async with running(host):
        await host.events.drain()
    assert again.ids == [3, 4]
    assert again.events == originals[2:]
    assert [m for _, _, m in again.seen] == [e.message_id for e in originals[2:]]


async def test_one_process_dispatches_for_all_and_another_takes_over(storage_url: str) -> None:
    one, two = Recorder(), Recorder()
    host_one = make_host(storage_url, ("recorder", one))
    host_two = make_host(storage_url, ("recorder", two))
    async with running(host_one), running(host_two):
        await wait_for(lambda: host_one.events.leader is not None and host_two.events.leader is not None)
        leader, other = (host_one, host_two) if host_one.events.leader else (host_two, host_one)
        assert other.events.leader is False
        # Written by both processes, dispatched once, in order, by the leader alone.
        await ingest(leader, "l1")
        await ingest(other, "o1", "o2")
        await ingest(leader, "l2")
        await leader.events.drain()
        led, idle = (one, two) if leader is host_one else (two, one)
        assert led.ids == [1, 2, 3, 4] and idle.ids == []
        await leader.stop()
        # The lock is free: the other process takes over from the saved cursor.
        await wait_for(lambda: other.events.leader, timeout=10, what="the other process to take over")
        await ingest(other, "o3")
        await other.events.drain()
        assert idle.ids == [5]
        assert led.ids == [1, 2, 3, 4]


class LateProducer:
    """A plugin whose ``on_shutdown`` still commits an event, as the outbox worker does when a send
    in flight completes while it stops."""

    @hookimpl
    async def on_shutdown(self, host: Host) -> None:
        result = await host.storage.ingest([inbound("wamid.while-stopping", wa_id="5511900000009")], [])
        for stored in result.new_messages:
            host.events.message_received(stored)


async def test_events_raised_while_producers_stop_still_reach_hooks(storage_url: str) -> None:
    recorder = Recorder()
    host = make_host(storage_url, ("late", LateProducer()), ("recorder", recorder))
    async with running(host):
        await ingest(host, "before")
        await host.events.drain()
    assert recorder.ids == [1, 2]
    restarted = Recorder()
    async with running(make_host(storage_url, ("recorder", restarted))) as again:
        assert await again.storage.get_cursor(HOOKS_CURSOR) == 2
        await again.events.drain()
    assert restarted.seen == []


class Holder:
    """Hands each message to a task of its own and holds the dispatcher's cursor until it is done;
    the task of the message with body ``hang`` never finishes (the process stops first)."""

    def __init__(self) -> None:
        self.done: list[int] = []

    @hookimpl
    def on_message_received(self, host: Host, event: Event, message: Message) -> None:
        async def work() -> None:
            if message.body == "hang":
                await asyncio.Event().wait()
            self.done.append(event.id)

        host.events.hold(event, host.spawn(work(), name=f"held-{event.id}"))


async def test_a_held_event_keeps_the_saved_cursor_before_it_until_its_task_is_done(storage_url: str) -> None:
    holder = Holder()
    host = make_host(storage_url, ("holder", holder))
    async with running(host):
        await host.ingest.submit([inbound("wamid.first", wa_id="5511900000001")], [])
        await host.ingest.submit([inbound("wamid.hang", wa_id="5511900000002", body="hang")], [])
        await host.ingest.submit([inbound("wamid.third", wa_id="5511900000003")], [])
        await host.events.drain()
        await wait_for(lambda: holder.done == [1, 3], what="the tasks that finish")
    # Stopped with event 2's task unfinished: the cursor stays at 1, so 2 (and 3) come again.
    recorder = Recorder()
    async with running(make_host(storage_url, ("recorder", recorder))) as again:
        assert await again.storage.get_cursor(HOOKS_CURSOR) == 1
        await again.events.drain()
    assert recorder.ids == [2, 3]


def dispatched_from_log(host: Host) -> float:
    """``zaphub_events_dispatched_total{path="log"}`` (0 before the first)."""
    for line in host.metrics.render().decode().splitlines():
        if line.startswith('zaphub_events_dispatched_total{path="log"} '):
            return float(line.split()[-1])
    return 0.0


async def test_an_event_nobody_handed_over_is_dispatched_before_the_next_one_and_when_none_follows(
    storage_url: str,
) -> None:
    recorder = Recorder()
    host = make_host(storage_url, ("recorder", recorder))
    host.events.poll_seconds = 3600  # no poll: only the gap before "b" can bring "quiet-1" in
    async with running(host):
        await ingest(host, "a")
        await wait_for(lambda: recorder.ids == [1], what="a")
        # ("a" may have come from the log too: the first poll, at start, can find it committed.)
        from_log = dispatched_from_log(host)
        # Committed but never handed over, as by another process.
        await host.storage.ingest([inbound("wamid.quiet-1", wa_id="5511900000011")], [])
        await ingest(host, "b")
        await wait_for(lambda: recorder.ids == [1, 2, 3], what="quiet-1 then b")
        assert dispatched_from_log(host) == from_log + 1
    again = Recorder()
    host = make_host(storage_url, ("recorder", again))
    host.events.poll_seconds = 0.2
    async with running(host):
        await ingest(host, "c")
        # Nothing follows "quiet-2": the poll reads it once events stopped coming for poll_seconds.
        await host.storage.ingest([inbound("wamid.quiet-2", wa_id="5511900000012")], [])
        await wait_for(lambda: again.ids == [4, 5], what="c, then quiet-2 from the poll")


async def test_a_wakeup_returns_when_set_or_after_its_timeout() -> None:
    wakeup = Wakeup()
    assert await wakeup.wait(0.01) is False  # nobody set it
    wakeup.set()
    assert await wakeup.wait(3600) is True  # set before the wait: at once
    assert await wakeup.wait(3600) is True  # and until cleared
    wakeup.clear()
    waiting = asyncio.ensure_future(wakeup.wait(3600))
    await asyncio.sleep(0)
    assert not waiting.done()
    wakeup.set()
    assert await asyncio.wait_for(waiting, 10) is True
    # A cancelled wait leaves nothing behind: the next one works.
    wakeup.clear()
    cancelled = asyncio.ensure_future(wakeup.wait(3600))
    await asyncio.sleep(0)
    cancelled.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    assert await wakeup.wait(0.01) is False
