"""The HTTP server: uvicorn with bounded connections and timed headers and bodies.

uvicorn offers a connection limit (``limit_concurrency``: requests beyond it are answered 503)
and a keep-alive timeout, but times neither a request's headers nor its body: a client that sends
a header byte every few seconds (slowloris) or a body that never ends holds its connection, and a
file descriptor, for as long as it likes. zaphub times headers in the protocol
(:class:`HeaderTimedH11Protocol`: the connection is closed) and bodies at the ASGI level
(:func:`body_timeout`: ``408``). The connection limit defaults to what the file-descriptor
limit leaves after the database, Redis and files (:func:`connection_limit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from core.config import ServerConfig

__all__ = [
    "FD_RESERVE",
    "HeaderTimedH11Protocol",
    "body_timeout",
    "connection_limit",
    "fd_limit",
    "raise_fd_limit",
    "uvicorn_config",
]

log = logging.getLogger("zaphub.server")

FD_RESERVE = 128
"""File descriptors kept out of the connection limit: database pool, Redis, SQLite files, logs."""

_FD_CEILING = 65_536
"""How far :func:`raise_fd_limit` raises the soft limit when the hard one is unlimited."""


def fd_limit() -> int:
    """The process's soft file-descriptor limit (``ulimit -n``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _FD_CEILING if soft == resource.RLIM_INFINITY else soft


def raise_fd_limit() -> int:
    """Raise the soft file-descriptor limit to the hard one (at most 65,536); returns the new soft limit.

    The common soft limit of 1,024 is a default from another era, not a decision: servers raise it
    (an unprivileged process may, up to the hard limit).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _FD_CEILING if hard == resource.RLIM_INFINITY else min(hard, _FD_CEILING)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # some containers refuse; the old limit stays
            log.debug("cannot raise the file-descriptor limit to %d: %s", target, exc)
    return fd_limit()


def connection_limit(server: ServerConfig, fds: int) -> int:
    """``server.max_connections``, or what ``fds`` descriptors leave after :data:`FD_RESERVE`."""
    if server.max_connections is not None:
        return server.max_connections
    return max(16, fds - FD_RESERVE)


class HeaderTimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers are too slow to arrive.

    The clock starts when the connection opens, and for each later request at its first byte (an
    idle kept-alive connection is the keep-alive timeout's business). It only cuts a connection
    still waiting for complete headers (h11's client state ``IDLE``), so a long request, a long
    body upload (:func:`body_timeout` times that) and a WebSocket that took the connection over
    are never cut. Subclass with ``header_timeout`` set (see :func:`uvicorn_config`).
    """

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn narrows it
        """Start the header clock."""
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        """The first bytes of a request after a response start that request's clock."""
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()
        super().data_received(data)

    def on_response_complete(self) -> None:
        """Between requests the keep-alive timeout applies, not this one."""
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = None
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        transport = self.transport
        # A WebSocket upgrade hands the transport to another protocol: it is not ours to close.
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        if self.conn.their_state is not h11.IDLE:
            return
        log.debug("closing %s: no complete request headers within %.0f s", self.client, self.header_timeout)
        with contextlib.suppress(h11.LocalProtocolError):  # mid-response: closing is still right
            self.conn.send(h11.ConnectionClosed())
        transport.close()


class _BodyTimedOut(BaseException):
    """Raised from the app's ``receive`` when the body is late.

    A ``BaseException``: the app's handlers turn any ``Exception`` into a 500, this one must reach
    :func:`body_timeout`, which answers 408.
    """


def body_timeout(app: Any, seconds: float) -> Any:
    """Wrap an ASGI app: an HTTP request body must fully arrive within ``seconds`` of the headers.

    A late body is answered ``408`` (with ``Connection: close``) if no response has started;
    reads after the body are not timed (a handler may wait for the client to disconnect).
    """

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + seconds
        complete = False
        started = False

        async def timed_receive() -> Any:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _BodyTimedOut from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        async def tracked_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await app(scope, timed_receive, tracked_send)
        except _BodyTimedOut:
            log.info(
                "%s %s: the request body did not arrive within %.0f s (408)",
                scope.get("method"),
                scope.get("path"),
                seconds,
            )
            if started:
                return
            body = (
                b'{"error":{"code":"request_timeout","message":"the request body did not arrive within '
                + f"{seconds:g} s".encode()
                + b'"}}'
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 408,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

    return timed


def uvicorn_config(
    app: Any, server: ServerConfig, *, fds: int | None = None, **options: Any
) -> uvicorn.Config:
    """The uvicorn configuration of ``zaphub run`` (and of tests' in-process servers).

    Args:
        app: the ASGI app (``create_app``).
        server: its ``server:`` settings (limits and timeouts).
        fds: the file-descriptor limit in force (default: :func:`fd_limit`).
        options: more ``uvicorn.Config`` arguments (they win).
    """
    protocol = type(
        "HeaderTimedH11Protocol", (HeaderTimedH11Protocol,), {"header_timeout": server.header_timeout_seconds}
    )
    settings: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "http": protocol,
        "limit_concurrency": connection_limit(server, fd_limit() if fds is None else fds),
        "timeout_keep_alive": server.keep_alive_seconds,
        "timeout_graceful_shutdown": int(server.graceful_shutdown_seconds),
        "lifespan": "on",
        # Socket.IO events are a few hundred bytes: compressing each copy for each socket costs
        # more CPU than the bandwidth it saves.
        "ws_per_message_deflate": False,
    }
    settings.update(options)
    return uvicorn.Config(app, **settings)
