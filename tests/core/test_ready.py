"""``GET /ready``'s storage check: truthful about writes, and off SQLite's write lock on a busy host.

SQLite's write lock is taken from outside by a plain ``sqlite3`` connection (``BEGIN IMMEDIATE``), as
a ``sqlite3`` shell or a backup would. A read-only file is made with ``chattr +i`` (root bypasses
file modes); never on the ``-shm`` file, which SQLite maps into memory.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest

from core.app import create_app
from core.config import parse_config
from core.errors import StorageError
from core.host import Host
from tests.helpers import serve, wait_for

PNID = "100000000000002"


@asynccontextmanager
async def ready_host(storage_url: str, probe_after: float) -> AsyncIterator[tuple[httpx.AsyncClient, Host]]:
    """A host without plugins on a free port: its ``/ready`` client and the host."""
    data = {"storage": {"url": storage_url, "ready_probe_after_seconds": probe_after}, "plugins": {}}
    app = create_app(parse_config(data, env={}))
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        yield http, app.state.host


async def storage_check(http: httpx.AsyncClient) -> tuple[int, str]:
    response = await http.get("/ready")
    return response.status_code, response.json()["checks"]["storage"]


def sqlite_file(storage_url: str) -> Path:
    return Path(storage_url.removeprefix("sqlite:///"))


def probe_written_at(db: Path) -> str | None:
    """When ``/ready`` last wrote its probe row (read from outside, without the host)."""
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT updated_at FROM plugin_state WHERE plugin = 'core' AND key = 'write_probe'"
        ).fetchone()
    return row[0] if row else None


@contextmanager
def write_lock_held(db: Path) -> Iterator[None]:
    """Hold SQLite's write lock from another connection, as a ``sqlite3`` shell would."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def test_ready_answers_200_while_the_host_writes(storage_url: str) -> None:
    async with ready_host(storage_url, probe_after=600) as (http, host):
        assert await storage_check(http) == (200, "ok")
        numbers = [f"55119{n:08d}" for n in range(60)]
        writes = asyncio.gather(*(host.storage.ensure_conversation(PNID, n) for n in numbers))
        checks = await asyncio.gather(*(storage_check(http) for _ in range(10)))
        await writes
        assert checks == [(200, "ok")] * 10
        assert len(await host.storage.list_conversations(limit=100)) == len(numbers)


async def test_a_busy_sqlite_host_is_ready_without_taking_the_write_lock(sqlite_url: str) -> None:
    db = sqlite_file(sqlite_url)
    async with ready_host(sqlite_url, probe_after=600) as (http, host):
        assert await storage_check(http) == (200, "ok")
        await host.storage.ensure_conversation(PNID, "5511900000001")  # a write commits
        probed = probe_written_at(db)
        with write_lock_held(db):
            # A probe would wait for the lock and then answer 503 "database is locked"; the
            # commit just made is the proof instead, and /ready reads only.
            assert await storage_check(http) == (200, "ok")
        assert probe_written_at(db) == probed


async def test_ready_names_a_write_lock_held_elsewhere_then_recovers(sqlite_url: str) -> None:
    db = sqlite_file(sqlite_url)
    async with ready_host(sqlite_url, probe_after=0.2) as (http, host):
        await host.storage.ensure_conversation(PNID, "5511900000001")
        poller = asyncio.create_task(poll_the_outbox(host))  # commits that wrote nothing prove nothing
        try:
            with write_lock_held(db):
                # Once no write has committed for 0.2 s, /ready probes and the lock is found.
                status, reason = await wait_for(
                    lambda: _failing(http), timeout=15, what="/ready to report the held lock"
                )
        finally:
            poller.cancel()
        assert status == 503
        assert "database is locked" in reason
        assert "another connection holds SQLite's write lock" in reason and "stop it" in reason
        assert await storage_check(http) == (200, "ok")


async def poll_the_outbox(host: Host) -> None:
    """What an idle outbox worker does: look for due sends, find none, commit."""
    while True:
        assert await host.storage.claim_outbox() == []
        await asyncio.sleep(0.02)


async def _failing(http: httpx.AsyncClient) -> tuple[int, str] | None:
    status, reason = await storage_check(http)
    return (status, reason) if status != 200 else None


@contextmanager
def immutable(*files: Path) -> Iterator[None]:
    done = subprocess.run(["chattr", "+i", *map(str, files)], capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(["chattr", "-i", *map(str, files)], capture_output=True)
        pytest.skip(f"cannot make the database file read-only (chattr +i needs root): {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], check=True)


async def test_a_failed_write_makes_ready_probe_and_name_a_read_only_file(sqlite_url: str) -> None:
    db = sqlite_file(sqlite_url)
    async with ready_host(sqlite_url, probe_after=600) as (http, host):
        await host.storage.ensure_conversation(PNID, "5511900000001")
        assert await storage_check(http) == (200, "ok")
        with immutable(db, db.with_name(db.name + "-wal")):
            with pytest.raises(StorageError):
                await host.storage.ensure_conversation(PNID, "5511900000002")
            # The commit a moment ago proves nothing once a write failed: /ready probes.
            status, reason = await storage_check(http)
            assert status == 503
            assert "readonly database" in reason and "the database file is read-only" in reason
            assert (await http.get("/health")).status_code == 200  # alive, not ready
        assert await storage_check(http) == (200, "ok")
        await host.storage.ensure_conversation(PNID, "5511900000002")
