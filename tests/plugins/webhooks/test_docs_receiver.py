"""The receiver example of docs/webhooks.md, run as written: it accepts zaphub's deliveries and
refuses a body whose signature does not match."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.testing import free_port
from plugins.webhooks.client import WebhookClient, sign
from tests.helpers import REPO, ZaphubProcess, wait_for
from tests.plugins.webhooks.test_delivery import SUB_SECRET, config, post_texts, subscriber

pytestmark = pytest.mark.slow


def receiver_code() -> str:
    text = (REPO / "docs" / "webhooks.md").read_text(encoding="utf-8")
    section = text.split("## A receiver in Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/webhooks.md lost its receiver example"
    return match.group(1)


async def test_docs_receiver_verifies_and_receives(tmp_path: Path) -> None:
    script = tmp_path / "receiver.py"
    script.write_text(receiver_code(), encoding="utf-8")
    port = free_port()
    out = tmp_path / "receiver.out"
    with out.open("wb") as sink:  # stdout only: the server's access log goes to stderr
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            env={"ZAPHUB_WEBHOOK_SECRET": SUB_SECRET, "PORT": str(port), "PATH": "/usr/bin:/bin"},
            stdout=sink,
            stderr=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}/hook"
    client = WebhookClient()
    try:

        async def up() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    await c.get(url)
                return True
            except httpx.HTTPError:
                return False

        await wait_for(up, what="the docs receiver listening")

        body = b'{"id":1,"type":"whatsapp:message","data":{}}'
        forged = await client.post(url, "not-the-secret", 1, body, timeout=5)
        assert forged.status == 401, "a body signed with another secret is refused"
        async with httpx.AsyncClient() as c:
            tampered = await c.post(
                url, content=body + b" ", headers={"X-Zaphub-Signature-256": sign(SUB_SECRET, body)}
            )
        assert tampered.status_code == 401, "a body changed after signing is refused"

        cfg = config(tmp_path, f"sqlite:///{tmp_path / 'zaphub.db'}", [subscriber(url, name="docs")])
        server = ZaphubProcess(cfg).start()
        try:
            await asyncio.to_thread(server.wait_ready)
            await post_texts(server, ["olá", "tudo bem?"])
            await wait_for(lambda: out.read_text().count("whatsapp:message") == 2, timeout=30, what="2")
        finally:
            server.stop()
    finally:
        await client.aclose()
        proc.terminate()
        await proc.wait()
    lines = out.read_text().splitlines()
    assert [line.split(" ", 2)[:2] for line in lines] == [
        ["1", "whatsapp:message"],
        ["2", "whatsapp:message"],
    ]
    assert '"ol\\u00e1"' in lines[0] or '"olá"' in lines[0]
