"""The agent console's stack: what its browser tests and ``docs/img/screenshots.py`` both run.

``zaphub run`` (a subprocess) talking to ``zaphub sandbox`` (the Meta emulator, another subprocess)
over real HTTP, on free ports: what a user runs. The sandbox sends ``sent``, ``delivered`` and
``read`` a second apart, so each tick is seen in the page. Customers write through signed webhooks,
as Meta posts them; the CRM calls are the public REST API.

Chromium is ``/usr/bin/chromium`` (``apt-get install chromium``; ``ZAPHUB_TEST_CHROMIUM`` names
another). Playwright only drives it: no browser is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt

from plugins.whatsapp import webhook_builders as wb
from tests.helpers import REPO, ZaphubProcess, free_port, write_config

__all__ = ["CHROMIUM", "JWT_SECRET", "PNID", "PRICE", "SECRET", "Stack", "browser_problem"]

CHROMIUM = Path(os.environ.get("ZAPHUB_TEST_CHROMIUM", "/usr/bin/chromium"))
SECRET = "console-e2e-app-secret-0123456789abcdef"
JWT_SECRET = "console-e2e-jwt-secret-0123456789abcdef"
PNID = wb.DEFAULT_PHONE_NUMBER_ID
PRICE = "Nossa tabela de preços: https://exemplo.com.br/precos"
STATUS_DELAYS = "1.0,2.0,3.0"


def browser_problem() -> str | None:
    """Why the console cannot be driven in a browser here (and the fix), or ``None``."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: apt-get install chromium (or set ZAPHUB_TEST_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[test]'"
    return None


