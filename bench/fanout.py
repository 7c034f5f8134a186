"""Fan-out benchmark: one webhook → ``whatsapp:message`` on N connected CRM Socket.IO clients.

For each N (default 1, 10, 100, 1,000) it measures, on a ``zaphub run`` it starts itself (SQLite in
a temp dir, one process, websocket transport):

- **latency**: webhooks at a steady rate (``--rate``; a comma-separated list runs one phase per
  rate, lowest first), each carrying its send time; every client records webhook POST → event
  received (wall clock, same machine). p50/p99/max over all deliveries;
- **throughput**: webhooks posted as fast as the host acknowledges them (16 connections);
  events/s is webhooks fanned out completely (received by all N clients) per second;
- **server CPU** per webhook and per delivery, for every phase: the host's user + system CPU from
  the phase's first webhook until every client has every event of it, with the main thread's share
  (the event loop: HTTP, dispatch, fan-out; the rest is mostly the SQLite writer thread); and the
  clients' own CPU, which says whether they kept up;
- the server's **RSS** with the clients connected;
- **floor** (``--no-floor`` skips it): the burst's load against a bare Litestar route reading the
  same body under the same uvicorn configuration (``bench/_floor.py``), with its CPU per request.

    python bench/fanout.py                                       # 1, 10, 100, 1000 clients
    python bench/fanout.py --clients 10 --rate 1000 --no-floor   # DESIGN.md: p99 at 1,000/s, 10 sockets
    python bench/fanout.py --clients 1000 --rate 20,50,100 --seconds 10 --no-floor  # 1,000 sockets

The clients are Node clients (``bench/js/fanout-clients.mjs``; needs ``node`` and ``npm ci
--prefix tests/e2e/js``) spread over ``--client-procs`` processes, each authenticating on ``/crm``
with a JWT as a CRM does: ``--full-clients`` of each level (default 50) are JavaScript
``socket.io-client`` 4 clients, the others light clients speaking Engine.IO/Socket.IO over a bare
websocket (a socket.io-client costs more CPU per event than the server spends sending it). Without
node (or with ``--python-clients``) they are python-socketio clients in one Python process, which
decodes only a few thousand deliveries a second: above that the latency measures those clients,
not zaphub, so their rate is capped at ``--delivery-budget`` deliveries/s. ``--reference`` runs the
same load against the Node reference service (``bench/node-reference``) instead of zaphub: what
the same clients measure, on the same machine, against socket.io + better-sqlite3. Results are
printed as a Markdown table for docs/benchmarks.md, and each row as JSON on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
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
NODE_CLIENTS = REPO / "bench" / "js" / "fanout-clients.mjs"
SOCKET_IO_CLIENT = REPO / "tests" / "e2e" / "js" / "node_modules" / "socket.io-client"
PYTHON_BUDGET = 5_000
"""Deliveries/s one Python process of python-socketio clients decodes without queueing."""
FULL_CLIENTS = 50
"""socket.io-client clients per level by default (all of them up to this many); the rest are light."""
IDLE_SECONDS = 20
"""Clients give up after this long without an event (a run that lost events still ends)."""

# Latency histogram, the same in both kinds of client: 10 µs buckets up to 100 ms, then 1 ms.
FINE = 10_000
COARSE = 120_000


def bucket(us: float) -> int:
    """The histogram bucket of a latency in µs."""
    if us < 0:
        return 0
    if us < FINE * 10:
        return int(us // 10)
    return min(FINE + COARSE - 1, FINE + int((us - FINE * 10) // 1000))


def bucket_ms(index: int) -> float:
    """The upper bound of a bucket, in ms (a percentile is reported as its bucket's bound)."""
    if index < FINE:
        return (index + 1) * 10 / 1000
    return (FINE * 10 + (index - FINE + 1) * 1000) / 1000


# --- the Python clients (a subprocess; the fallback) ---------------------------------------------


async def receive(url: str, token: str, n: int, expected: int, idle: float) -> None:
    """Connect ``n`` python-socketio clients; report like ``bench/js/fanout-clients.mjs`` on stdout."""
    import socketio

    phases: dict[str, dict[str, Any]] = {}
    counts = [0] * n
    state = {"received": 0, "disorder": 0, "complete": 0, "last": time.monotonic()}
    done = asyncio.Event()

    def emit(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def make_handler(k: int) -> Any:
        last_id = 0

        async def on_message(data: dict[str, Any]) -> None:
            nonlocal last_id
            now = time.time()
            body = data["message"]["body"]
            if not body.startswith("fan "):
                return
            _, phase, _, sent = body.split(" ")
            p = phases.setdefault(phase, {"hist": {}, "count": 0, "last": 0.0})
            b = bucket((now - float(sent)) * 1e6)
            p["hist"][b] = p["hist"].get(b, 0) + 1
            p["count"] += 1
            p["last"] = now
            if not data.get("eventId", 0) > last_id:
                state["disorder"] += 1
            last_id = data.get("eventId", 0)
            state["received"] += 1
            state["last"] = time.monotonic()
            counts[k] += 1
            if counts[k] == expected:
                state["complete"] += 1
                if state["complete"] == n:
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
    emit({"ready": n})
    state["last"] = time.monotonic()
    reported = -1
    while not done.is_set() and time.monotonic() - state["last"] <= idle:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.25)
        if state["received"] != reported:
            reported = state["received"]
            emit({"received": reported, "cpu": time.process_time()})
    emit(
        {
            "done": True,
            "received": state["received"],
            "cpu": time.process_time(),
            "counts": counts,
            "disorder": state["disorder"],
            "phases": phases,
        }
    )
    await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)


