"""Handoff as state over the real API: PATCH the mode, replies take over, idle returns, events.

Every mode change is a logged ``whatsapp:conversation_updated``: Socket.IO carries it with
``eventId``, a resuming client gets the ones it missed, ``GET /api/events`` and outgoing webhooks
carry it, and with two processes the idle return to the bot is logged once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import convert_section
from plugins.crm_realtime.config import CrmRealtimeSettings
from plugins.whatsapp import webhook_builders as wb
from tests.helpers import wait_for
from tests.plugins.crm_realtime.harness import (
    APP_SECRET,
    OTHER_PNID,
    PNID,
    CrmClient,
    Zaphub,
    crm_config,
    issue_token,
    two_processes,
    zaphub,
)
from tests.plugins.crm_realtime.test_rest import error_of
from tests.plugins.webhooks.receiver import Receiver, running_receiver

EVENT = "whatsapp:conversation_updated"


async def conversation_of(z: Zaphub, wa_id: str) -> dict[str, Any]:
    listed = (await z.http.get("/api/conversations", headers=z.auth())).json()["conversations"]
    return next(c for c in listed if c["contact"]["wa_id"] == wa_id)


async def patch(z: Zaphub, conversation_id: int, body: Any, token: str | None = None) -> Any:
    return await z.http.patch(f"/api/conversations/{conversation_id}", json=body, headers=z.auth(token))


def without_ids(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The payloads as documented, after checking each carries an increasing ``eventId``."""
    ids = [e["eventId"] for e in events]
    assert ids == sorted(set(ids)), f"eventIds not increasing and unique: {ids}"
    return [{k: v for k, v in e.items() if k != "eventId"} for e in events]


async def test_an_agent_takes_over_and_hands_back_and_every_allowed_socket_hears_it(zb: Zaphub) -> None:
    await zb.inbound("Oi", from_="5511988887777", name="Nina")
    await zb.settle()
    conversation = await conversation_of(zb, "5511988887777")
    assert conversation["mode"] == "bot"
    everyone = await zb.connect()  # in no room: sees it as a socket allowed to see the number
    in_room = await zb.connect(zb.token(sub="bia", scope=[PNID]))
    assert (await in_room.call("join_conversation", {"conversationId": conversation["id"]}))["ok"]
    other_number = await zb.connect(zb.token(sub="caio", scope=[OTHER_PNID]))

    taken = await patch(zb, conversation["id"], {"mode": "human"})
    assert taken.status_code == 200, taken.text
    assert taken.json()["mode"] == "human"
    assert taken.json()["id"] == conversation["id"]
    assert (await conversation_of(zb, "5511988887777"))["mode"] == "human"
    humans = (await zb.http.get("/api/conversations", params={"mode": "human"}, headers=zb.auth())).json()
    assert [c["id"] for c in humans["conversations"]] == [conversation["id"]]

    again = await patch(zb, conversation["id"], {"mode": "human"})  # already human: no event
    assert again.status_code == 200
    back = await patch(zb, conversation["id"], {"mode": "bot"})
    assert back.json()["mode"] == "bot"
    await zb.settle()

    expected = [
        {"conversationId": conversation["id"], "mode": "human", "phoneNumberId": PNID},
        {"conversationId": conversation["id"], "mode": "bot", "phoneNumberId": PNID},
    ]
    for client in (everyone, in_room):
        await client.wait(EVENT, lambda e: e["mode"] == "bot")
        assert without_ids(client.of(EVENT)) == expected  # once each, though `in_room` is in two rooms
    assert everyone.of(EVENT) == in_room.of(EVENT)  # the same eventIds
    assert other_number.of(EVENT) == []


async def test_a_manual_reply_takes_the_conversation_over(zb: Zaphub) -> None:
    await zb.inbound("Oi", from_="5511977776666", name="Otto")
    await zb.settle()
    conversation = await conversation_of(zb, "5511977776666")
    client = await zb.connect()
    await zb.send(conversation["id"], {"type": "text", "body": "Aqui é a Ana"})
    event = await client.wait(EVENT)
    assert without_ids([event]) == [
        {"conversationId": conversation["id"], "mode": "human", "phoneNumberId": PNID}
    ]
    assert (await conversation_of(zb, "5511977776666"))["mode"] == "human"
    await zb.send(conversation["id"], {"type": "text", "body": "Mais uma"})  # already human
    await zb.settle()
    assert len(client.of(EVENT)) == 1


