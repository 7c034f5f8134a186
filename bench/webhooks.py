"""Inbound webhook benchmark: signed Meta webhooks at a zaphub host, acks/s and ack latency.

It starts its own ``zaphub run`` (SQLite in a temp dir, or ``--storage-url``) unless ``--url``
points at a running host, optionally connects ``--sockets`` CRM Socket.IO clients (so fan-out
is part of the load, as in production), then drives webhooks over keep-alive connections with a
minimal HTTP/1.1 client (a heavyweight client would eat the CPU it shares with the server).

    python bench/webhooks.py                       # max rate, 10 sockets, 20 s
    python bench/webhooks.py --rate 1000           # fixed 1,000 webhooks/s: latency at load
    python bench/webhooks.py --url http://127.0.0.1:3000 --secret "$WHATSAPP_APP_SECRET"
    python bench/webhooks.py --workers 2 --storage-url postgresql://…   # zaphub run --workers 2
    python bench/webhooks.py --reference           # the same load at the Node reference service

``--reference`` starts ``bench/node-reference/server.js`` (the same webhook path in Node:
socket.io + better-sqlite3, ``npm ci --prefix bench/node-reference`` once) instead of zaphub, with
the same secrets, clients, load and CPU accounting; its floor is that service's bare route.

Each webhook carries one text message with a unique wamid (the realistic worst case: every one
is stored). Prints acks/s, latency p50/p90/p99/max, non-200 answers, the server's RSS and its CPU
time (user + system, worker processes included) per webhook, and the load generator's own CPU per
webhook (this process: the HTTP client and the socket clients; if it nears one core, the figures
measure the generator, not the host); then the **floor**: the same load for
``--floor-duration`` seconds against a bare Litestar route reading the same body under the same
uvicorn configuration (``bench/_floor.py``), and its CPU per request. The last line,
``result: {…}``, is all of it as JSON (CPU in µs) for scripts.
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

from bench import _host  # noqa: E402
from plugins.whatsapp import webhook_builders as wb  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef"


def build_requests(n: int, host: str, secret: str, contacts: int) -> Iterator[bytes]:
    """Raw signed HTTP requests, each with a new wamid."""
    for i in range(n):
        msg = wb.text(f"Olá, mensagem {i}", from_=f"55119{i % contacts:08d}")
        yield _host.webhook_request(host, wb.encode(wb.envelope(messages=[msg])), secret)


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
                status = await _host.read_status(reader)
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


async def sample_rss(pid: int, every: float) -> None:
    start = time.perf_counter()
    while True:
        print(f"t={time.perf_counter() - start:6.0f} s  server RSS {_host.rss_mb(pid):.0f} MB", flush=True)
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
    config: dict[str, Any] = {"storage": storage, "logging": {"level": "warning"}, "plugins": plugins}
    if args.redis_url or args.workers > 1:
        config["redis"] = {
            "url": args.redis_url or "redis://127.0.0.1:6379/0",
            "channel": f"bench-{workdir.name}",
        }
    run_args = []
    if args.workers > 1:  # workers share the port without affinity: websocket transport only
        plugins.setdefault("crm_realtime", {"jwt_secret": JWT_SECRET})["transports"] = ["websocket"]
        run_args = ["--workers", str(args.workers)]
    return _host.start_zaphub(workdir, config, run_args)


async def drained(clients: list[RawCrmSocket], webhooks: int, timeout: float = 10) -> None:
    """Wait (bounded) until every socket has an event per acknowledged webhook: fan-out is
    part of each webhook's CPU cost, and it runs after the ``200``."""
    deadline = time.monotonic() + timeout
    while clients and min(c.events for c in clients) < webhooks and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def run_floor(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """The same load against the floor app (``bench/_floor.py``, or the Node reference's bare route
    with ``--reference``); its rate and CPU per request."""
    if args.reference:
        proc, url = _host.start_reference(workdir, args.secret, JWT_SECRET, floor=True)
    else:
        proc, url = _host.start_floor(workdir)
    try:
        host, port = url.split("//")[1].split(":")
        duration = args.floor_duration
        count = int((args.rate or 20_000) * duration * 1.2) + 1000
        requests = list(build_requests(min(count, 400_000), f"{host}:{port}", args.secret, args.contacts))
        cpu_before = _host.cpu_seconds(proc.pid)
        lat, codes, elapsed = await drive(
            host, int(port), requests, concurrency=args.concurrency, rate=args.rate, duration=duration
        )
        cpu = _host.cpu_seconds(proc.pid) - cpu_before
    finally:
        _host.stop(proc)
    if set(codes) != {200}:
        raise SystemExit(f"the floor app answered {codes}")
    return {"per_s": len(lat) / elapsed, "cpu_us": cpu * 1e6 / len(lat), "p50_ms": pct(lat, 50)}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running host (default: start one)")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="start the Node reference service (bench/node-reference) instead of zaphub",
    )
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
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="zaphub run --workers N (N > 1 needs --storage-url postgresql://…, and Redis: --redis-url)",
    )
    parser.add_argument(
        "--redis-url", help="redis.url of the started host (default with --workers: local Redis)"
    )
    parser.add_argument(
        "--floor-duration",
        type=float,
        default=5,
        help="seconds of the same load against a bare Litestar route afterwards (0 = no floor)",
    )
    args = parser.parse_args()
    if args.reference and (args.url or args.workers > 1 or args.storage_url or args.redis_url):
        parser.error(
            "--reference starts its own single process on SQLite: no --url, --workers, --storage-url"
        )

    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        url = args.url
        if url is None and args.reference:
            proc, url = _host.start_reference(Path(tmp), args.secret, JWT_SECRET, sync=args.sync)
        elif url is None:
            proc, url = start_server(args, Path(tmp))
        result: dict[str, Any] = {
            "server": "node-reference" if args.reference else "zaphub",
            "sockets": args.sockets,
            "concurrency": args.concurrency,
            "workers": args.workers,
        }
        try:
            host, port = url.split("//")[1].split(":")
            # Enough pre-built requests for 10,000/s (the Node reference passes 6,000/s here).
            expected = int((args.rate or 10_000) * args.duration * 1.2) + 1000
            requests: Iterable[bytes]
            if expected <= 200_000:  # pre-built, so the timed loop does no JSON or HMAC work
                requests = list(build_requests(expected, f"{host}:{port}", args.secret, args.contacts))
            else:  # long runs: built on the fly (a fixed rate leaves the generator idle time)
                requests = build_requests(expected, f"{host}:{port}", args.secret, args.contacts)
            clients = await connect_sockets(url, args.sockets)
            sampler = None
            if proc is not None and args.rss_every:
                sampler = asyncio.create_task(sample_rss(proc.pid, args.rss_every))
            # The group commits, from the host's own metrics (one process: workers each have theirs).
            commits_of = proc is not None and not args.reference and args.workers == 1
            commits_before = _host.group_commits(url) if commits_of else None
            cpu_before = _host.cpu_seconds(proc.pid) if proc is not None else 0.0
            main_before = _host.main_thread_cpu_seconds(proc.pid) if proc is not None else 0.0
            # This process alone (HTTP client + socket clients), all its threads: utime + stime.
            loadgen_before = time.process_time()
            load_started = time.perf_counter()
            lat, codes, elapsed = await drive(
                host,
                int(port),
                requests,
                concurrency=args.concurrency,
                rate=args.rate,
                duration=args.duration,
            )
            ok = codes.get(200, 0)
            if elapsed < args.duration * 0.99:
                print(f"warning: the requests ran out after {elapsed:.1f} s: raise the budget in main()")
            await drained(clients, ok)
            cpu = _host.cpu_seconds(proc.pid) - cpu_before if proc is not None else None
            main_cpu = _host.main_thread_cpu_seconds(proc.pid) - main_before if proc is not None else 0.0
            loadgen_cpu = time.process_time() - loadgen_before
            drained_at = time.perf_counter()
            commits = (
                _host.group_commits(url).since(commits_before, drained_at - load_started)
                if commits_before is not None
                else {}
            )
            if sampler is not None:
                sampler.cancel()
            events = [c.events for c in clients]
            for c in clients:
                await c.disconnect()
            print(
                f"webhooks: {len(lat)} in {elapsed:.1f} s = {len(lat) / elapsed:,.0f}/s (200: {ok}, other: "
                f"{ {k: v for k, v in codes.items() if k != 200} })"
            )
            print(
                f"ack latency ms: p50 {pct(lat, 50):.1f}  p90 {pct(lat, 90):.1f}  p99 {pct(lat, 99):.1f}  "
                f"max {max(lat) * 1000:.1f}  mean {statistics.fmean(lat) * 1000:.1f}"
            )
            print(f"rate asked: {args.rate or 'max'}; concurrency {args.concurrency}; sockets {args.sockets}")
            result |= {
                "webhooks": len(lat),
                "per_s": round(len(lat) / elapsed, 1),
                "ok": ok,
                "ack_p50_ms": round(pct(lat, 50), 2),
                "ack_p99_ms": round(pct(lat, 99), 2),
            }
            if events:
                print(f"events received per socket: min {min(events)}, max {max(events)} (webhooks: {ok})")
                result["events_min"] = min(events)
            if proc is not None:
                print(f"server RSS: {_host.rss_mb(proc.pid):.0f} MB")
                result["rss_mb"] = round(_host.rss_mb(proc.pid) or 0)
            if cpu is not None and lat:
                # Server CPU (user + system, with any worker processes) while driving and fanning out.
                print(f"server CPU: {cpu:.2f} s = {cpu * 1e6 / len(lat):.0f} µs per webhook")
                result["cpu_us"] = round(cpu * 1e6 / len(lat), 1)
                if args.workers == 1:  # with workers the main process is only their supervisor
                    # The event loop's thread: one core is all it can have (1e6 / this = its ceiling).
                    print(f"  of which the main thread (event loop): {main_cpu * 1e6 / len(lat):.0f} µs")
                    result["cpu_main_us"] = round(main_cpu * 1e6 / len(lat), 1)
            if commits:
                print(
                    f"group commits: {commits['per_s']:,.0f}/s of {commits['webhooks_each']:.1f} webhooks, "
                    f"{commits['ms_each']:.1f} ms each (batch taken to committed); "
                    f"one in flight {commits['busy']:.0%} of the time"
                )
                result["commits"] = {k: round(v, 3) for k, v in commits.items()}
            if lat:
                # Near 100 % of one core, the generator (one Python thread) is what caps the rate.
                share = loadgen_cpu / (drained_at - load_started)
                print(
                    f"load generator CPU: {loadgen_cpu:.2f} s = {loadgen_cpu * 1e6 / len(lat):.0f} µs per "
                    f"webhook, {share:.0%} of one core"
                )
                result["loadgen_cpu_us"] = round(loadgen_cpu * 1e6 / len(lat), 1)
                result["loadgen_core_share"] = round(share, 2)
        finally:
            if proc is not None:
                _host.stop(proc)
        if args.floor_duration and proc is not None:
            floor = await run_floor(args, Path(tmp))
            what = "Node http route" if args.reference else "Litestar route, same uvicorn config"
            print(
                f"floor (bare {what}, {args.floor_duration:g} s): "
                f"{floor['per_s']:,.0f}/s, CPU {floor['cpu_us']:.0f} µs per request"
                + (
                    f"; server − floor = {result['cpu_us'] - floor['cpu_us']:.0f} µs"
                    if "cpu_us" in result
                    else ""
                )
            )
            result |= {"floor_per_s": round(floor["per_s"], 1), "floor_cpu_us": round(floor["cpu_us"], 1)}
        targets = _host.webhook_targets(result, rate=args.rate, sockets=args.sockets)
        _host.print_targets(targets)
        if targets:
            result["targets"] = {t.name: t.met for t in targets}
        print("result: " + json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
