"""Writing Socket.IO events to websockets: encoded once per event, one write per socket per batch.

python-socketio's path for one event to one socket encodes the packet, puts it on that client's
Engine.IO queue and wakes the client's writer task, which hands each packet to uvicorn, which frames
it and writes it: a task wake-up and a ``write`` system call per socket per event. Here instead:

- an event is encoded once for all its recipients, straight to the bytes of its websocket frame
  (:class:`Frames`); a logged event gets its ``eventId`` spliced into the stored payload bytes
  (:func:`with_event_id`), never decoded and encoded again;
- :class:`SocketWriter` writes all the frames a batch has for a socket in one ``transport.write``
  when nothing else is pending for that socket: its Engine.IO writer is idle on an empty queue, the
  transport accepts writes (uvicorn has not paused it) and the websocket is open. Otherwise the
  frames join the library's queue, behind what is there. Long-polling sockets, slow readers, sockets
  being upgraded, closed or past their ping timeout therefore keep python-engineio's path and its
  guarantees (order, heartbeat, a slow client delaying nobody).

:class:`SocketWriter` is the only code relying on python-engineio's and uvicorn's internals (the
versions are pinned in pyproject.toml). :func:`compatibility_problem` checks what it relies on when
the server starts: if anything moved, every write takes the library path and the reason is logged
once; ``tests/plugins/crm_realtime/test_wire.py`` fails loudly on such an upgrade.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import engineio
import engineio.async_drivers.asgi
import msgspec
from prometheus_client import CollectorRegistry, Counter

__all__ = ["Frames", "SocketWriter", "compatibility_problem", "with_event_id"]

log = logging.getLogger("zaphub.crm_realtime")

WRITE_BYTES = 64 * 1024
"""At most this much (or one frame) per direct write; the rest of a batch takes the library's queue.

A write beyond the transport's high-water mark pauses it (the client must read first) and copies
the frames into that connection's buffer: bounded, a burst to many sockets costs bounded memory.
"""
_MAX_UNWRAP = 32
"""How many callables :func:`_uvicorn_protocol` looks through (ASGI middleware wrap ``send``)."""


def with_event_id(data: bytes, event_id: int) -> bytes:
    """A logged payload (a JSON object, as stored) with ``"eventId": event_id`` as its last key.

    The same JSON as decoding ``data``, adding the key and encoding again, without doing either.
    """
    if data[-1:] != b"}":  # the log holds objects; anything else takes the long way
        payload = msgspec.json.decode(data)
        payload["eventId"] = event_id
        return msgspec.json.encode(payload)
    if data.rstrip()[:-1].rstrip() == b"{":
        return b'{"eventId":%d}' % event_id
    return b'%s,"eventId":%d}' % (data[:-1], event_id)


def _websocket_frame(text: bytes) -> bytes:
    """One unfragmented, unmasked websocket text frame (RFC 6455 5.2: how a server sends)."""
    size = len(text)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = b"\x81\x7e" + size.to_bytes(2, "big")
    else:
        header = b"\x81\x7f" + size.to_bytes(8, "big")
    return header + text


class Frames:
    """One Socket.IO event, encoded once for every recipient.

    Args:
        namespace: the Socket.IO namespace (``/crm``).
        name: the event name.
        payload: the JSON of its one argument.
        event_id: its ``eventId`` (``None``: not a logged event).
    """

    __slots__ = ("_packet", "event_id", "message", "wire")

    def __init__(self, namespace: str, name: str, payload: bytes, event_id: int | None = None) -> None:
        self.event_id = event_id
        prefix = b"2" if namespace == "/" else b"2" + namespace.encode() + b","
        self.message = b"%s[%s,%s]" % (prefix, msgspec.json.encode(name), payload)
        """The Socket.IO packet (``2/crm,["name",{…}]``)."""
        self.wire = _websocket_frame(b"4" + self.message)
        """The whole websocket frame carrying it as an Engine.IO message."""
        self._packet: engineio.packet.Packet | None = None

    @property
    def packet(self) -> engineio.packet.Packet:
        """The Engine.IO packet, for python-engineio's own path (polling, a busy socket)."""
        if self._packet is None:
            self._packet = engineio.packet.Packet(engineio.packet.MESSAGE, self.message.decode())
        return self._packet


def _uvicorn_protocol(send: Any) -> Any:
    """The uvicorn websockets-sansio connection behind an ASGI ``send``, or ``None``.

    Middleware (Litestar's, ours) wraps ``send`` in closures that call the one they wrap; this
    follows them (closure cells, bound methods, ``functools.partial``) to uvicorn's ``send``.
    """
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return None
    todo = [send]
    seen: set[int] = set()
    while todo and len(seen) < _MAX_UNWRAP:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, WebSocketsSansIOProtocol):
            return owner
        if isinstance(fn, functools.partial):
            todo.append(fn.func)
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                inner = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if callable(inner) and not isinstance(inner, type):
                todo.append(inner)
    return None


