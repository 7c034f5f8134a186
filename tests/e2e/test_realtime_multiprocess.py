"""Two real ``zaphub run`` processes on one PostgreSQL and one Redis serve one ``/crm`` namespace.

A webhook posted to A reaches a client connected to B; a send through B reaches a client on A,
with its statuses in A's rooms. This is the deployment of docs/operations.md behind a load balancer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from core.config import convert_section
from plugins.crm_realtime.config import CrmRealtimeSettings
from plugins.whatsapp import webhook_builders as wb
from tests.helpers import ZaphubProcess, free_port, wait_for
from tests.plugins.crm_realtime.harness import (
    APP_SECRET,
    CrmClient,
    NodeClient,
    crm_config,
    issue_token,
    two_processes,
)
from tests.plugins.crm_realtime.test_relay import metric, redis_server_binary, start_redis

__all__ = ["redis_server_binary"]  # a fixture, imported for the outage test

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


async def subscribers(redis_url: str, channel: str) -> int:
    client = aioredis.from_url(redis_url)
    try:
        counts = await client.pubsub_numsub(channel)
        return int(counts[0][1])
    finally:
        await client.aclose()


@pytest.mark.parametrize("client_on_a", ["python", pytest.param("js", marks=pytest.mark.js)])
async def test_events_cross_processes_through_redis(
    tmp_path: Path, fresh_postgres_url: str, redis_test_url: str, redis_channel: str, client_on_a: str
) -> None:
    with two_processes(tmp_path, fresh_postgres_url, redis_test_url, redis_channel) as (a, b):
        section = crm_config(fresh_postgres_url, 0)["plugins"]["crm_realtime"]
        token = issue_token(convert_section(section, CrmRealtimeSettings, "plugins.crm_realtime"), sub="ana")

        on_b = CrmClient()
        await on_b.connect(b.url, token)
        on_a: Any
        if client_on_a == "js":
            on_a = await NodeClient.start(a.url, token, ZAPHUB_TRANSPORTS="websocket")
            await on_a.wait("connect")
        else:
            on_a = CrmClient()
            await on_a.connect(a.url, token)
        try:
            # Each process subscribes to the channel when its first client connects.
            await wait_for(
                lambda: _at_least(subscribers(redis_test_url, redis_channel), 2), what="2 subscribers"
            )
            async with httpx.AsyncClient(timeout=10) as http:
                # A webhook posted to A reaches the client on B (and the one on A).
                body, headers = wb.signed(
                    wb.envelope(messages=[wb.text("Olá de A", from_="5511933334444")]), APP_SECRET
                )
                response = await http.post(f"{a.url}/meta-whatsapp/webhook", content=body, headers=headers)
                assert response.status_code == 200, response.text
                event = await on_b.wait("whatsapp:message", lambda d: d["message"]["body"] == "Olá de A")
                await on_a.wait("whatsapp:message", lambda d: d["message"]["body"] == "Olá de A")
                conversation_id = event["conversationId"]
                if client_on_a == "js":  # the seed client joins the conversation by itself
                    joined = await on_a.wait("join_conversation")
                    assert joined["ack"] == {"ok": True}
                else:
                    assert (await on_a.call("join_conversation", {"conversationId": conversation_id})) == {
                        "ok": True
                    }

                # A send through B reaches the client on A, then its statuses reach A's room.
                response = await http.post(
                    f"{b.url}/api/conversations/{conversation_id}/messages",
                    json={"type": "text", "body": "Resposta via B"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code == 202, response.text
                message_id = response.json()["messageId"]
                sent = await on_a.wait("whatsapp:message_sent", lambda d: d["messageId"] == message_id)
                assert sent["message"]["body"] == "Resposta via B"
                await on_a.wait(
                    "whatsapp:message_status",
                    lambda d: d["messageId"] == message_id and d["status"] == "read",
                )
                await on_b.wait("whatsapp:message_sent", lambda d: d["messageId"] == message_id)

                # Once per socket across processes: a later event marks the end of the stream.
                body, headers = wb.signed(
                    wb.envelope(messages=[wb.text("fim", from_="5511933334444")]), APP_SECRET
                )
                assert (
                    await http.post(f"{b.url}/meta-whatsapp/webhook", content=body, headers=headers)
                ).status_code == 200
                await on_a.wait("whatsapp:message", lambda d: d["message"]["body"] == "fim")
                await on_b.wait("whatsapp:message", lambda d: d["message"]["body"] == "fim")
            for client in (on_a, on_b):
                assert [d["message"]["body"] for d in client.of("whatsapp:message")] == ["Olá de A", "fim"]
                assert [d["messageId"] for d in client.of("whatsapp:message_sent")] == [message_id]
            assert [d["status"] for d in on_a.of("whatsapp:message_status")] == ["sent", "delivered", "read"]
            assert on_b.of("whatsapp:message_status") == []  # B's client joined no room
        finally:
            await on_b.close()
            await on_a.close()


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count >= n)


async def test_redis_killed_and_restarted_mid_stream_loses_and_repeats_nothing(
    tmp_path: Path, fresh_postgres_url: str, redis_server_binary: str, redis_channel: str
) -> None:
    # A Redis of this test's own on a free port (never the shared one): killed, then restarted.
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    redis = [start_redis(redis_server_binary, redis_url, tmp_path)]
    try:
        with two_processes(tmp_path, fresh_postgres_url, redis_url, redis_channel) as (a, b):
            section = crm_config(fresh_postgres_url, 0)["plugins"]["crm_realtime"]
            settings = convert_section(section, CrmRealtimeSettings, "plugins.crm_realtime")
            token = issue_token(settings, sub="ana")
            clients = []
            for proc in (a, b):
                client = CrmClient()
                await client.connect(proc.url, token)
                clients.append(client)
            await wait_for(lambda: _at_least(subscribers(redis_url, redis_channel), 2), what="2 subscribers")
            sent: list[str] = []
            async with httpx.AsyncClient(timeout=10) as http:

                async def inbound(proc: ZaphubProcess, text: str) -> None:
                    body, headers = wb.signed(
                        wb.envelope(messages=[wb.text(text, from_="5511933334444")]), APP_SECRET
                    )
                    response = await http.post(
                        f"{proc.url}/meta-whatsapp/webhook", content=body, headers=headers
                    )
                    assert response.status_code == 200, response.text
                    sent.append(text)

                for i in range(60):
                    if i == 20:
                        redis[0].kill()  # SIGKILL: no goodbye to the subscribers
                        redis[0].wait(10)
                    if i == 40:
                        redis.append(start_redis(redis_server_binary, redis_url, tmp_path))
                    await inbound(a if i % 2 else b, f"m{i}")
                await inbound(b, "fim")
                for client in clients:
                    await client.wait("whatsapp:message", lambda d: d["message"]["body"] == "fim", within=60)
                metrics = [(await http.get(f"{proc.url}/metrics")).text for proc in (a, b)]
            for client in clients:
                got = client.of("whatsapp:message")
                assert [d["message"]["body"] for d in got] == sent, "a gap, a duplicate or a reorder"
                ids = [d["eventId"] for d in got]
                assert ids == sorted(set(ids))
            # The process that does not dispatch hooks got part of the stream from the log.
            from_log = sum(
                metric(text, 'zaphub_crm_events_from_log_total{event="whatsapp:message"}', default=0)
                for text in metrics
            )
            assert from_log > 0
            for client in clients:
                await client.close()
    finally:
        for proc in redis:
            proc.kill()
            proc.wait(10)
