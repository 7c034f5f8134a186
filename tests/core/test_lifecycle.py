"""A message's lifecycle in storage, on SQLite and PostgreSQL: edits, deletions, reactions, number changes.

Whatever order, batch or repetition the changes come in (before their message, with it, twice,
newest first), the stored state is the same, and an event is logged only when it changes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from core.config import StorageConfig
from core.models import (
    InboundMessage,
    LifecycleAction,
    MessageEdit,
    MessageReaction,
    MessageRevoke,
    NumberChange,
)
from core.storage import Storage
from core.storage.schema import (
    contacts,
    conversations,
    event_sequence,
    message_changes,
    message_versions,
    messages,
)
from tests.core.test_storage import PNID, T0, WA_ID, conversation, inbound, queue, status

ORIGINAL = "wamid.ORIGINAL"


def action(wamid: str, act: LifecycleAction, *, seconds: int, wa_id: str = WA_ID) -> InboundMessage:
    """A change as the transport hands it over: its own wamid, Meta's time, what it does."""
    kind = {MessageEdit: "edit", MessageRevoke: "revoke", MessageReaction: "reaction"}.get(
        type(act), "system"
    )
    return InboundMessage(
        phone_number_id=PNID,
        wamid=wamid,
        wa_id=wa_id,
        profile_name=None,
        type=kind,
        body=getattr(act, "body", None) or getattr(act, "emoji", None),
        timestamp=T0 + timedelta(seconds=seconds),
        raw={"id": wamid, "type": kind},
        action=act,
    )


def edit(wamid: str, body: str, seconds: int) -> InboundMessage:
    return action(wamid, MessageEdit(target_wamid=ORIGINAL, body=body), seconds=seconds)


def react(wamid: str, emoji: str | None, seconds: int, wa_id: str = WA_ID) -> InboundMessage:
    return action(wamid, MessageReaction(target_wamid=ORIGINAL, emoji=emoji), seconds=seconds, wa_id=wa_id)


def revoke(wamid: str, seconds: int) -> InboundMessage:
    return action(wamid, MessageRevoke(target_wamid=ORIGINAL), seconds=seconds)


async def state(storage: Storage) -> dict[str, Any]:
    """What a client can see of the original message, plus its stored versions."""
    async with storage.read() as conn:
        rows = (await conn.execute(sa.select(messages))).all()
        versions = sorted(
            (r.body, r.written_at) for r in (await conn.execute(sa.select(message_versions))).all()
        )
    assert [r.wamid for r in rows] == [ORIGINAL], "a change became a message of its own"
    (row,) = rows
    reactions = (await storage.reactions([row.id])).get(row.id, [])
    return {
        "body": row.body,
        "edited_at": row.edited_at,
        "deleted_at": row.deleted_at,
        "reactions": [(r.reactor, r.emoji) for r in reactions],
        "versions": versions,
    }


async def test_an_edit_replaces_the_body_keeps_the_old_one_and_logs_one_event(storage: Storage) -> None:
    stored = await storage.ingest([inbound(ORIGINAL, body="Quero 2 caixas")], [])
    message_id = stored.new_messages[0].message.id
    first = await storage.ingest([edit("wamid.E1", "Quero 3 caixas", 60)], [])
    again = await storage.ingest([edit("wamid.E1", "Quero 3 caixas", 60)], [])

    assert [c.change.kind for c in first.message_changes] == ["edited"]
    assert first.message_changes[0].message.body == "Quero 3 caixas"
    assert again.message_changes == [] and again.duplicate_messages == 1
    (event,) = [e for e in await storage.read_events(0, 10) if e.type == "whatsapp:message_updated"]
    assert event.payload() == {
        "messageId": message_id,
        "conversationId": stored.new_messages[0].conversation.id,
        "body": "Quero 3 caixas",
        "editedAt": "2026-11-29T12:01:00Z",
        "phoneNumberId": PNID,
    }
    seen = await state(storage)
    assert seen["body"] == "Quero 3 caixas"
    assert seen["edited_at"] == T0 + timedelta(seconds=60)
    assert seen["versions"] == [("Quero 2 caixas", T0)]


