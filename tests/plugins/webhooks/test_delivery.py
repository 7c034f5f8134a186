"""Outgoing webhooks end to end: a real ``zaphub run`` posting to a real receiver on a free port.

The receiver fails (500), stalls past the timeout, answers 429 with ``Retry-After`` and
recovers; the subscriber still ends with every event once, in order, signed. ``kill -9`` mid
stream skips nothing; a poison event is dead-lettered, listed and replayed by the CLI.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from plugins.whatsapp import webhook_builders as wb
from tests.helpers import REPO, ZaphubProcess, wait_for, write_config
from tests.plugins.webhooks.receiver import Answer, Receiver, Request, running_receiver

pytestmark = pytest.mark.slow

APP_SECRET = "webhooks-test-app-secret-0123456789"
SUB_SECRET = "subscriber-secret-0123456789abcdef"


def config(tmp_path: Path, storage_url: str, subscribers: list[dict[str, Any]]) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        {
            "storage": {"url": storage_url},
            "plugins": {
                "whatsapp": {"verify_token": "vt", "app_secret": APP_SECRET, "sandbox": True},
                "webhooks": {"subscribers": subscribers, "poll_interval_seconds": 0.2},
            },
        },
    )


def subscriber(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": url,
        "secret": SUB_SECRET,
        "timeout_seconds": 1,
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 5,
        **extra,
    }


async def post_texts(server: ZaphubProcess, texts: list[str]) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for i, text in enumerate(texts):
            msg = wb.text(text, from_=f"55119{i % 5:08d}")
            body, headers = wb.signed(wb.envelope(messages=[msg]), APP_SECRET)
            r = await client.post("/meta-whatsapp/webhook", content=body, headers=headers)
            assert r.status_code == 200, r.text


async def metrics_text(server: ZaphubProcess) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(f"{server.url}/metrics")).text


async def _has(server: ZaphubProcess, text: str) -> bool:
    return text in await metrics_text(server)


def zaphub_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.cli", "webhooks", "--config", str(cfg), *args],
        cwd=cfg.parent,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def first_seen(ids: list[int]) -> list[int]:
    seen: set[int] = set()
    return [i for i in ids if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]


async def test_failures_stalls_and_429_then_everything_once_in_order(
    storage_url: str, tmp_path: Path
) -> None:
    def flaky(request: Request, n: int) -> Answer:
        if n == 1:
            return (500, {})
        if n == 2:
            return "stall"  # past timeout_seconds
        if n == 3:
            return (429, {"Retry-After": "2"})
        return (200, {})

    # A second subscriber that never answers: the healthy one must not wait behind it.
    with (
        running_receiver(Receiver(decide=flaky)) as receiver,
        running_receiver(Receiver(decide=lambda r, n: "stall")) as dead,
    ):
        cfg = config(
            tmp_path,
            storage_url,
            [subscriber(receiver.url, name="crm"), subscriber(dead.url, name="dead")],
        )
        server = ZaphubProcess(cfg).start()
        try:
            await asyncio.to_thread(server.wait_ready)
            texts = [f"mensagem {i}" for i in range(20)]
            await post_texts(server, texts)
            await wait_for(lambda: len(set(receiver.accepted_ids())) == 20, timeout=60, what="20 deliveries")
            # Lag is measured for a stuck subscriber too (its task is busy retrying event 1).
            dead_lag = 'zaphub_webhook_lag_events{subscriber="dead"} 20.0'
            await wait_for(lambda: _has(server, dead_lag), what=dead_lag)
            metrics = await metrics_text(server)
        finally:
            server.stop()

    accepted = receiver.accepted
    assert [r.event["id"] for r in accepted] == list(range(1, 21)), "each event once, in order"
    assert [r.event["data"]["message"]["body"] for r in accepted] == texts
    for r in receiver.requests:
        assert r.signature_ok(SUB_SECRET), "every delivery is signed with the subscriber's secret"
        assert r.headers["x-zaphub-event-id"] == str(r.event["id"])
        assert r.headers["content-type"] == "application/json"
        assert r.headers["user-agent"].startswith("zaphub-webhooks/")
    assert not receiver.requests[0].signature_ok("another-secret")
    first = accepted[0].event
    assert set(first) == {"id", "type", "conversationId", "phoneNumberId", "createdAt", "data"}
    assert first["type"] == "whatsapp:message"
    # Event 1 was tried four times: 500, stall, 429, 200; the 429's Retry-After was waited out.
    tries = receiver.attempts_of(1)
    assert [t.answer for t in tries] == ["500", "stall", "429", "200"]
    assert tries[3].at - tries[2].at >= 1.9, "Retry-After: 2 was not honoured"
    # The dead subscriber is still on its first event: nothing of it slowed the healthy one.
    assert {r.event["id"] for r in dead.requests} == {1}
    assert 'zaphub_webhook_deliveries_total{outcome="delivered",subscriber="crm"} 20.0' in metrics
    assert 'zaphub_webhook_lag_events{subscriber="crm"} 0.0' in metrics


async def test_kill_9_mid_stream_then_restart_skips_nothing(storage_url: str, tmp_path: Path) -> None:
    def slow_ok(request: Request, n: int) -> Answer:
        import time

        time.sleep(0.05)  # keep the stream in progress when the host is killed
        return (200, {})

    with running_receiver(Receiver(decide=slow_ok)) as receiver:
        cfg = config(tmp_path, storage_url, [subscriber(receiver.url, name="crm")])
        server = ZaphubProcess(cfg).start()
        try:
            await asyncio.to_thread(server.wait_ready)
            await post_texts(server, [f"m{i}" for i in range(60)])
            await wait_for(lambda: len(receiver.accepted) >= 5, timeout=30, what="a few deliveries")
            server.kill()
        finally:
            server.stop()
        before = len(set(receiver.accepted_ids()))
        assert before < 60, "the kill should land mid-stream"

        server = ZaphubProcess(cfg).start()
        try:
            await asyncio.to_thread(server.wait_ready)
            await wait_for(
                lambda: len(set(receiver.accepted_ids())) == 60, timeout=60, what="all 60 after restart"
            )
        finally:
            server.stop()

    ids = receiver.accepted_ids()
    assert first_seen(ids) == list(range(1, 61)), "nothing skipped, in order"
    assert len(ids) - 60 <= 1, "at most the event in flight at the kill is delivered again"


async def test_poison_event_is_dead_lettered_listed_and_replayed(storage_url: str, tmp_path: Path) -> None:
    healed = False

    def poison(request: Request, n: int) -> Answer:
        if request.event["data"]["message"]["body"] == "poison" and not healed:
            return (500, {})
        return (200, {})

    with running_receiver(Receiver(decide=poison)) as receiver:
        cfg = config(
            tmp_path,
            storage_url,
            [subscriber(receiver.url, name="crm", retry_window_seconds=0.5, backoff_max_seconds=0.1)],
        )
        server = ZaphubProcess(cfg).start()
        try:
            await asyncio.to_thread(server.wait_ready)
            await post_texts(server, ["before", "poison", "after"])
            await wait_for(lambda: 3 in receiver.accepted_ids(), timeout=30, what="the event after poison")
            metrics = await metrics_text(server)
            assert 'zaphub_webhook_deliveries_total{outcome="dead_lettered",subscriber="crm"} 1.0' in metrics
            assert "dead-lettered" in server.log()

            # The stream went on past the poison event.
            assert receiver.accepted_ids() == [1, 3]
            assert len(receiver.attempts_of(2)) >= 2

            listed = zaphub_cli(cfg, "dead-letters")
            assert listed.returncode == 0, listed.stderr
            assert "crm\t2\twhatsapp:message\t" in listed.stdout
            assert "HTTP 500" in listed.stdout

            # Still failing: the replay says so and keeps the dead letter.
            failed = zaphub_cli(cfg, "replay", "--subscriber", "crm")
            assert failed.returncode == 1
            assert "event 2: failed (HTTP 500); kept" in failed.stdout
            assert "crm\t2\t" in zaphub_cli(cfg, "dead-letters").stdout

            unknown = zaphub_cli(cfg, "replay", "--subscriber", "crn")
            assert unknown.returncode != 0
            assert "no subscriber has that name; subscribers: crm" in unknown.stderr

            healed = True
            replayed = zaphub_cli(cfg, "replay", "--subscriber", "crm", "--event", "2")
            assert replayed.returncode == 0, replayed.stdout + replayed.stderr
            assert "replayed 1 of 1 to crm" in replayed.stdout
            assert zaphub_cli(cfg, "dead-letters").stdout.strip() == "no dead letters"
            status = zaphub_cli(cfg, "status")
            assert "crm\t" in status.stdout
            assert "behind=0" in status.stdout and "dead_letters=0" in status.stdout
        finally:
            server.stop()

    last = receiver.accepted[-1]
    assert last.event["id"] == 2 and last.event["data"]["message"]["body"] == "poison"
    assert last.signature_ok(SUB_SECRET)
    assert json.loads(receiver.attempts_of(2)[0].body) == last.event, "the replay sends the same body"


@pytest.mark.postgres
async def test_two_processes_deliver_once_and_take_over(fresh_postgres_url: str, tmp_path: Path) -> None:
    """Two hosts on one PostgreSQL database: one delivers, each event once and in order, whichever
    host stored it; when that host is killed the other carries on without skipping."""
    with running_receiver(Receiver()) as receiver:
        cfg = config(tmp_path, fresh_postgres_url, [subscriber(receiver.url, name="crm")])
        a, b = ZaphubProcess(cfg).start(), ZaphubProcess(cfg).start()
        try:
            await asyncio.gather(asyncio.to_thread(a.wait_ready), asyncio.to_thread(b.wait_ready))
            await asyncio.gather(
                post_texts(a, [f"a{i}" for i in range(15)]), post_texts(b, [f"b{i}" for i in range(15)])
            )
            await wait_for(lambda: len(receiver.accepted) >= 30, timeout=60, what="30 deliveries")
            assert receiver.accepted_ids() == list(range(1, 31)), "once each, in order, from one process"
            leader = a if "delivering to 1 subscriber" in a.log() else b
            other = b if leader is a else a
            assert "delivering to 1 subscriber" not in other.log()
            leader.kill()
            await post_texts(other, [f"c{i}" for i in range(5)])
            await wait_for(lambda: len(set(receiver.accepted_ids())) == 35, timeout=60, what="takeover")
        finally:
            a.stop()
            b.stop()
    assert first_seen(receiver.accepted_ids()) == list(range(1, 36))
