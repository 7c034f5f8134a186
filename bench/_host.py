"""Starting a real ``zaphub run`` for a benchmark: a free port, a config file, wait until ready."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

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