_SOCKET_ATTRS = ("sid", "queue", "upgraded", "upgrading", "closing", "closed", "last_ping")
_PROTOCOL_ATTRS = ("writable", "close_sent", "disconnected", "conn", "transport")


def compatibility_problem() -> str | None:
    """What :class:`SocketWriter` relies on and the installed libraries lack (``None``: all there).

    Checked when the server starts; each session's own attributes are checked when it opens.
    """
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
        from websockets.protocol import State
    except ImportError as exc:
        return f"uvicorn's websockets-sansio implementation is not importable ({exc})"
    driver = engineio.async_drivers.asgi
    if driver._async.get("websocket") is not driver.WebSocket:
        return "python-engineio's ASGI driver no longer serves websockets with its WebSocket class"
    params = list(inspect.signature(driver.WebSocket).parameters)
    if params != ["handler", "server"]:
        return f"python-engineio's ASGI WebSocket takes {params}, not (handler, server)"
    if not hasattr(engineio.async_socket.AsyncSocket, "_websocket_handler"):
        return "python-engineio's AsyncSocket has no _websocket_handler"
    if not isinstance(getattr(asyncio.Queue(), "_getters", None), Iterable):
        return "asyncio.Queue keeps no _getters"
    if "pause_writing" not in vars(WebSocketsSansIOProtocol):
        # Without flow control (uvicorn < 0.53) a slow reader's frames would pile up in its transport.
        return "uvicorn's WebSocketsSansIOProtocol does no flow control (pause_writing)"
    if not hasattr(State, "OPEN"):
        return "websockets.protocol.State has no OPEN"
    return None


def _session_problem(socket: Any, protocol: Any) -> str | None:
    """What an open session lacks of what :meth:`SocketWriter.write` reads (``None``: nothing)."""
    missing = [f"AsyncSocket.{a}" for a in _SOCKET_ATTRS if not hasattr(socket, a)]
    missing += [f"WebSocketsSansIOProtocol.{a}" for a in _PROTOCOL_ATTRS if not hasattr(protocol, a)]
    if not hasattr(getattr(protocol, "conn", None), "state"):
        missing.append("WebSocketsSansIOProtocol.conn.state")
    return f"no {', '.join(missing)}" if missing else None


class _Direct:
    """What :meth:`SocketWriter.write` reads of one open session, looked up once when it opens.

    A fan-out reads these for each of its sockets (a thousand per event at 1,000 sockets): one
    slotted object instead of a walk through the session, its queue, uvicorn's protocol and its
    transport saves attribute lookups on objects that are rarely in the CPU's cache. Each is set
    once by its library (in ``__init__``, or uvicorn's ``connection_made`` before the ASGI app
    runs) and never replaced.
    """

    __slots__ = ("conn", "getters", "protocol", "queue", "socket", "transport", "writable")

    def __init__(self, socket: Any, protocol: Any) -> None:
        self.socket = socket
        self.queue: asyncio.Queue[Any] = socket.queue
        self.getters: Iterable[asyncio.Future[Any]] = socket.queue._getters
        self.protocol = protocol
        self.transport = protocol.transport
        self.writable: asyncio.Event = protocol.writable
        self.conn = protocol.conn


class _Channel(engineio.async_drivers.asgi.WebSocket):  # type: ignore[misc]  # python-engineio is untyped
    """python-engineio's ASGI websocket, remembered by :class:`SocketWriter` while it is open."""

    def __init__(self, handler: Any, server: Any, *, writer: SocketWriter) -> None:
        super().__init__(handler, server)
        self.writer = writer
        # engineio passes the bound AsyncSocket._websocket_handler: its owner is the session.
        self.socket: Any = getattr(handler, "__self__", None)
        self.protocol: Any = None

    async def __call__(self, environ: dict[str, Any]) -> Any:
        sid = getattr(self.socket, "sid", None)
        self.protocol = _uvicorn_protocol(environ.get("asgi.send"))
        if self.protocol is None or sid is None or not self.writer.adopt(self):
            # Another server or websocket implementation: the library writes the frames.
            return await super().__call__(environ)
        direct = self.writer.channels[sid] = _Direct(self.socket, self.protocol)
        try:
            return await super().__call__(environ)
        finally:
            if self.writer.channels.get(sid) is direct:
                del self.writer.channels[sid]


