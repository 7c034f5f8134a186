"""The in-process sandbox's controls, tried as a stranger would: they are not reachable without
the token, from another machine, or through a proxy, and a bundled config keeps them off."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from litestar import Litestar

from core.app import create_app
from core.config import parse_config
from core.storage.schema import messages
from tests.helpers import SANDBOX_HEADERS, SANDBOX_TOKEN, free_port, serve

SECRET = "controls-test-app-secret-0123456789"
CONTROLS = "/_sandbox/graph/_sandbox"
PNID = "100000000000002"
INBOUND = {"type": "text", "text": "forged by a stranger", "from": "5511900001111"}


def lan_address() -> str | None:
    """An address of this machine that is not loopback, to connect from "another machine"."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@contextlib.asynccontextmanager
async def sandboxed(tmp_path: Path, **whatsapp: Any) -> AsyncIterator[tuple[Litestar, int]]:
    """zaphub with the sandbox on, listening on every interface."""
    port = free_port()
    config = parse_config(
        {
            "server": {"host": "0.0.0.0", "port": port},
            "storage": {"url": f"sqlite:///{tmp_path / 'zaphub.db'}"},
            "plugins": {
                "whatsapp": {"sandbox": True, "app_secret": SECRET, "verify_token": "vt", **whatsapp}
            },
        },
        env={},
    )
    app = create_app(config)
    async with serve(app, host="0.0.0.0", port=port):
        yield app, port


async def stored_messages(app: Litestar) -> int:
    async with app.state.host.storage.engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(messages))).scalar_one())


async def try_every_control(http: httpx.AsyncClient, headers: dict[str, str]) -> set[int]:
    """The status of each control endpoint, called as this client."""
    answers = [
        await http.post(f"{CONTROLS}/inbound", json=INBOUND, headers=headers),
        await http.post(f"{CONTROLS}/statuses", json={"wamid": "wamid.X", "status": "read"}, headers=headers),
        await http.get(f"{CONTROLS}/requests", headers=headers),
        await http.delete(f"{CONTROLS}/requests", headers=headers),
        await http.post(f"{CONTROLS}/faults", json={"status": 500, "count": 100}, headers=headers),
        await http.get(f"{CONTROLS}/faults", headers=headers),
        await http.get(f"{CONTROLS}/deliveries", headers=headers),
    ]
    return {a.status_code for a in answers}


async def test_without_the_token_a_local_client_is_refused_and_nothing_is_ingested(tmp_path: Path) -> None:
    async with (
        sandboxed(tmp_path, sandbox_token=SANDBOX_TOKEN) as (app, port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        assert await try_every_control(http, {}) == {401}
        assert await try_every_control(http, {"X-Sandbox-Token": "guess"}) == {401}
        refused = await http.post(f"{CONTROLS}/inbound", json=INBOUND)
        assert refused.json()["error"]["message"].startswith("missing X-Sandbox-Token header")
        assert await stored_messages(app) == 0
        assert (await http.get(f"{CONTROLS}/faults", headers=SANDBOX_HEADERS)).json() == []
        # The owner, on this machine with the token, gets the controls.
        delivered = await http.post(f"{CONTROLS}/inbound", json=INBOUND, headers=SANDBOX_HEADERS)
        assert delivered.status_code == 200
        assert delivered.json()["delivery"]["status_code"] == 200
        assert await stored_messages(app) == 1


async def test_another_machine_is_refused_even_with_the_token(tmp_path: Path) -> None:
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    async with sandboxed(tmp_path, sandbox_token=SANDBOX_TOKEN) as (app, port):
        async with httpx.AsyncClient(base_url=f"http://{address}:{port}", timeout=10) as stranger:
            assert await try_every_control(stranger, SANDBOX_HEADERS) == {403}
            refused = await stranger.get(f"{CONTROLS}/requests", headers=SANDBOX_HEADERS)
            assert "only clients on this machine" in refused.json()["error"]["message"]
            assert "sandbox_remote_control" in refused.json()["error"]["message"]
            assert (await stranger.get("/health")).status_code == 200  # the port itself is public
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as local:
            assert (await local.get(f"{CONTROLS}/faults", headers=SANDBOX_HEADERS)).json() == []
        assert await stored_messages(app) == 0


async def test_a_request_relayed_by_a_local_proxy_is_refused(tmp_path: Path) -> None:
    async with sandboxed(tmp_path, sandbox_token=SANDBOX_TOKEN) as (app, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
                relayed = {**SANDBOX_HEADERS, header: "203.0.113.9"}
                assert await try_every_control(http, relayed) == {403}, header
        assert await stored_messages(app) == 0


async def test_remote_control_can_be_allowed_but_still_needs_the_token(tmp_path: Path) -> None:
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    async with (
        sandboxed(tmp_path, sandbox_token=SANDBOX_TOKEN, sandbox_remote_control=True) as (_, port),
        httpx.AsyncClient(base_url=f"http://{address}:{port}", timeout=10) as remote,
    ):
        assert await try_every_control(remote, {}) == {401}
        assert (await remote.get(f"{CONTROLS}/requests", headers=SANDBOX_HEADERS)).status_code == 200


async def test_the_bundled_default_keeps_the_controls_off_and_says_so(tmp_path: Path) -> None:
    async with sandboxed(tmp_path) as (app, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert await try_every_control(http, SANDBOX_HEADERS) == {403}
            off = await http.get(f"{CONTROLS}/requests")
            assert "set WHATSAPP_SANDBOX_TOKEN" in off.json()["error"]["message"]
            ready = (await http.get("/ready")).json()
            [sandbox] = [w for w in ready["warnings"] if w.startswith("plugins.whatsapp.sandbox: on")]
            assert "test controls are off" in sandbox
        assert await stored_messages(app) == 0


async def test_the_emulated_graph_refuses_the_formerly_published_token(tmp_path: Path) -> None:
    async with (
        sandboxed(tmp_path) as (_, port),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http,
    ):
        send = {
            "messaging_product": "whatsapp",
            "to": "5511900001111",
            "type": "text",
            "text": {"body": "x"},
        }
        graph = f"/_sandbox/graph/v25.0/{PNID}/messages"
        for token in ("sandbox-access-token", "anything"):
            refused = await http.post(graph, json=send, headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == 190
