"""``GET /api/events``, the change feed, over real HTTP on SQLite and PostgreSQL: the same events and
payloads as Socket.IO, oldest first, paged by ``nextAfter``, scoped by the token, filtered by type."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from core.models import utcnow
from core.storage.schema import event_log
from plugins.whatsapp import webhook_builders as wb
from tests.helpers import wait_for
from tests.plugins.crm_realtime.harness import OTHER_PNID, PNID, Zaphub


async def feed(z: Zaphub, token: str | None = None, **params: Any) -> dict[str, Any]:
    response = await z.http.get("/api/events", params=params, headers=z.auth(token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"events", "nextAfter"}
    return body


async def follow(z: Zaphub, token: str | None = None, **params: Any) -> list[dict[str, Any]]:
    """Every page from ``after=0`` on, as a client pages it."""
    events: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        page = await feed(z, token, after=after, **params)
        events.extend(page["events"])
        after = page["nextAfter"]
    return events


async def test_the_feed_carries_what_socketio_emitted_in_order(zb: Zaphub) -> None:
    client = await zb.connect()
    await zb.inbound("Olá!")
    message = await client.wait("whatsapp:message")
    assert (await client.call("join_conversation", {"conversationId": message["conversationId"]}))["ok"]
    accepted = await zb.send(message["conversationId"], {"type": "text", "body": "Resposta"})
    await client.wait("whatsapp:message_status", lambda d: d["status"] == "read")
    await zb.settle()

    events = await follow(zb)
    emitted = sorted(
        ((name, data) for name, data in client.events if name.startswith("whatsapp:")),
        key=lambda e: e[1]["eventId"],
    )
    assert [(e["type"], e["id"]) for e in events] == [(name, data["eventId"]) for name, data in emitted]
    for event, (_, data) in zip(events, emitted, strict=True):
        assert event["data"] == {k: v for k, v in data.items() if k != "eventId"}
        assert event["phoneNumberId"] == PNID
        assert event["conversationId"] == message["conversationId"]
        assert event["createdAt"].endswith("Z")
    # The agent's reply took the conversation over, in the transaction that queued it.
    assert [e["type"] for e in events][:3] == [
        "whatsapp:message",
        "whatsapp:conversation_updated",
        "whatsapp:message_sent",
    ]
    assert events[2]["data"]["messageId"] == accepted["messageId"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)


async def test_pages_follow_next_after_and_polling_continues_from_the_last_id(zb: Zaphub) -> None:
    for i in range(7):
        await zb.inbound(f"msg {i}", from_=f"55119{i:08d}")
    await zb.settle()
    first = await feed(zb, limit=3)
    assert len(first["events"]) == 3 and first["nextAfter"] == first["events"][-1]["id"]
    everything = await follow(zb, limit=3)
    assert [e["data"]["message"]["body"] for e in everything] == [f"msg {i}" for i in range(7)]
    last = everything[-1]["id"]
    caught_up = await feed(zb, after=last)
    assert caught_up == {"events": [], "nextAfter": None}
    await zb.inbound("depois")
    await zb.settle()
    (later,) = (await feed(zb, after=last))["events"]
    assert later["id"] == last + 1 and later["data"]["message"]["body"] == "depois"


async def test_a_scoped_token_sees_only_its_numbers_events(zb: Zaphub) -> None:
    await zb.inbound("nosso")
    await zb.webhook(
        [wb.text("deles", from_="5521977776666")],
        phone_number_id=OTHER_PNID,
        contacts=[wb.contact("5521977776666", "Outro")],
    )
    await zb.inbound("nosso de novo")
    await zb.settle()
    everyone = await follow(zb)
    assert [e["phoneNumberId"] for e in everyone] == [PNID, OTHER_PNID, PNID]
    ours = await follow(zb, zb.token(scope=[PNID]), limit=1)
    assert [e["data"]["message"]["body"] for e in ours] == ["nosso", "nosso de novo"]
    theirs = await follow(zb, zb.token(scope=[OTHER_PNID]))
    assert [e["data"]["message"]["body"] for e in theirs] == ["deles"]


async def test_types_keeps_only_the_named_events(zb: Zaphub) -> None:
    await zb.inbound("Olá!")
    await zb.settle()
    conversation_id = (await follow(zb))[0]["conversationId"]
    await zb.send(conversation_id, {"type": "text", "body": "Resposta"})

    async def read_logged() -> list[dict[str, Any]]:
        return [e for e in await follow(zb, types="whatsapp:message_status") if e["data"]["status"] == "read"]

    await wait_for(read_logged, what="the sandbox's read status in the feed")
    statuses = await follow(zb, types="whatsapp:message_status")
    assert {e["type"] for e in statuses} == {"whatsapp:message_status"}
    both = await follow(zb, types="whatsapp:message,whatsapp:message_sent")
    assert [e["type"] for e in both] == ["whatsapp:message", "whatsapp:message_sent"]
    repeated = await zb.http.get(
        "/api/events",
        params=[("types", "whatsapp:message"), ("types", "whatsapp:message_sent")],
        headers=zb.auth(),
    )
    assert [e["type"] for e in repeated.json()["events"]] == ["whatsapp:message", "whatsapp:message_sent"]


async def test_bad_parameters_and_pruned_positions_get_clear_errors(zb: Zaphub) -> None:
    for params, needle in [
        ({"types": "whatsapp:mesage"}, "unknown event type 'whatsapp:mesage'; use any of whatsapp:message"),
        ({"after": "-1"}, "after"),
        ({"after": "abc"}, "after"),
        ({"limit": "0"}, "limit"),
    ]:
        response = await zb.http.get("/api/events", params=params, headers=zb.auth())
        assert response.status_code == 400, params
        assert response.json()["error"]["code"] == "validation_error"
        assert needle in response.json()["error"]["message"], (params, response.text)

    for i in range(4):
        await zb.inbound(f"msg {i}", from_=f"55119{i:08d}")
    await zb.settle()
    storage = zb.host.storage
    async with storage.write() as conn:
        await conn.execute(event_log.update().values(created_at=utcnow() - timedelta(days=30)))
    await storage.prune_events(max_age=timedelta(days=7), max_count=None, keep_after=2)
    assert (await storage.event_bounds()).oldest == 3
    gone = await zb.http.get("/api/events", params={"after": 1}, headers=zb.auth())
    assert gone.status_code == 410
    assert gone.json()["error"]["code"] == "events_expired"
    assert "the oldest kept is 3" in gone.json()["error"]["message"]
    # From the position just before the oldest event, and from the start, the feed answers.
    assert [e["id"] for e in await follow(zb)] == [3, 4]
    assert [e["id"] for e in (await feed(zb, after=2))["events"]] == [3, 4]
