"""The seed's JavaScript client (socket.io-client 4, Node) against a real zaphub.

Needs ``node`` and ``npm ci`` in tests/e2e/js; skipped with the reason otherwise (failed in CI).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from plugins.whatsapp import webhook_builders as wb
from tests.plugins.crm_realtime.harness import NodeClient, Zaphub, require_node, zaphub

pytestmark = pytest.mark.js


@pytest.fixture
async def z(tmp_path: Path) -> AsyncIterator[Zaphub]:
    require_node()
    # A short heartbeat: python-engineio holds a closed long-polling client's last GET until the
    # next ping, and the server's shutdown waits for that request.
    heartbeat = {"ping_interval_seconds": 1, "ping_timeout_seconds": 2}
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}", crm=heartbeat) as running:
        yield running


@contextlib.asynccontextmanager
async def node_clients() -> AsyncIterator[list[NodeClient]]:
    started: list[NodeClient] = []
    try:
        yield started
    finally:
        for client in started:
            await client.close()


MALFORMED = "malformed token: expected a JWT (three base64url parts; `zaphub token --sub NAME` makes one)"


async def test_the_seed_client_is_refused_without_a_valid_token(z: Zaphub) -> None:
    async with node_clients() as clients:
        for token, reason in (("not-a-jwt", MALFORMED), (z.token(ttl=-5), "token expired")):
            client = await NodeClient.start(z.url, token)
            clients.append(client)
            error = await client.wait("connect_error")
            assert error == {"message": "unauthorized", "data": {"reason": reason}}


async def test_the_seed_client_sees_messages_sends_and_statuses(z: Zaphub) -> None:
    async with node_clients() as clients:
        # The seed's defaults: long-polling first, then upgraded to websocket.
        joined = await NodeClient.start(z.url, z.token(sub="ana"))
        # A client that joins nothing, held on long-polling for the whole test.
        watcher = await NodeClient.start(
            z.url, z.token(sub="bia"), ZAPHUB_JOIN="0", ZAPHUB_TRANSPORTS="polling"
        )
        clients += [joined, watcher]
        assert (await joined.wait("open"))["transport"] == "polling"
        await joined.wait("upgrade", lambda d: d["transport"] == "websocket")
        await joined.wait("connect")
        assert (await watcher.wait("connect"))["transport"] == "polling"

        await z.inbound("Olá! Qual o preço?", name="João Silva")
        for client in (joined, watcher):
            event = await client.wait("whatsapp:message")
            assert event["message"]["body"] == "Olá! Qual o preço?"
            assert event["message"]["sender_type"] == "contact"
            assert event["contact"]["name"] == "João Silva"
        conversation_id = event["conversationId"]
        assert (await joined.wait("join_conversation")) == {
            "conversationId": conversation_id,
            "ack": {"ok": True},
        }

        accepted = await z.send(conversation_id, {"type": "text", "body": "Nossa tabela de preços"})
        message_id = accepted["messageId"]
        for client in (joined, watcher):
            sent = await client.wait("whatsapp:message_sent")
            assert sent["messageId"] == message_id
            assert sent["type"] == "sent"
            assert sent["platform"] == "whatsapp"
            assert sent["message"]["sender_type"] == "user"
        await joined.wait("whatsapp:message_status", lambda d: d["status"] == "read")
        assert [s["status"] for s in joined.of("whatsapp:message_status")] == ["sent", "delivered", "read"]

        # In the conversation's room and the message's: a status still arrives once.
        assert (await joined.emit("join_message", {"messageId": message_id})) == {"ok": True}
        assert (await joined.emit("join_message", {"messageId": 987654})) == {
            "ok": False,
            "error": "message 987654 does not exist",
        }
        wamid = sent["message"]["wamid"]
        await z.webhook(statuses=[wb.status(wamid, "failed", error_code=131026)])
        failed = await joined.wait("whatsapp:message_status", lambda d: d["status"] == "failed")
        assert failed["error"] == {"code": 131026, "title": "Message undeliverable"}
        await z.inbound("Obrigado")  # a later event: everything before it has been delivered
        for client in (joined, watcher):
            await client.wait("whatsapp:message", lambda d: d["message"]["body"] == "Obrigado")
        assert [s["status"] for s in joined.of("whatsapp:message_status")] == [
            "sent",
            "delivered",
            "read",
            "failed",
        ]
        assert watcher.of("whatsapp:message_status") == []  # statuses reach only the rooms
        for client in (joined, watcher):
            assert len(client.of("whatsapp:message")) == 2
            assert len(client.of("whatsapp:message_sent")) == 1


def test_the_lockfile_pins_socket_io_client_4() -> None:
    import json

    lock: dict[str, Any] = json.loads((Path(__file__).parent / "js" / "package-lock.json").read_text())
    version = lock["packages"]["node_modules/socket.io-client"]["version"]
    assert version.startswith("4.")
