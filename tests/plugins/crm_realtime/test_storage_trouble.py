"""Authenticated but malformed input gets a 4xx, and database trouble a truthful 503.

Malformed: JSON nested 1,000 deep, a ``before`` cursor or a join id beyond 64 bits. Database
trouble: PostgreSQL gone while the host runs (its database dropped), and a full disk under SQLite
(a real tmpfs of a few hundred kilobytes, mounted for the test; skipped where mounting is not
permitted).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugins.whatsapp import webhook_builders as wb
from tests.conftest import IN_CI, _pg_exec
from tests.helpers import pg_admin_url
from tests.plugins.crm_realtime.harness import APP_SECRET, Zaphub, zaphub

# -- malformed input ---------------------------------------------------------------------------


async def test_rest_json_nested_a_thousand_deep_is_a_400(z: Zaphub) -> None:
    conversation = await z.inbound("hi")
    assert conversation
    body = b'{"type":"text","body":"x","extra":' + b"[" * 1000 + b"]" * 1000 + b"}"
    r = await z.http.post(
        "/api/conversations/1/messages",
        content=body,
        headers={**z.auth(), "content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "bad_json"
    assert "too deeply" in r.json()["error"]["message"]


@pytest.mark.parametrize("ident", [str(2**63), str(2**70), "9" * 5000])
async def test_a_before_cursor_beyond_64_bits_is_a_400(z: Zaphub, ident: str) -> None:
    cursor = base64.urlsafe_b64encode(f"1700000000000000:{ident}".encode()).decode().rstrip("=")
    r = await z.http.get("/api/conversations", params={"before": cursor}, headers=z.auth())
    assert r.status_code == 400, r.text
    assert "next_before" in r.json()["error"]["message"]


async def test_a_join_id_of_5000_digits_is_refused_naming_the_field(z: Zaphub) -> None:
    client = await z.connect()
    ack = await client.call("join_conversation", {"conversationId": "9" * 5000})
    assert ack == {"ok": False, "error": "conversationId must be a positive integer id, got 5000 digits"}


# -- the database goes away ----------------------------------------------------------------------


@pytest.fixture
def doomed_postgres() -> Iterator[tuple[str, str]]:
    """A fresh database (URL, name) that the test may drop while the host uses it."""
    admin = pg_admin_url()
    from tests.conftest import require_service

    require_service("PostgreSQL", admin)
    name = f"zaphub_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_exec(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}", name
    finally:
        asyncio.run(_pg_exec(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.postgres
async def test_postgres_gone_gives_503_storage_unavailable_and_ready_says_so(
    doomed_postgres: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, name = doomed_postgres
    async with zaphub(url) as z:
        await z.inbound("hi")
        assert (await z.http.get("/api/conversations", headers=z.auth())).status_code == 200
        client = await z.connect()
        await _pg_exec(pg_admin_url(), f'DROP DATABASE "{name}" WITH (FORCE)')
        ack = await client.call("join_conversation", {"conversationId": 1})
        assert ack == {"ok": False, "error": "storage_unavailable: the database is unavailable; retry later"}
        for _ in range(3):
            r = await z.http.get("/api/conversations", headers=z.auth())
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "storage_unavailable"
            assert r.headers["retry-after"]
        send = await z.http.post(
            "/api/conversations/1/messages", json={"type": "text", "body": "x"}, headers=z.auth()
        )
        assert send.status_code == 503 and send.json()["error"]["code"] == "storage_unavailable"
        ready = await z.http.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["storage"] != "ok"
        # Meta keeps posting: each webhook is refused (Meta retries it later), one by one.
        for i in range(5):
            body, headers = wb.signed(wb.envelope(messages=[wb.text(f"during {i}")]), APP_SECRET)
            r = await z.http.post("/meta-whatsapp/webhook", content=body, headers=headers)
            assert r.status_code == 503 and r.json()["error"]["code"] == "storage_unavailable"
    # Logged once (throttled), as one line: no traceback per request.
    lines = [r for r in caplog.records if "storage unavailable" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None
    # The ingest writer's failure stays visible with its cause, once for the outage, not per webhook.
    stored = [r for r in caplog.records if r.getMessage().startswith("storing a webhook failed")]
    assert len(stored) == 1 and stored[0].exc_info is not None, [r.getMessage() for r in stored]


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}"
        if IN_CI and os.geteuid() == 0:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no space left."""
    filler = directory / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return filler


async def test_a_full_disk_gives_503_storage_unavailable_and_ready_says_so(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "disk", "2m") as disk:
        async with zaphub(f"sqlite:///{disk / 'z.db'}") as z:
            await z.inbound("hi")
            assert (await z.http.get("/ready")).status_code == 200
            filler = fill(disk)
            statuses = []
            for i in range(40):  # until the WAL needs a page it cannot get
                r = await z.http.post(
                    "/api/conversations/1/messages",
                    json={"type": "text", "body": f"message {i} " + "x" * 2000},
                    headers=z.auth(),
                )
                statuses.append(r.status_code)
                if r.status_code != 202:
                    break
            assert statuses[-1] == 503, statuses
            assert r.json()["error"]["code"] == "storage_unavailable"
            ready = await z.http.get("/ready")
            assert ready.status_code == 503, ready.text
            assert "full" in ready.json()["checks"]["storage"]
            filler.unlink()
            assert (await z.http.get("/ready")).status_code == 200
