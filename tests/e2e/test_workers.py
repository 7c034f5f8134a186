"""``zaphub run --workers N``: N processes on one port, PostgreSQL and Redis behind them.

Which worker accepts a connection is the kernel's choice, so the test reads it from ``/proc``:
it connects Socket.IO clients until each worker holds at least one, then posts webhooks on
fresh connections (spread over the workers) and checks that every client, whichever worker it
is on, receives every event once and in order. Configurations that cannot work with workers
are refused before anything starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import convert_section
from plugins.crm_realtime.config import CrmRealtimeSettings
from plugins.whatsapp import webhook_builders as wb
from tests.helpers import REPO, ZaphubProcess, free_port, wait_for, write_config
from tests.plugins.crm_realtime.harness import APP_SECRET, CrmClient, crm_config, issue_token

WEBHOOKS = 30


def established(pid: int, port: int) -> int:
    """TCP connections to local ``port`` that process ``pid`` holds open (Linux ``/proc``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                count += 1
    return count


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
async def test_two_workers_serve_webhooks_and_clients_on_either_get_every_event(
    tmp_path: Path, fresh_postgres_url: str, redis_test_url: str, redis_channel: str
) -> None:
    port = free_port()
    data = crm_config(fresh_postgres_url, port, redis={"url": redis_test_url, "channel": redis_channel})
    data["plugins"]["crm_realtime"]["transports"] = ["websocket"]
    data["logging"] = {"level": "debug"}  # to see each worker freeze its started app (below)
    proc = ZaphubProcess(write_config(tmp_path / "config.yaml", data), port=port, args=["--workers", "2"])
    proc.start().wait_ready(timeout=90)  # two interpreters start (spawn) on a shared machine
    assert proc.proc is not None
    clients: list[Any] = []
    try:
        await wait_for(lambda: len(serving(proc)) == 2, timeout=90, what="two workers serving")
        workers = serving(proc)
        crm = data["plugins"]["crm_realtime"]
        section = convert_section(crm, CrmRealtimeSettings, "plugins.crm_realtime")
        token = issue_token(section, sub="ana")
        # Connect until each worker holds a client (the kernel picks; 40 tries are plenty).
        for _ in range(40):
            client = CrmClient()
            await client.connect(proc.url, token)
            clients.append(client)
            if all(established(w, port) > 0 for w in workers):
                break
        per_worker = {w: established(w, port) for w in workers}
        assert all(per_worker.values()), f"clients per worker: {per_worker}"

        # Fresh connection per webhook, so the webhooks too are spread over both workers.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            for i in range(WEBHOOKS):
                body, headers = wb.signed(
                    wb.envelope(messages=[wb.text(f"msg {i}", from_="5511933334444")]), APP_SECRET
                )
                response = await http.post(f"{proc.url}/meta-whatsapp/webhook", content=body, headers=headers)
                assert response.status_code == 200, response.text
        expected = [f"msg {i}" for i in range(WEBHOOKS)]
        for client in clients:
            await client.wait("whatsapp:message", lambda d: d["message"]["body"] == expected[-1], within=30)
            assert [d["message"]["body"] for d in client.of("whatsapp:message")] == expected
    finally:
        for client in clients:
            await client.close()
        code = proc.stop(timeout=60)
    # SIGTERM stopped the supervisor and both workers, each after its graceful shutdown.
    assert code == 0, proc.log()[-3000:]
    assert alive(workers) == []
    assert proc.log().count("Application shutdown complete") == 2
    # Each worker hid its started app from full garbage collections, as `zaphub run` does.
    assert len(re.findall(r"garbage collector: \d+ objects of the started app frozen", proc.log())) == 2


def serving(proc: ZaphubProcess) -> list[int]:
    """The worker processes that said they serve (``… listening on … (worker PID)``) and still run."""
    return alive({int(m) for m in re.findall(r"listening on \S+ \(worker (\d+)\)", proc.log())})


def alive(pids: Iterable[int]) -> list[int]:
    """Those of ``pids`` that are running processes."""
    return sorted(p for p in pids if os.path.exists(f"/proc/{p}"))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({}, ["needs PostgreSQL", "storage.url", "SQLite"]),
        ({"storage": {"url": "postgresql://zaphub@db.invalid/zaphub"}}, ["needs Redis", "redis.url"]),
        (
            {
                "storage": {"url": "postgresql://zaphub@db.invalid/zaphub"},
                "redis": {"url": "redis://r.invalid"},
            },
            ["long-polling", "plugins.crm_realtime.transports: [websocket]"],
        ),
    ],
)
def test_workers_refuse_what_cannot_work_across_processes(
    tmp_path: Path, change: dict[str, Any], words: list[str]
) -> None:
    data = crm_config(f"sqlite:///{tmp_path / 'zaphub.db'}", 0) | change
    config = write_config(tmp_path / "config.yaml", data)
    done = subprocess.run(
        [sys.executable, "-m", "core.cli", "run", "--config", str(config), "--workers", "2"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ")
    for word in words:
        assert word in error
    assert "listening" not in done.stderr  # refused before anything listens
