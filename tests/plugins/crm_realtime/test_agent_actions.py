"""What an agent does besides replying: start a conversation, read receipts, typing, search.

Real server, real HTTP, the sandbox as Meta (its request log shows what Graph was asked).
"""

from __future__ import annotations

import time
from typing import Any

from plugins.whatsapp import webhook_builders as wb
from tests.helpers import wait_for
from tests.plugins.crm_realtime.harness import OTHER_PNID, PNID, Zaphub
from tests.plugins.crm_realtime.test_rest import error_of

TEMPLATE = {"type": "template", "name": "order_update", "language": "pt_BR"}


async def graph_requests(z: Zaphub, predicate: Any) -> list[dict[str, Any]]:
    requests = (await z.http.get("/_sandbox/graph/_sandbox/requests")).json()
    return [r["json"] for r in requests if r["method"] == "POST" and predicate(r.get("json") or {})]


async def conversations(z: Zaphub, **params: Any) -> list[dict[str, Any]]:
    response = await z.http.get("/api/conversations", params={"limit": 200, **params}, headers=z.auth())
    assert response.status_code == 200, response.text
    return response.json()["conversations"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Starting a conversation
# ---------------------------------------------------------------------------------------------


async def test_starting_a_conversation_creates_contact_and_conversation_and_sends(zb: Zaphub) -> None:
    body = {**TEMPLATE, "to": "+55 (11) 98765-4321", "phoneNumberId": PNID}
    first = await zb.http.post("/api/messages", json=body, headers={**zb.auth(), "Idempotency-Key": "s-1"})
    assert first.status_code == 202, first.text
    accepted = first.json()
    assert set(accepted) == {"messageId", "conversationId", "status"}
    assert accepted["status"] == "queued"

    (conversation,) = [c for c in await conversations(zb) if c["contact"]["wa_id"] == "5511987654321"]
    assert conversation["id"] == accepted["conversationId"]
    assert conversation["phone_number_id"] == PNID
    assert conversation["window_open"] is False  # nobody wrote yet: templates only
    assert conversation["mode"] == "human"  # an agent wrote first: the agent owns it (handoff)

    async def sent() -> list[dict[str, Any]]:
        return await graph_requests(zb, lambda j: j.get("to", "").lstrip("+") == "5511987654321")

    await wait_for(sent, what="the template to reach Graph")
    (graph_body,) = await sent()
    assert graph_body["type"] == "template"
    assert graph_body["template"]["name"] == "order_update"

    # The same key and body: the first answer again, nothing sent twice.
    again = await zb.http.post("/api/messages", json=body, headers={**zb.auth(), "Idempotency-Key": "s-1"})
    assert again.status_code == 202
    assert again.json() == accepted
    assert again.headers.get("idempotent-replayed") == "true"
    conflict = await zb.http.post(
        "/api/messages", json={**body, "name": "other"}, headers={**zb.auth(), "Idempotency-Key": "s-1"}
    )
    error_of(conflict, 409, "conflict")

    # Starting again with someone who has a conversation reuses it.
    second = await zb.http.post("/api/messages", json={**body, "to": "5511987654321"}, headers=zb.auth())
    assert second.status_code == 202, second.text
    assert second.json()["conversationId"] == accepted["conversationId"]
    messages = (
        await zb.http.get(f"/api/conversations/{accepted['conversationId']}/messages", headers=zb.auth())
    ).json()["messages"]
    assert [m["id"] for m in messages] == [accepted["messageId"], second.json()["messageId"]]


async def test_free_form_needs_an_open_window_and_a_refusal_stores_nothing(zb: Zaphub) -> None:
    text = {"type": "text", "body": "Olá!", "to": "+5511955554444", "phoneNumberId": PNID}
    message = error_of(
        await zb.http.post("/api/messages", json=text, headers=zb.auth()), 422, "window_closed"
    )
    assert "template" in message
    assert [c for c in await conversations(zb) if c["contact"]["wa_id"] == "5511955554444"] == []

    # Once the customer wrote, the window is open and free-form goes to their conversation.
    await zb.inbound("Oi", from_="5511955554444", name="Rita")
    await zb.settle()
    (conversation,) = [c for c in await conversations(zb) if c["contact"]["wa_id"] == "5511955554444"]
    started = await zb.http.post("/api/messages", json=text, headers=zb.auth())
    assert started.status_code == 202, started.text
    assert started.json()["conversationId"] == conversation["id"]


async def test_start_picks_the_business_number_from_the_scope_or_asks_for_it(z: Zaphub) -> None:
    body = {**TEMPLATE, "to": "+5511944443333"}
    # Two numbers served, the token may use both: which one is ambiguous.
    message = error_of(
        await z.http.post("/api/messages", json=body, headers=z.auth()), 400, "validation_error"
    )
    assert "phoneNumberId is required" in message
    assert PNID in message and OTHER_PNID in message

    # A token scoped to one number needs no phoneNumberId.
    only_other = z.auth(z.token(sub="ana", scope=[OTHER_PNID]))
    started = await z.http.post("/api/messages", json=body, headers=only_other)
    assert started.status_code == 202, started.text
    detail = (await z.http.get(f"/api/messages/{started.json()['messageId']}", headers=z.auth())).json()
    assert detail["phone_number_id"] == OTHER_PNID

    # …and may not send from a number outside its scope.
    refused = await z.http.post("/api/messages", json={**body, "phoneNumberId": PNID}, headers=only_other)
    assert "scope" in error_of(refused, 403, "forbidden")
    unknown = await z.http.post("/api/messages", json={**body, "phoneNumberId": "123"}, headers=z.auth())
    assert "not a business number" in error_of(unknown, 400, "validation_error")

    for bad, fix in [
        ({**body, "phoneNumberId": PNID, "to": "11 9999"}, "international format"),
        ({**body, "phoneNumberId": PNID, "to": "+55 11 abc"}, "international format"),
        ({**body, "phoneNumberId": PNID, "reply_to": 1}, "reply_to"),
    ]:
        assert fix in error_of(
            await z.http.post("/api/messages", json=bad, headers=z.auth()), 400, "validation_error"
        )
    error_of(
        await z.http.post("/api/messages", json={**TEMPLATE, "phoneNumberId": PNID}, headers=z.auth()),
        400,
        "validation_error",
    )
    error_of(await z.http.post("/api/messages", json=body), 401, "unauthorized")


# ---------------------------------------------------------------------------------------------
# Read receipts and typing
# ---------------------------------------------------------------------------------------------


async def test_read_and_typing_acknowledge_the_last_inbound_message_at_meta(zb: Zaphub) -> None:
    await zb.inbound("Primeira", from_="5511933332222", name="Caio")
    last_wamid = await zb.inbound("Segunda", from_="5511933332222", name="Caio")
    await zb.settle()
    (conversation,) = [c for c in await conversations(zb) if c["contact"]["wa_id"] == "5511933332222"]
    await zb.send(conversation["id"], {"type": "text", "body": "Já vejo"})  # outbound: not acknowledged
    last_inbound = conversation["last_message"]["id"]

    read = await zb.http.post(f"/api/conversations/{conversation['id']}/read", headers=zb.auth())
    assert read.status_code == 200, read.text
    assert read.json() == {"conversationId": conversation["id"], "messageId": last_inbound}
    typing = await zb.http.post(f"/api/conversations/{conversation['id']}/typing", json={}, headers=zb.auth())
    assert typing.status_code == 200, typing.text

    receipts = await graph_requests(zb, lambda j: j.get("status") == "read")
    assert [(r["message_id"], "typing_indicator" in r) for r in receipts] == [
        (last_wamid, False),
        (last_wamid, True),
    ]
    assert receipts[1]["typing_indicator"] == {"type": "text"}


async def test_read_refuses_what_it_cannot_acknowledge(z: Zaphub) -> None:
    started = await z.http.post(
        "/api/messages", json={**TEMPLATE, "to": "+5511922221111", "phoneNumberId": PNID}, headers=z.auth()
    )
    conversation_id = started.json()["conversationId"]
    for action in ("read", "typing"):
        response = await z.http.post(f"/api/conversations/{conversation_id}/{action}", headers=z.auth())
        assert "no inbound message" in error_of(response, 409, "nothing_to_acknowledge")
        other_scope = z.auth(z.token(sub="ana", scope=[OTHER_PNID]))
        response = await z.http.post(f"/api/conversations/{conversation_id}/{action}", headers=other_scope)
        error_of(response, 403, "forbidden")
        error_of(await z.http.post(f"/api/conversations/999999/{action}", headers=z.auth()), 404, "not_found")
    assert await graph_requests(z, lambda j: j.get("status") == "read") == []


# ---------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------


async def seed_people(z: Zaphub) -> dict[str, int]:
    now = int(time.time())
    people = [
        ("5511900000001", "Lívia Sá"),
        ("5511900000002", "Otávio Brandão"),
        ("5521900000003", "LIVIO_50%"),
    ]
    for i, (number, name) in enumerate(people):
        await z.webhook(
            [wb.text("Oi", from_=number, timestamp=now - 60 + i)], contacts=[wb.contact(number, name)]
        )
    await z.settle()
    return {c["contact"]["name"]: c["id"] for c in await conversations(z)}


async def test_search_by_name_ignores_case_and_accents_and_by_phone_compares_digits(zb: Zaphub) -> None:
    ids = await seed_people(zb)

    async def contact_names(q: str, token: str | None = None) -> list[str]:
        response = await zb.http.get("/api/contacts", params={"q": q}, headers=zb.auth(token))
        assert response.status_code == 200, response.text
        return [c["name"] for c in response.json()["contacts"]]

    async def conversation_names(**params: Any) -> list[str]:
        return [c["contact"]["name"] for c in await conversations(zb, **params)]

    assert await contact_names("livia") == ["Lívia Sá"]
    assert await contact_names("LÍVIA") == ["Lívia Sá"]
    assert await contact_names("brandao") == ["Otávio Brandão"]
    assert await contact_names("liv") == ["Lívia Sá", "LIVIO_50%"]  # by name
    assert await contact_names("_50%") == ["LIVIO_50%"]  # LIKE wildcards are literal
    assert await contact_names("a_s") == []  # "_" is not "any character"
    assert await contact_names("+55 (11) 9000-0000") == ["Lívia Sá", "Otávio Brandão"]
    assert await contact_names("00002") == ["Otávio Brandão"]
    assert await contact_names("nobody") == []

    # Newest activity first, as the unfiltered list.
    assert await conversation_names(q="livi") == ["LIVIO_50%", "Lívia Sá"]
    assert await conversation_names(q="5521") == ["LIVIO_50%"]
    assert await conversation_names(q="LIVIA", mode="bot") == ["Lívia Sá"]
    assert await conversation_names(q="livia", mode="human") == []
    assert len(await conversation_names(q="  ")) == len(ids)  # blank: no filter
    # A search pages with the listing's cursor: one match a page, none repeated, none skipped.
    first = (
        await zb.http.get("/api/conversations", params={"q": "livi", "limit": 1}, headers=zb.auth())
    ).json()
    after = {"q": "livi", "limit": 1, "before": first["next_before"]}
    second = (await zb.http.get("/api/conversations", params=after, headers=zb.auth())).json()
    assert [c["contact"]["name"] for c in first["conversations"] + second["conversations"]] == [
        "LIVIO_50%",
        "Lívia Sá",
    ]
    assert second["next_before"] is None
    error_of(await zb.http.get("/api/contacts", headers=zb.auth()), 400, "validation_error")
    error_of(await zb.http.get("/api/contacts", params={"q": ""}, headers=zb.auth()), 400, "validation_error")
    bad_mode = await zb.http.get("/api/conversations", params={"mode": "robot"}, headers=zb.auth())
    message = error_of(bad_mode, 400, "validation_error")
    assert "bot" in message and "human" in message


async def test_search_keeps_to_the_tokens_scope(z: Zaphub) -> None:
    await seed_people(z)
    await z.webhook(
        [wb.text("Oi", from_="5511900000009")],
        phone_number_id=OTHER_PNID,
        contacts=[wb.contact("5511900000009", "Lívia Outra")],
    )
    await z.settle()
    scoped = z.auth(z.token(sub="ana", scope=[PNID]))
    found = (await z.http.get("/api/contacts", params={"q": "livia"}, headers=scoped)).json()["contacts"]
    assert [c["name"] for c in found] == ["Lívia Sá"]
    listed = (await z.http.get("/api/conversations", params={"q": "livia"}, headers=scoped)).json()
    assert [c["contact"]["name"] for c in listed["conversations"]] == ["Lívia Sá"]
    everyone = (await z.http.get("/api/contacts", params={"q": "livia"}, headers=z.auth())).json()
    assert sorted(c["name"] for c in everyone["contacts"]) == ["Lívia Outra", "Lívia Sá"]


async def test_a_name_change_is_found_under_the_new_name(z: Zaphub) -> None:
    await z.inbound("Oi", from_="5511900000077", name="Zé")
    await z.inbound("Oi de novo", from_="5511900000077", name="José Araújo")
    await z.settle()
    found = (await z.http.get("/api/contacts", params={"q": "araujo"}, headers=z.auth())).json()["contacts"]
    assert [c["name"] for c in found] == ["José Araújo"]
    gone = (await z.http.get("/api/contacts", params={"q": "zé"}, headers=z.auth())).json()["contacts"]
    assert gone == []


# ---------------------------------------------------------------------------------------------
# Content Meta could not deliver
# ---------------------------------------------------------------------------------------------


async def test_a_message_meta_could_not_deliver_carries_its_error(zb: Zaphub) -> None:
    client = await zb.connect()
    await zb.webhook(
        [wb.unsupported("poll_creation", code=131051, from_="5511911112222")],
        contacts=[wb.contact("5511911112222", "Pri")],
    )
    await zb.webhook(
        [wb.text("normal", from_="5511911112222")], contacts=[wb.contact("5511911112222", "Pri")]
    )
    event = await client.wait("whatsapp:message", lambda e: e["message"]["type"] == "unsupported")
    assert event["message"]["error"]["code"] == 131051
    assert event["message"]["error"]["title"]
    normal = await client.wait("whatsapp:message", lambda e: e["message"]["type"] == "text")
    assert "error" not in normal["message"]

    messages = (
        await zb.http.get(f"/api/conversations/{event['conversationId']}/messages", headers=zb.auth())
    ).json()["messages"]
    assert [(m["type"], m["error"]) for m in messages] == [
        ("unsupported", {"code": 131051, "title": event["message"]["error"]["title"]}),
        ("text", None),
    ]
