"""A real zaphub app (whatsapp in sandbox mode + autoreply) on a free port, driven by signed webhooks.

Meta is the in-process sandbox: the replies zaphub sends show up in its recorded Graph requests,
and it delivers ``sent``/``delivered``/``read`` status webhooks for them like Meta does. A probe
plugin whose hooks run last tells the tests when every plugin has handled an event, so tests wait
on that instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import hookimpl
from core.app import create_app
from core.config import parse_config
from core.host import Host
from core.models import Message, StatusChange
from plugins.whatsapp import webhook_builders as wb
from tests.helpers import SANDBOX_HEADERS, SANDBOX_TOKEN, free_port, serve, wait_for

SECRET = "autoreply-test-app-secret-0123456789abcdef"
SANDBOX = "/_sandbox/graph"


class Probe:
    """Records events after every other plugin has handled them (``trylast``)."""

    def __init__(self) -> None:
        self.received: dict[str, Message] = {}
        self.statuses: list[tuple[int, str]] = []

    @hookimpl(trylast=True)
    def on_message_received(self, message: Message) -> None:
        assert message.wamid is not None
        self.received[message.wamid] = message

    @hookimpl(trylast=True)
    def on_status_changed(self, message: Message, change: StatusChange) -> None:
        self.statuses.append((message.id, change.status))


class Zaphub:
    """One running app and the ways a test talks to it."""

    def __init__(self, app: Any, url: str, probe: Probe, client: httpx.AsyncClient, stack: Any) -> None:
        self.app = app
        self.url = url
        self.probe = probe
        self.http = client
        self._stack: contextlib.AsyncExitStack = stack

    async def stop(self) -> None:
        """Shut the app down (graceful, like SIGTERM); safe to call twice."""
        await self._stack.aclose()

    @property
    def host(self) -> Host:
        host: Host = self.app.state.host
        return host

    async def webhook(self, payload: Mapping[str, Any]) -> httpx.Response:
        """POST a body signed like Meta signs it; the answer must be 200."""
        body, headers = wb.signed(payload, SECRET)
        response = await self.http.post("/meta-whatsapp/webhook", content=body, headers=headers)
        assert response.status_code == 200, response.text
        return response

    async def inbound(self, message: dict[str, Any]) -> Message:
        """Deliver one inbound message and wait until every plugin's hook (autoreply's included) ran."""
        await self.webhook(wb.envelope(messages=[message]))
        return await self.handled(message["id"])

    async def handled(self, wamid: str) -> Message:
        """Wait until the message was stored, dispatched, and autoreply's own work for it finished."""
        message: Message = await wait_for(
            lambda: self.probe.received.get(wamid), timeout=5, what=f"hook for {wamid}"
        )
        # autoreply's task for it was created before the probe ran (see AutoreplyService).
        mine = [t for t in asyncio.all_tasks() if t.get_name() == f"autoreply-{message.id}"]
        if mine:
            await asyncio.wait_for(asyncio.gather(*mine), timeout=10)
        return message

    async def text(self, body: str, *, from_: str = wb.DEFAULT_FROM, **opts: Any) -> Message:
        return await self.inbound(wb.text(body, from_=from_, **opts))

    async def graph_sends(self) -> list[dict[str, Any]]:
        """Send bodies Graph received (mark-as-read calls excluded), oldest first."""
        requests = (await self.http.get(f"{SANDBOX}/_sandbox/requests")).json()
        return [
            r["json"]
            for r in requests
            if r["method"] == "POST" and r["path"].endswith("/messages") and "to" in (r["json"] or {})
        ]

    async def replies_to(self, wa_id: str) -> list[str]:
        """Text bodies Graph received for one recipient."""
        return [s["text"]["body"] for s in await self.graph_sends() if s["to"].lstrip("+") == wa_id]

    async def wait_replies(self, wa_id: str, count: int) -> list[str]:
        """Wait until Graph received ``count`` sends for ``wa_id`` (and return them)."""

        async def enough() -> list[str] | None:
            found = await self.replies_to(wa_id)
            return found if len(found) >= count else None

        found: list[str] = await wait_for(enough, timeout=5, what=f"{count} send(s) to {wa_id}")
        return found

    async def outbox_idle(self) -> None:
        """Wait until nothing is waiting in the outbox (every queued send reached Graph)."""

        async def idle() -> bool:
            return "pending" not in await self.host.storage.outbox_counts()

        await wait_for(idle, timeout=5, what="the outbox to empty")

    async def outbound(self, conversation_id: int) -> list[Message]:
        return [
            m for m in await self.host.storage.list_messages(conversation_id) if m.direction == "outbound"
        ]

    def metric(self, name: str, **labels: str) -> float:
        value = self.host.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    def skipped(self, reason: str) -> float:
        return self.metric("zaphub_autoreply_skipped_total", reason=reason)

    def replied(self, reason: str) -> float:
        return self.metric("zaphub_autoreply_replies_total", reason=reason)


StartApp = Callable[..., Awaitable[Zaphub]]


def app_config(
    port: int,
    db: Path,
    autoreply: Mapping[str, Any],
    extra: Mapping[str, Any],
    handoff: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "handoff": dict(handoff or {}),
        "server": {"port": port},
        "storage": {"url": f"sqlite:///{db}"},
        "logging": {"level": "warning"},
        "plugins": {
            "whatsapp": {
                "sandbox": True,
                "sandbox_token": SANDBOX_TOKEN,
                "app_secret": SECRET,
                "verify_token": "autoreply-test-verify",
            },
            "autoreply": dict(autoreply),
            "probe": {},
            **{name: {} for name in extra},
        },
    }


@pytest.fixture
async def start_app(tmp_path: Path) -> AsyncIterator[StartApp]:
    """``await start_app(autoreply_section, extra_plugins={...}, db=path)`` → a running :class:`Zaphub`."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            autoreply: Mapping[str, Any],
            *,
            extra_plugins: Mapping[str, object] | None = None,
            db: Path | None = None,
            handoff: Mapping[str, Any] | None = None,
        ) -> Zaphub:
            extra = dict(extra_plugins or {})
            probe = Probe()
            port = free_port()
            config = parse_config(app_config(port, db or tmp_path / "zaphub.db", autoreply, extra, handoff))
            app = create_app(config, extra_plugins={"probe": probe, **extra})
            own = contextlib.AsyncExitStack()
            stack.push_async_callback(own.aclose)
            url = await own.enter_async_context(serve(app, port=port))
            client = await own.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=10, headers=SANDBOX_HEADERS)
            )
            return Zaphub(app, url, probe, client, own)

        yield start