async def test_bad_patches_are_refused_naming_the_fix(tmp_path: Path) -> None:
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}") as z:
        await z.inbound("Oi", from_="5511966665555")
        await z.settle()
        conversation = await conversation_of(z, "5511966665555")
        message = error_of(await patch(z, conversation["id"], {"mode": "robot"}), 400, "validation_error")
        assert "'robot'" in message and "bot" in message and "human" in message
        error_of(
            await patch(z, conversation["id"], {"mode": "human", "colour": "blue"}), 400, "validation_error"
        )
        error_of(await patch(z, conversation["id"], {}), 400, "validation_error")
        error_of(await patch(z, 999_999, {"mode": "human"}), 404, "not_found")
        scoped = z.token(sub="ana", scope=[OTHER_PNID])
        assert "scope" in error_of(
            await patch(z, conversation["id"], {"mode": "human"}, scoped), 403, "forbidden"
        )
        error_of(
            await z.http.patch(f"/api/conversations/{conversation['id']}", json={"mode": "human"}),
            401,
            "unauthorized",
        )
        assert (await conversation_of(z, "5511966665555"))["mode"] == "bot"


async def test_an_idle_takeover_returns_to_the_bot_with_an_event(tmp_path: Path) -> None:
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}", handoff={"return_to_bot_seconds": 1}) as z:
        await z.inbound("Oi", from_="5511955554444")
        await z.settle()
        conversation = await conversation_of(z, "5511955554444")
        client = await z.connect()
        assert (await patch(z, conversation["id"], {"mode": "human"})).status_code == 200
        await client.wait(EVENT, lambda e: e["mode"] == "human")
        back = await client.wait(EVENT, lambda e: e["mode"] == "bot")
        assert without_ids([back]) == [
            {"conversationId": conversation["id"], "mode": "bot", "phoneNumberId": PNID}
        ]
        assert (await conversation_of(z, "5511955554444"))["mode"] == "bot"


async def feed(z: Zaphub, **params: Any) -> list[dict[str, Any]]:
    response = await z.http.get("/api/events", params={"after": 0, **params}, headers=z.auth())
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def test_a_mode_change_is_logged_and_socketio_the_feed_and_webhooks_carry_it(
    storage_url: str,
) -> None:
    with running_receiver(Receiver()) as receiver:
        subscriber = {"url": receiver.url, "secret": "s" * 32, "events": [EVENT]}
        webhooks = {"webhooks": {"subscribers": [subscriber], "poll_interval_seconds": 0.2}}
        async with zaphub(storage_url, plugins=webhooks) as z:
            await z.inbound("Oi", from_="5511944443333")
            await z.settle()
            conversation = await conversation_of(z, "5511944443333")
            client = await z.connect()
            assert (await patch(z, conversation["id"], {"mode": "human"})).status_code == 200
            live = await client.wait(EVENT)
            payload = {"conversationId": conversation["id"], "mode": "human", "phoneNumberId": PNID}
            assert live == {**payload, "eventId": live["eventId"]}

            [logged] = await feed(z, types=EVENT)
            assert logged["id"] == live["eventId"]
            assert logged["type"] == EVENT
            assert logged["data"] == payload
            assert (logged["conversationId"], logged["phoneNumberId"]) == (conversation["id"], PNID)
            everything = await feed(z)
            assert [e["type"] for e in everything] == ["whatsapp:message", EVENT]
            scoped = z.token(sub="caio", scope=[OTHER_PNID])
            other = await z.http.get("/api/events", params={"after": 0}, headers=z.auth(scoped))
            assert other.json()["events"] == []

            await wait_for(lambda: receiver.accepted, timeout=15, what="the webhook of the mode change")
            [posted] = receiver.accepted
            assert posted.event == logged  # only the subscribed type, the feed's shape and id
            assert posted.headers["x-zaphub-event-id"] == str(live["eventId"])


