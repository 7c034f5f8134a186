"""``kill -9`` of a real ``zaphub run`` under webhook load: nothing answered 200 is lost, and
Meta's retries of what was not answered are stored exactly once after the restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from plugins.whatsapp import webhook_builders as wb
from tests.helpers import ZaphubProcess, wait_for, write_config

pytestmark = pytest.mark.slow

SECRET = "crash-test-secret-0123456789abcdef"


def config(tmp_path: Path, storage_url: str) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        {
            "storage": {"url": storage_url},
            "plugins": {"whatsapp": {"verify_token": "vt", "app_secret": SECRET, "sandbox": True}},
        },
    )


Webhook = tuple[str, bytes, dict[str, str]]
"""A message's wamid, and the signed body and headers Meta posts it with."""


async def fire(url: str, bodies: list[Webhook], acked: set[str], stop: asyncio.Event) -> None:
    """Post webhooks with 16 concurrent senders until told to stop (or the server dies)."""
    queue: asyncio.Queue[Webhook] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)

    async def sender() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            while not stop.is_set() and not queue.empty():
                wamid, body, headers = queue.get_nowait()
                try:
                    r = await client.post("/meta-whatsapp/webhook", content=body, headers=headers)
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acked.add(wamid)

    await asyncio.gather(*(sender() for _ in range(16)))


def signed(messages: list[dict[str, Any]]) -> list[Webhook]:
    """One signed webhook per message, as Meta posts them."""
    webhooks = []
    for msg in messages:
        body, headers = wb.signed(wb.envelope(messages=[msg]), SECRET)
        webhooks.append((msg["id"], body, headers))
    return webhooks


async def kill_during_load(
    server: ZaphubProcess, bodies: list[Webhook], *, after: int, within: float
) -> set[str]:
    """Start ``server``, post ``bodies``, SIGKILL it once ``after`` were answered 200; the wamids acked."""
    server.start()
    acked: set[str] = set()
    try:
        await asyncio.to_thread(server.wait_ready)
        stop = asyncio.Event()
        load = asyncio.create_task(fire(server.url, bodies, acked, stop))
        deadline = time.monotonic() + within
        while len(acked) < after and time.monotonic() < deadline and not load.done():
            await asyncio.sleep(0.01)
        server.kill()  # SIGKILL in the middle of the load
        stop.set()
        await load
    finally:
        server.stop()
    return acked


async def scalar_rows(storage_url: str, sql: str) -> list[Any]:
    """The rows of ``sql``, read straight from the database (no zaphub in between)."""
    url = storage_url.replace("sqlite:///", "sqlite+aiosqlite:///").replace(
        "postgresql://", "postgresql+asyncpg://"
    )
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(sa.text(sql))).all()]
    finally:
        await engine.dispose()


async def stored_wamids(storage_url: str) -> list[str]:
    return [
        r[0] for r in await scalar_rows(storage_url, "SELECT wamid FROM messages WHERE direction = 'inbound'")
    ]


async def test_kill_9_under_load_loses_nothing_acknowledged(storage_url: str, tmp_path: Path) -> None:
    cfg = config(tmp_path, storage_url)
    bodies = signed([wb.text(f"mensagem {i}", from_=f"55119{i % 50:08d}") for i in range(4000)])
    acked = await kill_during_load(ZaphubProcess(cfg), bodies, after=300, within=30)
    assert 300 <= len(acked) < len(bodies), "the kill should land in the middle of the load"

    stored = await stored_wamids(storage_url)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    lost = acked - set(stored)
    assert not lost, f"{len(lost)} acknowledged messages lost"

    # Meta retries everything it did not get a 200 for (and some it did): after a restart each
    # message ends up stored exactly once.
    server = ZaphubProcess(cfg).start()
    try:
        await asyncio.to_thread(server.wait_ready)
        retry: dict[str, Any] = {w: (w, b, h) for w, b, h in bodies if w not in acked}
        retry.update({w: (w, b, h) for w, b, h in bodies[:50]})  # duplicates of acked ones too
        again: set[str] = set()
        await fire(server.url, list(retry.values()), again, asyncio.Event())
        assert again == set(retry)
    finally:
        server.stop()
    stored = await stored_wamids(storage_url)
    assert len(stored) == len(bodies)
    assert set(stored) == {w for w, _, _ in bodies}


