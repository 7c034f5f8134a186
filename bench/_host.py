"""What both benchmarks share: starting a real ``zaphub run``, and raw HTTP/1.1 for webhooks.

The load generator speaks HTTP itself (pre-built requests on keep-alive connections) because a
full client library would use more of the CPU it shares with the server than the server does.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from plugins.whatsapp import webhook_builders as wb

REPO = Path(__file__).resolve().parent.parent


def start_zaphub(workdir: Path, config: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``zaphub run`` with ``config`` (its ``server.port`` is chosen here); return it and its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {**config, "server": {**config.get("server", {}), "port": port}}
    (workdir / "config.yaml").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "run", "--config", str(workdir / "config.yaml")],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("zaphub did not become ready")


def webhook_request(host: str, body: bytes, secret: str) -> bytes:
    """A raw, signed ``POST /meta-whatsapp/webhook`` carrying ``body``."""
    head = (
        f"POST /meta-whatsapp/webhook HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Hub-Signature-256: {wb.sign(body, secret)}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_status(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (head and Content-Length body); return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return int(head[9:12])
