"""The verdicts ``bench/webhooks.py`` and ``bench/fanout.py`` print against DESIGN.md's targets.

A run only meets a target if it kept the asked rate and delivered everything: a server that falls
behind shows low percentiles for the few events it got out, and must not pass for fast.
"""

from __future__ import annotations

from typing import Any

from bench import _host


def verdicts(targets: list[_host.Target]) -> dict[str, bool]:
    return {t.name: t.met for t in targets}


def test_throughput_is_judged_at_full_rate_with_10_sockets_only() -> None:
    fast = {"per_s": 5012.0, "ack_p99_ms": 40.0}
    assert verdicts(_host.webhook_targets(fast, rate=0, sockets=10)) == {
        "≥ 5,000 webhooks/s with 10 sockets": True
    }
    slow = {"per_s": 4990.0, "ack_p99_ms": 40.0}
    assert verdicts(_host.webhook_targets(slow, rate=0, sockets=10)) == {
        "≥ 5,000 webhooks/s with 10 sockets": False
    }
    assert _host.webhook_targets(fast, rate=0, sockets=0) == []  # not the target's setting


def test_the_ack_tail_counts_only_if_the_rate_was_kept() -> None:
    name = "ack p99 ≤ 10 ms at 1,000 webhooks/s with 10 sockets"
    ok = {"per_s": 999.6, "ack_p99_ms": 9.8}
    assert verdicts(_host.webhook_targets(ok, rate=1000, sockets=10)) == {name: True}
    tail = {"per_s": 999.6, "ack_p99_ms": 10.4}
    assert verdicts(_host.webhook_targets(tail, rate=1000, sockets=10)) == {name: False}
    behind = {"per_s": 930.0, "ack_p99_ms": 3.0}
    assert verdicts(_host.webhook_targets(behind, rate=1000, sockets=10)) == {name: False}
    assert _host.webhook_targets(ok, rate=500, sockets=10) == []


def row(**over: Any) -> dict[str, Any]:
    base = {
        "clients": 1000,
        "rate": 100.0,
        "p99": 42.0,
        "ack_p99": 5.0,
        "complete": True,
        "events_per_s": 99.8,
    }
    return base | over


def test_1000_sockets_at_100_per_s_must_keep_up_and_deliver_everything() -> None:
    name = "webhook→socket p99 ≤ 50 ms with 1,000 sockets at 100 webhooks/s"
    assert verdicts(_host.fanout_targets(row())) == {name: True}
    assert verdicts(_host.fanout_targets(row(p99=51.0))) == {name: False}
    fell_behind = _host.fanout_targets(row(p99=20.0, events_per_s=59.0))
    assert verdicts(fell_behind) == {name: False}
    assert "behind the rate" in fell_behind[0].seen
    assert verdicts(_host.fanout_targets(row(complete=False))) == {name: False}
    assert _host.fanout_targets(row(rate=50.0)) == []


def test_10_sockets_at_1000_per_s_judge_both_tails() -> None:
    ten = row(clients=10, rate=1000.0, p99=9.5, ack_p99=10.5, events_per_s=999.0)
    assert verdicts(_host.fanout_targets(ten)) == {
        "webhook→socket p99 ≤ 10 ms at 1,000 webhooks/s with 10 sockets": True,
        "ack p99 ≤ 10 ms at 1,000 webhooks/s with 10 sockets": False,
    }
