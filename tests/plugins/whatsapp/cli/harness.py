"""What the whatsapp command tests share: a stand-in for zaphub's webhook, and argument parsing."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from litestar import Litestar, Request, Response, post

from core.cli_types import Command

SECRET = "simulate-test-app-secret"


class Receiver:
    """Stands in for zaphub's webhook: 401 on a bad signature, records the rest."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()

        @post("/meta-whatsapp/webhook", status_code=200)
        async def webhook(request: Request[Any, Any, Any]) -> Response[Any]:
            raw = await request.body()
            expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(request.headers.get("x-hub-signature-256", ""), expected):
                return Response({"error": "invalid signature"}, status_code=401)
            async with self._changed:
                self.bodies.append(json.loads(raw))
                self._changed.notify_all()
            return Response({"ok": True})

        self.app = Litestar([webhook])

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(lambda: predicate(self.bodies))

    def values(self) -> list[dict[str, Any]]:
        return [change["value"] for body in self.bodies for e in body["entry"] for change in e["changes"]]


def parse(command: Command, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed as ``zaphub NAME`` parses it (with the global ``--config``)."""
    parser = argparse.ArgumentParser(prog=f"zaphub {command.name}")
    parser.add_argument("--config")
    command.configure(parser)
    return parser.parse_args(argv)


def help_of(command: Command) -> str:
    """``zaphub NAME --help`` as the command configures it."""
    parser = argparse.ArgumentParser(prog=f"zaphub {command.name}", description=command.description)
    command.configure(parser)
    return parser.format_help()
