"""What an attacker without a valid token, or with one token, can do to a host: not much.

Refused connections cost no metric series and forge no log line; refused and idle transports are
closed; one client flooding ``join_conversation`` is refused cheaply while others are served.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import socketio
import websockets

from core.config import LoggingConfig
from core.logs import setup_logging
from plugins.crm_realtime import REALTIME
from plugins.crm_realtime.auth import REFUSAL_CODES
from tests.plugins.crm_realtime.harness import CrmClient, Zaphub, zaphub


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


# -- refused and idle connections are closed ---------------------------------------------------


class RawEngineIO:
    """An Engine.IO client over a raw WebSocket that does only what it is told (an attacker)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str) -> RawEngineIO:
        ws = await websockets.connect(
            url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket", open_timeout=BOUND
        )
        client = cls(ws)
        assert (await client.recv()).startswith("0{")  # the Engine.IO handshake
        return client

    async def recv(self) -> str:
        async with asyncio.timeout(BOUND):
            return str(await self.ws.recv())

    async def held_until_closed(self) -> list[str]:
        """Answer pings and read until the server closes the connection (fails after ``BOUND``).

        A client read late (a loaded machine) finds the server's packets and its close already
        buffered: answering a ping then fails on the closed connection, and the packets after
        that ping are still to be read.
        """
        seen = []
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                packet = await self.recv()
                seen.append(packet)
                if packet == "2":
                    with contextlib.suppress(websockets.ConnectionClosed):
                        await self.ws.send("3")
        return seen


BOUND = 10.0
"""How long a test waits for the server to act (its own delays are well under it)."""


async def test_a_refused_client_that_keeps_answering_pings_is_closed(tmp_path: Path) -> None:
    # connect_timeout is long and pings frequent: only the refusal can be what closes it.
    crm = {"connect_timeout_seconds": 60, "ping_interval_seconds": 0.2, "ping_timeout_seconds": 60}
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}", crm=crm) as z:
        clients = [await RawEngineIO.open(z.url) for _ in range(20)]
        for client in clients:
            await client.ws.send("40/crm,")  # connect without a token
        for client in clients:
            seen = [packet for packet in await client.held_until_closed() if packet != "2"]  # pings
            assert seen[0].startswith('44/crm,{"message":"unauthorized"')  # connect_error came first
            assert seen[1:] in ([], ["1"])  # then (Engine.IO's CLOSE and) the end of the connection
        realtime = z.host.stash[REALTIME]
        assert realtime.sio.eio.sockets == {}
        metrics = (await z.http.get("/metrics")).text
        assert "zaphub_crm_idle_connections_closed_total 20.0" in metrics
        # A client with a token is not affected.
        client = await z.connect()
        assert (await client.call("join_conversation", {"conversationId": 1}))["ok"] is False


async def test_a_connection_that_never_connects_a_namespace_is_closed(tmp_path: Path) -> None:
    crm = {"connect_timeout_seconds": 0.5, "ping_interval_seconds": 0.2, "ping_timeout_seconds": 60}
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}", crm=crm) as z:
        idle = await RawEngineIO.open(z.url)
        good = await z.connect()
        seen = await idle.held_until_closed()
        assert "2" in seen  # it did answer pings; the timeout closed it anyway
        assert good.sio.connected  # a connected client stays


@pytest.mark.parametrize("namespace", ["/", "/crmx"])
async def test_the_wrong_namespace_is_refused_naming_the_right_one(z: Zaphub, namespace: str) -> None:
    client = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    client.on("connect_error", errors.append, namespace=namespace)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(z.url, namespaces=[namespace], auth={"token": z.token()}, wait_timeout=5)
    assert errors == [
        {
            "message": f"unknown namespace {namespace}: connect to /crm, "
            "e.g. io(url + '/crm', {auth: {token}})",
            "data": {"reason": "unknown namespace", "namespace": "/crm"},
        }
    ]
    metrics = (await z.http.get("/metrics")).text
    assert 'zaphub_crm_auth_refused_total{reason="namespace"} 1.0' in metrics


# -- one token flooding joins ------------------------------------------------------------------


async def test_a_token_flooding_joins_is_refused_cheaply_while_others_are_served(storage_url: str) -> None:
    # Almost no refill: the flooder gets its burst of 10 joins and nothing more during the test.
    crm = {"join_rate_per_second": 0.001, "join_burst": 10, "max_joins_in_flight": 4}
    async with zaphub(storage_url, crm=crm) as z:
        await z.inbound("Olá!")
        listing = (await z.http.get("/api/conversations", headers=z.auth())).json()
        conversation_id = listing["conversations"][0]["id"]
        flood_token = z.token(sub="flooder")
        flooders = [await z.connect(flood_token) for _ in range(8)]

        async def flood(client: CrmClient) -> list[Any]:
            join = {"conversationId": conversation_id}
            return await asyncio.gather(*(client.call("join_conversation", join) for _ in range(50)))

        flooding = asyncio.gather(*(flood(c) for c in flooders))
        # Meanwhile another agent's REST call and Meta's webhook are served.
        other = z.token(sub="ana")
        response = await z.http.get(f"/api/conversations/{conversation_id}/messages", headers=z.auth(other))
        assert response.status_code == 200
        await z.inbound("still here?")  # asserts the webhook's 200
        acks = [ack for acks in await flooding for ack in acks]
        accepted = [ack for ack in acks if ack["ok"]]
        refused = [ack["error"] for ack in acks if not ack["ok"]]
        assert 1 <= len(accepted) <= 10
        assert len(refused) == 400 - len(accepted)
        assert all(error.startswith("rate limited: ") for error in refused)
        assert any("more than 0.001 joins per second for flooder; retry in" in e for e in refused)
        # Another agent has its own budget.
        ana = await z.connect(other)
        assert await ana.call("join_conversation", {"conversationId": conversation_id}) == {"ok": True}
        metrics = (await z.http.get("/metrics")).text
        assert 'zaphub_crm_joins_refused_total{reason="rate"}' in metrics
