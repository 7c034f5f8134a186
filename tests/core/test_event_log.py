"""The event log, on SQLite and PostgreSQL: one row per change in the change's own transaction, ids
dense and in commit order (also with concurrent writers), named cursors, and retention."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import msgspec
import pytest
import sqlalchemy as sa

from core.config import StorageConfig
from core.event_payloads import EVENT_MESSAGE, EVENT_SENT, EVENT_STATUS
from core.models import Event, OutgoingMessage, utcnow
from core.storage import Storage
from core.storage.events import PendingEvent
from core.storage.schema import event_log
from tests.core.test_storage import PNID, WA_ID, inbound, status
from tests.helpers import wait_for


@pytest.fixture
async def storage(storage_url: str) -> AsyncIterator[Storage]:
    store = Storage(StorageConfig(url=storage_url))
    store.public_url = "https://zaphub.example"
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def all_events(storage: Storage) -> list[Event]:
    return await storage.read_events(0, 10_000)


async def send_through(storage: Storage, body: str = "Resposta") -> int:
    """Queue a send to the default contact and claim it; returns the outbox item id."""
    conv = (await storage.ingest([inbound(f"wamid.in-{body}")], [])).new_messages[0].conversation
    outgoing = OutgoingMessage(conversation_id=conv.id, type="text", content={"body": body}, body=body)
    await storage.queue_outbound(conv, WA_ID, outgoing)
    (item,) = await storage.claim_outbox()
    return item.id


async def test_each_change_logs_its_contract_payload_once(storage: Storage) -> None:
    result = await storage.ingest(
        [inbound("wamid.A", body="Olá!"), inbound("wamid.A", body="Olá!")],  # Meta repeats itself
        [],
    )
    stored = result.new_messages[0]
    assert stored.event is not None
    (logged,) = await all_events(storage)
    assert logged == stored.event
    assert logged.type == EVENT_MESSAGE
    assert (logged.conversation_id, logged.phone_number_id, logged.message_id) == (
        stored.conversation.id,
        PNID,
        stored.message.id,
    )
    assert logged.payload() == {
        "conversationId": stored.conversation.id,
        "message": {
            "id": stored.message.id,
            "body": "Olá!",
            "sender_type": "contact",
            "delivered_at": "2026-11-29T12:00:00Z",
            "type": "text",
            "wamid": "wamid.A",
        },
        "contact": {"id": stored.contact.id, "name": "João Silva", "phone_number": WA_ID},
        "phoneNumberId": PNID,
    }
    # A repeated webhook changes nothing and logs nothing.
    again = await storage.ingest([inbound("wamid.A")], [])
    assert again.new_messages == [] and len(await all_events(storage)) == 1


async def test_a_send_logs_sent_then_the_statuses_that_waited_for_it(storage: Storage) -> None:
    item = await send_through(storage)
    # The status webhook beat the Graph answer: parked, nothing logged yet.
    early = await storage.ingest([], [status("wamid.OUT", "delivered")])
    assert early.pending_statuses == 1
    before = len(await all_events(storage))
    accepted, changes = await storage.outbox_sent(item, "wamid.OUT")
    assert accepted is not None and accepted.event is not None
    assert [c.event.type for c in changes if c.event] == [EVENT_STATUS]
    events = (await all_events(storage))[before:]
    assert [e.type for e in events] == [EVENT_SENT, EVENT_STATUS]
    assert [e.id for e in events] == [accepted.event.id, changes[0].event.id]  # type: ignore[union-attr]
    sent = events[0].payload()
    assert sent["type"] == "sent" and sent["platform"] == "whatsapp"
    assert sent["message"]["wamid"] == "wamid.OUT"
    assert events[1].payload() == {
        "messageId": accepted.message.id,
        "status": "delivered",
        "timestamp": "1764417600",
        "conversationId": accepted.conversation.id,
    }
    # Forward moves log; stale and repeated statuses do not.
    await storage.ingest([], [status("wamid.OUT", "read"), status("wamid.OUT", "sent")])
    await storage.ingest([], [status("wamid.OUT", "read")])
    statuses = [e.payload()["status"] for e in await all_events(storage) if e.type == EVENT_STATUS]
    assert statuses == ["delivered", "read"]


async def test_a_failed_send_logs_a_failed_status_with_the_error(storage: Storage) -> None:
    item = await send_through(storage)
    failed = await storage.outbox_failed(item, code=131026, title="Message undeliverable")
    assert failed is not None and failed.event is not None
    logged = (await all_events(storage))[-1]
    assert logged == failed.event
    assert logged.payload()["error"] == {"code": 131026, "title": "Message undeliverable"}


async def test_ids_are_dense_and_increasing_across_batches(storage: Storage) -> None:
    for batch in range(5):
        await storage.ingest([inbound(f"wamid.{batch}-{i}", wa_id=f"55119{i:08d}") for i in range(7)], [])
    ids = [e.id for e in await all_events(storage)]
    assert ids == list(range(1, 36))
    assert (await storage.event_bounds()).last == 35


async def test_read_filters_by_type_scope_room_and_range(storage: Storage) -> None:
    await storage.ingest([inbound("wamid.1"), inbound("wamid.2", pnid="100000000000003")], [])
    item = await send_through(storage)
    accepted, _ = await storage.outbox_sent(item, "wamid.OUT")
    assert accepted is not None
    events = await all_events(storage)
    assert [e.id for e in await storage.read_events(1, 100)] == [e.id for e in events[1:]]
    assert [e.type for e in await storage.read_events(0, 100, types=[EVENT_SENT])] == [EVENT_SENT]
    other = await storage.read_events(0, 100, phone_number_ids=["100000000000003"])
    assert [e.payload()["message"]["wamid"] for e in other] == ["wamid.2"]
    assert await storage.read_events(0, 100, phone_number_ids=[]) == []
    room = await storage.read_events(0, 100, message_id=accepted.message.id)
    assert [e.type for e in room] == [EVENT_SENT]
    assert len(await storage.read_events(0, 2)) == 2
    assert [e.id for e in await storage.read_events(0, 100, until=2)] == [1, 2]


async def test_an_event_appended_in_a_rolled_back_transaction_never_exists(storage: Storage) -> None:
    await storage.ingest([inbound("wamid.before")], [])
    pending = PendingEvent(
        type=EVENT_MESSAGE, conversation_id=None, phone_number_id=PNID, message_id=None, data=b"{}"
    )

    async def failing_change() -> None:
        async with storage.write() as conn:
            await storage.append_events(conn, [pending], utcnow())
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await failing_change()
    await storage.ingest([inbound("wamid.after")], [])
    assert [e.id for e in await all_events(storage)] == [1, 2]  # no gap where the rollback was


async def test_concurrent_writers_take_ids_in_commit_order(storage_url: str) -> None:
    """A reader that only remembers the highest id seen misses nothing while two writers overlap.

    Writer A appends and keeps its transaction open; writer B (another connection pool, as another
    process would) appends and commits meanwhile. With ids from a plain sequence B's id would be
    visible while A's lower one is not yet, and the reader would move past it for good.
    """
    a, b = Storage(StorageConfig(url=storage_url)), Storage(StorageConfig(url=storage_url))
    await a.open()
    await b.open()
    pending = PendingEvent(
        type=EVENT_MESSAGE, conversation_id=None, phone_number_id=PNID, message_id=None, data=b"{}"
    )
    seen: list[int] = []

    async def follow() -> None:
        after = seen[-1] if seen else 0
        seen.extend(e.id for e in await a.read_events(after, 100))

    try:
        a_appended = asyncio.Event()
        release_a = asyncio.Event()

        async def writer_a() -> None:
            async with a.write() as conn:
                await a.append_events(conn, [pending], utcnow())
                a_appended.set()
                await release_a.wait()

        b_committed = asyncio.Event()

        async def writer_b() -> None:
            await a_appended.wait()
            for _ in range(3):
                async with b.write() as conn:
                    await b.append_events(conn, [pending], utcnow())
                b_committed.set()

        async def b_waits_or_committed() -> bool:
            if b_committed.is_set():
                return True
            async with a.read() as conn:
                waiting = (
                    await conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
                ).scalar()
            return bool(waiting)

        task_a = asyncio.create_task(writer_a())
        if a.dialect == "sqlite":
            # One writer at a time: B waits for A's lock; the reader never sees a later id first.
            await a_appended.wait()
            task_b = asyncio.create_task(writer_b())
            await follow()
            release_a.set()
        else:
            task_b = asyncio.create_task(writer_b())
            await a_appended.wait()
            # B has either committed (a plain sequence would let it) or waits for A's commit.
            await wait_for(b_waits_or_committed, what="writer B to commit or wait")
            await follow()
            assert seen == [], "nothing may be visible while the lowest id is uncommitted"
            release_a.set()
        await asyncio.gather(task_a, task_b)
        for _ in range(3):
            await follow()
    finally:
        await a.close()
        await b.close()
    assert seen == [1, 2, 3, 4]


async def test_two_writers_in_a_race_never_make_a_follower_skip(storage_url: str) -> None:
    """Batches from two connection pools, a follower polling all along: every id once, in order."""
    stores = [Storage(StorageConfig(url=storage_url)) for _ in range(3)]
    for s in stores:
        await s.open()
    writer_a, writer_b, reader = stores
    seen: list[int] = []
    done = asyncio.Event()

    async def write(store: Storage, tag: str) -> None:
        for batch in range(30):
            msgs = [inbound(f"wamid.{tag}-{batch}-{i}", wa_id=f"55{tag}{i:09d}") for i in range(5)]
            await store.ingest(msgs, [])

    async def follow() -> None:
        while True:
            finished = done.is_set()
            after = seen[-1] if seen else 0
            seen.extend(e.id for e in await reader.read_events(after, 1000))
            if finished:
                return
            await asyncio.sleep(0)

    try:
        follower = asyncio.create_task(follow())
        await asyncio.gather(write(writer_a, "1"), write(writer_b, "2"))
        done.set()
        await follower
    finally:
        for s in stores:
            await s.close()
    assert seen == list(range(1, 301))


async def test_cursors_move_forward_unless_rewound(storage: Storage) -> None:
    assert await storage.get_cursor("hooks") == 0  # created by the migration
    assert await storage.get_cursor("webhooks:crm") is None
    assert await storage.set_cursor("webhooks:crm", 10) == 10
    assert await storage.set_cursor("webhooks:crm", 7) == 10  # a late writer cannot undo progress
    assert await storage.set_cursor("webhooks:crm", 7, forward_only=False) == 7
    assert await storage.list_cursors() == {"hooks": 0, "webhooks:crm": 7}
    await storage.delete_cursor("webhooks:crm")
    assert await storage.get_cursor("webhooks:crm") is None


async def test_retention_prunes_by_count_and_age_but_keeps_what_hooks_have_not_seen(storage: Storage) -> None:
    for i in range(20):
        await storage.ingest([inbound(f"wamid.{i}", wa_id=f"55119{i:08d}")], [])
    assert await storage.prune_events(max_age=None, max_count=None) == 0
    # By count: the newest 15 stay.
    assert await storage.prune_events(max_age=None, max_count=15, batch=4) == 5
    assert (await storage.event_bounds()).oldest == 6
    # By age: make the first five remaining rows old.
    async with storage.write() as conn:
        await conn.execute(
            event_log.update().where(event_log.c.id <= 10).values(created_at=utcnow() - timedelta(days=8))
        )
    # ...but the hooks have only seen up to 8: 9 and 10 stay despite their age.
    assert await storage.prune_events(max_age=timedelta(days=7), max_count=None, keep_after=8) == 3
    assert (await storage.event_bounds()).oldest == 9
    assert await storage.prune_events(max_age=timedelta(days=7), max_count=None, keep_after=20) == 2
    bounds = await storage.event_bounds()
    assert (bounds.oldest, bounds.last) == (11, 20)
    # New events keep counting from where the log was, never reusing a pruned id.
    await storage.ingest([inbound("wamid.new")], [])
    assert (await storage.read_events(20, 10))[0].id == 21
    async with storage.read() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(event_log))).scalar() == 11


async def test_payloads_are_stored_encoded_once(storage: Storage) -> None:
    await storage.ingest([inbound("wamid.A", body="Olá, \u00e7\u00e3o")], [])
    (logged,) = await all_events(storage)
    # The bytes are the compact JSON msgspec wrote; readers hand them out as they are.
    assert msgspec.json.decode(logged.data)["message"]["body"] == "Olá, ção"
    assert logged.data == msgspec.json.encode(msgspec.json.decode(logged.data))