async def test_a_deletion_hides_the_body_and_keeps_it_as_a_version(storage: Storage) -> None:
    await storage.ingest([inbound(ORIGINAL, body="meu cpf é 123")], [])
    result = await storage.ingest([revoke("wamid.R1", 30)], [])
    repeat = await storage.ingest([revoke("wamid.R1", 30)], [])

    assert [c.change.kind for c in result.message_changes] == ["deleted"]
    assert result.message_changes[0].message.body is None
    assert repeat.message_changes == []
    seen = await state(storage)
    assert (seen["body"], seen["deleted_at"]) == (None, T0 + timedelta(seconds=30))
    assert seen["versions"] == [("meu cpf é 123", T0)]
    events = [e for e in await storage.read_events(0, 10) if e.type == "whatsapp:message_deleted"]
    assert [e.payload()["deletedAt"] for e in events] == ["2026-11-29T12:00:30Z"]


async def test_one_reaction_per_contact_the_newest_wins_and_an_empty_one_removes_it(
    storage: Storage,
) -> None:
    await storage.ingest([inbound(ORIGINAL)], [])
    other = "5521988887777"
    applied = await storage.ingest(
        [react("wamid.A1", "👍", 10), react("wamid.B1", "❤️", 11, wa_id=other), react("wamid.A2", "😂", 12)],
        [],
    )
    assert (await state(storage))["reactions"] == [(other, "❤️"), (WA_ID, "😂")]
    removed = await storage.ingest([react("wamid.A3", "", 13)], [])
    late = await storage.ingest([react("wamid.A0", "🙏", 5)], [])  # older than the removal

    assert [(c.change.reactor, c.change.emoji) for c in applied.message_changes][-1] == (WA_ID, "😂")
    assert [(c.change.reactor, c.change.emoji) for c in removed.message_changes] == [(WA_ID, None)]
    assert late.message_changes == [] and late.stale_changes == 1
    assert (await state(storage))["reactions"] == [(other, "❤️")]
    payloads = [
        e.payload() for e in await storage.read_events(0, 20) if e.type == "whatsapp:message_reaction"
    ]
    assert payloads[-1]["emoji"] == "" and payloads[-1]["from"] == WA_ID


async def test_changes_before_their_message_are_applied_when_it_arrives(storage: Storage) -> None:
    early = await storage.ingest([edit("wamid.E1", "corrigido", 60), react("wamid.A1", "👍", 61)], [])
    assert early.pending_changes == 2 and early.message_changes == []
    arrived = await storage.ingest([inbound(ORIGINAL, body="errado")], [])

    # The message's own event first, then what happened to it, in one transaction.
    assert [c.change.kind for c in arrived.message_changes] == ["edited", "reaction"]
    types = [e.type for e in await storage.read_events(0, 10)]
    assert types == ["whatsapp:message", "whatsapp:message_updated", "whatsapp:message_reaction"]
    seen = await state(storage)
    assert (seen["body"], seen["reactions"]) == ("corrigido", [(WA_ID, "👍")])


# Every order of these arrivals, one webhook each, ends in the same state.
ARRIVALS = {
    "message": lambda: inbound(ORIGINAL, body="v0"),
    "edit1": lambda: edit("wamid.E1", "v1", 60),
    "edit2": lambda: edit("wamid.E2", "v2", 120),
    "react": lambda: react("wamid.A1", "👍", 70),
    "unreact": lambda: react("wamid.A2", None, 80),
}


@pytest.mark.parametrize(
    "order",
    [
        ("message", "edit1", "edit2", "react", "unreact"),
        ("edit2", "edit1", "unreact", "react", "message"),
        ("edit1", "message", "unreact", "edit2", "react"),
        ("unreact", "edit2", "message", "react", "edit1"),
    ],
    ids=lambda order: "-".join(order),
)
async def test_the_order_of_arrival_does_not_change_the_outcome(
    storage: Storage, order: tuple[str, ...]
) -> None:
    for name in order:
        await storage.ingest([ARRIVALS[name]()], [])
    # Meta redelivers everything once more, all in one webhook.
    await storage.ingest([ARRIVALS[name]() for name in order], [])

    seen = await state(storage)
    assert seen == {
        "body": "v2",
        "edited_at": T0 + timedelta(seconds=120),
        "deleted_at": None,
        "reactions": [],
        "versions": [("v0", T0), ("v1", T0 + timedelta(seconds=60))],
    }


@pytest.mark.parametrize("order", list(itertools.permutations(["message", "edit", "revoke"])), ids=str)
async def test_a_deletion_wins_over_edits_in_any_order(storage: Storage, order: tuple[str, ...]) -> None:
    made = {
        "message": lambda: inbound(ORIGINAL, body="v0"),
        "edit": lambda: edit("wamid.E1", "v1", 60),
        "revoke": lambda: revoke("wamid.R1", 90),
    }
    await storage.ingest([made[name]() for name in order], [])  # one webhook, in this order

    seen = await state(storage)
    assert (seen["body"], seen["deleted_at"]) == (None, T0 + timedelta(seconds=90))
    assert seen["versions"] == [("v0", T0), ("v1", T0 + timedelta(seconds=60))]


