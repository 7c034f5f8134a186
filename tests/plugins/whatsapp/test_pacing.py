"""Pacer: per-number throughput and per-recipient pair limits (fake clock), and shared through Redis."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from plugins.whatsapp.pacing import Pacer, SharedPacer
from tests.helpers import free_port, wait_for

PNID = "100000000000001"
OTHER_PNID = "100000000000002"
ANA = "5511999990001"
BRUNO = "5511999990002"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_number_allows_a_burst_then_spaces_at_the_rate(clock: FakeClock) -> None:
    pacer = Pacer(rate=10, burst=5, pair_burst=100, clock=clock)
    recipients = [f"55119{n:08d}" for n in range(100)]

    assert [pacer.try_acquire(PNID, r) for r in recipients[:5]] == [0.0] * 5
    wait = pacer.try_acquire(PNID, recipients[5])
    assert wait == pytest.approx(0.1)

    # Nothing was taken by the refusal: after the announced wait exactly one more fits.
    clock.advance(wait)
    assert pacer.try_acquire(PNID, recipients[5]) == 0.0
    assert pacer.try_acquire(PNID, recipients[6]) > 0

    # Sustained: one every 1/rate seconds, however many are waiting.
    for r in recipients[7:30]:
        clock.advance(0.1)
        assert pacer.try_acquire(PNID, r) == 0.0
        assert pacer.try_acquire(PNID, "5511900000000") > 0

    # Idle for long: the burst is back, but never more than the burst.
    clock.advance(60.0)
    granted = sum(pacer.try_acquire(PNID, r) == 0.0 for r in recipients[30:60])
    assert granted == 5


def test_default_burst_equals_the_rate(clock: FakeClock) -> None:
    pacer = Pacer(rate=80, clock=clock)
    results = [pacer.try_acquire(PNID, f"55119{n:08d}") for n in range(81)]
    assert results[:80] == [0.0] * 80
    assert results[80] > 0


def test_pair_limit_spaces_one_recipient(clock: FakeClock) -> None:
    pacer = Pacer(pair_interval=6.0, pair_burst=2, clock=clock)

    assert pacer.try_acquire(PNID, ANA) == 0.0
    assert pacer.try_acquire(PNID, ANA) == 0.0
    assert pacer.try_acquire(PNID, ANA) == pytest.approx(6.0)

    clock.advance(3.0)
    assert pacer.try_acquire(PNID, ANA) == pytest.approx(3.0)
    clock.advance(3.0)
    assert pacer.try_acquire(PNID, ANA) == 0.0
    assert pacer.try_acquire(PNID, ANA) == pytest.approx(6.0)


def test_a_waiting_recipient_does_not_block_others(clock: FakeClock) -> None:
    pacer = Pacer(pair_interval=6.0, pair_burst=1, clock=clock)

    assert pacer.try_acquire(PNID, ANA) == 0.0
    assert pacer.try_acquire(PNID, ANA) > 0
    assert pacer.try_acquire(PNID, BRUNO) == 0.0
    # The same recipient on another business number is another pair, and another number bucket.
    assert pacer.try_acquire(OTHER_PNID, ANA) == 0.0


def test_numbers_are_paced_independently(clock: FakeClock) -> None:
    pacer = Pacer(rate=1, burst=1, clock=clock)
    assert pacer.try_acquire(PNID, ANA) == 0.0
    assert pacer.try_acquire(PNID, BRUNO) == pytest.approx(1.0)
    assert pacer.try_acquire(OTHER_PNID, BRUNO) == 0.0


def test_refusal_reports_the_longer_of_both_waits(clock: FakeClock) -> None:
    pacer = Pacer(rate=1, burst=1, pair_interval=6.0, pair_burst=1, clock=clock)
    assert pacer.try_acquire(PNID, ANA) == 0.0
    assert pacer.try_acquire(PNID, ANA) == pytest.approx(6.0)
    clock.advance(6.0)
    assert pacer.try_acquire(PNID, ANA) == 0.0


def test_idle_recipients_are_forgotten(clock: FakeClock) -> None:
    pacer = Pacer(rate=1000, pair_interval=6.0, pair_burst=10, clock=clock)
    for n in range(500):
        assert pacer.try_acquire(PNID, f"55119{n:08d}") == 0.0
    assert len(pacer) == 500

    # A pair bucket untouched for pair_burst * pair_interval seconds is full: no state needed.
    clock.advance(59.0)
    pacer.try_acquire(PNID, ANA)
    assert len(pacer) == 501
    clock.advance(1.0)
    pacer.try_acquire(PNID, BRUNO)
    assert len(pacer) == 2  # ANA (touched 1 s ago) and BRUNO


def test_forgetting_does_not_reset_a_busy_recipient(clock: FakeClock) -> None:
    pacer = Pacer(pair_interval=6.0, pair_burst=1, clock=clock)
    assert pacer.try_acquire(PNID, ANA) == 0.0
    for _ in range(5):
        clock.advance(1.0)
        assert pacer.try_acquire(PNID, ANA) > 0
    clock.advance(1.0)
    assert pacer.try_acquire(PNID, ANA) == 0.0


def test_refused_calls_leave_no_state(clock: FakeClock) -> None:
    pacer = Pacer(rate=1, burst=1, clock=clock)
    assert pacer.try_acquire(PNID, ANA) == 0.0
    for n in range(1000):
        assert pacer.try_acquire(PNID, f"55119{n:08d}") > 0
    assert len(pacer) == 1


@pytest.mark.parametrize(
    "kwargs", [{"rate": 0}, {"pair_interval": 0}, {"burst": 0}, {"pair_burst": 0}], ids=str
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Pacer(**kwargs)  # type: ignore[arg-type]


# --- shared through Redis -------------------------------------------------------------------------


def _shared(
    redis_url: str, prefix: str, registry: CollectorRegistry | None = None, **kwargs: Any
) -> tuple[SharedPacer, Redis]:
    client = Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    options = {"rate": 5.0, "pair_interval": 60.0, "pair_burst": 2, **kwargs}
    fallback_options = {k: v for k, v in options.items() if k != "recheck_seconds"}
    pacer = SharedPacer(
        client,
        fallback=Pacer(**fallback_options),
        registry=registry or CollectorRegistry(),
        describe="redis://test",
        prefix=prefix,
        **options,
    )
    return pacer, client


@pytest.mark.redis
async def test_processes_sharing_redis_draw_from_one_budget(redis_test_url: str) -> None:
    prefix = f"zaphub-test-pacing-{uuid.uuid4().hex[:8]}:"
    a, client_a = _shared(redis_test_url, prefix)
    b, client_b = _shared(redis_test_url, prefix)
    try:
        # Per number: a burst of 5 in all, whichever process asks (each alone would allow 5).
        taken = [await (a if i % 2 else b).try_acquire(PNID, f"55119999{i:05d}") for i in range(5)]
        assert taken == [0.0] * 5
        assert 0 < await a.try_acquire(PNID, "5511888880000") <= 0.2 + 1e-6
        assert 0 < await b.try_acquire(PNID, "5511888880001") <= 0.2 + 1e-6
        # Another number has its own budget.
        assert await b.try_acquire(OTHER_PNID, ANA) == 0.0
        # Per pair: 2 back-to-back to Ana in all, then one a minute.
        assert await a.try_acquire(OTHER_PNID, BRUNO) == 0.0
        assert await b.try_acquire(OTHER_PNID, BRUNO) == 0.0
        assert await a.try_acquire(OTHER_PNID, BRUNO) > 1.0
        assert a.shared and b.shared
    finally:
        await client_a.aclose()
        await client_b.aclose()


@pytest.mark.redis
async def test_redis_down_paces_locally_logged_once_per_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    registry = CollectorRegistry()
    pacer, client = _shared(url, "zaphub-test:", registry, recheck_seconds=0.0)
    server: asyncio.subprocess.Process | None = None
    try:
        with caplog.at_level(logging.WARNING, logger="zaphub.whatsapp.pacing"):
            # Nothing listens: sends are still paced, by this process alone.
            waits = [await pacer.try_acquire(PNID, f"55119999{i:05d}") for i in range(7)]
            assert waits[:5] == [0.0] * 5 and all(w > 0 for w in waits[5:])
            assert not pacer.shared
            assert registry.get_sample_value("zaphub_whatsapp_pacing_local_total") == 7
            assert registry.get_sample_value("zaphub_whatsapp_shared_pacing_up") == 0
            down = [r for r in caplog.records if "no longer shared" in r.getMessage()]
            assert len(down) == 1 and "ConnectionError" in down[0].getMessage()

            server = await asyncio.create_subprocess_exec(
                "redis-server",
                *("--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
                stdout=subprocess.DEVNULL,
            )

            async def shared_again() -> bool:
                await pacer.try_acquire(PNID, "5511777770000")
                return pacer.shared

            await wait_for(shared_again, timeout=30, what="pacing shared again once Redis is up")
            back = [r for r in caplog.records if "shared through Redis again" in r.getMessage()]
            assert len(back) == 1
            assert len([r for r in caplog.records if "no longer shared" in r.getMessage()]) == 1
    finally:
        await client.aclose()
        if server is not None:
            server.terminate()
            await asyncio.wait_for(server.wait(), timeout=10)
