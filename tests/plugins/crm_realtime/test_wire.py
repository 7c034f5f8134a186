"""The websocket write path (plugins/crm_realtime/wire.py) through a real server and real clients.

Includes the canary for what the direct writes rely on in python-engineio and uvicorn: when an
upgrade moves it, ``test_canary_events_are_written_directly_to_websockets`` fails and says what.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import socketio
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from plugins.crm_realtime import REALTIME
from plugins.crm_realtime.wire import Frames, compatibility_problem, with_event_id
from plugins.whatsapp import webhook_builders as wb
from tests.plugins.crm_realtime.harness import NS, Zaphub, zaphub

VERSIONS = ", ".join(
    f"{name} {importlib.metadata.version(name)}" for name in ("python-engineio", "uvicorn", "websockets")
)
UPGRADE_HINT = (
    f"The direct websocket write path is off with {VERSIONS}: an upgrade changed what "
    "plugins/crm_realtime/wire.py relies on. Pin the versions pyproject.toml allows, or update "
    "SocketWriter and its checks (events still arrive, through python-engineio's slower path)."
)


def metric(text: str, name: str) -> float:
    """One sample of ``/metrics`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def writes(z: Zaphub) -> dict[str, float]:
    """``zaphub_crm_socket_writes_total`` by path."""
    text = (await z.http.get("/metrics")).text
    return {
        path: metric(text, f'zaphub_crm_socket_writes_total{{path="{path}"}}')
        for path in ("direct", "queued")
    }


def parse_frame(wire: bytes) -> Frame:
    """One websocket frame as a client parses it (websockets' own parser)."""
    reader = StreamReader()
    reader.feed_data(wire)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
        while True:
            parser.send(None)
    except StopIteration as done:
        frame: Frame = done.value
    assert not reader.buffer, "bytes left after the frame"
    return frame


def test_with_event_id_appends_the_key_to_the_stored_json() -> None:
    for payload in ({}, {"a": 1}, {"message": {"body": 'ã ☃ "quoted" }'}, "list": [1, {}]}):
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        spliced = with_event_id(data, 42)
        assert json.loads(spliced) == {**payload, "eventId": 42}
        assert list(json.loads(spliced))[-1] == "eventId"
    assert json.loads(with_event_id(b"{ }", 7)) == {"eventId": 7}


def test_frames_decode_to_the_event_the_library_would_send() -> None:
    # Lengths that take each of the three websocket length encodings (7 bits, 16 bits, 64 bits).
    for body in ("Olá", "x" * 300, "ã" * 40_000):
        payload = {"message": {"body": body}, "eventId": 9}
        frames = Frames(NS, "whatsapp:message", json.dumps(payload, ensure_ascii=False).encode())
        frame = parse_frame(frames.wire)
        assert frame.opcode is Opcode.TEXT and frame.fin
        text = bytes(frame.data).decode()
        assert text[0] == "4"  # an Engine.IO message
        ours = socketio.packet.Packet(encoded_packet=text[1:])
        library = socketio.packet.Packet(
            socketio.packet.EVENT, namespace=NS, data=["whatsapp:message", payload]
        )
        theirs = socketio.packet.Packet(encoded_packet=library.encode())
        assert (ours.packet_type, ours.namespace, ours.data) == (
            theirs.packet_type,
            theirs.namespace,
            theirs.data,
        )
        # The library's own path sends the same packet.
        assert frames.packet.encode() == text


async def raw_client(z: Zaphub) -> Any:
    """A bare Engine.IO websocket authenticated on ``/crm`` (answers pings only when told)."""
    ws = await connect(z.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket")
    assert str(await ws.recv()).startswith("0{")
    await ws.send("40/crm," + json.dumps({"token": z.token(sub="raw")}))
    assert str(await ws.recv()).startswith("40/crm,")
    return ws


async def test_canary_events_are_written_directly_to_websockets(tmp_path: Path) -> None:
    assert compatibility_problem() is None, f"{UPGRADE_HINT} ({compatibility_problem()})"
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}") as z:
        client = await z.connect()
        before = await writes(z)
        for i in range(3):
            await z.inbound(f"canary {i}")
            await client.wait("whatsapp:message", lambda d, i=i: d["message"]["body"] == f"canary {i}")
        after = await writes(z)
        problem = z.host.stash[REALTIME].manager.writer.problem
        assert problem is None, f"{UPGRADE_HINT} ({problem})"
        assert after["direct"] - before["direct"] >= 3, f"{UPGRADE_HINT} (writes: {before} → {after})"
        assert after["queued"] == before["queued"], f"{UPGRADE_HINT} (writes: {before} → {after})"
        bodies = [d["message"]["body"] for d in client.of("whatsapp:message")]
        assert bodies == ["canary 0", "canary 1", "canary 2"]
        ids = [d["eventId"] for d in client.of("whatsapp:message")]
        assert ids == sorted(ids) and len(set(ids)) == 3


async def test_a_burst_reaches_each_socket_in_order_in_few_writes(tmp_path: Path) -> None:
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}") as z:
        clients = [await z.connect(z.token(sub=f"agent{k}")) for k in range(3)]
        before = await writes(z)
        burst = 60
        await z.webhook([wb.text(f"burst {i}", from_=f"5511900{i:05d}") for i in range(burst)])
        for client in clients:
            await client.wait("whatsapp:message", lambda _, c=client: len(c.of("whatsapp:message")) >= burst)
        await z.settle()
        after = await writes(z)
        for client in clients:
            received = client.of("whatsapp:message")
            assert [d["message"]["body"] for d in received] == [f"burst {i}" for i in range(burst)]
            ids = [d["eventId"] for d in received]
            assert ids == list(range(ids[0], ids[0] + burst))
        # One stored webhook is one batch of events: each socket got them in a handful of
        # writes, not one per event.
        assert after["direct"] - before["direct"] <= 3 * 4, (before, after)

        # A batch larger than one write (60 × 6 KB): the first frames are written at once, the
        # rest queued behind them; still in order, each once.
        big = "é" * 3000
        await z.webhook([wb.text(f"big {i} {big}", from_=f"5511901{i:05d}") for i in range(burst)])
        for client in clients:
            await client.wait(
                "whatsapp:message", lambda _, c=client: len(c.of("whatsapp:message")) >= 2 * burst
            )
            received = client.of("whatsapp:message")[burst:]
            assert [d["message"]["body"] for d in received] == [f"big {i} {big}" for i in range(burst)]
            ids = [d["eventId"] for d in received]
            assert ids == list(range(ids[0], ids[0] + burst))
        assert (await writes(z))["queued"] > after["queued"]


async def test_polling_and_websocket_clients_get_the_same_events_in_order(tmp_path: Path) -> None:
    # A short ping interval: a long-polling client's disconnect waits for its pending GET.
    crm = {"ping_interval_seconds": 1, "ping_timeout_seconds": 5}
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}", crm=crm) as z:
        ws_client = await z.connect(z.token(sub="ws"))
        polling = await z.connect(z.token(sub="polling"), transports=["polling"])
        before = await writes(z)
        for i in range(5):
            await z.webhook([wb.text(f"m{i}.{j}", from_=f"5511911{i:02d}{j:03d}") for j in range(10)])
        for client in (ws_client, polling):
            await client.wait("whatsapp:message", lambda _, c=client: len(c.of("whatsapp:message")) >= 50)
        assert polling.of("whatsapp:message") == ws_client.of("whatsapp:message")
        bodies = [d["message"]["body"] for d in polling.of("whatsapp:message")]
        assert bodies == [f"m{i}.{j}" for i in range(5) for j in range(10)]
        after = await writes(z)
        assert after["queued"] > before["queued"]  # the polling client's batches: the library's path
        assert after["direct"] > before["direct"]


async def test_heartbeat_keeps_working_beside_direct_writes(tmp_path: Path) -> None:
    crm = {"ping_interval_seconds": 0.5, "ping_timeout_seconds": 2}
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}", crm=crm) as z:
        healthy = await z.connect(z.token(sub="healthy"))
        # A raw client that never answers the server's pings: the heartbeat must drop it even
        # though events keep being written to it directly.
        silent = await raw_client(z)
        realtime = z.host.stash[REALTIME]

        def silent_connected() -> bool:
            return any(agent.sub == "raw" for agent in realtime.agents.values())

        sent = 0
        async with asyncio.timeout(30):
            while silent_connected() or sent < 10:
                await z.inbound(f"tick {sent}", from_=f"55119220{sent:05d}")
                sent += 1
                await asyncio.sleep(0.05)  # pacing: events spread over several ping intervals
        await healthy.wait("whatsapp:message", lambda d: d["message"]["body"] == f"tick {sent - 1}")
        assert healthy.sio.connected, "a client answering pings was dropped"
        bodies = [d["message"]["body"] for d in healthy.of("whatsapp:message")]
        assert bodies == [f"tick {k}" for k in range(sent)]
        await silent.close()
