"""Storage guarantees, each test run on SQLite and on PostgreSQL (the ``storage_url`` fixture).

Exactly-once inbound, one conversation per contact and number, statuses that never go backwards,
idempotent sends, the outbox lease, and the cursors a CRM resyncs with.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from core.config import StorageConfig
from core.errors import ConflictError
from core.models import Conversation, InboundMessage, InboundStatus, Message, OutgoingMessage
from core.storage import Storage, StorageError
from core.storage.schema import messages, outbox
from tests.helpers import wait_for

PNID = "100000000000002"
OTHER_PNID = "100000000000003"
WA_ID = "5511999999999"
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def inbound(
    wamid: str,
    *,
    wa_id: str = WA_ID,
    name: str | None = "João Silva",
    body: str | None = "Olá!",
    at: datetime = T0,
    pnid: str = PNID,
) -> InboundMessage:
    return InboundMessage(
        phone_number_id=pnid,
        wamid=wamid,
        wa_id=wa_id,
        profile_name=name,
        type="text",
        body=body,
        timestamp=at,
        raw={"id": wamid, "from": wa_id, "type": "text", "text": {"body": body}},
    )


def status(wamid: str, value: str, *, ts: int = 1_764_417_600, **extra: object) -> InboundStatus:
    return InboundStatus(
        phone_number_id=PNID, wamid=wamid, status=value, timestamp=str(ts), recipient_id=WA_ID, **extra
    )


async def conversation(storage: Storage, wa_id: str = WA_ID) -> Conversation:
    """A conversation, created the way it always is: by an inbound message."""
    result = await storage.ingest([inbound(f"wamid.in-{wa_id}", wa_id=wa_id)], [])
    return result.new_messages[0].conversation


async def queue(
    storage: Storage, conv: Conversation, body: str = "Resposta", *, recipient: str = WA_ID, **kwargs: object
) -> Message:
    outgoing = OutgoingMessage(conversation_id=conv.id, type="text", content={"body": body}, body=body)
    message, created = await storage.queue_outbound(conv, recipient, outgoing, **kwargs)  # type: ignore[arg-type]
    assert created
    return message


async def accepted(storage: Storage, conv: Conversation, wamid: str) -> Message:
    """An outbound message Graph accepted with ``wamid``."""
    message = await queue(storage, conv)
    (item,) = [i for i in await storage.claim_outbox() if i.message.id == message.id]
    first, _ = await storage.outbox_sent(item.id, wamid)
    assert first is not None
    return first.message


# -- inbound messages ----------------------------------------------------------------------------


async def test_ingest_stores_the_message_with_meta_time_and_returns_it_for_hooks(storage: Storage) -> None:
    before = datetime.now(UTC)
    result = await storage.ingest([inbound("wamid.A1", at=T0)], [])
    (event,) = result.new_messages
    message, conv, contact = event.message, event.conversation, event.contact
    assert message.id > 0
    assert (message.direction, message.sender_type, message.status) == ("inbound", "contact", "received")
    assert message.body == "Olá!"
    assert message.delivered_at == T0  # Meta's time is the message's time
    assert message.received_at is not None
    assert message.received_at >= before  # our receive time is kept separately
    assert message.raw == {"id": "wamid.A1", "from": WA_ID, "type": "text", "text": {"body": "Olá!"}}
    assert (contact.wa_id, contact.phone_number, contact.name) == (WA_ID, WA_ID, "João Silva")
    assert (conv.phone_number_id, conv.contact_id) == (PNID, contact.id)
    assert conv.last_inbound_at == T0
    stored = await storage.get_message(message.id)
    assert stored is not None
    assert stored.delivered_at == T0
    assert stored.raw == message.raw


async def test_repeated_messages_are_absorbed_within_a_batch_and_across_calls(storage: Storage) -> None:
    first = await storage.ingest([inbound("wamid.D1"), inbound("wamid.D1"), inbound("wamid.D2")], [])
    assert [e.message.wamid for e in first.new_messages] == ["wamid.D1", "wamid.D2"]
    assert first.duplicate_messages == 1
    again = await storage.ingest([inbound("wamid.D2"), inbound("wamid.D1")], [])
    assert again.new_messages == []
    assert again.duplicate_messages == 2
    conv = first.new_messages[0].conversation
    assert [m.wamid for m in await storage.list_messages(conv.id)] == ["wamid.D1", "wamid.D2"]
    # The unique key is (business number, wamid): another number's message is its own row.
    other = await storage.ingest([inbound("wamid.D1", pnid=OTHER_PNID)], [])
    assert len(other.new_messages) == 1
    assert other.new_messages[0].conversation.id != conv.id


async def test_a_batch_is_one_transaction(storage: Storage) -> None:
    broken = InboundMessage(
        phone_number_id=PNID,
        wamid="wamid.BAD",
        wa_id="5511888888888",
        profile_name=None,
        type=None,  # type: ignore[arg-type]  # NOT NULL in the schema: the whole batch must roll back
        body=None,
        timestamp=T0,
        raw={},
    )
    with pytest.raises((StorageError, sa.exc.SQLAlchemyError)):
        await storage.ingest([inbound("wamid.OK", wa_id="5511777777777"), broken], [])
    assert await storage.list_conversations() == []
    retried = await storage.ingest([inbound("wamid.OK", wa_id="5511777777777")], [])
    assert len(retried.new_messages) == 1  # nothing of the failed batch was kept


async def test_one_conversation_per_contact_and_number_under_a_parallel_burst(storage: Storage) -> None:
    # An album: 12 webhooks for a contact never seen before, stored by concurrent transactions.
    stores = [storage]
    if storage.dialect == "postgresql":  # several processes share one PostgreSQL
        second = Storage(StorageConfig(url=storage.config.url))
        await second.open()
        stores.append(second)
    try:
        results = await asyncio.gather(
            *(
                stores[i % len(stores)].ingest([inbound(f"wamid.ALBUM{i}", at=T0 + timedelta(seconds=i))], [])
                for i in range(12)
            )
        )
    finally:
        for extra in stores[1:]:
            await extra.close()
    events = [e for r in results for e in r.new_messages]
    assert len(events) == 12
    assert len({e.conversation.id for e in events}) == 1
    assert len({e.contact.id for e in events}) == 1
    (conv,) = await storage.list_conversations()
    assert conv.last_inbound_at == T0 + timedelta(seconds=11)
    assert len(await storage.list_messages(conv.id)) == 12
    # The same contact writing to another business number has a second conversation.
    other = await storage.ingest([inbound("wamid.ELSEWHERE", pnid=OTHER_PNID)], [])
    assert other.new_messages[0].contact.id == events[0].contact.id
    assert other.new_messages[0].conversation.id != conv.id


async def test_the_contact_name_follows_the_profile_name(storage: Storage) -> None:
    first = await storage.ingest([inbound("wamid.N1", name="João")], [])
    contact_id = first.new_messages[0].contact.id
    renamed = await storage.ingest([inbound("wamid.N2", name="João Silva")], [])
    assert renamed.new_messages[0].contact.name == "João Silva"
    await storage.ingest([inbound("wamid.N3", name=None)], [])  # no profile: keep the name we know
    contact = await storage.get_contact(contact_id)
    assert contact is not None
    assert contact.name == "João Silva"
    in_batch = await storage.ingest([inbound("wamid.N4", name="Jo"), inbound("wamid.N5", name="João S.")], [])
    assert {e.contact.name for e in in_batch.new_messages} == {"João S."}  # the latest in the batch wins


# -- statuses ------------------------------------------------------------------------------------


async def test_statuses_never_go_backwards_whatever_order_they_arrive_in(storage: Storage) -> None:
    conv = await conversation(storage)
    for n, order in enumerate(itertools.permutations(["sent", "delivered", "read"])):
        wamid = f"wamid.OUT{n}"
        message = await accepted(storage, conv, wamid)
        applied: list[str] = []
        stale = 0
        for value in order:
            result = await storage.ingest([], [status(wamid, value)])
            applied += [c.change.status for c in result.status_changes]
            stale += result.stale_statuses
        # Only forward moves are reported, in rank order; later lower ranks are stale.
        rank = {"sent": 1, "delivered": 2, "read": 3}
        expected = [s for i, s in enumerate(order) if all(rank[s] > rank[p] for p in order[:i])]
        assert applied == expected, order
        assert stale == 3 - len(expected)
        final = await storage.get_message(message.id)
        assert final is not None
        assert final.status == "read", order
        # Every status is kept in the history, stale ones included, in arrival order.
        assert [h["status"] for h in await storage.status_history(message.id)] == list(order)


async def test_repeated_statuses_are_absorbed(storage: Storage) -> None:
    conv = await conversation(storage)
    message = await accepted(storage, conv, "wamid.R1")
    first = await storage.ingest([], [status("wamid.R1", "delivered"), status("wamid.R1", "delivered")])
    assert [c.change.status for c in first.status_changes] == ["delivered"]
    assert first.duplicate_statuses == 1
    again = await storage.ingest([], [status("wamid.R1", "delivered")])
    assert (again.status_changes, again.duplicate_statuses) == ([], 1)
    assert len(await storage.status_history(message.id)) == 1


async def test_failed_is_terminal_and_carries_the_error(storage: Storage) -> None:
    conv = await conversation(storage)
    message = await accepted(storage, conv, "wamid.F1")
    await storage.ingest([], [status("wamid.F1", "sent")])
    failed = await storage.ingest(
        [], [status("wamid.F1", "failed", error_code=131026, error_title="Message undeliverable")]
    )
    (change,) = failed.status_changes
    assert (change.change.status, change.change.error_code, change.change.error_title) == (
        "failed",
        131026,
        "Message undeliverable",
    )
    late = await storage.ingest([], [status("wamid.F1", "delivered"), status("wamid.F1", "read")])
    assert late.status_changes == []
    assert late.stale_statuses == 2
    stored = await storage.get_message(message.id)
    assert stored is not None
    assert (stored.status, stored.error_code) == ("failed", 131026)


async def test_a_status_before_its_message_is_kept_and_applied_when_graph_answers(storage: Storage) -> None:
    conv = await conversation(storage)
    message = await queue(storage, conv)
    (item,) = await storage.claim_outbox()
    # The status webhook beats the Graph response: nothing to apply it to yet.
    early = await storage.ingest([], [status("wamid.EARLY", "sent"), status("wamid.EARLY", "delivered")])
    assert (early.status_changes, early.pending_statuses) == ([], 2)
    first, changes = await storage.outbox_sent(item.id, "wamid.EARLY")
    assert first is not None
    assert (first.message.id, first.message.wamid, first.change.status) == (
        message.id,
        "wamid.EARLY",
        "accepted",
    )
    assert [c.change.status for c in changes] == ["sent", "delivered"]
    stored = await storage.get_message(message.id)
    assert stored is not None
    assert stored.status == "delivered"
    assert await storage.claim_outbox() == []  # done: never sent twice


async def test_a_status_naming_our_message_links_a_send_whose_answer_was_lost(storage: Storage) -> None:
    conv = await conversation(storage)
    message = await queue(storage, conv)
    (item,) = await storage.claim_outbox()
    # The status naming our message comes while the send is under its lease: its answer was lost,
    # or has not been stored yet (a busy worker; Meta's status can come first).
    result = await storage.ingest([], [status("wamid.LOST", "sent", message_id=message.id)])
    (accepted,) = result.sent_messages  # reported accepted, then sent, as Graph's answer would be
    assert (accepted.message.id, accepted.message.wamid, accepted.change.status) == (
        message.id,
        "wamid.LOST",
        "accepted",
    )
    (change,) = result.status_changes
    assert (change.message.id, change.message.wamid, change.change.status) == (
        message.id,
        "wamid.LOST",
        "sent",
    )
    assert accepted.event is not None and change.event is not None
    assert (accepted.event.type, change.event.type) == ("whatsapp:message_sent", "whatsapp:message_status")
    assert accepted.event.id < change.event.id
    assert await storage.outbox_sent(item.id, "wamid.LOST") == (None, [])  # already settled by the status
    async with storage.read() as conn:
        attempts = (await conn.execute(sa.select(outbox.c.attempts))).scalar()
    assert attempts == 1  # the try under the lease was made, though its answer records nothing
    assert (await storage.outbox_counts()).get("pending", 0) == 0
    stranger = await storage.ingest([], [status("wamid.OTHER", "sent")])
    assert stranger.pending_statuses == 1
    # A message that already has its wamid is never re-linked to another one.
    again = await storage.ingest([], [status("wamid.THIRD", "sent", message_id=message.id)])
    assert again.pending_statuses == 1


async def test_a_status_racing_the_send_answer_is_applied_not_parked_forever(storage: Storage) -> None:
    if storage.dialect != "postgresql":
        pytest.skip("SQLite serializes writers: a status cannot interleave with the send's answer")
    conv = await conversation(storage)
    message = await queue(storage, conv)
    await storage.claim_outbox()

    async def status_waits_for_the_message_row() -> bool:
        query = sa.text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        async with storage.read() as conn:
            return bool((await conn.execute(query)).scalar())

    async with storage.write() as conn:
        # Graph's answer is being stored: the wamid is written, not committed, and the status row
        # the answer would look for is not visible to it yet.
        await conn.execute(messages.update().where(messages.c.id == message.id).values(wamid="wamid.RACE"))
        ingest = asyncio.create_task(
            storage.ingest([], [status("wamid.RACE", "sent", message_id=message.id)])
        )
        await wait_for(status_waits_for_the_message_row, what="the status to wait for the message row")
    result = await ingest
    assert [c.change.status for c in result.status_changes] == ["sent"]
    assert result.pending_statuses == 0


# -- outbound ------------------------------------------------------------------------------------


async def test_idempotency_keys_return_the_first_message_or_conflict(storage: Storage) -> None:
    conv = await conversation(storage)
    outgoing = OutgoingMessage(conversation_id=conv.id, type="text", content={"body": "Oi"}, body="Oi")
    first, created = await storage.queue_outbound(conv, WA_ID, outgoing, idempotency=("crm-1", "key-1", "h1"))
    assert created
    repeat, created = await storage.queue_outbound(
        conv, WA_ID, outgoing, idempotency=("crm-1", "key-1", "h1")
    )
    assert (repeat.id, created) == (first.id, False)
    with pytest.raises(ConflictError, match="'key-1' was already used with a different request body"):
        await storage.queue_outbound(conv, WA_ID, outgoing, idempotency=("crm-1", "key-1", "h2"))
    other_scope, created = await storage.queue_outbound(
        conv, WA_ID, outgoing, idempotency=("crm-2", "key-1", "h2")
    )
    assert created
    assert other_scope.id != first.id
    assert await storage.outbox_counts() == {"pending": 2}  # the repeat queued nothing


async def test_queued_message_updates_the_conversation(storage: Storage) -> None:
    conv = await conversation(storage)
    human = await queue(storage, conv, "Oi, sou a Ana")
    after_human = await storage.get_conversation(conv.id)
    assert after_human is not None
    assert (human.status, human.direction, human.sender_type, human.wamid) == (
        "queued",
        "outbound",
        "user",
        None,
    )
    assert after_human.last_agent_at is not None
    auto = OutgoingMessage(conversation_id=conv.id, type="text", content={"body": "bot"}, automated=True)
    await storage.queue_outbound(conv, WA_ID, auto)
    after_bot = await storage.get_conversation(conv.id)
    assert after_bot is not None
    assert after_bot.last_agent_at == after_human.last_agent_at  # a bot is not an agent


async def test_outbox_claim_lease_defer_and_failure(storage: Storage) -> None:
    other = "5511988880000"
    conv, conv_2 = await conversation(storage), await conversation(storage, other)
    first, second = await queue(storage, conv, "1"), await queue(storage, conv_2, "2", recipient=other)
    claimed = await storage.claim_outbox(lease_seconds=60)
    assert [(i.message.id, i.recipient, i.attempts) for i in claimed] == [
        (first.id, WA_ID, 0),
        (second.id, other, 0),
    ]
    assert await storage.claim_outbox() == []  # leased to the first worker
    item_1, item_2 = claimed

    # A retryable error: back to the queue, the attempt counted.
    await storage.outbox_defer(item_1.id, delay=0, error="429 throttled", attempt=True)
    (again,) = await storage.claim_outbox(lease_seconds=0.2)
    assert (again.id, again.attempts) == (item_1.id, 1)
    # A crashed worker: its short lease expires and another worker takes the send over.
    retaken = await wait_for(lambda: storage.claim_outbox(), timeout=5, what="the lease to expire")
    assert [i.id for i in retaken] == [item_1.id]

    await storage.outbox_defer(item_1.id, delay=3600, attempt=False)
    assert await storage.claim_outbox() == []  # not due yet

    failed = await storage.outbox_failed(item_2.id, code=131026, title="Message undeliverable")
    assert failed is not None
    assert (failed.message.id, failed.message.status, failed.change.error_code) == (
        second.id,
        "failed",
        131026,
    )
    assert await storage.outbox_failed(item_2.id, code=1, title="again") is None
    assert await storage.outbox_counts() == {"pending": 1, "failed": 1}


async def test_sends_to_one_recipient_go_out_in_order(storage: Storage) -> None:
    conv = await conversation(storage)
    other = await conversation(storage, "5511988880000")
    hello, code = await queue(storage, conv, "Olá"), await queue(storage, conv, "Seu código é 1234")
    elsewhere = await queue(storage, other, "Oi", recipient="5511988880000")
    # Only the oldest pending send of a recipient is due; other recipients are not held up.
    claimed = await storage.claim_outbox()
    assert [i.message.id for i in claimed] == [hello.id, elsewhere.id]
    # A retry of the first holds the second back, however long the backoff.
    await storage.outbox_defer(claimed[0].id, delay=0, error="503", attempt=True)
    assert [i.message.id for i in await storage.claim_outbox()] == [hello.id]
    (item,) = [i for i in claimed if i.message.id == hello.id]
    accepted_first, _ = await storage.outbox_sent(item.id, "wamid.HELLO")
    assert accepted_first is not None
    assert [i.message.id for i in await storage.claim_outbox()] == [code.id]


# -- plugin state --------------------------------------------------------------------------------


async def test_state_claim_has_exactly_one_winner_under_concurrency(storage: Storage) -> None:
    stores = [storage]
    if storage.dialect == "postgresql":
        second = Storage(StorageConfig(url=storage.config.url))
        await second.open()
        stores.append(second)
    try:
        wins = await asyncio.gather(
            *(
                stores[i % len(stores)].state_claim("autoreply", "cooldown:7", {"by": i}, older_than=600)
                for i in range(10)
            )
        )
    finally:
        for extra in stores[1:]:
            await extra.close()
    assert wins.count(True) == 1
    stored = await storage.state_get("autoreply", "cooldown:7")
    assert stored is not None
    assert stored[0] == {"by": wins.index(True)}
    assert await storage.state_claim("autoreply", "cooldown:7", {"by": "late"}, older_than=600) is False
    assert await storage.state_claim("autoreply", "cooldown:7", {"by": "expired"}, older_than=0) is True
    await storage.state_set("autoreply", "cooldown:7", None)
    stored = await storage.state_get("autoreply", "cooldown:7")
    assert stored is not None
    assert stored[0] is None
    assert await storage.state_get("autoreply", "missing") is None


# -- reads ---------------------------------------------------------------------------------------


async def test_list_conversations_pages_newest_first_with_a_cursor(storage: Storage) -> None:
    ids = []
    for i in range(5):
        at = T0 + timedelta(minutes=min(i, 3))  # the last two share a timestamp: the id breaks the tie
        result = await storage.ingest([inbound(f"wamid.C{i}", wa_id=f"55119000000{i:02d}", at=at)], [])
        ids.append(result.new_messages[0].conversation.id)
    pages: list[list[int]] = []
    before = None
    while True:
        page = await storage.list_conversations(limit=2, before=before)
        if not page:
            break
        pages.append([c.id for c in page])
        last = page[-1]
        assert last.last_message_at is not None
        before = (last.last_message_at, last.id)
    assert pages == [[ids[4], ids[3]], [ids[2], ids[1]], [ids[0]]]
    other = await storage.list_conversations(phone_number_ids=[OTHER_PNID])
    assert other == []


async def test_list_messages_resyncs_after_an_id(storage: Storage) -> None:
    result = await storage.ingest(
        [inbound(f"wamid.M{i}", body=f"msg {i}", at=T0 + timedelta(seconds=i)) for i in range(5)], []
    )
    conv_id = result.new_messages[0].conversation.id
    everything = await storage.list_messages(conv_id)
    assert [m.body for m in everything] == [f"msg {i}" for i in range(5)]  # oldest first
    after = await storage.list_messages(conv_id, after_id=everything[2].id)
    assert [m.body for m in after] == ["msg 3", "msg 4"]
    assert [m.body for m in await storage.list_messages(conv_id, after_id=0, limit=2)] == ["msg 0", "msg 1"]
    assert await storage.list_messages(conv_id, after_id=everything[-1].id) == []
    by_id = await storage.get_messages([everything[0].id, 999_999])
    assert list(by_id) == [everything[0].id]
