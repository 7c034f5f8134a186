"""A real zaphub (whatsapp sandbox + crm_realtime) on a free port, and recording Socket.IO clients.

Shared by the crm_realtime tests and the e2e realtime tests. Meta is the in-process sandbox: a
REST send really goes through the outbox to the sandbox's Graph, which posts signed status
webhooks back, exactly as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from core.app import create_app
from core.config import parse_config
from core.host import Host
from plugins.crm_realtime.auth import issue_token
from plugins.crm_realtime.config import CrmRealtimeSettings
from plugins.crm_realtime.testing import SocketClient
from plugins.whatsapp import webhook_builders as wb
from tests.helpers import REPO, SANDBOX_HEADERS, SANDBOX_TOKEN, ZaphubProcess, free_port, serve, write_config

JWT_SECRET = "crm-test-jwt-secret-0123456789abcdef"
APP_SECRET = "crm-test-app-secret-0123456789abcdef"
PNID = wb.DEFAULT_PHONE_NUMBER_ID
OTHER_PNID = "100000000000999"
NS = "/crm"
JS_DIR = REPO / "tests" / "e2e" / "js"


def crm_config(
    storage_url: str, port: int, *, crm: dict[str, Any] | None = None, **top: Any
) -> dict[str, Any]:
    """A config dict serving ``PNID`` and ``OTHER_PNID`` through the sandbox."""
    return {
        "server": {"port": port},
        "storage": {"url": storage_url},
        **top,
        "plugins": {
            "whatsapp": {
                "sandbox": True,
                "sandbox_token": SANDBOX_TOKEN,
                "app_secret": APP_SECRET,
                "verify_token": "verify-me",
                "phone_number_ids": [PNID, OTHER_PNID],
                "pair_burst": 1000,
            },
            "crm_realtime": {"jwt_secret": JWT_SECRET, **(crm or {})},
        },
    }


@contextlib.contextmanager
def two_processes(
    tmp_path: Path,
    postgres_url: str,
    redis_url: str,
    channel: str,
    *,
    handoff: dict[str, Any] | None = None,
    **whatsapp: Any,
) -> Iterator[list[ZaphubProcess]]:
    """Two real ``zaphub run`` on one PostgreSQL and one Redis (websocket only: no sticky sessions)."""
    procs = []
    top: dict[str, Any] = {"handoff": handoff} if handoff is not None else {}
    try:
        for name in ("a", "b"):
            port = free_port()
            data = crm_config(postgres_url, port, redis={"url": redis_url, "channel": channel}, **top)
            data["plugins"]["crm_realtime"]["transports"] = ["websocket"]
            data["plugins"]["whatsapp"].update(whatsapp)
            config = write_config(tmp_path / f"{name}.yaml", data)
            procs.append(ZaphubProcess(config, port=port).start())
        for proc in procs:
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


class Zaphub:
    """A running host: its URL, an HTTP client, token minting and webhook posting."""

    def __init__(self, url: str, host: Host, http: httpx.AsyncClient, settings: CrmRealtimeSettings) -> None:
        self.url = url
        self.host = host
        self.http = http
        self.settings = settings
        self.clients: list[CrmClient] = []

    def token(self, sub: str = "ana", **kwargs: Any) -> str:
        """A token this host accepts (see :func:`plugins.crm_realtime.auth.issue_token`)."""
        return issue_token(self.settings, sub=sub, **kwargs)

    def auth(self, token: str | None = None) -> dict[str, str]:
        """``Authorization`` headers for REST."""
        return {"Authorization": f"Bearer {token or self.token()}"}

    async def webhook(
        self,
        messages: Iterable[dict[str, Any]] = (),
        statuses: Iterable[dict[str, Any]] = (),
        *,
        phone_number_id: str = PNID,
        contacts: list[dict[str, Any]] | None = None,
    ) -> None:
        """Post a signed webhook as Meta would; asserts the 200."""
        body, headers = wb.signed(
            wb.envelope(
                messages=messages, statuses=statuses, phone_number_id=phone_number_id, contacts=contacts
            ),
            APP_SECRET,
        )
        response = await self.http.post("/meta-whatsapp/webhook", content=body, headers=headers)
        assert response.status_code == 200, response.text

    async def inbound(
        self, text: str = "Olá!", *, from_: str = wb.DEFAULT_FROM, name: str = "João Silva", **kw: Any
    ) -> str:
        """An inbound text message; returns its wamid."""
        msg = wb.text(text, from_=from_, **kw)
        await self.webhook([msg], contacts=[wb.contact(from_, name)])
        return str(msg["id"])

    async def send(
        self, conversation_id: int, body: dict[str, Any], token: str | None = None
    ) -> dict[str, Any]:
        """``POST /api/conversations/{id}/messages``; asserts the 202."""
        response = await self.http.post(
            f"/api/conversations/{conversation_id}/messages", json=body, headers=self.auth(token)
        )
        assert response.status_code == 202, response.text
        return response.json()  # type: ignore[no-any-return]

    async def connect(self, token: str | None = None, **kwargs: Any) -> CrmClient:
        """A connected, recording Socket.IO client (websocket unless ``transports`` says otherwise)."""
        client = CrmClient()
        await client.connect(self.url, token or self.token(), **kwargs)
        self.clients.append(client)
        return client

    async def settle(self) -> None:
        """Wait until every hook event so far has been dispatched and emitted."""
        from plugins.crm_realtime import REALTIME

        await self.host.events.drain()
        await asyncio.wait_for(self.host.stash[REALTIME].drain(), 10)


CrmClient = SocketClient
"""A python-socketio client of ``/crm`` recording every event (the public test kit's)."""


@contextlib.asynccontextmanager
async def zaphub(
    storage_url: str,
    *,
    crm: dict[str, Any] | None = None,
    extra_plugins: dict[str, Any] | None = None,
    plugins: dict[str, Any] | None = None,
    **top: Any,
) -> AsyncIterator[Zaphub]:
    """Run zaphub in this event loop on a free port (the sandbox must know the port up front).

    ``extra_plugins`` (objects, enabled with an empty section) and ``plugins`` (more sections, e.g.
    ``{"autoreply": {...}}``) come after ``whatsapp`` and ``crm_realtime``, so their hooks run first.
    """
    port = free_port()
    data = crm_config(storage_url, port, crm=crm, **top)
    if extra_plugins:
        data["plugins"].update({name: {} for name in extra_plugins})
    data["plugins"].update(plugins or {})
    app = create_app(parse_config(data), extra_plugins=extra_plugins)
    settings = msgspec.convert(data["plugins"]["crm_realtime"], CrmRealtimeSettings)
    async with (
        serve(app, port=port) as url,
        httpx.AsyncClient(base_url=url, timeout=10, headers=SANDBOX_HEADERS) as http,
    ):
        z = Zaphub(url, app.state.host, http, settings)
        try:
            yield z
        finally:
            await asyncio.gather(*(c.close() for c in z.clients))


def require_node() -> str:
    """The ``node`` binary; skips (fails in CI) without it or without ``npm ci`` in tests/e2e/js."""
    import pytest

    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed"
    elif not (JS_DIR / "node_modules" / "socket.io-client").is_dir():
        problem = f"socket.io-client is not installed: run `npm ci` in {JS_DIR}"
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the JavaScript client tests are required in CI but {problem}")
        pytest.skip(problem)
    assert node is not None
    return node


class NodeClient:
    """``node tests/e2e/js/seed_client.js URL TOKEN``: the seed's client, printing JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.stderr = b""
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, url: str, token: str, **env: str) -> NodeClient:
        """Start the seed client (``ZAPHUB_JOIN=0``, ``ZAPHUB_TRANSPORTS=…`` as keyword arguments)."""
        proc = await asyncio.create_subprocess_exec(
            require_node(),
            str(JS_DIR / "seed_client.js"),
            url,
            token,
            cwd=JS_DIR,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode().strip()
            if line:
                self.lines.append(json.loads(line))
                self._changed.set()
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()
        self._changed.set()

    def of(self, event: str) -> list[Any]:
        """Data printed for one event, in order."""
        return [line["data"] for line in self.lines if line["event"] == event]

    async def wait(
        self, event: str, predicate: Callable[[Any], bool] = lambda _: True, *, within: float = 15.0
    ) -> Any:
        """The first printed ``event`` whose data matches ``predicate``."""
        try:
            async with asyncio.timeout(within):
                while True:
                    for data in self.of(event):
                        if predicate(data):
                            return data
                    if self._reader.done():
                        raise AssertionError(
                            f"node exited before {event}: {self.lines} {self.stderr.decode()}"
                        )
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {event} from node within {within}s; got {self.lines}") from None

    async def emit(self, event: str, data: Any) -> Any:
        """Make the client emit ``event`` and return its ack."""
        assert self.proc.stdin is not None
        before = len(self.of(event))
        self.proc.stdin.write(json.dumps({"emit": event, "data": data}).encode() + b"\n")
        await self.proc.stdin.drain()
        await self.wait(event, lambda _: len(self.of(event)) > before)
        return self.of(event)[-1]["ack"]

    async def close(self) -> None:
        """Close stdin (the script disconnects and exits), kill it if it lingers."""
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)
