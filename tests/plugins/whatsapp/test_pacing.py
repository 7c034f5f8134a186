"""Pacer: per-number throughput and per-recipient pair limits, with a fake clock."""

from __future__ import annotations

import pytest

from plugins.whatsapp.pacing import Pacer

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
