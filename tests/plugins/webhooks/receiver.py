"""A real HTTP receiver for outgoing webhooks, on a free port, whose answers a test scripts."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from core.testing import free_port


@dataclass
class Request:
    """One POST as the receiver saw it, and how it answered."""

    body: bytes
    headers: dict[str, str]
    at: float
    answer: str = ""

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    def signature_ok(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("x-zaphub-signature-256", ""))


Answer = tuple[int, dict[str, str]] | str
"""``(status, headers)``, or ``"stall"`` (no answer until the test ends or ``stall_seconds``)."""


@dataclass
class Receiver:
    """Answers each POST with ``decide(request, number_of_this_request)``."""

    decide: Callable[[Request, int], Answer] = lambda r, n: (200, {})
    stall_seconds: float = 30.0
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closing: threading.Event = field(default_factory=threading.Event)

    @property
    def accepted(self) -> list[Request]:
        """Requests answered 2xx, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.answer.startswith("2")]

    def accepted_ids(self) -> list[int]:
        return [r.event["id"] for r in self.accepted]

    def attempts_of(self, event_id: int) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.event["id"] == event_id]


@contextmanager
def running_receiver(receiver: Receiver) -> Iterator[Receiver]:
    """Serve ``receiver`` on a free port until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            request = Request(body, {k.lower(): v for k, v in self.headers.items()}, time.monotonic())
            with receiver._lock:
                receiver.requests.append(request)
                number = len(receiver.requests)
            answer = receiver.decide(request, number)
            if answer == "stall":
                request.answer = "stall"
                receiver._closing.wait(receiver.stall_seconds)
                return
            assert not isinstance(answer, str)
            status, headers = answer
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            with receiver._lock:
                request.answer = str(status)

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{port}/hooks"
    try:
        yield receiver
    finally:
        receiver._closing.set()
        server.shutdown()
        server.server_close()