# --- the clients, seen from the load generator ---------------------------------------------------


class Clients:
    """``n`` CRM clients in ``procs`` processes (Node, or one Python process); their reports merged.

    With Node, ``full`` of them are socket.io-client clients and the rest light ones (see
    ``bench/js/fanout-clients.mjs``), spread evenly over the processes.
    """

    def __init__(
        self,
        url: str,
        token: str,
        n: int,
        expected: int,
        *,
        node: bool,
        procs: int,
        full: int,
        nice: int = 0,
    ) -> None:
        self.url, self.token, self.n, self.expected, self.node = url, token, n, expected, node
        self.nice = nice
        self.procs = max(1, min(procs, n)) if node else 1
        self.full = min(full, n) if node else n
        self._procs: list[asyncio.subprocess.Process] = []
        self._received: list[int] = []
        self._cpu: list[float] = []
        self._done: list[dict[str, Any] | None] = []
        self._readers: list[asyncio.Task[None]] = []

    @property
    def received(self) -> int:
        """Deliveries so far, all clients (as last reported: every 250 ms)."""
        return sum(self._received)

    @property
    def cpu(self) -> float:
        """CPU seconds the client processes used so far (as last reported)."""
        return sum(self._cpu)

    async def start(self) -> None:
        """Start the processes and wait until every client is connected."""
        shares, full_shares = spread(self.n, self.procs), spread(self.full, self.procs)
        for i, share in enumerate(shares):
            args = [self.url, self.token, str(share), str(self.expected), str(IDLE_SECONDS)]
            if self.node:
                cmd = ["node", str(NODE_CLIENTS), *args, str(full_shares[i])]
            else:
                cmd = [sys.executable, __file__, "--receive", *args]
            if self.nice:
                cmd = ["nice", "-n", str(self.nice), *cmd]
            # With --pin they inherit this process's CPUs.
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, limit=2**26)
            self._procs.append(proc)
            self._received.append(0)
            self._cpu.append(0.0)
            self._done.append(None)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 300)
            if not line.startswith(b'{"ready"'):
                raise SystemExit(f"clients failed to connect: {line[:200]!r}")
            self._readers.append(asyncio.create_task(self._read(i, proc)))

    async def _read(self, i: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            report = json.loads(line)
            self._received[i] = report.get("received", self._received[i])
            self._cpu[i] = report.get("cpu", self._cpu[i])
            if report.get("done"):
                self._done[i] = report

    async def wait_received(self, target: int, timeout: float) -> bool:
        """Wait until the clients together report ``target`` deliveries (``False``: timed out)."""
        deadline = time.monotonic() + timeout
        while self.received < target:
            if time.monotonic() > deadline or all(r.done() for r in self._readers):
                return False
            await asyncio.sleep(0.05)
        return True

    async def result(self) -> dict[str, Any]:
        """Wait for the processes to end; their reports merged (histograms added up)."""
        await asyncio.gather(*(p.wait() for p in self._procs))
        await asyncio.gather(*self._readers)
        phases: dict[str, dict[str, Any]] = {}
        full: dict[str, dict[str, Any]] = {}
        counts: list[int] = []
        disorder = 0
        for report in self._done:
            if report is None:
                raise SystemExit("a client process ended without its report")
            counts += report["counts"]
            disorder += report["disorder"]
            merge_phases(phases, report["phases"])
            # The Python clients are all python-socketio ones: no separate report.
            merge_phases(full, report["full"]["phases"] if "full" in report else report["phases"])
        return {"phases": phases, "full": full, "counts": counts, "disorder": disorder}


def spread(n: int, procs: int) -> list[int]:
    """``n`` split over ``procs`` as evenly as possible, the larger shares first."""
    return [n // procs + (1 if i < n % procs else 0) for i in range(procs)]


def merge_phases(into: dict[str, dict[str, Any]], phases: dict[str, dict[str, Any]]) -> None:
    """Add one client process's per-phase histograms and counts to ``into``."""
    for name, p in phases.items():
        merged = into.setdefault(name, {"hist": {}, "count": 0, "last": 0.0})
        for index, c in p["hist"].items():
            merged["hist"][int(index)] = merged["hist"].get(int(index), 0) + c
        merged["count"] += p["count"]
        merged["last"] = max(merged["last"], p["last"])


def pin_process(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpus`` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


def hist_pct(hist: dict[int, int], p: float) -> float:
    """The ``p``-th percentile of a histogram, in ms (its bucket's upper bound)."""
    total = sum(hist.values())
    rank = max(1, int(p / 100 * total + 0.5))
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return bucket_ms(index)
    return 0.0


# --- the load generator --------------------------------------------------------------------------


def build_request(phase: str, seq: int) -> bytes:
    """A webhook whose text carries its own send time (filled in just before sending)."""
    msg = wb.text(f"fan {phase} {seq} {{sent}}", from_=f"55119{seq % 1000:08d}")
    return json.dumps(wb.envelope(messages=[msg]), ensure_ascii=True, separators=(",", ":")).encode()


async def post_webhooks(
    host: str, port: int, phase: str, count: int, *, rate: float, concurrency: int
) -> tuple[list[float], float]:
    """Send ``count`` webhooks (paced at ``rate``/s, or flat out when 0); returns ack latencies and start."""
    templates = [build_request(phase, seq) for seq in range(count)]
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


def node_available() -> str | None:
    """Why the Node clients cannot run (``None``: they can)."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not SOCKET_IO_CLIENT.exists():
        return "socket.io-client is not installed (npm ci --prefix tests/e2e/js)"
    return None


async def run_level(
    url: str, token: str, n: int, args: argparse.Namespace, server_pid: int
) -> list[dict[str, Any]]:
    """All phases for ``n`` clients: one row per latency rate, then the burst."""
    host, port = url.removeprefix("http://").split(":")
    budget = args.delivery_budget or (None if args.node else PYTHON_BUDGET)
    phases: list[tuple[str, float, int]] = []  # (phase, rate (0: burst), webhooks)
    for asked in sorted({float(r) for r in args.rate.split(",")}):
        rate = min(asked, budget / n) if budget else asked
        phases.append((f"lat{len(phases)}", rate, max(20, int(rate * args.seconds))))
    if args.burst:
        phases.append(("thr", 0.0, max(50, min(2000, int(80_000 / n)))))
    expected = sum(count for _, _, count in phases)
    full = n if args.full_clients < 0 else min(n, args.full_clients)
    procs = args.client_procs or min(4, 1 + full // 250 + (n - full) // 1000)
    clients = Clients(
        url,
        token,
        n,
        expected,
        node=args.node,
        procs=procs,
        full=full,
        nice=args.client_nice,
    )
    await clients.start()
    rss = _host.rss_mb(server_pid)
    rows = []
    delivered = 0
    try:
        for phase, rate, count in phases:
            cpu0, main0, sys0, cli0 = (
                _host.cpu_seconds(server_pid),
                _host.main_thread_cpu_seconds(server_pid),
                _host.system_cpu_seconds(server_pid),
                clients.cpu,
            )
            started = time.perf_counter()
            acks, wall_start = await post_webhooks(
                # Every connection sends at least once a second: uvicorn closes one idle for 5 s.
                host,
                int(port),
                phase,
                count,
                rate=rate,
                concurrency=max(2, min(32, int(rate))) if rate else 16,
            )
            sent_rate = count / (time.perf_counter() - started)  # pacing falls behind an overloaded host
            delivered += count * n
            drained = await clients.wait_received(delivered, timeout=120)
            elapsed = time.perf_counter() - started
            cpu = _host.cpu_seconds(server_pid) - cpu0
            rows.append(
                {
                    "clients": n,
                    "phase": phase,
                    "rate": rate,
                    "sent_rate": sent_rate,
                    "webhooks": count,
                    "wall_start": wall_start,
                    "ack_p50": pct(acks, 50) * 1000,
                    "ack_p99": pct(acks, 99) * 1000,
                    "load_average": os.getloadavg()[0],
                    "server_cpu_us_per_webhook": cpu * 1e6 / count,
                    "server_cpu_us_per_delivery": cpu * 1e6 / (count * n),
                    "main_thread_share": (_host.main_thread_cpu_seconds(server_pid) - main0) / cpu
                    if cpu
                    else 0.0,
                    "system_share": (_host.system_cpu_seconds(server_pid) - sys0) / cpu if cpu else 0.0,
                    "server_cpu_cores": cpu / elapsed,
                    "clients_cpu_cores": (clients.cpu - cli0) / elapsed,
                    "drained": drained,
                    "rss_mb": rss,
                    "full_clients": clients.full,
                    "client_procs": clients.procs,
                }
            )
            await asyncio.sleep(0.5)
    finally:
        result = await clients.result()
    for row in rows:
        got = result["phases"].get(row["phase"], {"hist": {}, "count": 0, "last": row["wall_start"]})
        hist = got["hist"]
        full_hist = result["full"].get(row["phase"], {"hist": {}})["hist"]
        row.update(
            full_p50=hist_pct(full_hist, 50) if full_hist else float("nan"),
            full_p99=hist_pct(full_hist, 99) if full_hist else float("nan"),
            p50=hist_pct(hist, 50) if hist else float("nan"),
            p99=hist_pct(hist, 99) if hist else float("nan"),
            max=bucket_ms(max(hist)) if hist else float("nan"),
            complete=got["count"] == row["webhooks"] * n,
            events_per_s=row["webhooks"] / max(1e-6, got["last"] - row["wall_start"]),
            disorder=result["disorder"],
        )
        row["deliveries_per_s"] = row["events_per_s"] * n
        if row["rate"]:
            row["targets"] = {t.name: t.met for t in _host.fanout_targets(row)}
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


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


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| clients | phase | webhook→socket p50 | p99 | max | p50 / p99 of the socket.io-client ones "
        "| ack p50 / p99 | events/s (all clients) "
        "| deliveries/s | server CPU per webhook | per delivery | main thread | server / clients CPU (cores) "
        "| load avg |"
    )
    print("| ---: | --- |" + " ---: |" * 12)
    for r in rows:
        flag = "" if r["complete"] else " (incomplete)"
        phase = f"{r['webhooks']} at {r['sent_rate']:,.0f}/s" if r["rate"] else f"burst of {r['webhooks']}"
        print(
            f"| {r['clients']:,} | {phase} | {r['p50']:.1f} ms | {r['p99']:.1f} ms | {r['max']:.1f} ms "
            f"| {r['full_clients']:,}: {r['full_p50']:.1f} / {r['full_p99']:.1f} ms "
            f"| {r['ack_p50']:.1f} / {r['ack_p99']:.1f} ms | {r['events_per_s']:,.0f}{flag} "
            f"| {r['deliveries_per_s']:,.0f} "
            f"| {r['server_cpu_us_per_webhook']:,.0f} µs | {r['server_cpu_us_per_delivery']:.1f} µs "
            f"| {r['main_thread_share']:.0%} | {r['server_cpu_cores']:.2f} / {r['clients_cpu_cores']:.2f} "
            f"| {r['load_average']:.1f} |"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="1,10,100,1000", help="comma-separated client counts")
    parser.add_argument(
        "--rate", default="200", help="webhooks/s of the latency phase; comma-separated: one phase per rate"
    )
    parser.add_argument(
        "--delivery-budget",
        type=float,
        default=0,
        help=f"cap on N x rate in the latency phases (default: none with the Node clients, "
        f"{PYTHON_BUDGET:,} with the Python ones)",
    )
    parser.add_argument("--seconds", type=float, default=3, help="length of each latency phase")
    parser.add_argument("--no-burst", dest="burst", action="store_false", help="skip the throughput phase")
    parser.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="Node processes for the clients (default: one more per 250 clients, at most 4)",
    )
    parser.add_argument(
        "--full-clients",
        type=int,
        default=FULL_CLIENTS,
        help=f"how many of each level's Node clients are socket.io-client ones (default {FULL_CLIENTS}; "
        "-1: all); the others are light clients speaking the protocol over a bare websocket",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the server to one CPU and this process and the clients to the others "
        "(sched_setaffinity): the clients no longer preempt the server",
    )
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="run the clients at this nice level (10: the server is not preempted by its own load "
        "generator on shared cores; CRMs run elsewhere in production)",
    )
    parser.add_argument(
        "--python-clients",
        dest="node",
        action="store_false",
        help="python-socketio clients in one process instead of socket.io-client in Node",
    )
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the floor (the burst's load against a bare Litestar route, bench/_floor.py)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="start the Node reference service (bench/node-reference: socket.io + better-sqlite3) "
        "instead of zaphub, to see what the same clients measure against it on this machine",
    )
    parser.add_argument(
        "--receive", nargs=5, metavar=("URL", "TOKEN", "N", "EXPECTED", "IDLE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.receive:
        url, token, n, expected, idle = args.receive
        await receive(url, token, int(n), int(expected), float(idle))
        return
    if args.node and (why := node_available()) is not None:
        print(f"Python clients instead of Node ones: {why}", file=sys.stderr)
        args.node = False
    if not args.node and importlib.util.find_spec("aiohttp") is None:
        # python-socketio's asyncio client needs aiohttp; without it every client fails to
        # connect with an unexplained "Unexpected connection error".
        raise SystemExit(
            "no clients to run: the Python clients need aiohttp (pip install -e '.[test]'), "
            "the Node ones socket.io-client (npm ci --prefix tests/e2e/js)"
        )

    import jwt

    token = jwt.encode({"sub": "bench", "exp": int(time.time()) + 6 * 3600}, JWT_SECRET, algorithm="HS256")
    with tempfile.TemporaryDirectory() as tmp:
        if args.reference:
            proc, url = _host.start_reference(Path(tmp), APP_SECRET, JWT_SECRET)
        else:
            proc, url = start_server(Path(tmp))
        if args.pin:
            allowed = sorted(os.sched_getaffinity(0))
            if len(allowed) < 2:
                raise SystemExit("--pin needs two CPUs or more")
            pin_process(proc.pid, {allowed[0]})
            os.sched_setaffinity(0, set(allowed[1:]))
        rows = []
        try:
            host, port = url.removeprefix("http://").split(":")
            await post_webhooks(host, int(port), "warmup", 200, rate=0, concurrency=8)  # first writes, caches
            for n in (int(x) for x in args.clients.split(",")):
                level = await run_level(url, token, n, args, proc.pid)
                rows += level
                print(f"{n:,} clients connected: server RSS {level[0]['rss_mb']:.0f} MB", file=sys.stderr)
        finally:
            _host.stop(proc)
        floor = await run_floor(Path(tmp)) if args.floor and not args.reference else None
    rss = {r["clients"]: r["rss_mb"] for r in rows}
    if args.node:
        kind = "Node: socket.io-client" + (
            "" if args.full_clients < 0 else f" (at most {args.full_clients:,} per level; the rest light)"
        )
    else:
        kind = "python-socketio"
    if args.reference:
        kind += "; server: the Node reference (bench/node-reference)"
    if args.pin:
        kind += "; server pinned to one CPU, clients and load generator to the other(s)"
    print(
        f"clients: {kind}; server RSS with them connected: "
        + ", ".join(f"{n:,}: {mb:.0f} MB" for n, mb in rss.items())
    )
    print_table(rows)
    targets = [t for r in rows if r["rate"] for t in _host.fanout_targets(r)]
    if targets:
        print()
        _host.print_targets(targets)
    if any(r["disorder"] for r in rows):
        print("\nEVENTS OUT OF ORDER OR DUPLICATED on some socket: see the JSON rows (disorder)")
    if floor is not None:
        print(
            f"\nfloor (bare Litestar route, same uvicorn config, {floor['requests']} webhooks, "
            f"16 connections): {floor['per_s']:,.0f}/s, CPU {floor['cpu_us']:.0f} µs per request"
        )


if __name__ == "__main__":
    asyncio.run(main())
