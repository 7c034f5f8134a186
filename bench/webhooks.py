"""Inbound webhook benchmark: signed Meta webhooks at a zaphub host, acks/s and ack latency.

It starts its own ``zaphub run`` (SQLite in a temp dir, or ``--storage-url``) unless ``--url``
points at a running host, optionally connects ``--sockets`` CRM Socket.IO clients (so fan-out
is part of the load, as in production), then drives webhooks over keep-alive connections with a
minimal HTTP/1.1 client (a heavyweight client would eat the CPU it shares with the server).

    python bench/webhooks.py                       # max rate, 10 sockets, 20 s
    python bench/webhooks.py --rate 1000           # fixed 1,000 webhooks/s: latency at load
    python bench/webhooks.py --url http://127.0.0.1:3000 --secret "$WHATSAPP_APP_SECRET"

Each webhook carries one text message with a unique wamid (the realistic worst case: every one
is stored). Prints acks/s, latency p50/p90/p99/max, non-200 answers, and the server's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._host import read_status, start_zaphub, webhook_request  # noqa: E402
from plugins.whatsapp import webhook_builders as wb  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef"


def build_requests(n: int, host: str, secret: str, contacts: int) -> Iterator[bytes]:
    """Raw signed HTTP requests, each with a new wamid."""
    for i in range(n):
        msg = wb.text(f"Olá, mensagem {i}", from_=f"55119{i % contacts:08d}")
        yield webhook_request(host, wb.encode(wb.envelope(messages=[msg])), secret)


async def drive(
    host: str, port: int, requests: Iterable[bytes], *, concurrency: int, rate: float, duration: float
) -> tuple[list[float], dict[int, int], float]:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    it = iter(requests)
    start = time.perf_counter()
    stop_at = start + duration
    interval = concurrency / rate if rate else 0.0

    async def worker(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        next_at = start + (k * interval / concurrency if interval else 0)
        try:
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                if interval:
                    if next_at > now:
                        await asyncio.sleep(next_at - now)
                    next_at += interval
                try:
                    req = next(it)
                except StopIteration:
                    return
                t0 = time.perf_counter()
                writer.write(req)
                status = await read_status(reader)
                latencies.append(time.perf_counter() - t0)
                codes[status] = codes.get(status, 0) + 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return latencies, codes, time.perf_counter() - start


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def sample_rss(pid: int, every: float) -> None:
    start = time.perf_counter()
    while True:
        print(f"t={time.perf_counter() - start:6.0f} s  server RSS {rss_mb(pid):.0f} MB", flush=True)
        await asyncio.sleep(every)


class RawCrmSocket:
    """A CRM client speaking Engine.IO/Socket.IO over a bare websocket: it authenticates on /crm,
    answers pings and counts event frames without decoding them. A full python-socketio client
    spends more CPU decoding than the server spends producing, which would make this benchmark
    measure the load generator instead of zaphub."""

    def __init__(self) -> None:
        self.events = 0
        self._task: asyncio.Task[None] | None = None
        self._ws: Any = None

    async def connect(self, url: str, token: str) -> None:
        import websockets

        ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self._ws = await websockets.connect(ws_url, max_size=None)
        opened = await self._ws.recv()  # 0{"sid":…}
        assert str(opened).startswith("0"), opened
        await self._ws.send("40/crm," + json.dumps({"token": token}))
        joined = await self._ws.recv()
        assert str(joined).startswith("40/crm,"), f"not authorised: {joined}"
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for frame in self._ws:
                if frame == "2":
                    await self._ws.send("3")
                elif frame[:6] == "42/crm":
                    self.events += 1

    async def disconnect(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):
            await self._ws.close()


async def connect_sockets(url: str, n: int) -> list[RawCrmSocket]:
    import jwt

    token = jwt.encode({"sub": "bench", "exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256")
    clients = []
    for _ in range(n):
        c = RawCrmSocket()
        await c.connect(url, token)
        clients.append(c)
    return clients


def start_server(args: argparse.Namespace, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    plugins: dict[str, Any] = {"whatsapp": {"verify_token": "vt", "app_secret": SECRET, "sandbox": True}}
    if args.sockets:
        plugins["crm_realtime"] = {"jwt_secret": JWT_SECRET}
    storage: dict[str, Any] = {"url": args.storage_url or f"sqlite:///{workdir / 'bench.db'}"}
    if args.sync:
        storage["sqlite_synchronous"] = args.sync
    return start_zaphub(workdir, {"storage": storage, "logging": {"level": "warning"}, "plugins": plugins})


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running host (default: start one)")
    parser.add_argument("--secret", default=SECRET, help="its app secret (with --url)")
    parser.add_argument("--storage-url", help="database for the started host (default: SQLite in a temp dir)")
    parser.add_argument("--rate", type=float, default=0, help="webhooks/s (0 = as fast as possible)")
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--sockets", type=int, default=10, help="CRM Socket.IO clients connected during the run"
    )
    parser.add_argument("--contacts", type=int, default=500)
    parser.add_argument(
        "--sync", choices=["FULL", "NORMAL"], help="storage.sqlite_synchronous of the started host"
    )
    parser.add_argument("--rss-every", type=float, default=0, help="print the server's RSS every N seconds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        url = args.url
        if url is None:
            proc, url = start_server(args, Path(tmp))
        try:
            host, port = url.split("//")[1].split(":")
            expected = int((args.rate or 6000) * args.duration * 1.2) + 1000
            requests: Iterable[bytes]
            if expected <= 200_000:  # pre-built, so the timed loop does no JSON or HMAC work
                requests = list(build_requests(expected, f"{host}:{port}", args.secret, args.contacts))
            else:  # long runs: built on the fly (a fixed rate leaves the generator idle time)
                requests = build_requests(expected, f"{host}:{port}", args.secret, args.contacts)
            clients = await connect_sockets(url, args.sockets)
            sampler = None
            if proc is not None and args.rss_every:
                sampler = asyncio.create_task(sample_rss(proc.pid, args.rss_every))
            lat, codes, elapsed = await drive(
                host,
                int(port),
                requests,
                concurrency=args.concurrency,
                rate=args.rate,
                duration=args.duration,
            )
            if sampler is not None:
                sampler.cancel()
            events = [c.events for c in clients]
            for c in clients:
                await c.disconnect()
            ok = codes.get(200, 0)
            print(
                f"webhooks: {len(lat)} in {elapsed:.1f} s = {len(lat) / elapsed:,.0f}/s (200: {ok}, other: "
                f"{ {k: v for k, v in codes.items() if k != 200} })"
            )
            print(
                f"ack latency ms: p50 {pct(lat, 50):.1f}  p90 {pct(lat, 90):.1f}  p99 {pct(lat, 99):.1f}  "
                f"max {max(lat) * 1000:.1f}  mean {statistics.fmean(lat) * 1000:.1f}"
            )
            print(f"rate asked: {args.rate or 'max'}; concurrency {args.concurrency}; sockets {args.sockets}")
            if events:
                print(f"events received per socket: min {min(events)}, max {max(events)} (webhooks: {ok})")
            if proc is not None:
                print(f"server RSS: {rss_mb(proc.pid):.0f} MB")
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    asyncio.run(main())
