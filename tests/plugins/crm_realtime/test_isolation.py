"""A client that stops reading delays neither the other clients nor the webhook path."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from plugins.crm_realtime import REALTIME
from plugins.whatsapp import webhook_builders as wb
from tests.plugins.crm_realtime.harness import Zaphub, zaphub

# "ã" is sent as the 6-byte JSON escape \u00e3: each event is about 24 KB on the wire, so a few
# hundred fill the stalled client's TCP buffers and the server must hold the rest for it.
BODY = "ã" * 4000
WEBHOOKS = 20
PER_WEBHOOK = 20


async def stalled_client(z: Zaphub) -> Any:
    """A raw Engine.IO websocket that authenticates, then never reads again."""
    # A tiny receive buffer, set before connecting so the TCP window stays small.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = z.url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    sock.setblocking(False)
    ws = await connect(
        z.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket",
        sock=sock,
        compression=None,  # per-message deflate would shrink the repetitive bodies to nothing
        max_queue=1,
        max_size=None,
    )
    opened = await ws.recv()
    assert isinstance(opened, str)
    assert opened.startswith("0{")
    await ws.send("40/crm," + json.dumps({"token": z.token(sub="stalled")}))
    connected = await ws.recv()
    assert isinstance(connected, str)
    assert connected.startswith("40/crm,")
    return ws, json.loads(opened[1:])["sid"]


async def test_a_client_that_stops_reading_delays_nobody(tmp_path: Path) -> None:
    async with zaphub(f"sqlite:///{tmp_path / 'z.db'}") as z:
        ws, eio_sid = await stalled_client(z)
        healthy = await z.connect()
        ack_times = []
        for w in range(WEBHOOKS):
            messages = [wb.text(f"{w}-{i} {BODY}", from_=f"55119{w:04d}{i:04d}") for i in range(PER_WEBHOOK)]
            started = time.perf_counter()
            await z.webhook(messages)
            ack_times.append(time.perf_counter() - started)
        total = WEBHOOKS * PER_WEBHOOK
        await healthy.wait(
            "whatsapp:message", lambda _: len(healthy.of("whatsapp:message")) >= total, within=30
        )
        await z.settle()

        # The server still holds events for the stalled client: it was not waited for.
        realtime = z.host.stash[REALTIME]
        held = realtime.sio.eio.sockets[eio_sid].queue.qsize()
        assert held > 0
        assert len(healthy.of("whatsapp:message")) == total
        # The webhook path never waited on the emits (generous bound: 2 shared cores in CI).
        assert max(ack_times) < 2.0, ack_times

        # A client that dies without a goodbye does not stop the emits either.
        ws.transport.abort()
        await z.inbound("depois")
        await healthy.wait("whatsapp:message", lambda d: d["message"]["body"] == "depois")
