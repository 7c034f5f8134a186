"""Helpers shared by tests: real servers on free ports, waiting on conditions, service probes."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from core.testing import free_port, serve, wait_for

REPO = Path(__file__).resolve().parent.parent

SANDBOX_TOKEN = "test-sandbox-token"
"""The sandbox control token test configs set (``plugins.whatsapp.sandbox_token``)."""
SANDBOX_HEADERS = {"X-Sandbox-Token": SANDBOX_TOKEN}
"""Headers a test client sends to use the sandbox controls (``/_sandbox/graph/_sandbox/…``)."""

__all__ = [
    "REPO",
    "SANDBOX_HEADERS",
    "SANDBOX_TOKEN",
    "ZaphubProcess",
    "console_script",
    "free_port",
    "read_body",
    "send_answer",
    "serve",
    "wait_for",
    "write_config",
    "zaphub_process",
]


async def read_body(receive: Any) -> bytes:
    """A raw ASGI app's whole request body, however many reads it takes."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def send_answer(send: Any, body: bytes, status: int = 200) -> None:
    """A raw ASGI app's response: ``status`` with ``body``."""
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def pg_admin_url() -> str:
    return os.environ.get("ZAPHUB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def redis_url() -> str:
    return os.environ.get("ZAPHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_available(url: str) -> str | None:
    """``None`` when a TCP connection to the URL's host:port succeeds, else the reason."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or {"postgresql": 5432, "redis": 6379}.get(parts.scheme.split("+")[0], 0)
    try:
        with socket.create_connection((host, port), timeout=1):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or exc})"


def console_script() -> str | None:
    """The installed ``zaphub`` command: on ``PATH``, else beside this interpreter, else ``None``.

    ``venv/bin/python -m pytest`` runs without the venv on ``PATH``; its console script is still
    the one a user of that venv types.
    """
    return shutil.which("zaphub") or shutil.which("zaphub", path=str(Path(sys.executable).parent))


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


class ZaphubProcess:
    """``zaphub run`` in a subprocess: the real server, as a user starts it."""

    def __init__(
        self,
        config_path: Path,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.config_path = config_path
        self.args = args or []
        """More ``zaphub run`` arguments (``--workers 2``)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        # The repo comes first; a PYTHONPATH passed in ``env`` (e.g. a plugin installed with
        # ``pip install --target``) is added after it.
        extra_path = (env or {}).get("PYTHONPATH")
        self.pythonpath = os.pathsep.join([str(REPO), extra_path]) if extra_path else str(REPO)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config_path.with_suffix(f".{self.port}.log")

    def start(self) -> ZaphubProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115  # closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "core.cli",
                "run",
                "--config",
                str(self.config_path),
                "--port",
                str(self.port),
                *self.args,
            ],
            cwd=self.config_path.parent,
            env={**self.env, "PYTHONPATH": self.pythonpath},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"zaphub exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"zaphub not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait (graceful shutdown)."""
        code = 0
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait(10)
        if hasattr(self, "_log"):
            self._log.close()
        return code


@contextlib.contextmanager
def zaphub_process(config_path: Path, **kwargs: Any) -> Iterator[ZaphubProcess]:
    proc = ZaphubProcess(config_path, **kwargs).start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def run_bench_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bench/NAME`` with ``args`` from the repository (five minutes at most).

    Fails the test with the tail of its stderr if it exits non-zero.
    """
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done
