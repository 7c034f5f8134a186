"""The Redis relay when Redis is missing, dead or back: loud once, counted, honest in ``/ready``.

A real Redis server (``redis-server``) is started on a free port during the test to end the
outage; the relay's hooks into python-socketio internals are pinned by these tests.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.helpers import free_port, wait_for
from tests.plugins.crm_realtime.harness import zaphub

pytestmark = pytest.mark.redis


def metric(text: str, name: str, default: float | None = None) -> float:
    """The value of one sample of ``/metrics`` (``name`` with its labels)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    if default is not None:
        return default
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture
def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is required in CI (the relay outage tests start one)")
        pytest.skip("redis-server is not installed")
    return binary


@pytest.fixture
def late_redis(
    redis_server_binary: str, tmp_path: Path
) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A Redis URL on a free port where nothing listens yet, and the list its server will join."""
    port = free_port()
    started: list[subprocess.Popen[bytes]] = []
    yield f"redis://127.0.0.1:{port}/0", started
    for proc in started:
        proc.terminate()
        proc.wait(10)


def start_redis(binary: str, url: str, workdir: Path) -> subprocess.Popen[bytes]:
    port = url.rsplit(":", 1)[1].split("/")[0]
    args = [binary, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen([*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL)


async def test_an_outage_is_logged_once_counted_and_reported_until_redis_is_back(
    tmp_path: Path,
    late_redis: tuple[str, list[subprocess.Popen[bytes]]],
    redis_server_binary: str,
    redis_channel: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, started = late_redis
    redis = {"url": url, "channel": redis_channel}
    with caplog.at_level(logging.INFO):
        async with zaphub(f"sqlite:///{tmp_path / 'z.db'}", redis=redis) as z:
            # Started with a dead Redis: said loudly, once.
            loud = [r for r in caplog.records if "REDIS UNREACHABLE" in r.getMessage()]
            assert len(loud) == 1 and loud[0].levelno == logging.ERROR
            assert url.replace("redis://", "") in loud[0].getMessage()
            # Clients of this process still get this process's events.
            client = await z.connect()
            for i in range(20):
                await z.inbound(f"msg {i}")
            await z.settle()
            await wait_for(lambda: len(client.of("whatsapp:message")) == 20, what="20 local events")
            # The outage is one log line, not two per emit, and python-socketio logs nothing.
            down = [r for r in caplog.records if "Redis relay DOWN" in r.getMessage()]
            assert len(down) == 1 and down[0].levelno == logging.ERROR
            assert not [
                r for r in caplog.records if r.name.startswith("socketio") and r.levelno >= logging.ERROR
            ]
            metrics = (await z.http.get("/metrics")).text
            assert metric(metrics, "zaphub_crm_relay_up") == 0
            assert metric(metrics, "zaphub_crm_relay_outages_total") == 1
            assert metric(metrics, 'zaphub_crm_relay_failures_total{side="publish"}') >= 20
            ready = await z.http.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["relay"].startswith("Redis relay down for ")

            # Redis comes up: the relay says so once, and /ready is green again.
            started.append(start_redis(redis_server_binary, url, tmp_path))

            async def ready_again() -> bool:
                return (await z.http.get("/ready")).status_code == 200

            await wait_for(ready_again, timeout=90, interval=0.5, what="/ready to turn 200")
            back = [r for r in caplog.records if "Redis relay back after" in r.getMessage()]
            assert len(back) == 1
            assert "events could not be relayed meanwhile" in back[0].getMessage()
            metrics = (await z.http.get("/metrics")).text
            assert metric(metrics, "zaphub_crm_relay_up") == 1
            assert metric(metrics, "zaphub_crm_relay_outages_total") == 1


@pytest.mark.postgres
async def test_postgresql_without_redis_warns_that_processes_do_not_share_events(
    fresh_postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="zaphub"):
        async with zaphub(fresh_postgres_url):
            pass
    warned = [r.getMessage() for r in caplog.records if "redis.url is not set" in r.getMessage()]
    assert len(warned) == 1
    assert "storage is PostgreSQL" in warned[0]


async def test_sqlite_without_redis_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="zaphub"):
        async with zaphub(f"sqlite:///{tmp_path / 'z.db'}"):
            await asyncio.sleep(0)
    assert not [r for r in caplog.records if "redis" in r.getMessage().lower()]
