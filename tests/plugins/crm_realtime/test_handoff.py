"""Handoff as state over the real API: PATCH the mode, replies take over, idle returns, events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.plugins.crm_realtime.harness import OTHER_PNID, PNID, Zaphub, zaphub
from tests.plugins.crm_realtime.test_rest import error_of

EVENT = "whatsapp:conversation_updated"


@pytest.fixture
async def zb(storage_url: str) -> Any:
    """The same host on SQLite and on PostgreSQL."""
    async with zaphub(storage_url) as running:
        yield running


async def conversation_of(z: Zaphub, wa_id: str) -> dict[str, Any]:
    listed = (await z.http.get("/api/conversations", headers=z.auth())).json()["conversations"]
    return next(c for c in listed if c["contact"]["wa_id"] == wa_id)


async def patch(z: Zaphub, conversation_id: int, body: Any, token: str | None = None) -> Any:
    return await z.http.patch(f"/api/conversations/{conversation_id}", json=body, headers=z.auth(token))


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
        assert client.of(EVENT) == expected  # once each, though `in_room` is in two rooms
    assert other_number.of(EVENT) == []


async def test_a_manual_reply_takes_the_conversation_over(zb: Zaphub) -> None:
    await zb.inbound("Oi", from_="5511977776666", name="Otto")
    await zb.settle()
    conversation = await conversation_of(zb, "5511977776666")
    client = await zb.connect()
    await zb.send(conversation["id"], {"type": "text", "body": "Aqui é a Ana"})
    event = await client.wait(EVENT)
    assert event == {"conversationId": conversation["id"], "mode": "human", "phoneNumberId": PNID}
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
        assert back == {"conversationId": conversation["id"], "mode": "bot", "phoneNumberId": PNID}
        assert (await conversation_of(z, "5511955554444"))["mode"] == "bot"
