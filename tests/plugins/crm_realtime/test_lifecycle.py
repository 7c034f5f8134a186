"""Edits, deletions and reactions over Socket.IO, REST and the change feed, on SQLite and PostgreSQL.

A real server on a free port, real Socket.IO clients, webhooks signed as Meta posts them.
"""

from __future__ import annotations

from typing import Any

from plugins.whatsapp import webhook_builders as wb
from tests.plugins.crm_realtime.harness import OTHER_PNID, PNID, Zaphub, zaphub

CHANGE_EVENTS = ("whatsapp:message_updated", "whatsapp:message_deleted", "whatsapp:message_reaction")


async def messages_of(z: Zaphub, conversation_id: int) -> list[dict[str, Any]]:
    response = await z.http.get(f"/api/conversations/{conversation_id}/messages", headers=z.auth())
    assert response.status_code == 200, response.text
    return response.json()["messages"]  # type: ignore[no-any-return]


async def test_changes_reach_the_number_s_sockets_and_rest_shows_them(storage_url: str) -> None:
    async with zaphub(storage_url) as z:
        everyone = await z.connect()
        scoped_elsewhere = await z.connect(z.token(sub="outro", scope=[OTHER_PNID]))
        typo = wb.text("Quero 2 caixas")
        other = wb.text("Pode entregar amanhã?")
        await z.webhook([typo, other], contacts=[wb.contact(wb.DEFAULT_FROM, "Olga Faria")])
        first = await everyone.wait("whatsapp:message", lambda d: d["message"]["wamid"] == typo["id"])
        second = await everyone.wait("whatsapp:message", lambda d: d["message"]["wamid"] == other["id"])
        first_id, second_id, conv_id = (
            first["message"]["id"],
            second["message"]["id"],
            first["conversationId"],
        )

        await z.webhook([wb.edit(typo["id"], "Quero 3 caixas", timestamp=1_900_000_000)])
        updated = await everyone.wait("whatsapp:message_updated")
        assert updated == {
            "messageId": first_id,
            "conversationId": conv_id,
            "body": "Quero 3 caixas",
            "editedAt": "2030-03-17T17:46:40Z",
            "phoneNumberId": PNID,
            "eventId": updated["eventId"],
        }
        await z.webhook([wb.reaction(other["id"], "❤️", timestamp=1_900_000_001)])
        reaction = await everyone.wait("whatsapp:message_reaction")
        assert (reaction["messageId"], reaction["emoji"], reaction["from"]) == (
            second_id,
            "❤️",
            wb.DEFAULT_FROM,
        )
        await z.webhook([wb.revoke(other["id"], timestamp=1_900_000_002)])
        deleted = await everyone.wait("whatsapp:message_deleted")
        assert (deleted["messageId"], deleted["deletedAt"]) == (second_id, "2030-03-17T17:46:42Z")
        assert updated["eventId"] < reaction["eventId"] < deleted["eventId"]

        listed = await messages_of(z, conv_id)
        assert [m["id"] for m in listed] == [first_id, second_id]  # none became a message
        assert (listed[0]["body"], listed[0]["edited_at"], listed[0]["deleted_at"]) == (
            "Quero 3 caixas",
            "2030-03-17T17:46:40Z",
            None,
        )
        assert listed[0]["reactions"] == []
        assert (listed[1]["body"], listed[1]["deleted_at"]) == (None, "2030-03-17T17:46:42Z")
        assert listed[1]["reactions"] == [
            {"emoji": "❤️", "from": wb.DEFAULT_FROM, "at": "2030-03-17T17:46:41Z"}
        ]
        detail = (await z.http.get(f"/api/messages/{second_id}", headers=z.auth())).json()
        assert detail["body"] is None and detail["reactions"] == listed[1]["reactions"]
        conv = (await z.http.get(f"/api/conversations/{conv_id}", headers=z.auth())).json()
        assert conv["last_message"]["deleted_at"] == "2030-03-17T17:46:42Z"

        # The change feed has them in order; a token scoped to another number saw none.
        feed = (
            await z.http.get("/api/events", params={"types": ",".join(CHANGE_EVENTS)}, headers=z.auth())
        ).json()
        assert [e["type"] for e in feed["events"]] == [
            "whatsapp:message_updated",
            "whatsapp:message_reaction",
            "whatsapp:message_deleted",
        ]
        await z.settle()
        assert not any(name in CHANGE_EVENTS for name, _ in scoped_elsewhere.events)
        assert scoped_elsewhere.of("whatsapp:message") == []


async def test_a_reconnecting_client_gets_the_changes_it_missed(storage_url: str) -> None:
    async with zaphub(storage_url) as z:
        client = await z.connect()
        original = wb.text("Oi")
        await z.webhook([original])
        seen = await client.wait("whatsapp:message")
        await client.close()

        await z.webhook([wb.edit(original["id"], "Oi, tudo bem?"), wb.reaction(original["id"], "👍")])
        await z.settle()
        resumed = await z.connect(last_event_id=seen["eventId"])
        await resumed.wait("whatsapp:message_reaction")
        assert [name for name, _ in resumed.events if name.startswith("whatsapp:")] == [
            "whatsapp:message_updated",
            "whatsapp:message_reaction",
        ]


async def test_an_edit_before_its_message_arrives_with_it(storage_url: str) -> None:
    async with zaphub(storage_url) as z:
        client = await z.connect()
        original = wb.text("errado")
        await z.webhook([wb.edit(original["id"], "certo")])  # Meta delivered the edit first
        await z.settle()
        assert client.events == []
        await z.webhook([original])
        updated = await client.wait("whatsapp:message_updated")
        received = client.of("whatsapp:message")[0]
        assert received["message"]["body"] == "errado"  # the message as it was sent, then its edit
        assert received["eventId"] < updated["eventId"] and updated["body"] == "certo"
        (stored,) = await messages_of(z, received["conversationId"])
        assert stored["body"] == "certo" and stored["edited_at"] is not None


async def test_content_meta_could_not_deliver_carries_its_error(storage_url: str) -> None:
    async with zaphub(storage_url) as z:
        client = await z.connect()
        await z.webhook([wb.unsupported("poll_creation", code=131051)])
        event = await client.wait("whatsapp:message")
        assert event["message"]["error"]["code"] == 131051
        assert event["message"]["error"]["title"]
        (stored,) = await messages_of(z, event["conversationId"])
        assert stored["error"] == event["message"]["error"]


async def test_a_number_change_moves_the_contact_and_its_conversation(storage_url: str) -> None:
    async with zaphub(storage_url) as z:
        client = await z.connect()
        old, new = "5511977770001", "5511977770002"
        await z.inbound("Oi", from_=old, name="Caio Prado")
        first = await client.wait("whatsapp:message")
        await z.webhook([wb.system(new, from_=old)])  # Meta sends no contacts[] with it
        await z.inbound("Agora é este número", from_=new, name="Caio Prado")
        later = await client.wait("whatsapp:message", lambda d: d["message"]["body"] == "Agora é este número")

        assert later["conversationId"] == first["conversationId"]
        assert later["contact"]["id"] == first["contact"]["id"]
        contact = (await z.http.get(f"/api/contacts/{first['contact']['id']}", headers=z.auth())).json()
        assert (contact["wa_id"], contact["phone_number"], contact["name"]) == (new, new, "Caio Prado")
        thread = await messages_of(z, first["conversationId"])
        assert [m["type"] for m in thread] == ["text", "system", "text"]  # the notice stays in the thread
