"""``zaphub simulate`` against a real HTTP server standing in for zaphub's webhook."""

from __future__ import annotations

import asyncio
import socket

import pytest

from plugins.whatsapp.cli import simulate_command
from tests.plugins.whatsapp.cli.harness import SECRET, Receiver, help_of, parse


async def _simulate(*argv: str) -> int:
    command = simulate_command()
    return await asyncio.to_thread(command.run, parse(command, list(argv)))


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


def test_help_shows_an_example_and_bounds_are_checked() -> None:
    assert "Example" in help_of(simulate_command())
    assert simulate_command().help
    with pytest.raises(SystemExit):
        parse(simulate_command(), ["message", "--count", "0"])


async def test_an_edit_and_a_revoke_name_the_message_they_change(
    receiver: tuple[Receiver, str], capsys: pytest.CaptureFixture[str]
) -> None:
    rec, url = receiver
    target = ["--reply-to", "wamid.ORIGINAL", "--url", url, "--app-secret", SECRET]
    assert await _simulate("message", "--type", "edit", "--text", "Quero 3 caixas", *target) == 0
    assert await _simulate("message", "--type", "revoke", *target) == 0
    edit, revoke = (v["messages"][0] for v in rec.values())
    assert edit["edit"] == {
        "original_message_id": "wamid.ORIGINAL",
        "message": {"type": "text", "text": {"body": "Quero 3 caixas"}},
    }
    assert "context" not in edit
    assert revoke["revoke"] == {"original_message_id": "wamid.ORIGINAL"}

    assert await _simulate("message", "--type", "edit", "--url", url) == 2
    assert "give its wamid (--reply-to)" in capsys.readouterr().err
    assert len(rec.values()) == 2  # nothing posted
