"""The group-commit writer on SQLite and PostgreSQL: a huge webhook is stored in bounded
transactions, and small webhooks that arrive meanwhile do not wait for all of it (issue 10 item 9)."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from core.storage.schema import messages
from tests.core.test_events import make_host, running
from tests.core.test_storage import inbound


async def test_a_huge_webhook_does_not_hold_small_ones_behind_it(storage_url: str) -> None:
    host = make_host(storage_url)
    host.ingest.max_items = 200
    done: list[str] = []

    async def webhook(name: str, count: int, offset: int) -> None:
        batch = [inbound(f"wamid.{name}-{i}", wa_id=f"55{offset + i:011d}") for i in range(count)]
        await host.ingest.submit(batch, [])
        done.append(name)

    async with running(host):
        # 2,000 new contacts in one webhook (ten transactions' worth), then small ones right after.
        big = asyncio.create_task(webhook("big", 2_000, 0))
        await asyncio.sleep(0)  # the big one is queued first
        small = [asyncio.create_task(webhook(f"small-{i}", 1, 10_000 + i)) for i in range(5)]
        await asyncio.gather(big, *small)
        async with host.storage.read() as conn:
            stored = (await conn.execute(sa.select(sa.func.count()).select_from(messages))).scalar()
        bounds = await host.storage.event_bounds()
    assert done[-1] == "big", f"small webhooks waited for the whole large one: {done}"
    assert stored == 2_005 and bounds.last == 2_005  # every message stored, every event logged


async def test_a_large_webhook_in_chunks_logs_every_message_once_in_order(storage_url: str) -> None:
    host = make_host(storage_url)
    host.ingest.max_items = 50
    async with running(host):
        await host.ingest.submit([inbound(f"wamid.m-{i}", wa_id=f"55{i:011d}") for i in range(120)], [])
        events = await host.storage.read_events(0, 500)
    assert [e.id for e in events] == list(range(1, 121))
    assert len({e.payload()["message"]["wamid"] for e in events}) == 120
