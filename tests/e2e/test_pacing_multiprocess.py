"""Two real ``zaphub run`` processes on one PostgreSQL and one Redis share one send-rate budget.

Each process has its own outbox worker and, in sandbox mode, its own Graph emulator. Without a
shared budget each would send ``messages_per_second`` and Meta would see twice the rate (130429);
with ``redis.url`` the combined sends stay within one number's token bucket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import convert_section
from plugins.crm_realtime.config import CrmRealtimeSettings
from plugins.whatsapp import webhook_builders as wb
from tests.helpers import SANDBOX_HEADERS, ZaphubProcess, wait_for
from tests.plugins.crm_realtime.harness import APP_SECRET, crm_config, issue_token, two_processes

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

RATE = 4  # messages per second per business number; the burst is the same
SENDS = 24
# Arrival at the emulator is the pacing decision plus a variable HTTP delay, so a few sends may
# arrive closer together than they were paced; one process alone already sends at the whole rate.
SLACK = 2


async def sends_seen(http: httpx.AsyncClient, proc: ZaphubProcess) -> list[float]:
    """When each send reached this process's Graph emulator."""
    response = await http.get(f"{proc.url}/_sandbox/graph/_sandbox/requests", headers=SANDBOX_HEADERS)
    assert response.status_code == 200, response.text
    return [
        r["time"]
        for r in response.json()
        if r["method"] == "POST" and r["path"].endswith("/messages") and (r["json"] or {}).get("type")
    ]


async def test_two_processes_send_within_one_rate_limit(
    tmp_path: Path, fresh_postgres_url: str, redis_test_url: str, redis_channel: str
) -> None:
    with two_processes(
        tmp_path, fresh_postgres_url, redis_test_url, redis_channel, messages_per_second=RATE
    ) as (a, b):
        section = crm_config(fresh_postgres_url, 0)["plugins"]["crm_realtime"]
        token = issue_token(convert_section(section, CrmRealtimeSettings, "plugins.crm_realtime"), sub="ana")
        auth = {"Authorization": f"Bearer {token}"}
        numbers = [f"55119{i:08d}" for i in range(SENDS)]
        async with httpx.AsyncClient(timeout=30) as http:
            body, headers = wb.signed(
                wb.envelope(
                    messages=[wb.text("Oi", from_=n) for n in numbers],
                    contacts=[wb.contact(n) for n in numbers],
                ),
                APP_SECRET,
            )
            response = await http.post(f"{a.url}/meta-whatsapp/webhook", content=body, headers=headers)
            assert response.status_code == 200, response.text

            async def conversations() -> list[dict[str, Any]]:
                listed = await http.get(f"{a.url}/api/conversations", params={"limit": 100}, headers=auth)
                return list(listed.json()["conversations"])

            await wait_for(lambda: _has(conversations(), SENDS), timeout=60, what="the conversations")
            # One message to each recipient (no pair limit involved), queued through both processes.
            for i, conversation in enumerate(await conversations()):
                proc = a if i % 2 else b
                response = await http.post(
                    f"{proc.url}/api/conversations/{conversation['id']}/messages",
                    json={"type": "text", "body": f"oferta {i}"},
                    headers=auth,
                )
                assert response.status_code == 202, response.text

            async def all_sent() -> bool:
                return len(await sends_seen(http, a)) + len(await sends_seen(http, b)) >= SENDS

            await wait_for(all_sent, timeout=120, what="every send to reach Graph")
            on_a, on_b = await sends_seen(http, a), await sends_seen(http, b)

    assert on_a and on_b, "both processes sent"
    times = sorted(on_a + on_b)
    assert len(times) == SENDS  # each once
    # A token bucket of RATE per second and burst RATE: any n consecutive sends span at least
    # (n - RATE) / RATE seconds. Two unshared buckets would squeeze them into about half that.
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            sends, span = j - i + 1, times[j] - times[i]
            assert sends <= RATE + RATE * span + SLACK, (
                f"{sends} sends within {span:.2f} s: over {RATE}/s with a burst of {RATE}"
            )


async def _has(fetch: Any, n: int) -> bool:
    return len(await fetch) >= n