async def test_a_resuming_client_gets_the_mode_changes_it_missed_in_order_once(storage_url: str) -> None:
    async with zaphub(storage_url) as z:
        first = await z.connect()
        await z.inbound("Oi", from_="5511933332222")
        seen = await first.wait("whatsapp:message")
        await first.close()
        conversation_id = seen["conversationId"]
        # Missed while disconnected: a takeover, a message, the hand back.
        assert (await patch(z, conversation_id, {"mode": "human"})).status_code == 200
        await z.inbound("Alguém aí?", from_="5511933332222")
        assert (await patch(z, conversation_id, {"mode": "bot"})).status_code == 200
        await z.settle()

        def resumed(client: CrmClient) -> list[tuple[str, Any]]:
            return [
                (name, data.get("mode") or data["message"]["body"])
                for name, data in client.events
                if name in (EVENT, "whatsapp:message")
            ]

        again = CrmClient()
        await again.connect(z.url, z.token(), last_event_id=seen["eventId"])
        z.clients.append(again)
        await again.wait(EVENT, lambda e: e["mode"] == "bot")
        # A scoped token of another number resumes too, and gets none of them.
        stranger = CrmClient()
        await stranger.connect(z.url, z.token(sub="caio", scope=[OTHER_PNID]), last_event_id=0)
        z.clients.append(stranger)
        # Then live: the next change arrives once, after the replayed ones.
        assert (await patch(z, conversation_id, {"mode": "human"})).status_code == 200
        await again.wait(EVENT, lambda _: len(again.of(EVENT)) == 3)
        await z.settle()
        assert resumed(again) == [
            (EVENT, "human"),
            ("whatsapp:message", "Alguém aí?"),
            (EVENT, "bot"),
            (EVENT, "human"),
        ]
        ids = [data["eventId"] for name, data in again.events if "eventId" in data]
        assert ids == sorted(set(ids)) and ids[0] == seen["eventId"] + 1
        # A join with lastEventId replays room-only events (statuses), not these: no repeat.
        assert (await again.call("join_conversation", {"conversationId": conversation_id, "lastEventId": 0}))[
            "ok"
        ]
        await z.settle()
        assert len(again.of(EVENT)) == 3
        assert stranger.of(EVENT) == [] and stranger.of("whatsapp:message") == []


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
async def test_two_processes_return_each_idle_conversation_to_the_bot_once(
    tmp_path: Path, fresh_postgres_url: str, redis_test_url: str, redis_channel: str
) -> None:
    handoff = {"return_to_bot_seconds": 1}  # both processes sweep every half second
    with two_processes(tmp_path, fresh_postgres_url, redis_test_url, redis_channel, handoff=handoff) as (
        a,
        b,
    ):
        section = crm_config(fresh_postgres_url, 0)["plugins"]["crm_realtime"]
        token = issue_token(convert_section(section, CrmRealtimeSettings, "plugins.crm_realtime"), sub="ana")
        on_b = CrmClient()
        await on_b.connect(b.url, token)
        try:
            async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {token}"}) as http:
                for i in range(3):
                    message = wb.text("Oi", from_=f"55119222200{i:02d}")
                    body, signed = wb.signed(wb.envelope(messages=[message]), APP_SECRET)
                    answer = await http.post(f"{a.url}/meta-whatsapp/webhook", content=body, headers=signed)
                    assert answer.status_code == 200, answer.text
                await wait_for(lambda: len(on_b.of("whatsapp:message")) == 3, timeout=20, what="3 messages")
                conversations = sorted({m["conversationId"] for m in on_b.of("whatsapp:message")})
                for cid in conversations:
                    answer = await http.patch(f"{a.url}/api/conversations/{cid}", json={"mode": "human"})
                    assert answer.status_code == 200, answer.text

                def backs() -> list[dict[str, Any]]:
                    return [e for e in on_b.of(EVENT) if e["mode"] == "bot"]

                await wait_for(lambda: len(backs()) >= 3, timeout=30, what="three returns to the bot")
                for proc in (a, b):
                    page = await http.get(f"{proc.url}/api/events", params={"after": 0, "types": EVENT})
                    logged = [e for e in page.json()["events"] if e["data"]["mode"] == "bot"]
                    assert sorted(e["conversationId"] for e in logged) == conversations, "each logged once"
                    assert [e["eventId"] for e in backs()] == [e["id"] for e in logged]
                assert len(on_b.of(EVENT)) == 6  # three takeovers, three returns: each emitted once
        finally:
            await on_b.close()
