"""zaphub's pytest plugin, used as a plugin author uses it: the ``zaphub*`` fixtures and the kits.

These tests take the fixtures exactly as a third-party suite gets them (entry point ``pytest11``),
so they also prove that the plugin is loaded into this suite without colliding with our own
fixtures. The docs example runs from an installed wheel in tests/e2e/test_plugin_author_kit.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core import hookimpl
from core.host import Host
from core.models import Conversation, Message
from core.testing import RunningHost, wait_for
from plugins.whatsapp import webhook_builders as wb
from tests.helpers import REPO


class Echo:
    """A plugin under test: answers every inbound text with its reverse."""

    @hookimpl
    async def on_message_received(self, host: Host, message: Message, conversation: Conversation) -> None:
        if message.type == "text" and message.body:
            await host.sender.send(conversation.id, "text", {"body": message.body[::-1]}, automated=True)


async def test_the_default_host_has_the_sandbox_and_crm_realtime(
    zaphub: RunningHost, zaphub_whatsapp: Any, zaphub_crm: Any
) -> None:
    assert zaphub.url == zaphub.host.public_url
    assert set(zaphub.config.plugins) == {"whatsapp", "crm_realtime"}
    assert zaphub.host.settings("whatsapp").sandbox is True
    assert zaphub.config.storage.url.startswith("sqlite:///")

    async with zaphub_crm.socketio() as client:
        [wamid] = await zaphub_whatsapp.receive(
            wb.text("Olá!"), contacts=[wb.contact(wb.DEFAULT_FROM, "Ana")]
        )
        event = await client.wait("whatsapp:message")
    assert event["message"]["body"] == "Olá!" and event["contact"]["name"] == "Ana"
    stored = await zaphub.host.storage.get_message(event["message"]["id"])
    assert stored is not None and stored.wamid == wamid

    conversations = await zaphub_crm.request("GET", "/api/conversations")
    assert conversations.status_code == 200
    assert [c["id"] for c in conversations.json()["conversations"]] == [event["conversationId"]]
    refused = await zaphub.http.get("/api/conversations")
    assert refused.status_code == 401


class TestAPluginUnderTest:
    """Fixture overrides in a class apply to its tests only, as in a module or a conftest.py."""

    @pytest.fixture
    def zaphub_config(self) -> dict[str, Any]:
        return {"plugins": {"whatsapp": {}, "echo": {}}}

    @pytest.fixture
    def zaphub_plugins(self) -> dict[str, object]:
        return {"echo": Echo()}

    @pytest.mark.parametrize(
        "zaphub_storage_url",
        ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
        indirect=True,
    )
    async def test_a_plugin_under_test_replies_and_the_sandbox_records_it(
        self, zaphub: RunningHost, zaphub_whatsapp: Any, zaphub_storage_url: str
    ) -> None:
        assert zaphub.config.storage.url == zaphub_storage_url
        await zaphub_whatsapp.receive(wb.text("roma"))
        [send] = await zaphub_whatsapp.wait_for_sends(1)
        assert send["type"] == "text" and send["text"]["body"] == "amor"
        assert send["to"].lstrip("+") == wb.DEFAULT_FROM

        # Statuses with Meta's errors reach the stored message.
        [conversation] = await zaphub.host.storage.list_conversations()
        [_inbound, outbound] = await zaphub.host.storage.list_messages(conversation.id)

        async def accepted() -> Message | None:
            message = await zaphub.host.storage.get_message(outbound.id)
            return message if message is not None and message.wamid else None

        sent = await wait_for(accepted, what="Graph to accept the reply")
        await zaphub_whatsapp.statuses(wb.status(sent.wamid, "failed", error_code=131047))

        async def failed() -> Message | None:
            message = await zaphub.host.storage.get_message(outbound.id)
            return message if message is not None and message.status == "failed" else None

        final = await wait_for(failed, what="the failed status")
        assert (final.error_code, final.error_title) == (131047, wb.ERROR_TITLES[131047])

    async def test_a_refused_webhook_fails_with_the_answer(
        self, zaphub: RunningHost, zaphub_whatsapp: Any
    ) -> None:
        too_big = wb.envelope(messages=[wb.text("x" * 5 * 1024 * 1024)])  # over the 4 MiB limit
        with pytest.raises(AssertionError, match="webhook answered 413, expected 200"):
            await zaphub_whatsapp.post(too_big)
        assert (await zaphub_whatsapp.post(too_big, expect=None)).status_code == 413

    async def test_wait_for_sends_names_what_was_sent_when_it_times_out(self, zaphub_whatsapp: Any) -> None:
        with pytest.raises(
            AssertionError, match=r"expected 1 send\(s\) within 0.2s, the sandbox recorded \[\]"
        ):
            await zaphub_whatsapp.wait_for_sends(1, timeout=0.2)

    async def test_a_kit_of_a_plugin_that_is_not_enabled_says_so(self, zaphub: RunningHost) -> None:
        with pytest.raises(LookupError, match="plugin 'crm_realtime' is not enabled in this test's config"):
            zaphub.kit("crm_realtime")
        with pytest.raises(LookupError, match="plugin 'echo' ships no test kit"):
            zaphub.kit("echo")


def test_the_plugin_is_registered_and_its_fixtures_do_not_collide(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("zaphub")
    assert plugin is not None and plugin.__name__ == "core.testing.pytest_plugin"
    ours = {name for name in vars(plugin) if name.startswith("zaphub")}
    assert ours == {
        "zaphub_config",
        "zaphub_plugins",
        "zaphub_storage_url",
        "zaphub",
        "zaphub_whatsapp",
        "zaphub_crm",
    }
    conftest = (REPO / "tests" / "conftest.py").read_text(encoding="utf-8")
    assert not any(f"def {name}(" in conftest for name in ours)


def test_importing_the_plugin_does_no_work() -> None:
    """pytest imports it in every run: it must not pull in the host, Litestar or a plugin."""
    code = (
        "import sys, core.testing.pytest_plugin; "
        "heavy = ('core.app', 'core.host', 'litestar', 'uvicorn', 'plugins.whatsapp'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, cwd=Path(REPO)
    )
    assert result.stdout.strip() == "[]"
