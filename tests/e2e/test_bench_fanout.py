"""``bench/fanout.py`` end to end: a real ``zaphub run``, its Node clients (``bench/js``: the
socket.io-client ones and the light ones over a bare websocket, with and without ``--pin``) and the
python-socketio fallback report every event of every phase, once and in order, per client.

The figures themselves are never checked (timing is not asserted in tests); what is checked is
that the clients' reports add up, so a broken client or merge cannot pass for a fast server.
Needs ``node`` and ``npm ci`` in tests/e2e/js for the Node case (skipped otherwise, failed in CI).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.helpers import run_bench_script
from tests.plugins.crm_realtime.harness import require_node


def run_bench(*args: str) -> list[dict[str, Any]]:
    """Run the bench; its rows (one JSON object per phase on stderr)."""
    done = run_bench_script("fanout.py", *args)
    rows = [json.loads(line) for line in done.stderr.splitlines() if line.startswith('{"clients"')]
    assert "| clients | phase |" in done.stdout
    return rows


@pytest.mark.parametrize("kind", ["node", "node-light", "node-light-pinned", "python"])
def test_every_client_gets_every_event_of_every_phase_in_order(kind: str) -> None:
    extra = ["--client-procs", "2"]  # 3 clients over 2 processes: the reports are merged
    full = 3
    if kind == "python":
        extra = ["--python-clients"]
    else:
        require_node()
    if kind.startswith("node-light"):
        # One socket.io-client and two light clients: the process with two runs one of each.
        extra += ["--full-clients", "1"]
        full = 1
    if kind.endswith("pinned"):
        if len(os.sched_getaffinity(0)) < 2:
            pytest.skip("--pin needs two CPUs")
        extra.append("--pin")
    rows = run_bench(
        "--clients", "3", "--rate", "40,20", "--seconds", "1", "--no-floor", "--no-burst", *extra
    )
    # One row per rate, lowest first, each with every delivery (3 clients x its webhooks).
    assert [(r["clients"], r["rate"], r["webhooks"]) for r in rows] == [(3, 20.0, 20), (3, 40.0, 40)]
    for row in rows:
        assert row["complete"] and row["drained"], row
        assert row["disorder"] == 0, row
        assert 0 < row["p50"] <= row["p99"] <= row["max"], row
        assert row["server_cpu_us_per_webhook"] > 0 and row["rss_mb"] > 0, row
        # The socket.io-client clients' own figures: a subset of the deliveries above.
        assert row["full_clients"] == full, row
        assert row["p50"] <= row["max"] and 0 < row["full_p50"] <= row["full_p99"] <= row["max"], row
