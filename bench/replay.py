"""Replay speed: events/s replayed to a Socket.IO client that reconnects with ``lastEventId``.

Fills a fresh database with ``--events`` ``whatsapp:message`` events (``bench/eventlog.py``'s
``filled_zaphub``: typical text messages written through ``append_events``), starts a real ``zaphub run`` on
it, connects ``--clients`` python-socketio clients at once with ``auth: {token, lastEventId: 0}``
and times until each has received every event (in order, once: checked).

    python bench/replay.py                                      # SQLite, 50,000 events, 1 client
    python bench/replay.py --clients 4
    python bench/replay.py --storage-url postgresql://postgres@127.0.0.1/bench_replay
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.eventlog import filled_zaphub  # noqa: E402  # after the path insert


async def replay(url: str, token: str, events: int, clients: int) -> None:
    import socketio

    async def one() -> float:
        sio = socketio.AsyncClient(reconnection=False)
        got: list[int] = []
        done = asyncio.Event()

        @sio.on("whatsapp:message", namespace="/crm")
        def on_message(data: dict[str, Any]) -> None:
            got.append(data["eventId"])
            if len(got) == events:
                done.set()

        started = time.perf_counter()
        await sio.connect(
            url, namespaces=["/crm"], auth={"token": token, "lastEventId": 0}, transports=["websocket"]
        )
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - started
        await sio.disconnect()
        assert got == list(range(1, events + 1)), "a gap, a duplicate or a reorder"
        return elapsed

    started = time.perf_counter()
    times = await asyncio.gather(*(one() for _ in range(clients)))
    wall = time.perf_counter() - started
    print(
        f"replay: {events:,} events to {clients} client(s) in {wall:.1f} s = "
        f"{events * clients / wall:,.0f} events/s in all; slowest client {max(times):.1f} s "
        f"({events / max(times):,.0f} events/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage-url", help="an empty database (default: SQLite in a temp dir)")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    with filled_zaphub(args.storage_url, args.events, 500) as (url, token):
        asyncio.run(replay(url, token, args.events, args.clients))


if __name__ == "__main__":
    main()