# -- kill -9 between commit and dispatch ----------------------------------------------------------

GREETING = "Olá! Recebemos sua mensagem."

RECORDER = '''\
"""Records each event id a hook received, slowly, so that dispatch lags behind commits."""

import asyncio

import msgspec

from core import hookimpl


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: str
    delay_seconds: float = 0.0


@hookimpl
def config_schema():
    return Settings


@hookimpl
async def on_message_received(settings, event):
    await asyncio.sleep(settings.delay_seconds)
    with open(settings.path, "a", encoding="utf-8") as out:
        out.write(f"{event.id}\\n")
'''


def install_recorder(site: Path) -> dict[str, str]:
    """A third-party plugin on PYTHONPATH, found through its ``zaphub.plugins`` entry point."""
    site.mkdir()
    (site / "zaphub_recorder.py").write_text(RECORDER, encoding="utf-8")
    info = site / "zaphub_recorder-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: zaphub-recorder\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text("[zaphub.plugins]\nrecorder = zaphub_recorder\n", encoding="utf-8")
    return {"PYTHONPATH": str(site)}


def recorded(path: Path) -> list[int]:
    return [int(line) for line in path.read_text(encoding="utf-8").split()] if path.exists() else []


async def test_kill_9_between_commit_and_dispatch_dispatches_everything_and_greets_once(
    storage_url: str, tmp_path: Path
) -> None:
    """Hooks are at least once across ``kill -9``; the auto-reply is still sent once per conversation."""
    hooks_file = tmp_path / "dispatched.txt"
    env = install_recorder(tmp_path / "site")
    cfg = write_config(
        tmp_path / "config.yaml",
        {
            "storage": {"url": storage_url},
            "plugins": {
                "whatsapp": {"verify_token": "vt", "app_secret": SECRET, "sandbox": True},
                "autoreply": {"greeting": GREETING},
                "recorder": {"path": str(hooks_file), "delay_seconds": 0.02},
            },
        },
    )
    # A new conversation each: a greeting each.
    bodies = signed([wb.text(f"oi {i}", from_=f"55118{i:08d}") for i in range(400)])
    acked = await kill_during_load(ZaphubProcess(cfg, env=env), bodies, after=60, within=60)
    logged = [
        r[0]
        for r in await scalar_rows(storage_url, "SELECT id FROM event_log WHERE type = 'whatsapp:message'")
    ]
    assert len(logged) >= len(acked) >= 60
    assert len(set(recorded(hooks_file))) < len(logged), "the kill should land between commit and dispatch"

    server = ZaphubProcess(cfg, env=env).start()
    try:
        await asyncio.to_thread(server.wait_ready)
        await wait_for(
            lambda: set(logged) <= set(recorded(hooks_file)),
            timeout=120,
            what="every event committed before the kill to reach the hook",
        )

        async def everyone_greeted() -> bool:
            greeted = await scalar_rows(
                storage_url,
                "SELECT count(DISTINCT conversation_id) FROM messages WHERE direction = 'outbound' "
                "AND automated AND wamid IS NOT NULL",
            )
            conversations = await scalar_rows(storage_url, "SELECT count(*) FROM conversations")
            return bool(greeted[0][0] == conversations[0][0])

        await wait_for(everyone_greeted, timeout=120, what="every conversation's greeting to be sent")
    finally:
        server.stop()
    greetings = await scalar_rows(
        storage_url,
        "SELECT conversation_id, count(*) FROM messages WHERE direction = 'outbound' AND automated "
        "GROUP BY conversation_id",
    )
    conversations = await scalar_rows(storage_url, "SELECT count(*) FROM conversations")
    assert {count for _, count in greetings} == {1}, "a conversation was greeted twice"
    assert len(greetings) == conversations[0][0], "a conversation was never greeted"
    sent = await scalar_rows(
        storage_url, "SELECT count(*) FROM messages WHERE direction = 'outbound' AND wamid IS NOT NULL"
    )
    assert sent[0][0] == len(greetings)