class Stack:
    """``zaphub run`` + ``zaphub sandbox`` on free ports, and the calls Meta and a CRM make."""

    def __init__(self, tmp: Path, *, transports: list[str] | None = None, **autoreply: Any) -> None:
        self.tmp = tmp
        self.sandbox_port = free_port()
        self.sandbox_url = f"http://127.0.0.1:{self.sandbox_port}"
        self.sandbox: subprocess.Popen[bytes] | None = None
        config = {
            "storage": {"url": f"sqlite:///{tmp / 'zaphub.db'}"},
            "logging": {"level": "info"},
            "plugins": {
                "whatsapp": {
                    "app_secret": SECRET,
                    "verify_token": "console-e2e",
                    "access_token": "sandbox-access-token",
                    "phone_number_id": PNID,
                    "graph_api_url": self.sandbox_url,
                    "pair_burst": 1000,
                },
                "crm_realtime": {
                    "jwt_secret": JWT_SECRET,
                    **({"transports": transports} if transports else {}),
                    "console": {
                        "templates": [
                            {
                                "name": "order_update",
                                "language": "pt_BR",
                                "label": "Pedido a caminho",
                                "body": "Olá {{1}}, seu pedido {{2}} saiu para entrega.",
                            }
                        ]
                    },
                },
                "autoreply": {
                    "cooldown_seconds": 0,
                    "rules": [{"keywords": ["preço"], "reply": PRICE}],
                    **autoreply,
                },
            },
        }
        self.config_path = write_config(tmp / "config.yaml", config)
        self.zaphub = ZaphubProcess(self.config_path)
        self.url = self.zaphub.url
        self.http = httpx.Client(timeout=10)

    def start(self) -> Stack:
        log = open(self.tmp / "sandbox.log", "ab")  # noqa: SIM115  # closed with the process in stop()
        self.sandbox = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "core.cli",
                "sandbox",
                "--port",
                str(self.sandbox_port),
                "--webhook-url",
                self.url,
                "--app-secret",
                SECRET,
                "--phone-number-id",
                PNID,
                "--status-delays",
                STATUS_DELAYS,
            ],
            cwd=self.tmp,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._sandbox_log = log
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.http.get(f"{self.sandbox_url}/_sandbox/requests").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.sandbox.poll() is None, (self.tmp / "sandbox.log").read_text()
            assert time.monotonic() < deadline, "the sandbox did not start"
            time.sleep(0.05)
        self.zaphub.start().wait_ready()
        return self

    def restart(self) -> None:
        """Stop zaphub (SIGTERM) and start it again on the same port and database."""
        self.zaphub.stop()
        self.zaphub = ZaphubProcess(self.config_path, port=self.zaphub.port).start()
        self.zaphub.wait_ready()

    def stop(self) -> None:
        self.zaphub.stop()
        if self.sandbox is not None and self.sandbox.poll() is None:
            self.sandbox.terminate()
            self.sandbox.wait(10)
        if hasattr(self, "_sandbox_log"):
            self._sandbox_log.close()
        self.http.close()

    # -- Meta and the CRM ---------------------------------------------------------------------

    def token(self, sub: str = "ana", secret: str = JWT_SECRET) -> str:
        return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")

    def inbound(self, text: str, *, from_: str, name: str = "João Silva", **opts: Any) -> str:
        """A customer writes (a signed webhook, as Meta posts it); returns the wamid."""
        message = wb.text(text, from_=from_, **opts)
        body, headers = wb.signed(wb.envelope(messages=[message], contacts=[wb.contact(from_, name)]), SECRET)
        response = self.http.post(f"{self.url}/meta-whatsapp/webhook", content=body, headers=headers)
        assert response.status_code == 200, response.text
        return str(message["id"])

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token('test-crm')}", **kwargs.pop("headers", {})}
        return self.http.request(method, f"{self.url}/api/{path}", headers=headers, **kwargs)

    def conversation_of(self, wa_id: str) -> dict[str, Any]:
        found = [
            c
            for c in self.api("GET", "conversations?limit=200").json()["conversations"]
            if c["contact"]["wa_id"] == wa_id
        ]
        assert found, f"no conversation with {wa_id}"
        return found[0]  # type: ignore[no-any-return]

    def messages(self, conversation_id: int) -> list[dict[str, Any]]:
        return self.api("GET", f"conversations/{conversation_id}/messages?limit=200").json()[  # type: ignore[no-any-return]
            "messages"
        ]

    def sends_to(self, wa_id: str) -> list[dict[str, Any]]:
        """What Graph (the sandbox) was asked to send to one customer, oldest first."""
        requests = self.http.get(f"{self.sandbox_url}/_sandbox/requests").json()
        return [
            r["json"]
            for r in requests
            if r["method"] == "POST"
            and r["path"].endswith("/messages")
            and (r["json"] or {}).get("to", "").lstrip("+") == wa_id
        ]

    def webhook(self, message: dict[str, Any], *, name: str = "João Silva") -> None:
        """Any message object (an edit, a revoke, a reaction), signed as Meta posts it."""
        body, headers = wb.signed(
            wb.envelope(messages=[message], contacts=[wb.contact(message["from"], name)]), SECRET
        )
        response = self.http.post(f"{self.url}/meta-whatsapp/webhook", content=body, headers=headers)
        assert response.status_code == 200, response.text

    def upload(self, png: bytes) -> str:
        """Upload an image to the sandbox's Graph, as a business does; returns its media id."""
        response = self.http.post(
            f"{self.sandbox_url}/v25.0/{PNID}/media",
            files={"file": ("photo.png", png, "image/png")},
            data={"messaging_product": "whatsapp", "type": "image/png"},
            headers={"Authorization": "Bearer sandbox-access-token"},
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def openapi(self) -> dict[str, Any]:
        return self.http.get(f"{self.url}/schema/openapi.json").json()  # type: ignore[no-any-return]

    def has_endpoint(self, path: str, method: str) -> bool:
        return method in self.openapi()["paths"].get(path, {})

    def has_message_lifecycle(self) -> bool:
        """Whether REST messages carry edits, deletions and reactions (issue 11 item 1)."""
        schemas = self.openapi().get("components", {}).get("schemas", {})
        fields = {name for schema in schemas.values() for name in schema.get("properties", {})}
        return {"reactions", "edited_at", "deleted_at"} <= fields