async def test_a_number_change_moves_the_contact_and_keeps_its_conversation(storage: Storage) -> None:
    new = "5511900001111"
    first = await storage.ingest([inbound("wamid.M1")], [])
    notice = action("wamid.SYS", NumberChange(new_wa_id=new), seconds=5)
    await storage.ingest([notice], [])
    later = await storage.ingest([inbound("wamid.M2", wa_id=new, name=None)], [])
    await storage.ingest([notice], [])  # redelivered: no contact comes back for the old number

    conv = first.new_messages[0].conversation
    assert later.new_messages[0].conversation.id == conv.id
    async with storage.read() as conn:
        wa_ids = (await conn.execute(sa.select(contacts.c.wa_id, contacts.c.name))).all()
        convs = (await conn.execute(sa.select(conversations.c.id))).scalars().all()
    assert [tuple(r) for r in wa_ids] == [(new, "João Silva")]
    assert convs == [conv.id]


async def test_a_number_change_to_a_known_number_moves_the_conversations_it_lacks(storage: Storage) -> None:
    new = "5511900002222"
    old_conv = (await storage.ingest([inbound("wamid.M1")], [])).new_messages[0].conversation
    other_number = (await storage.ingest([inbound("wamid.M2", pnid="200")], [])).new_messages[0].conversation
    # The customer wrote from the new number (to the first business number) before the notice.
    await storage.ingest([inbound("wamid.M3", wa_id=new, name=None)], [])
    await storage.ingest([action("wamid.SYS", NumberChange(new_wa_id=new), seconds=5)], [])

    moved = await storage.get_conversation(other_number.id)
    kept = await storage.get_conversation(old_conv.id)
    assert moved is not None and kept is not None
    new_contact = await storage.get_contact(moved.contact_id)
    assert new_contact is not None and new_contact.wa_id == new
    assert new_contact.name == "João Silva"  # it had none: the old contact's name carries over
    assert kept.contact_id != moved.contact_id  # both had one with this number: nothing merged


async def test_a_reaction_to_our_message_before_graph_answered_waits_for_its_wamid(storage: Storage) -> None:
    conv = await conversation(storage)
    message = await queue(storage, conv)
    (item,) = await storage.claim_outbox()
    like = action("wamid.LIKE", MessageReaction(target_wamid="wamid.OURS", emoji="👍"), seconds=3)
    assert (await storage.ingest([like], [])).pending_changes == 1

    await storage.outbox_sent(item.id, "wamid.OURS")

    assert [(r.reactor, r.emoji) for r in (await storage.reactions([message.id]))[message.id]] == [
        (WA_ID, "👍")
    ]
    events = await storage.read_events(0, 10)
    assert [e.type for e in events][-1] == "whatsapp:message_reaction"
    assert events[-1].message_id == message.id and events[-1].payload()["emoji"] == "👍"


async def test_a_reaction_waiting_for_our_message_is_applied_when_a_status_gives_its_wamid(
    storage: Storage,
) -> None:
    # Graph's answer to the send was lost; a status naming our message id links the wamid.
    conv = await conversation(storage)
    message = await queue(storage, conv)
    await storage.claim_outbox()
    like = action("wamid.LIKE", MessageReaction(target_wamid="wamid.OURS", emoji="👍"), seconds=3)
    assert (await storage.ingest([like], [])).pending_changes == 1

    sent = status("wamid.OURS", "sent", message_id=message.id)
    result = await storage.ingest([], [sent])

    assert [(c.change.kind, c.change.emoji) for c in result.message_changes] == [("reaction", "👍")]
    assert [(r.reactor, r.emoji) for r in (await storage.reactions([message.id]))[message.id]] == [
        (WA_ID, "👍")
    ]
    assert [e.type for e in await storage.read_events(0, 10)][-1] == "whatsapp:message_reaction"


# -- two processes on PostgreSQL: a change and its target committed at the same instant -----------
#
# Each test holds the event counter row (every event-producing transaction updates it last) from
# a third connection, so one transaction stops just before its commit with all its lookups done;
# the other then runs against its uncommitted rows. Without lifecycle.lock_targets the second
# cannot see the first's row, and the first has already looked: the change stays parked.


