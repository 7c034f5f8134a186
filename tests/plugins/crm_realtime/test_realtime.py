"""Socket.IO ``/crm`` through a real server and the python-socketio client.

Auth refusals, payloads field for field, once-per-socket delivery, rooms and their acks, scope,
token expiry. Meta is the in-process sandbox; nothing is faked inside zaphub.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
import socketio

from core.event_payloads import EVENT_TYPES
from core.models import utcnow
from core.storage import PendingEvent
from plugins.crm_realtime.realtime import ROUTES
from plugins.whatsapp import webhook_builders as wb
from tests.helpers import wait_for
from tests.plugins.crm_realtime.harness import OTHER_PNID, PNID, CrmClient, Zaphub

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


MALFORMED = "malformed token: expected a JWT (three base64url parts; `zaphub token --sub NAME` makes one)"
MISSING = "missing token: connect with auth {token: '<JWT>'} (`zaphub token --sub NAME` makes one)"
BAD_SIGNATURE = (
    "bad signature: the token was not signed with this host's plugins.crm_realtime.jwt_secret "
    "(CRM_JWT_SECRET); `zaphub token --sub NAME`, run with the same config, makes one"
)


async def refused(z: Zaphub, token: str | None, **kwargs: Any) -> dict[str, Any]:
    client = CrmClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(z.url, token, **kwargs)
    assert client.connect_error is not None
    return client.connect_error  # type: ignore[no-any-return]


async def test_clients_without_a_valid_token_are_refused_with_unauthorized(z: Zaphub) -> None:
    now = time.time()
    cases = {
        None: MISSING,
        "": MISSING,
        "not-a-jwt": MALFORMED,
        z.token(ttl=-10): "token expired",
        z.token(extra={"nbf": int(now) + 600}): "token not yet valid (nbf)",
        z.token() + "x": BAD_SIGNATURE,
        z.token(extra={"sub": ""}): "token has no sub claim",
        z.token(extra={"phone_number_ids": []}): "claim phone_number_ids lists no business number",
    }
    for token, reason in cases.items():
        error = await refused(z, token)
        assert error == {"message": "unauthorized", "data": {"reason": reason}}, token
    # A token signed with another secret, and one with alg "none", are refused too.
    import jwt

    forged = jwt.encode({"sub": "eve", "exp": int(now) + 60}, "another-secret-0123456789abcdef0123", "HS256")
    assert (await refused(z, forged))["data"] == {"reason": BAD_SIGNATURE}
    unsigned = jwt.encode({"sub": "eve", "exp": int(now) + 60}, None, "none")
    assert (await refused(z, unsigned))["message"] == "unauthorized"
    # Refusals are counted by reason (a fixed set of codes, never the client's words).
    metrics = (await z.http.get("/metrics")).text
    assert 'zaphub_crm_auth_refused_total{reason="expired"} 1.0' in metrics
    assert 'zaphub_crm_auth_refused_total{reason="missing_token"} 2.0' in metrics


async def test_payloads_match_the_contract_field_for_field(z: Zaphub) -> None:
    client = await z.connect()
    sent_at = int(time.time()) - 30
    await z.inbound("Olá!", name="João Silva", timestamp=sent_at)
    event = await client.wait("whatsapp:message")
    conversation_id = event["conversationId"]
    message_id = event["message"]["id"]
    assert event == {
        "conversationId": conversation_id,
        "message": {
            "id": message_id,
            "body": "Olá!",
            "sender_type": "contact",
            "delivered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sent_at)),  # Meta's time
            "type": "text",
            "wamid": event["message"]["wamid"],
        },
        "contact": {
            "id": event["contact"]["id"],
            "name": "João Silva",
            "phone_number": wb.DEFAULT_FROM,
        },
        "phoneNumberId": PNID,
        "eventId": event["eventId"],
    }
    assert all(isinstance(event[k], int) for k in ("conversationId", "eventId"))
    assert isinstance(message_id, int)

    assert (await client.call("join_conversation", {"conversationId": conversation_id})) == {"ok": True}
    accepted = await z.send(conversation_id, {"type": "text", "body": "Resposta"})
    assert accepted == {
        "messageId": accepted["messageId"],
        "conversationId": conversation_id,
        "status": "queued",
    }
    sent = await client.wait("whatsapp:message_sent")
    assert sent == {
        "messageId": accepted["messageId"],
        "conversationId": conversation_id,
        "message": {
            "id": accepted["messageId"],
            "body": "Resposta",
            "sender_type": "user",
            "delivered_at": sent["message"]["delivered_at"],
            "type": "text",
            "wamid": sent["message"]["wamid"],
        },
        "type": "sent",
        "platform": "whatsapp",
        "phoneNumberId": PNID,
        "eventId": sent["eventId"],
    }
    assert sent["eventId"] > event["eventId"]
    assert ISO_Z.match(sent["message"]["delivered_at"])
    read = await client.wait("whatsapp:message_status", lambda d: d["status"] == "read")
    assert set(read) == {"messageId", "status", "timestamp", "conversationId", "eventId"}
    assert read["messageId"] == accepted["messageId"]
    assert read["timestamp"].isdigit()  # Meta's string of Unix seconds
    statuses = [d["status"] for d in client.of("whatsapp:message_status")]
    assert statuses == ["sent", "delivered", "read"]
    ids = [d["eventId"] for d in client.of("whatsapp:message_status")]
    assert ids == sorted(ids) and ids[0] > sent["eventId"]


async def test_media_automated_and_failed_payloads(z: Zaphub) -> None:
    client = await z.connect()
    image = wb.image(caption="Segue a foto", media_id="img-1234")
    await z.webhook([image], contacts=[wb.contact(wb.DEFAULT_FROM, "João")])
    event = await client.wait("whatsapp:message")
    message = event["message"]
    assert message["type"] == "image"
    assert message["body"] == "Segue a foto"
    assert message["media"] == {
        "url": f"{z.url}/api/messages/{message['id']}/media",
        "mime_type": "image/jpeg",
    }
    # The media URL serves the bytes (fetched from the sandbox's Graph) with the same token.
    media = await z.http.get(message["media"]["url"], headers=z.auth())
    assert media.status_code == 200
    assert media.headers["content-type"] == "image/jpeg"
    assert media.content[:2] == b"\xff\xd8"  # a JPEG
    assert (await z.http.get(message["media"]["url"])).status_code == 401

    # A sticker has no caption: body is null, the key is still there.
    await z.webhook([wb.sticker(media_id="stk-1")], contacts=[wb.contact(wb.DEFAULT_FROM, "João")])
    sticker = await client.wait("whatsapp:message", lambda d: d["message"]["type"] == "sticker")
    assert "body" in sticker["message"]
    assert sticker["message"]["body"] is None

    # An automated reply (a bot sending through the host's send service) is flagged.
    host = z.host
    auto, _ = await host.sender.send(event["conversationId"], "text", {"body": "Recebemos!"}, automated=True)
    sent = await client.wait("whatsapp:message_sent", lambda d: d["messageId"] == auto.id)
    assert sent["message"]["automated"] is True
    assert sent["automated"] is True

    # A number ending in 0000 is undeliverable in the sandbox: a failed status carries Meta's error.
    await z.inbound("oi", from_="5511900000000", name="Maria")
    other = await client.wait("whatsapp:message", lambda d: d["contact"]["phone_number"] == "5511900000000")
    assert (await client.call("join_conversation", {"conversationId": other["conversationId"]})) == {
        "ok": True
    }
    failing = await z.send(other["conversationId"], {"type": "text", "body": "Olá Maria"})
    failed = await client.wait("whatsapp:message_status", lambda d: d["messageId"] == failing["messageId"])
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": 131026, "title": "Message undeliverable"}


async def test_every_socket_gets_each_event_once_and_statuses_only_in_rooms(z: Zaphub) -> None:
    watcher = await z.connect()
    await z.inbound("primeira")
    conversation_id = (await watcher.wait("whatsapp:message"))["conversationId"]
    accepted = await z.send(conversation_id, {"type": "text", "body": "Oi"})
    message_id = accepted["messageId"]
    sent = await watcher.wait("whatsapp:message_sent")

    async def is_read() -> bool:
        response = await z.http.get(f"/api/messages/{message_id}", headers=z.auth())
        return bool(response.json()["status"] == "read")

    await wait_for(is_read, what="the sandbox's statuses")
    await z.settle()

    in_conversation = await z.connect()
    in_message = await z.connect()
    in_both = await z.connect()
    in_none = await z.connect(z.token(sub="bia"))
    assert (await in_conversation.call("join_conversation", {"conversationId": conversation_id})) == {
        "ok": True
    }
    assert (await in_message.call("join_message", {"messageId": message_id})) == {"ok": True}
    assert (await in_both.call("join_conversation", {"conversationId": str(conversation_id)})) == {"ok": True}
    assert (await in_both.call("join_message", {"messageId": message_id})) == {"ok": True}
    # Joining twice is harmless.
    assert (await in_both.call("join_conversation", {"conversationId": conversation_id})) == {"ok": True}

    # Meta reports the message failed after all (failed outranks read): one status event.
    failed = wb.status(sent["message"]["wamid"], "failed", error_code=131026)
    await z.webhook(statuses=[failed])
    await z.inbound("segunda")
    accepted2 = await z.send(conversation_id, {"type": "text", "body": "De novo"})
    for client in (in_conversation, in_both):
        await client.wait(
            "whatsapp:message_status",
            lambda d: d["messageId"] == accepted2["messageId"] and d["status"] == "read",
        )
    for client in (in_conversation, in_message, in_both, in_none):
        await client.wait("whatsapp:message_sent", lambda d: d["messageId"] == accepted2["messageId"])
        await client.wait("whatsapp:message", lambda d: d["message"]["body"] == "segunda")
    await z.settle()

    for client in (in_conversation, in_message, in_both, in_none):
        assert [d["message"]["body"] for d in client.of("whatsapp:message")] == ["segunda"]
        assert [d["messageId"] for d in client.of("whatsapp:message_sent")] == [accepted2["messageId"]]
    first = [
        (d["messageId"], d["status"])
        for d in in_both.of("whatsapp:message_status")
        if d["messageId"] == message_id
    ]
    assert first == [(message_id, "failed")]  # in both rooms, received once
    # in_message is in message:{first} only: nothing of the second message.
    assert [d["status"] for d in in_message.of("whatsapp:message_status")] == ["failed"]
    conversation_statuses = [
        (d["messageId"], d["status"]) for d in in_conversation.of("whatsapp:message_status")
    ]
    assert conversation_statuses == [
        (message_id, "failed"),
        *((accepted2["messageId"], status) for status in ("sent", "delivered", "read")),
    ]
    assert in_none.of("whatsapp:message_status") == []

    # After leaving, statuses stop.
    assert (await in_conversation.call("leave_conversation", {"conversationId": conversation_id})) == {
        "ok": True
    }
    assert (await in_both.call("leave_message", {"messageId": message_id})) == {"ok": True}
    before = len(in_conversation.of("whatsapp:message_status"))
    await z.webhook(statuses=[wb.status(sent["message"]["wamid"], "failed")])  # a duplicate: no event
    third = await z.send(conversation_id, {"type": "text", "body": "Terceira"})
    await in_both.wait("whatsapp:message_status", lambda d: d["messageId"] == third["messageId"])
    await z.settle()
    assert len(in_conversation.of("whatsapp:message_status")) == before
    assert [d["status"] for d in in_message.of("whatsapp:message_status")] == ["failed"]


def test_every_logged_event_type_has_its_audience() -> None:
    """A logged type without a line in ROUTES would reach no socket: add one with the type."""
    assert sorted(ROUTES) == sorted(EVENT_TYPES)


async def test_a_logged_type_without_a_route_reaches_no_one_and_says_so(
    z: Zaphub, caplog: pytest.LogCaptureFixture
) -> None:
    client = await z.connect()
    odd = PendingEvent(
        type="whatsapp:from_the_future",
        conversation_id=None,
        phone_number_id=PNID,
        message_id=None,
        data=b"{}",
    )
    async with z.host.storage.write() as conn:
        await z.host.storage.append_events(conn, [odd], utcnow())
    await z.inbound("depois")  # the next event: the feed has passed the odd one when it arrives
    await client.wait("whatsapp:message")
    assert [name for name, _ in client.events if name.startswith("whatsapp:")] == ["whatsapp:message"]
    assert "event whatsapp:from_the_future has no audience: add a line for it to ROUTES" in caplog.text


async def test_join_answers_errors_for_unknown_and_malformed_ids(z: Zaphub) -> None:
    client = await z.connect()
    await z.inbound("oi")
    event = await client.wait("whatsapp:message")
    cases: list[tuple[str, Any, str]] = [
        ("join_conversation", {"conversationId": 999_999}, "conversation 999999 does not exist"),
        ("join_message", {"messageId": 424_242}, "message 424242 does not exist"),
        ("join_conversation", {"conversationId": "abc"}, "conversationId must be an integer id, got 'abc'"),
        ("join_conversation", {"conversationId": True}, "conversationId must be an integer id, got True"),
        ("join_conversation", {"conversationId": 1.5}, "conversationId must be an integer id, got 1.5"),
        ("join_conversation", {"conversationId": -3}, "conversationId must be a positive integer id, got -3"),
        (
            "join_conversation",
            {"conversationId": 2**70},
            f"conversationId must be a positive integer id, got {2**70}",
        ),
        ("join_conversation", {}, "conversationId must be an integer id, got nothing"),
        ("join_conversation", None, "conversationId must be an integer id, got nothing"),
        ("join_message", {"conversationId": 1}, "messageId must be an integer id, got nothing"),
        ("leave_message", {"messageId": "x"}, "messageId must be an integer id, got 'x'"),
    ]
    for name, data, error in cases:
        assert (await client.call(name, data)) == {"ok": False, "error": error}, (name, data)
    # Valid forms: a number, a string of digits.
    assert (await client.call("join_message", {"messageId": event["message"]["id"]})) == {"ok": True}
    assert (await client.call("join_conversation", {"conversationId": str(event["conversationId"])})) == {
        "ok": True
    }


async def test_scope_limits_events_and_joins_to_the_tokens_business_numbers(z: Zaphub) -> None:
    everything = await z.connect(z.token(sub="admin"))
    ours = await z.connect(z.token(sub="ana", scope=[PNID]))
    theirs = await z.connect(z.token(sub="rui", scope=[OTHER_PNID]))
    both = await z.connect(z.token(sub="lia", extra={"phone_number_ids": f"{PNID},{OTHER_PNID}"}))

    await z.inbound("para nós")
    other_msg = wb.text("para eles", from_="5521988887777")
    await z.webhook([other_msg], phone_number_id=OTHER_PNID)
    for client in (everything, both):
        await client.wait("whatsapp:message", lambda d: d["phoneNumberId"] == OTHER_PNID)
    await ours.wait("whatsapp:message")
    await theirs.wait("whatsapp:message")
    await z.settle()
    assert [d["message"]["body"] for d in ours.of("whatsapp:message")] == ["para nós"]
    assert [d["message"]["body"] for d in theirs.of("whatsapp:message")] == ["para eles"]
    assert sorted(d["message"]["body"] for d in both.of("whatsapp:message")) == ["para eles", "para nós"]
    assert len(everything.of("whatsapp:message")) == 2

    ours_event = ours.of("whatsapp:message")[0]
    refusal = await theirs.call("join_conversation", {"conversationId": ours_event["conversationId"]})
    assert refusal["ok"] is False
    assert refusal["error"].startswith(f"forbidden: conversation {ours_event['conversationId']} belongs to ")
    refusal = await theirs.call("join_message", {"messageId": ours_event["message"]["id"]})
    assert refusal["ok"] is False
    assert refusal["error"].startswith("forbidden:")
    assert (await ours.call("join_conversation", {"conversationId": ours_event["conversationId"]})) == {
        "ok": True
    }


async def test_a_socket_is_disconnected_when_its_token_expires(z: Zaphub) -> None:
    exp = int(time.time()) + 2
    short = await z.connect(z.token(extra={"exp": exp}))
    long = await z.connect(z.token(ttl=600))
    await asyncio.wait_for(short.disconnected.wait(), 10)
    assert time.time() >= exp - 0.05  # not before exp (no leeway configured)
    assert short.disconnect_reason == "server disconnect"
    assert not long.disconnected.is_set()
    await z.inbound("ainda aqui")
    await long.wait("whatsapp:message")
    metrics = (await z.http.get("/metrics")).text
    assert "zaphub_crm_sockets 1.0" in metrics


async def test_readiness_reports_the_emit_loop(z: Zaphub) -> None:
    ready = await z.http.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["crm_realtime"] == "ok"


async def test_the_seed_handshake_over_raw_polling_works(z: Zaphub) -> None:
    """Engine.IO v4 / Socket.IO v5 on the wire: what any socket.io 4.x client does first."""
    response = await z.http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
    assert response.status_code == 200
    assert response.text.startswith('0{"sid":')
