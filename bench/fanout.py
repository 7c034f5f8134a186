"""Fan-out benchmark: one webhook → ``whatsapp:message`` on N connected CRM Socket.IO clients.

For each N (default 1, 10, 100, 1,000) it measures, on a ``zaphub run`` it starts itself (SQLite in
a temp dir, one process):

- **latency**: webhooks at a steady rate, each carrying its send time; every client records
  webhook POST → event received (wall clock, same machine). p50/p99/max over all deliveries.
  The rate is ``--rate`` but capped so that N x rate stays within ``--delivery-budget`` events/s,
  because the clients run in one Python process on the same cores and must not be the bottleneck;
- **throughput**: webhooks posted as fast as the host acknowledges them; events/s is webhooks
  fanned out completely (received by all N clients) per second, deliveries/s is N times that;
  next to it the server's CPU time (user + system) per webhook and per delivered event;
- **floor**: the burst's load against a bare Litestar route reading the same body under the same
  uvicorn configuration (``bench/_floor.py``), with its CPU per request.

    python bench/fanout.py                           # 1, 10, 100, 1000 clients
    python bench/fanout.py --clients 10 --rate 1000  # DESIGN.md's point: p99 at 1,000 webhooks/s, 10 sockets

The clients live in a separate process (``--receive`` mode of this script) so their decoding does
not share the event loop of the load generator. Results are printed as a Markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import _host  # noqa: E402
from plugins.whatsapp import webhook_builders as wb  # noqa: E402

APP_SECRET = "bench-app-secret-0123456789abcdef0123"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123"


# --- the clients (a subprocess) ------------------------------------------------------------------


async def receive(url: str, token: str, n: int, expected: int, out: Path, idle: float) -> None:
    """Connect ``n`` clients, record every bench event, write the results to ``out``."""
    import socketio

    records: list[tuple[str, int, float]] = []  # (phase, latency in µs, received at)
    counts = [0] * n
    complete = 0
    done = asyncio.Event()
    last_event = time.monotonic()

    def make_handler(k: int) -> Any:
        async def on_message(data: dict[str, Any]) -> None:
            nonlocal last_event, complete
            now = time.time()
            body = data["message"]["body"]
            if not body.startswith("fan "):
                return
            _, phase, _, sent = body.split(" ")
            records.append((phase, int((now - float(sent)) * 1e6), now))
            counts[k] += 1
            last_event = time.monotonic()
            if counts[k] == expected:
                complete += 1
                if complete == n:
                    done.set()

        return on_message

    clients = []
    semaphore = asyncio.Semaphore(50)

    async def connect(k: int) -> None:
        client = socketio.AsyncClient(reconnection=False)
        client.on("whatsapp:message", make_handler(k), namespace="/crm")
        async with semaphore:
            await client.connect(url, namespaces=["/crm"], auth={"token": token}, transports=["websocket"])
        clients.append(client)

    await asyncio.gather(*(connect(k) for k in range(n)))
    print("ready", flush=True)
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1)
        if time.monotonic() - last_event > idle:
            break
    await asyncio.to_thread(out.write_text, json.dumps({"records": records, "counts": counts}))
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)


# --- the load generator --------------------------------------------------------------------------


def build_request(host: str, phase: str, seq: int) -> bytes:
    """A signed webhook whose text carries its own send time (filled in just before sending)."""
    msg = wb.text(f"fan {phase} {seq} {{sent}}", from_=f"55119{seq % 1000:08d}")
    return json.dumps(wb.envelope(messages=[msg]), ensure_ascii=True, separators=(",", ":")).encode()


async def post_webhooks(
    host: str, port: int, phase: str, count: int, *, rate: float, concurrency: int
) -> tuple[list[float], float]:
    """Send ``count`` webhooks (paced at ``rate``/s, or flat out when 0); returns ack latencies and start."""
    templates = [build_request(host, phase, seq) for seq in range(count)]
    acks: list[float] = []
    queue = iter(range(count))
    start = time.perf_counter()
    interval = 1 / rate if rate else 0.0

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for seq in queue:
                if interval:
                    delay = start + seq * interval - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                body = templates[seq].replace(b"{sent}", f"{time.time():.6f}".encode())
                t0 = time.perf_counter()
                writer.write(_host.webhook_request(f"{host}:{port}", body, APP_SECRET))
                status = await _host.read_status(reader)
                acks.append(time.perf_counter() - t0)
                if status != 200:
                    raise SystemExit(f"webhook answered {status}")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    wall_start = time.time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return acks, wall_start


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    return _host.start_zaphub(
        workdir,
        {
            "storage": {"url": f"sqlite:///{workdir / 'bench.db'}"},
            "logging": {"level": "warning"},
            "plugins": {
                "whatsapp": {"verify_token": "vt", "app_secret": APP_SECRET, "sandbox": True},
                "crm_realtime": {"jwt_secret": JWT_SECRET, "transports": ["websocket"]},
            },
        },
    )


async def run_level(
    url: str, token: str, n: int, args: argparse.Namespace, workdir: Path, server_pid: int
) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    lat_rate = min(args.rate, args.delivery_budget / n)
    lat_count = max(20, int(lat_rate * args.seconds))
    thr_count = max(50, min(2000, int(80_000 / n)))
    out = workdir / f"recv-{n}.json"
    receiver = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--receive",
        url,
        token,
        str(n),
        str(lat_count + thr_count),
        str(out),
        stdout=asyncio.subprocess.PIPE,
    )
    assert receiver.stdout is not None
    line = await asyncio.wait_for(receiver.stdout.readline(), 300)
    if line.strip() != b"ready":
        raise SystemExit(f"receiver failed: {line!r}")
    lat_started = time.perf_counter()
    acks, _ = await post_webhooks(host, int(port), "lat", lat_count, rate=lat_rate, concurrency=32)
    lat_achieved = lat_count / (time.perf_counter() - lat_started)
    await asyncio.sleep(1)  # let the latency phase drain before the burst
    cpu_before = _host.cpu_seconds(server_pid)
    _, thr_start = await post_webhooks(host, int(port), "thr", thr_count, rate=0, concurrency=16)
    await asyncio.wait_for(receiver.wait(), 600)
    server_cpu = _host.cpu_seconds(server_pid) - cpu_before
    result = json.loads(out.read_text())
    latencies = [r[1] / 1000 for r in result["records"] if r[0] == "lat"]
    thr_done = max(r[2] for r in result["records"] if r[0] == "thr")
    thr_seconds = thr_done - thr_start
    complete = all(c == lat_count + thr_count for c in result["counts"])
    return {
        "clients": n,
        "lat_rate": lat_achieved,  # as sent: pacing falls behind when the host cannot keep up
        "lat_events": lat_count,
        "p50": pct(latencies, 50),
        "p99": pct(latencies, 99),
        "max": max(latencies),
        "ack_p99": pct(acks, 99) * 1000,
        "thr_events": thr_count,
        "events_per_s": thr_count / thr_seconds,
        "deliveries_per_s": thr_count * n / thr_seconds,
        # Server CPU per webhook of the burst: ingest + hooks + one emit to n clients.
        "server_cpu_ms_per_event": server_cpu * 1000 / thr_count,
        "server_cpu_us_per_delivery": server_cpu * 1e6 / (thr_count * n),
        "complete": complete,
    }


async def run_floor(workdir: Path, count: int = 2000) -> dict[str, float]:
    """The burst's load against a bare Litestar route (``bench/_floor.py``): rate, CPU per request."""
    proc, url = _host.start_floor(workdir)
    try:
        host, port = url.removeprefix("http://").split(":")
        cpu_before = _host.cpu_seconds(proc.pid)
        started = time.perf_counter()
        await post_webhooks(host, int(port), "floor", count, rate=0, concurrency=16)
        elapsed = time.perf_counter() - started
        cpu = _host.cpu_seconds(proc.pid) - cpu_before
    finally:
        _host.stop(proc)
    return {"requests": count, "per_s": count / elapsed, "cpu_us": cpu * 1e6 / count}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="1,10,100,1000", help="comma-separated client counts")
    parser.add_argument(
        "--rate", type=float, default=200, help="webhooks/s of the latency phase (before the cap)"
    )
    parser.add_argument(
        "--delivery-budget",
        type=float,
        default=5_000,
        help="cap on N x rate in the latency phase (what one Python process of clients decodes unqueued)",
    )
    parser.add_argument("--seconds", type=float, default=3, help="length of the latency phase")
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the floor (the burst's load against a bare Litestar route, bench/_floor.py)",
    )
    parser.add_argument(
        "--receive", nargs=5, metavar=("URL", "TOKEN", "N", "EXPECTED", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.receive:
        url, token, n, expected, out = args.receive
        await receive(url, token, int(n), int(expected), Path(out), idle=15)
        return

    import jwt

    token = jwt.encode({"sub": "bench", "exp": int(time.time()) + 6 * 3600}, JWT_SECRET, algorithm="HS256")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp))
        rows = []
        try:
            host, port = url.removeprefix("http://").split(":")
            await post_webhooks(host, int(port), "warmup", 200, rate=0, concurrency=8)  # first writes, caches
            for n in (int(x) for x in args.clients.split(",")):
                row = await run_level(url, token, n, args, Path(tmp), proc.pid)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            _host.stop(proc)
        floor = await run_floor(Path(tmp)) if args.floor else None
    print(
        "| clients | latency phase | webhook→socket p50 | p99 | max | ack p99 | events/s (all clients) "
        "| deliveries/s | server CPU per webhook | per delivery |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        flag = "" if r["complete"] else " (incomplete)"
        print(
            f"| {r['clients']:,} | {r['lat_events']} webhooks at {r['lat_rate']:,.0f}/s | {r['p50']:.1f} ms "
            f"| {r['p99']:.1f} ms | {r['max']:.1f} ms | {r['ack_p99']:.1f} ms "
            f"| {r['events_per_s']:,.0f}{flag} | {r['deliveries_per_s']:,.0f} "
            f"| {r['server_cpu_ms_per_event']:.2f} ms | {r['server_cpu_us_per_delivery']:.1f} µs |"
        )
    if floor is not None:
        print(
            f"\nfloor (bare Litestar route, same uvicorn config, {floor['requests']} webhooks, "
            f"16 connections): {floor['per_s']:,.0f}/s, CPU {floor['cpu_us']:.0f} µs per request"
        )


if __name__ == "__main__":
    asyncio.run(main())
