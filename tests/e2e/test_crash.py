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
from tests.helpers import ZaphubProcess, write_config

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


async def fire(
    url: str, bodies: list[tuple[str, bytes, dict[str, str]]], acked: set[str], stop: asyncio.Event
) -> None:
    """Post webhooks with 16 concurrent senders until told to stop (or the server dies)."""
    queue: asyncio.Queue[tuple[str, bytes, dict[str, str]]] = asyncio.Queue()
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


async def stored_wamids(storage_url: str) -> list[str]:
    url = storage_url.replace("sqlite:///", "sqlite+aiosqlite:///").replace(
        "postgresql://", "postgresql+asyncpg://"
    )
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(sa.text("SELECT wamid FROM messages WHERE direction = 'inbound'"))
            ).all()
    finally:
        await engine.dispose()
    return [r[0] for r in rows]


async def test_kill_9_under_load_loses_nothing_acknowledged(storage_url: str, tmp_path: Path) -> None:
    cfg = config(tmp_path, storage_url)
    bodies: list[tuple[str, bytes, dict[str, str]]] = []
    for i in range(4000):
        msg = wb.text(f"mensagem {i}", from_=f"55119{i % 50:08d}")
        body, headers = wb.signed(wb.envelope(messages=[msg]), SECRET)
        bodies.append((msg["id"], body, headers))

    server = ZaphubProcess(cfg).start()
    acked: set[str] = set()
    try:
        await asyncio.to_thread(server.wait_ready)
        stop = asyncio.Event()
        load = asyncio.create_task(fire(server.url, bodies, acked, stop))
        deadline = time.monotonic() + 30
        while len(acked) < 300 and time.monotonic() < deadline and not load.done():
            await asyncio.sleep(0.01)
        server.kill()  # SIGKILL in the middle of the load
        stop.set()
        await load
    finally:
        server.stop()
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
