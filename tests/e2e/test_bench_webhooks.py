"""``bench/webhooks.py`` end to end against a real ``zaphub run``: what it reports adds up.

The figures themselves are never checked (timing is not asserted in tests). What is checked is
that every webhook was answered and fanned out, and that the group-commit line read from the
host's ``/metrics`` counts each of them in exactly one transaction: a renamed metric or a wrong
parse would otherwise make the line silently vanish or lie.
"""

from __future__ import annotations

import json
from typing import Any

from tests.helpers import run_bench_script


def run_bench(*args: str) -> tuple[str, dict[str, Any]]:
    """Run the bench; its output and its ``result:`` line."""
    done = run_bench_script("webhooks.py", *args)
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("result: ")]
    return done.stdout, json.loads(line.removeprefix("result: "))


def test_every_webhook_is_answered_fanned_out_and_counted_in_one_group_commit() -> None:
    out, result = run_bench("--rate", "300", "--duration", "2", "--sockets", "2", "--floor-duration", "0")
    assert result["ok"] == result["webhooks"] > 0
    assert result["events_min"] == result["ok"]
    commits = result["commits"]
    assert commits["webhooks"] == result["ok"]
    assert 1 <= commits["transactions"] <= result["ok"]
    assert commits["webhooks_each"] >= 1
    assert 0 < commits["busy"] <= 1.05  # a share of the wall time (rounding aside)
    assert "group commits: " in out
