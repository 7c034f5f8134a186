"""Socket.IO resume: ``auth.lastEventId`` and ``join_* {lastEventId}`` replay the event log.

A client that reconnects with the last ``eventId`` it received gets every event after it that its
token may see, in order and once, then live events with no gap and no duplicate at the seam.
Real server, real python-socketio clients, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from plugins.crm_realtime import REALTIME
from plugins.whatsapp import webhook_builders as wb
from tests.helpers import wait_for
from tests.plugins.crm_realtime.harness import OTHER_PNID, PNID, CrmClient, Zaphub, zaphub

MESSAGE = "whatsapp:message"
SENT = "whatsapp:message_sent"
STATUS = "whatsapp:message_status"


@pytest.fixture
async def z(storage_url: str) -> Any:
    async with zaphub(storage_url) as running:
        yield running


def ids(client: CrmClient, *events: str) -> list[int]:
    return [data["eventId"] for name, data in client.events if name in events]


async def connect(z: Zaphub, last_event_id: int | None, token: str | None = None) -> CrmClient:
    client = CrmClient()
    await client.connect(z.url, token or z.token(), last_event_id=last_event_id)
    z.clients.append(client)
    return client


async def test_a_client_reconnecting_with_its_last_event_id_gets_exactly_what_it_missed(z: Zaphub) -> None:
    first = await z.connect()
    await z.inbound("one")
    # settle() means emitted, not yet read by the client: wait for it.
    seen = await first.wait(MESSAGE)
    await z.settle()
    assert first.of(MESSAGE) == [seen]
    await first.close()
    # Missed while disconnected: two inbound messages, a send and its statuses.
    await z.inbound("two")
    await z.inbound("three", from_="5511911112222", name="Bia")
    await z.send(seen["conversationId"], {"type": "text", "body": "reply"})
    await z.settle()
    again = await connect(z, seen["eventId"])
    await again.wait(SENT)
    bodies = [d["message"]["body"] for d in again.of(MESSAGE)]
    assert bodies == ["two", "three"]
    missed = ids(again, MESSAGE, SENT)
    assert missed == sorted(missed) and missed[0] > seen["eventId"] and len(set(missed)) == 3
    # Statuses go to rooms only, even when replayed: none without a join.
    assert again.of(STATUS) == []
    # Then live, once.
    await z.inbound("four")
    await again.wait(MESSAGE, lambda d: d["message"]["body"] == "four")
    await z.settle()
    assert [d["message"]["body"] for d in again.of(MESSAGE)] == ["two", "three", "four"]
    # The replayed payloads are the live ones, field for field.
    live = await connect(z, 0)
    await live.wait(MESSAGE, lambda d: d["message"]["body"] == "four")
    assert live.of(MESSAGE)[1:] == again.of(MESSAGE)
    assert live.of(MESSAGE)[0] == seen


async def statuses_logged(z: Zaphub, after: int, count: int) -> list[dict[str, Any]]:
    """The status events after ``after`` in the log, once there are ``count`` of them."""
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        response = await z.http.get("/api/events", params={"after": after, "types": STATUS}, headers=z.auth())
        found[:] = response.json()["events"]
        return len(found) >= count

    await wait_for(enough, timeout=30, what=f"{count} statuses after {after} (have {found})")
    return found


async def test_a_join_with_last_event_id_replays_the_rooms_statuses_after_it(z: Zaphub) -> None:
    client = await z.connect()
    await z.inbound("hi")
    conversation_id = (await client.wait(MESSAGE))["conversationId"]
    sent = await z.send(conversation_id, {"type": "text", "body": "out"})
    mark = (await client.wait(SENT))["eventId"]
    # The sandbox answers sent, delivered, read: three statuses after the send's event, logged
    # while the client was in no room.
    await statuses_logged(z, mark, 3)
    assert client.of(STATUS) == []
    ack = await client.call("join_conversation", {"conversationId": conversation_id, "lastEventId": mark})
    assert ack == {"ok": True}
    await client.wait(STATUS, lambda d: d["status"] == "read")
    got = client.of(STATUS)
    assert [d["status"] for d in got] == ["sent", "delivered", "read"]
    assert {d["messageId"] for d in got} == {sent["messageId"]}
    assert ids(client, STATUS) == sorted(set(ids(client, STATUS)))
    # join_message with lastEventId replays only that message's statuses after the id.
    other = await z.connect()
    after = got[0]["eventId"]
    ack = await other.call("join_message", {"messageId": sent["messageId"], "lastEventId": after})
    assert ack == {"ok": True}
    await other.wait(STATUS, lambda d: d["status"] == "read")
    assert [d["status"] for d in other.of(STATUS)] == ["delivered", "read"]


async def test_replay_is_scoped_like_live_events(z: Zaphub) -> None:
    await z.inbound("mine")
    await z.webhook(
        [wb.text("theirs", from_="5511933334444")],
        contacts=[wb.contact("5511933334444", "Caio")],
        phone_number_id=OTHER_PNID,
    )
    await z.settle()
    scoped = await connect(z, 0, z.token("scoped", scope=[PNID]))
    everyone = await connect(z, 0)
    await everyone.wait(MESSAGE, lambda d: d["message"]["body"] == "theirs")
    await wait_for(lambda: len(scoped.of(MESSAGE)) >= 1)
    await z.inbound("later")
    await scoped.wait(MESSAGE, lambda d: d["message"]["body"] == "later")
    assert [d["message"]["body"] for d in scoped.of(MESSAGE)] == ["mine", "later"]
    assert {d["phoneNumberId"] for d in scoped.of(MESSAGE)} == {PNID}


@pytest.mark.parametrize("yield_every", [None, 1])
async def test_the_seam_between_replay_and_live_has_no_gap_and_no_duplicate_under_load(
    z: Zaphub, yield_every: int | None
) -> None:
    if yield_every is not None:
        # Every fan-out yields to the event loop after each socket: resumes start and end
        # in the middle of a batch's writes.
        z.host.stash[REALTIME].manager.yield_every = yield_every
        for k in range(3):
            await z.connect(z.token(sub=f"live{k}"))
    burst = 40
    await asyncio.gather(*(z.inbound(f"before {i}", from_=f"55119000{i:05d}") for i in range(burst)))
    await z.settle()
    connecting: list[asyncio.Task[CrmClient]] = []
    for i in range(burst):
        if i % 10 == 5:
            # A client resuming from 0 while webhooks keep landing: its replay overlaps live emits.
            connecting.append(asyncio.create_task(connect(z, 0)))
        await z.inbound(f"during {i}", from_=f"55118000{i:05d}")
    readers = await asyncio.gather(*connecting)
    await z.settle()
    response = await z.http.get("/api/events", params={"limit": 200}, headers=z.auth())
    expected = [e["id"] for e in response.json()["events"] if e["type"] == MESSAGE]
    assert len(expected) == 2 * burst
    for reader in readers:
        await wait_for(lambda r=reader: len(r.of(MESSAGE)) >= len(expected), timeout=20)
    await z.inbound("after")
    for reader in readers:
        await reader.wait(MESSAGE, lambda d: d["message"]["body"] == "after")
        got = ids(reader, MESSAGE)
        assert got[:-1] == expected, "a gap, a duplicate or a reorder at the seam"
        assert len(got) == len(expected) + 1


async def test_joins_with_last_event_id_during_yielding_fan_outs_get_each_status_once_in_order(
    z: Zaphub,
) -> None:
    # Every fan-out yields after each socket: joins and their replays start and end in the
    # middle of a batch's writes to the room's other sockets.
    z.host.stash[REALTIME].manager.yield_every = 1
    first = await z.connect()
    await z.inbound("hi")
    seen = await first.wait(MESSAGE)
    conversation_id, mark = seen["conversationId"], seen["eventId"]
    members = [first, *[await z.connect(z.token(sub=f"member{k}")) for k in range(3)]]
    for member in members:
        assert await member.call("join_conversation", {"conversationId": conversation_id}) == {"ok": True}
    joiners = []
    sends = 5
    for i in range(sends):
        await z.send(conversation_id, {"type": "text", "body": f"out {i}"})
        joiner = await z.connect(z.token(sub=f"joiner{i}"))
        ack = await joiner.call("join_conversation", {"conversationId": conversation_id, "lastEventId": mark})
        assert ack == {"ok": True}
        joiners.append(joiner)
    expected = [e["id"] for e in await statuses_logged(z, mark, 3 * sends)]  # sent, delivered, read
    for client in members + joiners:
        await wait_for(lambda c=client: len(ids(c, STATUS)) >= len(expected), timeout=30)
    await z.settle()
    for client in members + joiners:
        assert ids(client, STATUS) == expected, "a duplicate, a gap or a reorder"


async def test_a_last_event_id_older_than_the_retention_asks_for_a_resync(z: Zaphub) -> None:
    for i in range(3):
        await z.inbound(f"m{i}")
    await z.settle()
    storage = z.host.storage
    bounds = await storage.event_bounds()
    await storage.prune_events(max_age=None, max_count=1)
    client = await connect(z, 0)
    notice = await client.wait("resync_required")
    assert notice == {"lastEventId": 0, "oldestEventId": bounds.last}
    assert client.of(MESSAGE) == []  # nothing partial: the client resyncs over REST
    # Still live afterwards.
    await z.inbound("new")
    await client.wait(MESSAGE, lambda d: d["message"]["body"] == "new")
    # An id this log never gave (another database, a reset) asks for a resync too.
    stranger = await connect(z, bounds.last + 1000)
    assert (await stranger.wait("resync_required"))["lastEventId"] == bounds.last + 1000
    # Up to date: nothing to replay, no resync.
    current = (await storage.event_bounds()).last
    fresh = await connect(z, current)
    await z.inbound("newer")
    await fresh.wait(MESSAGE, lambda d: d["message"]["body"] == "newer")
    assert fresh.of("resync_required") == [] and len(fresh.of(MESSAGE)) == 1
    metrics = (await z.http.get("/metrics")).text
    assert "zaphub_crm_resync_required_total 2.0" in metrics


async def test_a_malformed_last_event_id_is_refused_with_the_reason(z: Zaphub) -> None:
    client = CrmClient()
    with pytest.raises(Exception):  # noqa: B017, PT011  # socketio.exceptions.ConnectionError
        await client.sio.connect(
            z.url,
            namespaces=["/crm"],
            auth={"token": z.token(), "lastEventId": "last"},
            transports=["websocket"],
        )
    assert client.connect_error["message"] == "bad request"
    assert "lastEventId must be the integer eventId" in client.connect_error["data"]["reason"]
    ok = await z.connect()
    ack = await ok.call("join_conversation", {"conversationId": 1, "lastEventId": -3})
    assert ack["ok"] is False and "lastEventId" in ack["error"]
    assert z.host.stash[REALTIME].gate.idle
