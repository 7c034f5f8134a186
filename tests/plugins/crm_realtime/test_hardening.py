"""What an attacker without a valid token, or with one token, can do to a host: not much.

Refused connections cost no metric series and forge no log line; refused and idle transports are
closed; one client flooding ``join_conversation`` is refused cheaply while others are served.
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import socketio

from core.config import LoggingConfig
from core.logs import setup_logging
from plugins.crm_realtime.auth import REFUSAL_CODES
from tests.plugins.crm_realtime.harness import CrmClient, Zaphub, zaphub


@pytest.fixture
async def z(tmp_path: Path) -> Any:
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}") as running:
        yield running


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def token_with_alg(alg: str) -> str:
    """A JWT-shaped token whose header names any ``alg`` (what an attacker sends)."""
    return f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64({'sub': 'eve', 'exp': 2**31})}.c2ln"


def series(metrics: str, name: str) -> list[str]:
    return [line for line in metrics.splitlines() if line.startswith(name + "{")]


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_attacker_chosen_algorithms_add_no_series_and_forge_no_log_line(
    z: Zaphub, root_logger: logging.Logger, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    setup_logging(LoggingConfig(level="info", format=fmt))
    capsys.readouterr()
    forged = "x\nFORGED"
    for i in range(30):
        client = CrmClient()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(z.url, token_with_alg(f"{forged}{i}"))
        assert client.connect_error["message"] == "unauthorized"
    metrics = (await z.http.get("/metrics")).text
    refused = series(metrics, "zaphub_crm_auth_refused_total")
    assert refused == ['zaphub_crm_auth_refused_total{reason="algorithm"} 30.0']
    assert {line.split('"')[1] for line in refused} <= REFUSAL_CODES
    lines = capsys.readouterr().err.splitlines()
    assert not [line for line in lines if line.startswith("FORGED")]  # no record was forged
    refusals = [line for line in lines if "Socket.IO client refused" in line]
    assert len(refusals) == 30
    if fmt == "json":
        assert forged + "0" in json.loads(refusals[0])["message"]  # exact, escaped by the JSON encoding
    else:
        assert "algorithm x\\nFORGED0 not accepted" in refusals[0]