class SocketWriter:
    """Writes encoded events to Engine.IO sessions: directly when safe, else through the library.

    Args:
        eio: the python-engineio ``AsyncServer`` (``socketio.AsyncServer().eio``).
        registry: where ``zaphub_crm_socket_writes_total`` is registered.
    """

    def __init__(self, eio: Any, registry: CollectorRegistry) -> None:
        self.eio = eio
        self.channels: dict[str, _Direct] = {}
        """Open websocket sessions uvicorn serves, by Engine.IO sid."""
        from websockets.protocol import State

        self._open = State.OPEN
        self.problem: str | None = None
        """Why frames always take the library path (``None``: direct writes are on)."""
        problem = compatibility_problem()
        if problem is None:
            # A copy: the module's table is shared by every engineio server of the process.
            eio._async = {**eio._async, "websocket": functools.partial(_Channel, writer=self)}
        else:
            self._disable(problem)
        writes = Counter(
            "zaphub_crm_socket_writes",
            "Batches of events written to a CRM socket, by path: direct (one transport write) or "
            "queued (python-engineio's queue: long-polling, a slow reader, a socket closing).",
            ["path"],
            registry=registry,
        )
        self.m_direct = writes.labels(path="direct")
        self.m_queued = writes.labels(path="queued")

    def adopt(self, channel: _Channel) -> bool:
        """Whether this session's frames may be written directly (logs once why not)."""
        if self.problem is None:
            problem = _session_problem(channel.socket, channel.protocol)
            if problem is not None:
                self._disable(problem)
        # Per-message deflate would need each frame compressed for its own connection.
        return self.problem is None and not channel.protocol.conn.extensions

    def _disable(self, problem: str) -> None:
        self.problem = problem
        log.warning(
            "Socket.IO frames take python-engineio's slower path: %s. Install the versions "
            "pyproject.toml pins, or update plugins/crm_realtime/wire.py",
            problem,
        )

    def write(self, eio_sid: str, frames: Sequence[Frames], *, now: float | None = None) -> int:
        """Write ``frames`` in one transport write if nothing is pending for the session.

        Returns how many were written: the first ones, up to :data:`WRITE_BYTES` (at least one),
        or none. Send the rest with :meth:`send`, right away: order is kept. ``now`` is
        ``time.time()``, read once for a whole batch of sockets.
        """
        direct = self.channels.get(eio_sid)
        if direct is None:
            return 0
        return self._write(direct, frames, (time.time() if now is None else now) - self.eio.ping_timeout)

    def _write(self, direct: _Direct, frames: Sequence[Frames], stale: float) -> int:
        """:meth:`write` to an open session; a last ping before ``stale`` is past its timeout."""
        socket = direct.socket
        if socket.closing or socket.closed or socket.upgrading or not socket.upgraded:
            return 0
        last_ping = socket.last_ping
        if last_ping and last_ping < stale:
            return 0  # the library's send closes it
        # Only when the session's writer task waits on an empty queue is nothing of the library's
        # in flight (a packet it took but has not written would be overtaken).
        if not direct.queue.empty():
            return 0
        for getter in direct.getters:
            if not getter.done():
                break
        else:
            return 0
        protocol = direct.protocol
        transport = direct.transport
        if (
            not direct.writable.is_set()  # paused: the client reads slowly, the library queues
            or protocol.close_sent
            or protocol.disconnected
            or transport.is_closing()
            or direct.conn.state is not self._open
        ):
            return 0
        if len(frames) == 1:
            transport.write(frames[0].wire)
            return 1
        count = size = 0
        for frame in frames:
            count += 1
            size += len(frame.wire)
            if size >= WRITE_BYTES:
                break
        transport.write(b"".join([frame.wire for frame in frames[:count]]))
        return count

    async def send(self, eio_sid: str, frames: Sequence[Frames]) -> None:
        """Queue ``frames`` through python-engineio (its public ``send_packet``; never waits on I/O)."""
        for frame in frames:
            await self.eio.send_packet(eio_sid, frame.packet)

    async def deliver(self, batches: Iterable[tuple[str, Sequence[Frames]]]) -> None:
        """Write each session's frames (``(Engine.IO sid, frames)`` pairs), directly where possible."""
        direct = queued = 0
        channels, write = self.channels, self._write
        stale = time.time() - self.eio.ping_timeout
        for eio_sid, frames in batches:
            session = channels.get(eio_sid)
            written = 0 if session is None else write(session, frames, stale)
            if written:
                direct += 1
                if written == len(frames):
                    continue
            queued += 1
            try:
                await self.send(eio_sid, frames[written:])
            except Exception:  # a session closing under us: nothing left to deliver to it
                log.debug("client %s is gone", eio_sid)
        if direct:
            self.m_direct.inc(direct)
        if queued:
            self.m_queued.inc(queued)
