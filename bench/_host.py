"""What the benchmarks share: starting a real ``zaphub run`` (and the floor app), its CPU time,
and raw HTTP/1.1 for webhooks.

The load generator speaks HTTP itself (pre-built requests on keep-alive connections) because a
full client library would use more of the CPU it shares with the server than the server does.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from prometheus_client.parser import text_string_to_metric_families

from plugins.whatsapp import webhook_builders as wb

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "bench" / "node-reference"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_zaphub(
    workdir: Path, config: dict[str, Any], run_args: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``zaphub run`` with ``config`` (its ``server.port`` is chosen here); return it and its URL."""
    port = free_port()
    config = {**config, "server": {**config.get("server", {}), "port": port}}
    (workdir / "config.yaml").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "core.cli",
            "run",
            "--config",
            str(workdir / "config.yaml"),
            *(run_args or []),
        ],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return proc, _wait_ready(proc, f"http://127.0.0.1:{port}", "/ready", "zaphub", ready=(200,))


def start_reference(
    workdir: Path, app_secret: str, jwt_secret: str, *, sync: str | None = None, floor: bool = False
) -> tuple[subprocess.Popen[bytes], str]:
    """Run the Node reference service (``bench/node-reference``); return it and its URL.

    With ``floor`` it serves its bare route instead (read the body, answer 200): Node's floor.
    """
    if not (REFERENCE / "node_modules").is_dir():
        raise SystemExit(f"the Node reference is not installed: npm ci --prefix {REFERENCE}")
    port = free_port()
    args = ["node", str(REFERENCE / "server.js"), "--port", str(port)]
    if floor:
        args.append("--floor")
    else:
        args += ["--db", str(workdir / "reference.db"), "--synchronous", sync or "FULL"]
    # Secrets through the environment: a command line is visible to every user of the machine.
    env = {**os.environ, "WHATSAPP_APP_SECRET": app_secret, "CRM_JWT_SECRET": jwt_secret}
    proc = subprocess.Popen(args, cwd=workdir, env=env)
    url = f"http://127.0.0.1:{port}"
    if floor:
        return proc, _wait_ready(proc, url, "/meta-whatsapp/webhook", "the Node floor", ready=(405,))
    return proc, _wait_ready(proc, url, "/ready", "the Node reference", ready=(200,))


def start_floor(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Run the floor app (``bench/_floor.py``, a bare Litestar route); return it and its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._floor", "--port", str(port)],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    # GET on the POST-only route: 405 means it serves.
    return proc, _wait_ready(
        proc, f"http://127.0.0.1:{port}", "/meta-whatsapp/webhook", "the floor app", ready=(405,)
    )


def _wait_ready(
    proc: subprocess.Popen[bytes], url: str, path: str, what: str, *, ready: tuple[int, ...]
) -> str:
    deadline = time.monotonic() + 120  # workers (--workers) start slowly on a busy machine
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1).status_code in ready:
                return url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{what} did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then wait for the process (and its workers) to exit."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stat(pid: int) -> list[str]:
    return _stat_of(f"/proc/{pid}/stat")


