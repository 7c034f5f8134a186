"""``zaphub sandbox``: the Meta emulator run on its own port, delivering signed status webhooks."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import httpx

from plugins.whatsapp.cli import sandbox_command
from tests.plugins.whatsapp.cli.harness import SECRET, Receiver, help_of

ROOT = Path(__file__).resolve().parents[4]


def test_help_shows_an_example() -> None:
    assert "Example" in help_of(sandbox_command())
    assert sandbox_command().help


async def test_sandbox_command_serves_graph_and_delivers_webhooks(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["--port", str(port), "--webhook-url", url, "--app-secret", SECRET, "--status-delays", "0,0,0"]
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "plugins.whatsapp.cli", "sandbox", *argv],
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(15):
                while True:
                    assert proc.returncode is None, "zaphub sandbox exited early"
                    try:
                        await client.get("/_sandbox/requests")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
            answer = await client.post(
                "/v25.0/100000000000002/messages",
                headers={"Authorization": "Bearer anything"},
                json={"messaging_product": "whatsapp", "to": "+5511988887777", "text": {"body": "Oi"}},
            )
            wamid = answer.json()["messages"][0]["id"]
        await rec.wait_for(lambda bodies: len(bodies) == 3)
        statuses = [s for v in rec.values() for s in v["statuses"]]
        assert {s["id"] for s in statuses} == {wamid}
        assert sorted(s["status"] for s in statuses) == ["delivered", "read", "sent"]
    finally:
        if proc.returncode is None:
            proc.terminate()
        output = (await asyncio.wait_for(proc.communicate(), 10))[0].decode()
    assert f"graph_api_url: http://127.0.0.1:{port}" in output