class _Held:
    """The event counter row locked by a connection of its own, until :meth:`release`."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.conn: AsyncConnection | None = None

    async def __aenter__(self) -> _Held:
        self.conn = await self.storage.engine.connect()
        await self.conn.begin()
        await self.conn.execute(sa.select(event_sequence).with_for_update())
        return self

    async def release(self) -> None:
        if self.conn is not None:
            await self.conn.rollback()
            await self.conn.close()
            self.conn = None

    async def __aexit__(self, *_: object) -> None:
        await self.release()

    async def waiting(self, at_least: int) -> bool:
        """Whether at least ``at_least`` transactions of this database wait for a lock now."""
        # A connection of its own per look: pg_stat_activity is a snapshot per transaction.
        query = sa.text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        async with self.storage.read() as conn:
            return int((await conn.execute(query)).scalar_one()) >= at_least

    async def done_or_waiting(self, task: asyncio.Task[Any], at_least: int) -> bool:
        """Whether ``task`` finished, or at least ``at_least`` transactions wait for a lock."""
        return task.done() or await self.waiting(at_least)


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _reactions_and_parked(storage: Storage, message_id: int) -> tuple[list[tuple[str, str]], int]:
    """A message's reactions ``(reactor, emoji)``, and how many changes are still parked."""
    reactions = [(r.reactor, r.emoji) for r in (await storage.reactions([message_id])).get(message_id, [])]
    async with storage.read() as conn:
        parked = (
            sa.select(sa.func.count())
            .select_from(message_changes)
            .where(message_changes.c.message_id.is_(None))
        )
        return reactions, int((await conn.execute(parked)).scalar_one())


@pytest.fixture
async def two_processes(fresh_postgres_url: str) -> AsyncIterator[tuple[Storage, Storage]]:
    """Two Storages on one PostgreSQL database, as two processes would have."""
    first, second = (
        Storage(StorageConfig(url=fresh_postgres_url)),
        Storage(StorageConfig(url=fresh_postgres_url)),
    )
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


@pytest.mark.postgres
@pytest.mark.parametrize("target", ["inbound message", "our message answered by Graph"])
async def test_a_change_committed_while_its_target_is_being_stored_is_applied(
    two_processes: tuple[Storage, Storage], target: str
) -> None:
    first, second = two_processes
    if target == "inbound message":
        wamid = ORIGINAL
        store: Coroutine[Any, Any, object] = first.ingest([inbound(ORIGINAL)], [])
    else:
        wamid = "wamid.OURS"
        await queue(first, await conversation(first))
        (item,) = await first.claim_outbox()
        store = first.outbox_sent(item.id, wamid)
    like = action("wamid.LIKE", MessageReaction(target_wamid=wamid, emoji="👍"), seconds=3)
    async with _Held(first) as held:
        storing = asyncio.create_task(store)
        await _until(lambda: held.waiting(1), "the target's transaction to reach its commit")
        changing = asyncio.create_task(second.ingest([like], []))
        # With the lock the change waits for the target's commit; without it, it parks and commits.
        await _until(lambda: held.done_or_waiting(changing, 2), "the change to wait or finish")
        await held.release()
        await storing
        changed = await changing

    assert changed.pending_changes == 0 and [c.change.emoji for c in changed.message_changes] == ["👍"]
    async with first.read() as conn:
        message_id = (
            await conn.execute(sa.select(messages.c.id).where(messages.c.wamid == wamid))
        ).scalar_one()
    assert await _reactions_and_parked(first, message_id) == ([(WA_ID, "👍")], 0)


@pytest.mark.postgres
async def test_a_target_stored_while_its_change_is_being_parked_applies_it(
    two_processes: tuple[Storage, Storage],
) -> None:
    first, second = two_processes
    like = action("wamid.LIKE", MessageReaction(target_wamid=ORIGINAL, emoji="👍"), seconds=3)
    async with _Held(first) as held:
        # Another message in the change's batch gives it an event: it stops before its commit too.
        changing = asyncio.create_task(
            second.ingest([like, inbound("wamid.OTHER", wa_id="5511888888888")], [])
        )
        await _until(lambda: held.waiting(1), "the change's transaction to reach its commit")
        storing = asyncio.create_task(first.ingest([inbound(ORIGINAL)], []))
        await _until(lambda: held.waiting(2), "the message's transaction to wait")
        await held.release()
        changed, stored = await changing, await storing

    assert changed.pending_changes == 1  # parked: its target was not committed yet
    assert [c.change.emoji for c in stored.message_changes] == ["👍"]  # applied when it was
    message_id = stored.new_messages[0].message.id
    assert await _reactions_and_parked(first, message_id) == ([(WA_ID, "👍")], 0)