def _stat_of(path: str) -> list[str]:
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return Path(path).read_text().rsplit(")", 1)[1].split()


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (children found through their parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):  # exited meanwhile
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(parents.get(p, []))
    return found


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` and its descendants (worker processes), in MB."""
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024 if total else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process ``pid`` and all its descendants (Linux ``/proc``).

    Children still running are found through their parent ids; children already waited for are in
    the parent's ``cutime``/``cstime``. Take the difference of two readings.
    """
    ticks = 0
    for p in _tree(pid):
        try:
            ticks += sum(int(f) for f in _stat(p)[11:15])  # utime, stime, cutime, cstime
        except OSError:
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of the main thread of ``pid`` (its event loop) alone.

    In Python and in Node the event loop runs on the main thread (task id = pid): the figure a
    single process cannot spread over more cores. The rest of :func:`cpu_seconds` is other threads
    (zaphub's SQLite writer, Node's libuv pool and garbage collector) and child processes.
    """
    return sum(int(f) for f in _stat_of(f"/proc/{pid}/task/{pid}/stat")[11:13]) / os.sysconf("SC_CLK_TCK")


def system_cpu_seconds(pid: int) -> float:
    """System (kernel) CPU time so far of process ``pid`` alone: mostly its socket writes here."""
    return int(_stat(pid)[12]) / os.sysconf("SC_CLK_TCK")


class GroupCommits(NamedTuple):
    """The ingest batcher's counters from zaphub's ``/metrics`` (cumulative since start)."""

    transactions: float
    """``zaphub_ingest_batch_webhooks_count``: ingest transactions committed (or failed)."""
    webhooks: float
    """``zaphub_ingest_batch_webhooks_sum``: the webhooks they held."""
    seconds: float
    """``zaphub_ingest_seconds_sum``: their time, from taking the batch to its commit."""

    def since(self, before: GroupCommits, wall: float) -> dict[str, float]:
        """What happened between ``before`` and this reading, ``wall`` seconds apart.

        ``busy`` is the share of the time a transaction was in flight: near 1, the next batch
        always waits for the one in flight, so a webhook's wait is about two transactions long.
        """
        n = self.transactions - before.transactions
        if n <= 0 or wall <= 0:
            return {}
        seconds = self.seconds - before.seconds
        webhooks = self.webhooks - before.webhooks
        return {
            "transactions": n,
            "webhooks": webhooks,
            "per_s": n / wall,
            "webhooks_each": webhooks / n,
            "ms_each": seconds * 1000 / n,
            "busy": seconds / wall,
        }


def group_commits(url: str) -> GroupCommits:
    """Read the ingest batcher's counters from zaphub's ``GET /metrics``."""
    text = httpx.get(url + "/metrics", timeout=10).text
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }
    return GroupCommits(
        values.get("zaphub_ingest_batch_webhooks_count", 0.0),
        values.get("zaphub_ingest_batch_webhooks_sum", 0.0),
        values.get("zaphub_ingest_seconds_sum", 0.0),
    )


def webhook_request(host: str, body: bytes, secret: str) -> bytes:
    """A raw, signed ``POST /meta-whatsapp/webhook`` carrying ``body``."""
    head = (
        f"POST /meta-whatsapp/webhook HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Hub-Signature-256: {wb.sign(body, secret)}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_status(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (head and Content-Length body); return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


class Target(NamedTuple):
    """One of DESIGN.md's performance targets, judged on one run."""

    name: str
    met: bool
    seen: str
    """What the run showed, for the line printed."""


ACK_AT_1000 = "ack p99 ≤ 10 ms at 1,000 webhooks/s with 10 sockets"
"""The one target both benchmarks judge: by the same name, so their verdicts can be compared."""


def webhook_targets(result: dict[str, Any], *, rate: float, sockets: int) -> list[Target]:
    """The targets a ``bench/webhooks.py`` run can judge (DESIGN.md, "Performance targets").

    Only runs with 10 sockets judge anything: at full rate the throughput, at 1,000/s the ack
    tail (and the rate must have been kept: a server that falls behind does not meet it).
    """
    targets: list[Target] = []
    if sockets != 10 or "ack_p99_ms" not in result:
        return targets
    per_s, p99 = result["per_s"], result["ack_p99_ms"]
    if not rate:
        targets.append(Target("≥ 5,000 webhooks/s with 10 sockets", per_s >= 5000, f"{per_s:,.0f}/s"))
    elif rate == 1000:
        kept = per_s >= 0.99 * rate
        targets.append(
            Target(
                ACK_AT_1000,
                kept and p99 <= 10,
                f"p99 {p99:.1f} ms at {per_s:,.0f}/s",
            )
        )
    return targets


def fanout_targets(row: dict[str, Any]) -> list[Target]:
    """The targets a ``bench/fanout.py`` latency phase can judge (DESIGN.md, "Performance targets").

    10 clients at 1,000 webhooks/s: webhook→socket p99 and ack p99 ≤ 10 ms. 1,000 clients at
    100 webhooks/s: webhook→socket p99 ≤ 50 ms. A phase that lost deliveries or fell behind the
    rate (events/s under 99 % of it) does not meet its target, whatever its percentiles.
    """
    clients, rate = row["clients"], row["rate"]
    kept = row["complete"] and row["events_per_s"] >= 0.99 * rate
    behind = "" if kept else ", behind the rate or incomplete"
    if clients == 10 and rate == 1000:
        return [
            Target(
                "webhook→socket p99 ≤ 10 ms at 1,000 webhooks/s with 10 sockets",
                kept and row["p99"] <= 10,
                f"p99 {row['p99']:.1f} ms{behind}",
            ),
            Target(
                ACK_AT_1000,
                kept and row["ack_p99"] <= 10,
                f"p99 {row['ack_p99']:.1f} ms{behind}",
            ),
        ]
    if clients == 1000 and rate == 100:
        return [
            Target(
                "webhook→socket p99 ≤ 50 ms with 1,000 sockets at 100 webhooks/s",
                kept and row["p99"] <= 50,
                f"p99 {row['p99']:.1f} ms at {row['events_per_s']:,.0f} events/s{behind}",
            )
        ]
    return []


def print_targets(targets: list[Target]) -> None:
    """One line per target: met or NOT MET, and what the run showed."""
    for t in targets:
        print(f"DESIGN.md target {t.name}: {'met' if t.met else 'NOT MET'} ({t.seen})")
