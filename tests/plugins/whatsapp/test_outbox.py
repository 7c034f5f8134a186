"""Sending through the outbox to the sandbox Graph over real HTTP: bodies, retries, failures,
pacing, the 24-hour window, ambiguous timeouts, and restarts with sends pending."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from core import hookimpl
from core.app import create_app
from core.config import parse_config
from core.errors import ValidationFailed, WindowClosedError
from core.models import Message, StatusChange, utcnow
from core.storage.schema import conversations, outbox
from plugins.whatsapp import GRAPH, WORKER
from plugins.whatsapp import webhook_builders as wb
from tests.helpers import SANDBOX_HEADERS, SANDBOX_TOKEN, free_port, serve, wait_for

SECRET = "outbox-test-secret-0123456789abcd"
CUSTOMER = "5511966665555"


class Events:
    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.statuses: list[tuple[Message, StatusChange]] = []

    @hookimpl
    def on_message_sent(self, message: Message) -> None:
        self.sent.append(message)

    @hookimpl
    def on_status_changed(self, message: Message, change: StatusChange) -> None:
        self.statuses.append((message, change))

    def statuses_of(self, message_id: int) -> list[str]:
        return [c.status for m, c in self.statuses if m.id == message_id]


class Harness:
    def __init__(self, url: str, host: Any, events: Events) -> None:
        self.url = url
        self.host = host
        self.events = events
        self.http = httpx.AsyncClient(base_url=url, timeout=30, headers=SANDBOX_HEADERS)

    async def graph_requests(self) -> list[dict[str, Any]]:
        r = await self.http.get("/_sandbox/graph/_sandbox/requests")
        return [q for q in r.json() if q["path"].endswith("/messages") and q["method"] == "POST"]

    async def sends(self) -> list[dict[str, Any]]:
        return [q["json"] for q in await self.graph_requests() if q["json"].get("type")]

    async def fault(self, **fault: Any) -> None:
        r = await self.http.post("/_sandbox/graph/_sandbox/faults", json=fault)
        assert r.status_code in (200, 201), r.text

    async def conversation(self, wa_id: str = CUSTOMER) -> int:
        """A conversation with an inbound message, so the 24-hour window is open."""
        body, headers = wb.signed(wb.envelope(messages=[wb.text("Oi!", from_=wa_id)]), SECRET)
        r = await self.http.post("/meta-whatsapp/webhook", content=body, headers=headers)
        assert r.status_code == 200
        await self.host.events.drain()
        convs = await self.host.storage.list_conversations(limit=50)
        contacts = await self.host.storage.get_contacts(c.contact_id for c in convs)
        return next(c.id for c in convs if contacts[c.contact_id].wa_id == wa_id)

    async def outbox_state(self, message_id: int) -> tuple[str, int]:
        async with self.host.storage.read() as conn:
            row = (
                await conn.execute(
                    sa.select(outbox.c.state, outbox.c.attempts).where(outbox.c.message_id == message_id)
                )
            ).one()
        return row.state, row.attempts


def config_for(storage_url: str, port: int, **whatsapp: Any) -> Any:
    return parse_config(
        {
            "server": {"port": port},
            "storage": {"url": storage_url},
            "plugins": {
                "whatsapp": {
                    "verify_token": "vt",
                    "app_secret": SECRET,
                    "sandbox": True,
                    "sandbox_token": SANDBOX_TOKEN,
                    "request_timeout_seconds": 2,
                    **whatsapp,
                },
                "events": {},
            },
        }
    )


@contextlib.asynccontextmanager
async def harness(storage_url: str, port: int | None = None, **whatsapp: Any) -> AsyncIterator[Harness]:
    port = port or free_port()
    events = Events()
    app = create_app(config_for(storage_url, port, **whatsapp), extra_plugins={"events": events})
    async with serve(app, port=port) as url:
        h = Harness(url, app.state.host, events)
        try:
            yield h
        finally:
            await h.http.aclose()


@pytest.fixture
async def h(storage_url: str) -> AsyncIterator[Harness]:
    async with harness(storage_url) as h:
        yield h


SENDS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "text",
        {"body": "Olá! Seu pedido saiu.", "preview_url": True},
        {"text": {"body": "Olá! Seu pedido saiu.", "preview_url": True}},
    ),
    (
        "template",
        {
            "name": "order_update",
            "language": "pt_BR",
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}],
        },
        {
            "template": {
                "name": "order_update",
                "language": {"code": "pt_BR"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}],
            }
        },
    ),
    (
        "image",
        {"link": "https://example.com/p.jpg", "caption": "Recibo"},
        {"image": {"link": "https://example.com/p.jpg", "caption": "Recibo"}},
    ),
    (
        "document",
        {"media_id": "doc123", "filename": "nota.pdf", "caption": "Nota"},
        {"document": {"id": "doc123", "filename": "nota.pdf", "caption": "Nota"}},
    ),
    ("audio", {"media_id": "aud1"}, {"audio": {"id": "aud1"}}),
    ("video", {"link": "https://example.com/v.mp4"}, {"video": {"link": "https://example.com/v.mp4"}}),
    ("sticker", {"media_id": "stk1"}, {"sticker": {"id": "stk1"}}),
    (
        "location",
        {"latitude": -23.55, "longitude": -46.63, "name": "Loja"},
        {"location": {"latitude": -23.55, "longitude": -46.63, "name": "Loja"}},
    ),
]


@pytest.mark.parametrize(("type_", "content", "expected"), SENDS, ids=[s[0] for s in SENDS])
async def test_each_type_reaches_graph_as_meta_documents_it(
    h: Harness, type_: str, content: dict[str, Any], expected: dict[str, Any]
) -> None:
    conv = await h.conversation()
    message, created = await h.host.sender.send(conv, type_, content)
    assert created and message.status == "queued"
    await wait_for(lambda: h.events.sent, what="Graph to accept the send")
    body = (await h.sends())[-1]
    assert body["messaging_product"] == "whatsapp"
    assert body["to"] == "+" + CUSTOMER
    assert body["type"] == type_
    assert body[type_] == expected[type_]
    assert body["biz_opaque_callback_data"] == f"zaphub:{message.id}"
    # Then Meta's status webhooks come back and move the message forward, in order.
    await wait_for(
        lambda: h.events.statuses_of(message.id) == ["sent", "delivered", "read"], timeout=60, what="statuses"
    )
    stored = await h.host.storage.get_message(message.id)
    assert stored is not None and stored.status == "read" and stored.wamid == h.events.sent[0].wamid


async def test_reply_context_is_sent(h: Harness) -> None:
    conv = await h.conversation()
    await h.host.sender.send(conv, "text", {"body": "Respondendo"}, context_wamid="wamid.QUOTED")
    await wait_for(lambda: h.events.sent)
    assert (await h.sends())[-1]["context"] == {"message_id": "wamid.QUOTED"}


async def test_invalid_content_is_refused_before_queueing(h: Harness) -> None:
    conv = await h.conversation()
    with pytest.raises(ValidationFailed, match="caption"):
        await h.host.sender.send(conv, "audio", {"media_id": "a1", "caption": "no"})
    with pytest.raises(ValidationFailed, match="type 'carrier_pigeon' cannot be sent"):
        await h.host.sender.send(conv, "carrier_pigeon", {})
    assert await h.sends() == []


async def test_free_form_outside_the_window_is_refused_templates_pass(h: Harness) -> None:
    conv = await h.conversation()
    async with h.host.storage.write() as conn:
        await conn.execute(
            conversations.update()
            .where(conversations.c.id == conv)
            .values(last_inbound_at=utcnow() - timedelta(hours=25))
        )
    with pytest.raises(WindowClosedError, match="template"):
        await h.host.sender.send(conv, "text", {"body": "oi"})
    await h.host.sender.send(conv, "template", {"name": "hello_world", "language": "en_US"})
    await wait_for(lambda: h.events.sent)
    assert [b["type"] for b in await h.sends()] == ["template"]


async def test_retryable_errors_are_retried_then_delivered_once(storage_url: str) -> None:
    async with harness(storage_url) as h:
        conv = await h.conversation()
        await h.fault(count=2, status=500, code=131000)
        message, _ = await h.host.sender.send(conv, "text", {"body": "persistente"})
        await wait_for(lambda: h.events.sent, timeout=20, what="delivery after two 500s")
        assert len(await h.graph_requests()) == 3
        assert await h.outbox_state(message.id) == ("done", 3)
        assert [m.id for m in h.events.sent] == [message.id]


async def test_permanent_error_fails_the_message_with_metas_code(h: Harness) -> None:
    conv = await h.conversation()
    await h.fault(count=1, status=400, code=131026, title="Message undeliverable")
    message, _ = await h.host.sender.send(conv, "text", {"body": "não chega"})
    await wait_for(lambda: h.events.statuses_of(message.id) == ["failed"], what="failed status")
    change = next(c for m, c in h.events.statuses if m.id == message.id)
    assert change.error_code == 131026
    assert "undeliverable" in (change.error_title or "")
    assert len(await h.graph_requests()) == 1  # never retried
    assert await h.outbox_state(message.id) == ("failed", 1)


async def test_last_attempt_fails_the_message(storage_url: str) -> None:
    async with harness(storage_url, max_attempts=2) as h:
        conv = await h.conversation()
        await h.fault(count=5, status=503, code=2)
        message, _ = await h.host.sender.send(conv, "text", {"body": "fora do ar"})
        await wait_for(lambda: h.events.statuses_of(message.id) == ["failed"], timeout=20)
        assert len(await h.graph_requests()) == 2


async def test_an_outage_shorter_than_the_retry_window_delays_the_send_without_failing_it(
    storage_url: str,
) -> None:
    # Many more failed attempts than the old fixed count of 8, inside a window of 60 s.
    async with harness(
        storage_url, retry_window_seconds=60, retry_backoff_seconds=0.05, retry_backoff_max_seconds=0.2
    ) as h:
        conv = await h.conversation()
        await h.fault(count=10_000, status=503, code=2)  # Graph down until the faults are cleared
        message, _ = await h.host.sender.send(conv, "text", {"body": "depois da queda"})
        await wait_for(lambda: _at_least(h.graph_requests, 12), timeout=60, what="a dozen refused attempts")
        assert h.events.statuses_of(message.id) == []
        assert (await h.http.delete("/_sandbox/graph/_sandbox/faults")).status_code == 200  # Graph is back
        await wait_for(lambda: h.events.sent, timeout=60, what="delivery once Graph is back")
        assert [m.id for m in h.events.sent] == [message.id]
        state, attempts = await h.outbox_state(message.id)
        assert state == "done" and attempts >= 13
        assert "failed" not in h.events.statuses_of(message.id)


async def test_an_outage_past_the_retry_window_fails_the_send(storage_url: str) -> None:
    async with harness(
        storage_url, retry_window_seconds=1.5, retry_backoff_seconds=0.05, retry_backoff_max_seconds=0.2
    ) as h:
        conv = await h.conversation()
        await h.fault(count=10_000, status=503, code=2, title="Service temporarily unavailable")
        message, _ = await h.host.sender.send(conv, "text", {"body": "fora do ar"})
        await wait_for(lambda: h.events.statuses_of(message.id) == ["failed"], timeout=60, what="failed")
        change = next(c for m, c in h.events.statuses if m.id == message.id)
        assert change.error_code == 2
        state, attempts = await h.outbox_state(message.id)
        assert state == "failed" and attempts >= 2
        assert attempts == len(await h.graph_requests())  # the last try was made, then it failed
        stored = await h.host.storage.get_message(message.id)
        assert stored is not None and stored.status == "failed"


async def test_a_crash_while_sending_counts_as_an_attempt_and_fails_the_send_past_the_bounds(
    storage_url: str,
) -> None:
    # A crash that is not Meta's doing (here: an invalid request our client cannot build)
    # used to leave the row retrying forever; now it is an attempt like any other.
    async with harness(storage_url, max_attempts=3, retry_backoff_seconds=0.05) as h:
        conv = await h.conversation()
        graph = h.host.stash[GRAPH]
        await graph.aclose()  # every send now raises inside the worker (a closed httpx client)
        message, _ = await h.host.sender.send(conv, "text", {"body": "bug"})
        await wait_for(lambda: h.events.statuses_of(message.id) == ["failed"], timeout=60, what="failed")
        change = next(c for m, c in h.events.statuses if m.id == message.id)
        assert change.error_title == "internal error"
        assert await h.outbox_state(message.id) == ("failed", 3)


async def _at_least(fetch: Any, n: int) -> bool:
    return len(await fetch()) >= n


async def test_expired_token_turns_ready_to_503(h: Harness) -> None:
    conv = await h.conversation()
    await h.fault(count=1, status=401, code=190, title="Session has expired")
    message, _ = await h.host.sender.send(conv, "text", {"body": "x"})
    await wait_for(lambda: h.events.statuses_of(message.id) == ["failed"])
    ready = await h.http.get("/ready")
    assert ready.status_code == 503
    assert "access token" in ready.json()["checks"]["whatsapp"]
    assert "sandbox-access-token" not in ready.text


async def test_graph_outage_delays_without_loss_or_duplicates(storage_url: str) -> None:
    async with harness(storage_url) as h:
        conv = await h.conversation()
        await h.fault(count=4, status=500)
        ids = [(await h.host.sender.send(conv, "text", {"body": f"msg {i}"}))[0].id for i in range(5)]
        await wait_for(lambda: len(h.events.sent) == 5, timeout=30, what="all five delivered")
        assert sorted(m.id for m in h.events.sent) == ids
        bodies = [b["text"]["body"] for b in await h.sends()]
        assert sorted(set(bodies)) == [f"msg {i}" for i in range(5)]


async def test_ambiguous_timeout_is_not_resent_while_meta_may_have_it(storage_url: str) -> None:
    # The sandbox holds the answer until we hang up after our read timeout, then drops the send:
    # Meta never had it, so no status can link it, and the worker sends it again once the grace
    # period for such a status is over: delivered once.
    timeout, grace = 0.5, 1.0
    async with harness(
        storage_url,
        request_timeout_seconds=timeout,
        ambiguous_retry_seconds=grace,
        # An ordinary retry comes within 0.2 s: a worker that took the timeout for an ordinary
        # failure would resend well inside the grace period.
        retry_backoff_seconds=0.05,
        retry_backoff_max_seconds=0.2,
    ) as h:
        conv = await h.conversation()
        # The longest hold the sandbox allows, so that only our hang-up ends it: with a 3 s hold,
        # an event loop that did not run from before our timeout until past 3 s (a loaded
        # machine) let the sandbox's timer win, and it delivered the send it was meant to drop.
        await h.fault(count=1, delay=600)
        queued = time.time()  # the sandbox stamps each request it receives with time.time()
        message, _ = await h.host.sender.send(conv, "text", {"body": "talvez"})
        await wait_for(lambda: h.events.sent, timeout=20, what="resend after the grace period")
        assert [m.id for m in h.events.sent] == [message.id]
        assert await h.outbox_state(message.id) == ("done", 2)
        first, resend = await h.graph_requests()
        assert resend["json"] == first["json"]  # the same send, dropped once, then accepted
        # Not resent while Meta might still report the first send: only after our read timeout
        # and then the grace period. Measured from when the send was queued, before the first
        # request left, so a slow machine can only make the gap longer, never shorter.
        assert resend["time"] - queued >= timeout + grace


async def test_status_echoing_our_callback_links_an_ambiguous_send(h: Harness) -> None:
    conv = await h.conversation()
    # Simulate "Meta accepted it but the answer was lost": with the worker stopped before the
    # send is queued, the row stays pending; then Meta's status echoing our callback data arrives.
    await h.host.stash[WORKER].stop()
    message, _ = await h.host.sender.send(conv, "template", {"name": "x", "language": "pt_BR"})
    status = wb.status("wamid.LOST", "sent", biz_opaque_callback_data=f"zaphub:{message.id}")
    body, headers = wb.signed(wb.envelope(statuses=[status]), SECRET)
    assert (await h.http.post("/meta-whatsapp/webhook", content=body, headers=headers)).status_code == 200
    await wait_for(lambda: h.events.statuses_of(message.id) == ["sent"])
    # Reported accepted as Graph's answer would have been (CRMs learn the wamid from it).
    assert [(m.id, m.wamid) for m in h.events.sent] == [(message.id, "wamid.LOST")]
    stored = await h.host.storage.get_message(message.id)
    assert stored is not None and stored.wamid == "wamid.LOST"
    assert (await h.outbox_state(message.id))[0] == "done"
    assert await h.sends() == []  # linked, never sent


async def test_pacing_spaces_a_burst_to_one_recipient(storage_url: str) -> None:
    async with harness(storage_url, pair_burst=2, pair_interval_seconds=0.5) as h:
        conv = await h.conversation()
        other = await h.conversation("5511944443333")
        started = time.time()  # the sandbox stamps each request it receives with time.time()
        for i in range(5):
            await h.host.sender.send(conv, "text", {"body": f"rajada {i}"})
        await h.host.sender.send(other, "text", {"body": "outro"})
        await wait_for(lambda: len(h.events.sent) == 6, timeout=60)
        times = {q["json"]["text"]["body"]: q["time"] for q in await h.graph_requests()}
        burst = sorted(times[f"rajada {i}"] for i in range(5))
        # Two back-to-back, then one per interval: the last one cannot reach Meta before 3
        # intervals have passed since the burst was queued. (Measured from the first arrival
        # instead, a first request that was slow to reach the sandbox on a loaded machine made
        # a correctly paced burst look too fast: 1.18 s in one CI run.)
        assert burst[-1] - started >= 1.4
        # And another recipient is not held up by the first one's spacing: it goes out in between.
        assert times["outro"] < burst[-1]


async def test_sends_pending_at_shutdown_are_delivered_after_restart(
    storage_url: str, tmp_path: Path
) -> None:
    port = free_port()
    async with harness(storage_url, port) as h:
        conv = await h.conversation()
        await h.fault(count=50, status=503, retry_after=30)  # Graph down: sends wait
        queued = [(await h.host.sender.send(conv, "text", {"body": f"pendente {i}"}))[0].id for i in range(3)]
        await wait_for(h.graph_requests, what="Graph to refuse at least one send")
    async with harness(storage_url, port) as h2:
        # A fresh sandbox (no faults): the new worker finds the rows once their backoff passes.
        async with h2.host.storage.write() as conn:
            await conn.execute(outbox.update().values(next_attempt_at=utcnow()))
        h2.host.stash[WORKER].wake()
        await wait_for(lambda: len(h2.events.sent) == 3, timeout=20, what="pending sends after restart")
        assert sorted(m.id for m in h2.events.sent) == queued
