"""``zaphub simulate`` and ``zaphub sandbox`` against real HTTP servers."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, Response, post

from core.cli_types import Command
from plugins.whatsapp.simulate import sandbox_command, simulate_command
from tests.helpers import serve

SECRET = "simulate-test-app-secret"
ROOT = Path(__file__).resolve().parents[3]


class Receiver:
    """Stands in for zaphub's webhook: 401 on a bad signature, records the rest."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()

        @post("/meta-whatsapp/webhook", status_code=200)
        async def webhook(request: Request[Any, Any, Any]) -> Response[Any]:
            raw = await request.body()
            expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(request.headers.get("x-hub-signature-256", ""), expected):
                return Response({"error": "invalid signature"}, status_code=401)
            async with self._changed:
                self.bodies.append(json.loads(raw))
                self._changed.notify_all()
            return Response({"ok": True})

        self.app = Litestar([webhook])

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(lambda: predicate(self.bodies))

    def values(self) -> list[dict[str, Any]]:
        return [change["value"] for body in self.bodies for e in body["entry"] for change in e["changes"]]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    async with serve(rec.app) as url:
        yield rec, url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WHATSAPP_APP_SECRET", "WHATSAPP_PHONE_NUMBER_ID", "WHATSAPP_ACCESS_TOKEN", "ZAPHUB_URL"):
        monkeypatch.delenv(name, raising=False)


def _parse(command: Command, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"zaphub {command.name}")
    parser.add_argument("--config")
    command.configure(parser)
    return parser.parse_args(argv)


async def _simulate(*argv: str) -> int:
    command = simulate_command()
    return await asyncio.to_thread(command.run, _parse(command, list(argv)))


async def test_message_posts_signed_inbound_webhooks(
    receiver: tuple[Receiver, str], capsys: pytest.CaptureFixture[str]
) -> None:
    rec, url = receiver
    code = await _simulate(
        "message",
        "--text",
        "Olá! Qual o preço?",
        "--from",
        "5511988887777",
        "--name",
        "João Silva",
        "--count",
        "2",
        "--url",
        f"{url}/meta-whatsapp/webhook",
        "--app-secret",
        SECRET,
    )
    assert code == 0
    values = rec.values()
    assert len(values) == 2
    messages = [v["messages"][0] for v in values]
    assert [m["text"]["body"] for m in messages] == ["Olá! Qual o preço?"] * 2
    assert messages[0]["id"] != messages[1]["id"]
    assert values[0]["contacts"] == [{"profile": {"name": "João Silva"}, "wa_id": "5511988887777"}]
    assert values[0]["metadata"]["phone_number_id"] == "100000000000002"
    out = capsys.readouterr().out
    assert out.count("<- 200 OK") == 2
    assert "X-Hub-Signature-256: sha256=" in out
    assert "Olá! Qual o preço?" in out


async def test_defaults_come_from_the_environment(
    receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rec, url = receiver
    monkeypatch.setenv("ZAPHUB_URL", url)  # a base URL: the webhook path is appended
    monkeypatch.setenv("WHATSAPP_APP_SECRET", SECRET)
    monkeypatch.setenv("WHATSAPP_PHONE_NUMBER_ID", "200000000000009")
    assert await _simulate("message", "--type", "image", "--text", "Segue a foto") == 0
    (value,) = rec.values()
    assert value["metadata"]["phone_number_id"] == "200000000000009"
    image = value["messages"][0]["image"]
    assert image["caption"] == "Segue a foto"
    assert image["mime_type"] == "image/jpeg"


async def test_status_posts_a_failed_status_with_its_error(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    code = await _simulate(
        "status",
        "--wamid",
        "wamid.OUT1",
        "--status",
        "failed",
        "--error-code",
        "131047",
        "--url",
        url,
        "--app-secret",
        SECRET,
    )
    assert code == 0
    (status,) = rec.values()[0]["statuses"]
    assert status["id"] == "wamid.OUT1"
    assert status["status"] == "failed"
    assert status["errors"][0]["code"] == 131047


async def test_non_200_answer_exits_non_zero_and_prints_the_body(
    receiver: tuple[Receiver, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = receiver
    code = await _simulate("message", "--text", "Olá", "--url", url, "--app-secret", "wrong-secret")
    assert code == 1
    err = capsys.readouterr().err
    assert "401" in err
    assert "invalid signature" in err
    assert "--app-secret" in err


async def test_unreachable_host_exits_non_zero_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        code = await _simulate("message", "--text", "Olá", "--url", f"http://127.0.0.1:{port}")
    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot reach http://127.0.0.1:{port}/meta-whatsapp/webhook" in err
    assert "is `zaphub run` running?" in err


def test_help_texts_show_an_example() -> None:
    for command in (sandbox_command(), simulate_command()):
        parser = argparse.ArgumentParser(prog=f"zaphub {command.name}", description=command.description)
        command.configure(parser)
        assert "Example" in parser.format_help()
        assert command.help
    with pytest.raises(SystemExit):
        _parse(simulate_command(), ["message", "--count", "0"])


async def test_sandbox_command_serves_graph_and_delivers_webhooks(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["--port", str(port), "--webhook-url", url, "--app-secret", SECRET, "--status-delays", "0,0,0"]
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "plugins.whatsapp.simulate", "sandbox", *argv],
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
