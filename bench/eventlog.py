"""The event log's costs: disk per million events, and how fast a client pages through the feed.

Fills a fresh database with ``--events`` ``whatsapp:message`` events (the payload of a typical text
message, written through the same ``write_events`` the producers use, ``--batch`` per
transaction), then:

- **disk**: the growth of the database (SQLite: the file after a WAL checkpoint; PostgreSQL:
  ``pg_total_relation_size('event_log')``, table + indexes + TOAST) scaled to a million events;
- **feed**: a real ``zaphub run`` on that database, and a client paging ``GET /api/events`` from
  ``after=0`` with ``limit=--page`` until ``nextAfter`` is null: events/s and the page latency.

    python bench/eventlog.py                                      # SQLite, 200,000 events
    python bench/eventlog.py --storage-url postgresql://postgres@127.0.0.1/bench_events
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._host import start_zaphub  # noqa: E402  # after the path insert
from core.config import StorageConfig  # noqa: E402
from core.models import Contact, Conversation, Message, utcnow  # noqa: E402
from core.storage import Storage  # noqa: E402
from core.storage.events import message_received_event, write_events  # noqa: E402

JWT_SECRET = "bench-eventlog-jwt-secret-0123456789abcdef"
PNID = "100000000000002"


def typical(i: int) -> tuple[Message, Conversation, Contact]:
    """A text message of a typical length from one of 500 contacts."""
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    contact = Contact(id=i % 500 + 1, wa_id=f"55119{i % 500:08d}", name="João da Silva", phone_number="")
    conv = Conversation(id=i % 500 + 1, phone_number_id=PNID, contact_id=contact.id, created_at=now)
    message = Message(
        id=i + 1,
        conversation_id=conv.id,
        phone_number_id=PNID,
        direction="inbound",
        type="text",
        body="Olá! Gostaria de saber o preço do plano anual e se vocês entregam no sábado.",
        status="received",
        wamid=f"wamid.HBgMNTUxMTk5OTk5OTk5ORUCABIYFjNFQjBDMUQ{i:012d}AA==",
        sender_type="contact",
        delivered_at=now,
        received_at=now,
    )
    return message, conv, contact


async def size(storage: Storage, path: Path | None) -> int:
    async with storage.engine.connect() as conn:
        if storage.dialect == "sqlite":
            await conn.execute(sa.text("PRAGMA wal_checkpoint(TRUNCATE)"))
            assert path is not None
            return os.path.getsize(path)  # noqa: ASYNC240  # one stat, once per run
        value = await conn.scalar(sa.text("SELECT pg_total_relation_size('event_log')"))
        return int(value or 0)


async def fill(storage_url: str, events: int, batch: int, path: Path | None) -> None:
    storage = Storage(StorageConfig(url=storage_url))
    storage.public_url = "https://zaphub.example.com"
    await storage.open()
    try:
        before = await size(storage, path)
        started = time.perf_counter()
        for first in range(0, events, batch):
            pending = [
                message_received_event(*typical(i), storage.public_url)
                for i in range(first, min(first + batch, events))
            ]
            await storage.run_write(write_events, pending, utcnow())
        elapsed = time.perf_counter() - started
        after = await size(storage, path)
        payload = len(pending[-1].data)
    finally:
        await storage.close()
    per_million = (after - before) / events * 1_000_000
    print(
        f"appended {events:,} events in {elapsed:.1f} s ({events / elapsed:,.0f}/s, {batch} per transaction)"
    )
    print(
        f"payload {payload} bytes; disk {per_million / 2**20:,.0f} MiB per million events ({storage.dialect})"
    )


async def page_through(url: str, token: str, page: int) -> None:
    latencies: list[float] = []
    total = 0
    after: int | None = 0
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as api:
        while after is not None:
            t0 = time.perf_counter()
            response = await api.get("/api/events", params={"after": after, "limit": page})
            latencies.append(time.perf_counter() - t0)
            response.raise_for_status()
            body = response.json()
            total += len(body["events"])
            after = body["nextAfter"]
    elapsed = time.perf_counter() - started
    latencies.sort()
    p50, p99 = statistics.median(latencies) * 1000, latencies[int(len(latencies) * 0.99)] * 1000
    print(
        f"feed: {total:,} events in {elapsed:.1f} s = {total / elapsed:,.0f} events/s; pages of {page}: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )


@contextlib.contextmanager
def filled_zaphub(
    storage_url: str | None, events: int, batch: int, crm: dict[str, Any] | None = None
) -> Iterator[tuple[str, str]]:
    """A ``zaphub run`` on a database filled with ``events`` messages; yields its URL and a token.

    ``storage_url`` ``None`` is SQLite in a temp dir; ``crm`` adds ``plugins.crm_realtime`` settings.
    """
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path = None
        if storage_url is None:
            path = workdir / "events.db"
            storage_url = f"sqlite:///{path}"
        asyncio.run(fill(storage_url, events, batch, path))
        os.environ["CRM_JWT_SECRET"] = JWT_SECRET
        config = {
            "storage": {"url": storage_url},
            "logging": {"level": "warning"},
            "plugins": {"crm_realtime": {"jwt_secret": JWT_SECRET, **(crm or {})}},
        }
        proc, url = start_zaphub(workdir, config)
        try:
            import jwt

            yield url, jwt.encode({"sub": "bench", "exp": int(time.time()) + 3600}, JWT_SECRET, "HS256")
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage-url", help="an empty database (default: SQLite in a temp dir)")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500, help="events per transaction while filling")
    parser.add_argument("--page", type=int, default=500, help="limit of each feed request")
    args = parser.parse_args()
    crm = {"max_page_size": max(args.page, 100)}
    with filled_zaphub(args.storage_url, args.events, args.batch, crm) as (url, token):
        asyncio.run(page_through(url, token, args.page))


if __name__ == "__main__":
    main()
