"""The HTTP server: uvicorn with bounded connections and timed headers and bodies.

uvicorn offers a connection limit (``limit_concurrency``: requests beyond it are answered 503)
and a keep-alive timeout, but times neither a request's headers nor its body: a client that sends
a header byte every few seconds (slowloris) or a body that never ends holds its connection, and a
file descriptor, for as long as it likes. zaphub times headers in the protocol
(:class:`HeaderTimedHttpToolsProtocol` on uvicorn's httptools parser, or
:class:`HeaderTimedH11Protocol` where httptools is not installed: the connection is closed) and
bodies at the ASGI level (:func:`body_timeout`: ``408``). The connection limit defaults to what
the file-descriptor limit leaves after the database, Redis and files (:func:`connection_limit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import resource
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # uvicorn's C parser (llhttp, through httptools): installed with uvicorn[standard]
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

    HTTPTOOLS = True
except ImportError:  # pragma: no cover - a trimmed install; h11 serves the same protocol, slower
    # A base for the class below to be defined on; http_protocol() never picks it then.
    HttpToolsProtocol = H11Protocol  # type: ignore[assignment,misc]
    RequestResponseCycle = None  # type: ignore[assignment,misc]  # no cycle is one: starts are never held
    HTTPTOOLS = False

from core.config import ServerConfig

__all__ = [
    "FD_RESERVE",
    "FULL_COLLECTION_EVERY",
    "HTTPTOOLS",
    "MAX_HEADER_BYTES",
    "DirectRoute",
    "ErrorAnswer",
    "HeaderTimedH11Protocol",
    "HeaderTimedHttpToolsProtocol",
    "UvicornConfig",
    "body_timeout",
    "connection_limit",
    "fd_limit",
    "http_protocol",
    "raise_fd_limit",
    "release_held_start",
    "send_body_timed_out",
    "single_write",
    "single_write_send",
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


class _HeaderClock:
    """The header timeout's clock, shared by both protocols below (mixed in before uvicorn's).

    The timeout is the config's ``header_timeout`` (:class:`UvicornConfig`).

    The clock is a deadline, not a timer per request: starting and stopping it sets
    :attr:`_header_deadline`, and one ``call_at`` per connection checks it when due (re-armed for
    a deadline that moved, dropped when the clock is stopped). A ``call_later`` armed and
    cancelled for every request cost about 3.4 µs of the event loop per request on uvloop; this
    costs a float, and one timer per connection per ``header_timeout`` at most.
    """

    header_timeout: float = 10.0
    _header_deadline: float | None = None
    """When the current request's headers are late (``loop.time()``); ``None``: the clock is stopped."""
    _header_timer: asyncio.TimerHandle | None = None
    config: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the header clock."""
        super().connection_made(transport)  # type: ignore[misc]  # uvicorn's protocol, after this in the MRO
        self.header_timeout = getattr(self.config, "header_timeout", self.header_timeout)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._header_deadline = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)  # type: ignore[misc]  # uvicorn's protocol, after this in the MRO

    def _stop_header_clock(self) -> None:
        self._header_deadline = None  # a timer still armed finds nothing to do when it fires

    def _arm_header_timer(self) -> None:
        if self.transport.is_closing():
            self._header_deadline = None
            return
        deadline = self._header_deadline = self.loop.time() + self.header_timeout
        if self._header_timer is None:
            self._header_timer = self.loop.call_at(deadline, self._header_clock_due)

    def _header_clock_due(self) -> None:
        self._header_timer = None
        deadline = self._header_deadline
        if deadline is None:  # stopped since: the next request arms it again
            return
        if self.loop.time() < deadline:  # restarted since (a later request): wait for that deadline
            self._header_timer = self.loop.call_at(deadline, self._header_clock_due)
            return
        self._header_deadline = None
        self._headers_timed_out()

    def _headers_timed_out(self) -> None:
        raise NotImplementedError


class HeaderTimedH11Protocol(_HeaderClock, H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers are too slow to arrive.

    The clock starts when the connection opens, and for each later request at its first byte (an
    idle kept-alive connection is the keep-alive timeout's business). It only cuts a connection
    still waiting for complete headers (h11's client state ``IDLE``), so a long request, a long
    body upload (:func:`body_timeout` times that) and a WebSocket that took the connection over
    are never cut. The timeout is the config's ``header_timeout`` (:class:`UvicornConfig`).
    """

    def data_received(self, data: bytes) -> None:
        """The first bytes of a request after a response start that request's clock."""
        if self._header_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()
        super().data_received(data)

    def on_response_complete(self) -> None:
        """Between requests the keep-alive timeout applies, not this one."""
        self._stop_header_clock()
        super().on_response_complete()

    def _headers_timed_out(self) -> None:
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


MAX_HEADER_BYTES = 16 * 1024
"""Incomplete request headers beyond this are answered ``400`` (uvicorn's h11 limit, kept for httptools)."""


class _Collected:
    """Stands in for a transport while one response is written: its writes become one write."""

    __slots__ = ("chunks", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def flush(self) -> None:
        if self.chunks:
            self.transport.write(b"".join(self.chunks))
            self.chunks.clear()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class HeaderTimedHttpToolsProtocol(_HeaderClock, HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request headers are too slow to arrive.

    The same contract as :class:`HeaderTimedH11Protocol`, on the C parser: the clock starts when
    the connection opens, and for each later request at its first byte (llhttp's
    ``on_message_begin``); it stops when the parser has the complete headers
    (``on_headers_complete``), so a long body upload (:func:`body_timeout` times that), a
    long-running response and a WebSocket that took the connection over are never cut.

    llhttp itself does not bound the request line and headers: like h11 in uvicorn, a connection
    that has sent more than :data:`MAX_HEADER_BYTES` without completing its headers is answered
    ``400`` and closed, so a fast client cannot make the parser buffer without limit during the
    header timeout (headers completed within one read of the socket pass, as with h11).
    The timeout is the config's ``header_timeout`` (:class:`UvicornConfig`).
    """

    _awaiting_headers = True
    _header_bytes = 0
    """Bytes received while the current request's headers were incomplete (bounds buffering)."""

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse headers that keep growing past :data:`MAX_HEADER_BYTES`."""
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if (
            self._awaiting_headers
            and self._header_bytes > MAX_HEADER_BYTES
            and not self.transport.is_closing()
        ):
            self._refuse_large_headers()

    def on_message_begin(self) -> None:
        """A request's first byte: its headers' clock starts (unless the connection's still runs)."""
        self._awaiting_headers = True
        if self._header_deadline is None:
            self._arm_header_timer()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        """The headers are in: stop the clock; from here the body timeout and the app decide."""
        self._awaiting_headers = False
        self._header_bytes = 0
        self._stop_header_clock()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The body is in: bytes after it belong to the next request's headers."""
        self._awaiting_headers = True
        super().on_message_complete()

    def _refuse_large_headers(self) -> None:
        log.info("refusing %s: request line and headers over %d bytes", self.client, MAX_HEADER_BYTES)
        self.send_400_response(f"Request line and headers exceed {MAX_HEADER_BYTES} bytes.")

    def _headers_timed_out(self) -> None:
        transport = self.transport
        # A WebSocket upgrade hands the transport to another protocol: it is not ours to close.
        if transport.is_closing() or transport.get_protocol() is not self:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # Pipelined: the next request's headers are slow while this response is running.
            # The response is not cut; the next request is given the full timeout once it ends.
            self._arm_header_timer()
            return
        log.debug("closing %s: no complete request headers within %.0f s", self.client, self.header_timeout)
        transport.close()


def http_protocol(parser: Literal["auto", "httptools", "h11"] = "auto") -> type[asyncio.Protocol]:
    """The HTTP/1.1 protocol class for uvicorn, with zaphub's header timeout.

    Args:
        parser: ``httptools`` (uvicorn's C parser, several times cheaper per request than h11),
            ``h11`` (pure Python), or ``auto``: httptools when installed, else h11.
    """
    if parser == "auto":
        parser = "httptools" if HTTPTOOLS else "h11"
    if parser == "h11":
        return HeaderTimedH11Protocol
    if not HTTPTOOLS:
        raise RuntimeError("httptools is not installed: pip install httptools, or use parser='h11'")
    return HeaderTimedHttpToolsProtocol


class UvicornConfig(uvicorn.Config):
    """``uvicorn.Config`` carrying zaphub's header timeout to the protocols.

    A setting rather than a subclass per value: worker processes (``zaphub run --workers``)
    receive the config pickled, and a class made at run time cannot be pickled.
    """

    def __init__(self, app: Any, *, header_timeout: float = 10.0, **kwargs: Any) -> None:
        """``kwargs`` are ``uvicorn.Config``'s; ``header_timeout`` is ``server.header_timeout_seconds``."""
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout


class _BodyTimedOut(BaseException):
    """Raised from the app's ``receive`` when the body is late.

    A ``BaseException``: the app's handlers turn any ``Exception`` into a 500, this one must reach
    :func:`body_timeout`, which answers 408.
    """


ErrorAnswer = Callable[[Any, Any, Exception], Awaitable[None]]
"""``(scope, send, exc)``: answers a request whose app raised ``exc`` before its response started."""


def body_timeout(app: Any, seconds: float, *, errors: ErrorAnswer | None = None) -> Any:
    """Wrap an ASGI app: an HTTP request body must fully arrive within ``seconds`` of the headers.

    A late body is answered ``408`` (with ``Connection: close``) if no response has started;
    reads after the body are not timed (a handler may wait for the client to disconnect).

    Args:
        app: the ASGI app.
        seconds: ``server.body_timeout_seconds``.
        errors: answers an exception the app raised before its response started (a route
            outside Litestar has no exception middleware); without it, or once the response
            has started, the exception propagates.
    """

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        clock = _BodyClock(receive, send, seconds)
        try:
            await app(scope, clock.receive, clock.send)
        except _BodyTimedOut:
            log.info(
                "%s %s: the request body did not arrive within %.0f s (408)",
                scope.get("method"),
                scope.get("path"),
                seconds,
            )
            if not clock.started:
                await send_body_timed_out(send, seconds)
        except Exception as exc:
            if errors is None or clock.started:
                raise
            await errors(scope, send, exc)
        finally:
            clock.stop()

    return timed


@dataclasses.dataclass(frozen=True, slots=True)
class DirectRoute:
    """A raw ASGI endpoint the host calls for one exact method and path, before Litestar.

    Returned by the ``register_direct_routes`` hook (docs/plugins.md). Litestar's router,
    middleware, dependency injection and exception handlers are skipped: for an endpoint whose
    every microsecond counts (Meta's webhook ``POST``). The host still times the body (``408``,
    :func:`body_timeout`) and answers an exception raised before the response started with the
    JSON error envelope, as for any route.

    Attributes:
        method: the HTTP method, upper case (``"POST"``); other methods on the path go to Litestar.
        path: the exact request path (``"/meta-whatsapp/webhook"``): no parameters, no prefix match.
        app: the ASGI callable ``(scope, receive, send)``; it reads the body and answers itself.
    """

    method: str
    path: str
    app: Callable[[Any, Any, Any], Awaitable[None]]

    def __post_init__(self) -> None:
        """Refuse what could never match a request."""
        if self.method not in _METHODS:
            raise ValueError(
                f"DirectRoute method {self.method!r} is not one of {', '.join(sorted(_METHODS))}"
            )
        if not self.path.startswith("/") or "{" in self.path:
            raise ValueError(f"DirectRoute path {self.path!r} must be an exact path starting with '/'")


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _BodyClock:
    """One request's body deadline: one timer per request instead of a timeout context per read.

    ``asyncio.timeout_at`` around each ``receive()`` cost a context object, a timer and a task
    lookup per read on the hottest path (about 5 % of the event loop's time per webhook). Here
    one ``loop.call_at`` is armed when the request starts and cancelled once the body is complete
    (or the request is over); none at all when uvicorn already has the whole body. When it fires
    during a read, it cancels the task waiting in that read, and the read raises
    :class:`_BodyTimedOut` instead of ``CancelledError``. When it fires between reads, what has
    already arrived is still on time: the next read fails only if it has to wait (as it did with
    a timeout context entered after its deadline).
    """

    __slots__ = (
        "_cancelled_waiter",
        "_expired",
        "_inner",
        "_send",
        "_timer",
        "_waiter",
        "_waiter_cancelling",
        "complete",
        "started",
    )

    def __init__(self, receive: Any, send: Any, seconds: float) -> None:
        self._inner = receive
        self._send = send
        self._timer: asyncio.Handle | None = None
        self.complete = False
        """Whether the whole body has been read, or had arrived when the request started (later
        reads are not timed)."""
        # uvicorn starts the app once the headers are in; a webhook's body usually came in the
        # same packet, and then its cycle (``receive``'s owner) has it all: no read can be late,
        # so no timer (a call_at and its cancel: about 2 µs of the event loop per request).
        if getattr(getattr(receive, "__self__", None), "more_body", True) is False:
            self.complete = True
        else:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + seconds, self._expire)
        self._expired = False
        self._cancelled_waiter = False
        """Whether this clock's own expiry cancelled the task in the current read (asyncio.timeout's
        ``EXPIRING`` state): only then is a ``CancelledError`` in that read a late body."""
        self._waiter: asyncio.Task[Any] | None = None
        self._waiter_cancelling = 0
        self.started = False
        """Whether the response has started (a ``408`` is too late then)."""

    def _expire(self) -> None:
        self._timer = None
        self._expired = True
        if self._waiter is not None:
            self._cancelled_waiter = True
            self._waiter.cancel()

    def stop(self) -> None:
        """The body is complete or the request over: the deadline no longer matters."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def receive(self) -> Any:
        """The app's ``receive``: raises :class:`_BodyTimedOut` past the deadline, until the body is in."""
        if self.complete:
            return await self._inner()
        task = asyncio.current_task()
        assert task is not None  # receive() is awaited by a task
        self._waiter = task
        self._waiter_cancelling = task.cancelling()
        self._cancelled_waiter = False
        if self._expired:  # the deadline passed between reads: this read may not wait
            self.stop()  # an expiry re-armed by an earlier read that was cancelled is stale
            self._timer = asyncio.get_running_loop().call_soon(self._expire)
        try:
            message = await self._inner()
        except asyncio.CancelledError:
            # Ours only if the timer cancelled this read and nothing else cancelled the task too
            # (asyncio.timeout's test): then the app sees a late body, not a cancellation.
            # ``_expired`` is not enough: past the deadline a read re-arms the expiry with
            # call_soon, and a cancellation that reaches the read before that runs is not ours.
            if self._cancelled_waiter and task.uncancel() <= self._waiter_cancelling:
                raise _BodyTimedOut from None
            raise
        finally:
            self._waiter = None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.complete = True
        if self.complete or self._expired:
            self.stop()
        return message

    async def send(self, message: Any) -> None:
        """The app's ``send``: notes in :attr:`started` when the response starts."""
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


def _sized(start: Any) -> bool:
    for name, _ in start.get("headers", ()):
        if name == b"content-length" or name.lower() == b"content-length":
            return True
    return False


class _OneWrite:
    """uvicorn's httptools ``send`` for one request, writing a sized response in one write.

    uvicorn writes the status line and headers when the app sends ``http.response.start``, and the
    body when it sends ``http.response.body``: two ``write`` calls, two TCP segments and often two
    wake-ups of the client for a small answer (the webhook's ``{"received":1}``). A start that
    declares ``content-length`` (the whole body is at hand: Litestar's responses, the webhook's)
    is held until the first body message, and uvicorn's own ``send`` runs for both over a
    collecting stand-in for the transport, which then writes once. A streamed response (no
    length) starts at once, as before. A second start replaces a held one: uvicorn's 500 for an
    app that failed after its start, which then reaches the client instead of a cut connection.
    An app that returns without the body it announced has its start written when it returns
    (:func:`release_held_start`): uvicorn then cuts the connection after it, as it always did.
    """

    __slots__ = ("_cycle", "_held", "_send")

    def __init__(self, send: Any, cycle: Any) -> None:
        self._send = send
        self._cycle = cycle
        self._held: Any = None

    async def __call__(self, message: Any) -> None:
        held = self._held
        if held is None:
            if message["type"] == "http.response.start" and _sized(message):
                self._held = message
                return
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            self._held = message
            return
        self._held = None
        cycle = self._cycle
        transport = cycle.transport
        collected = cycle.transport = _Collected(transport)
        try:
            await self._send(held)
            await self._send(message)
        finally:
            cycle.transport = transport
            collected.flush()


def single_write_send(send: Any) -> Any:
    """``send`` for one HTTP request, writing a sized response in one go where it can.

    On uvicorn's httptools cycle a send that writes a response declaring its length in one
    ``transport.write`` (:class:`_OneWrite`); anywhere else ``send`` itself.
    """
    cycle = getattr(send, "__self__", None)
    if RequestResponseCycle is not None and type(cycle) is RequestResponseCycle:
        return _OneWrite(send, cycle)
    return send


async def release_held_start(send: Any) -> None:
    """After the app returned normally: write a start :class:`_OneWrite` still holds, if any.

    An app may answer a start that declares its length and return without the body (the Meta
    sandbox's ``drop`` fault does, to break the connection). Written now, the head reaches the
    client and uvicorn closes the connection on the unfinished response, as without
    :class:`_OneWrite`; held, uvicorn would answer 500 for an app that never started one.
    """
    if type(send) is _OneWrite and send._held is not None:
        held, send._held = send._held, None
        await send._send(held)


def single_write(app: Any) -> Any:
    """Wrap an ASGI app: its HTTP responses that declare a length go out in one write."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        send = single_write_send(send)
        await app(scope, receive, send)
        await release_held_start(send)

    return wrapped


async def send_body_timed_out(send: Any, seconds: float) -> None:
    """Answer ``408`` with ``Connection: close``: the body did not arrive within ``seconds``."""
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


def uvicorn_config(
    app: Any,
    server: ServerConfig,
    *,
    fds: int | None = None,
    parser: Literal["auto", "httptools", "h11"] = "auto",
    **options: Any,
) -> uvicorn.Config:
    """The uvicorn configuration of ``zaphub run`` (and of tests' in-process servers).

    Args:
        app: the ASGI app (``create_app``).
        server: its ``server:`` settings (limits and timeouts).
        fds: the file-descriptor limit in force (default: :func:`fd_limit`).
        parser: the HTTP parser (:func:`http_protocol`).
        options: more ``uvicorn.Config`` arguments (they win).
    """
    protocol = http_protocol(parser)
    settings: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "http": protocol,
        "header_timeout": server.header_timeout_seconds,
        "limit_concurrency": connection_limit(server, fd_limit() if fds is None else fds),
        "timeout_keep_alive": server.keep_alive_seconds,
        "timeout_graceful_shutdown": int(server.graceful_shutdown_seconds),
        "lifespan": "on",
        # Socket.IO events are a few hundred bytes: compressing each copy for each socket costs
        # more CPU than the bandwidth it saves.
        "ws_per_message_deflate": False,
    }
    settings.update(options)
    return UvicornConfig(app, **settings)


FULL_COLLECTION_EVERY = 100
"""Generation-1 collections between two full ones (Python's default: 10); see freeze_startup_heap."""


def freeze_startup_heap() -> None:
    """Keep the garbage collector's full collections off the serving path.

    Called once the app serves, by ``zaphub run`` and by each ``--workers`` process: runtime
    tuning for tail latency, done here only. A full (generation 2) collection traverses every
    tracked object and stalls every request and socket meanwhile.

    - What startup allocated (modules, classes, Litestar's and SQLAlchemy's structures, the app:
      over a hundred thousand objects) is frozen (``gc.freeze``) and skipped: on the benchmark
      machine a full collection fell from 80-210 ms to 2 ms at 1,000 webhooks/s
      (docs/benchmarks.md, "Runtime"). They are never freed, which they would not be anyway.
    - What connections allocate cannot be frozen (a closed session's cycles would never be
      freed), and with 1,000 sockets connected a full collection walked their objects for
      80-275 ms, every few seconds at 10 webhooks/s (webhook→socket p99 258 ms). Full collections
      now wait for 100 younger (generation 1) ones instead of 10; Python's other condition, that
      objects promoted since the last full collection are a quarter of the old ones, still holds,
      so garbage in cycles is still collected, only in fewer, larger passes.

    The young generations' thresholds and ``sys.setswitchinterval`` were measured too and are
    left at Python's defaults.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    log.debug(
        "garbage collector: %d objects of the started app frozen; thresholds %s",
        gc.get_freeze_count(),
        gc.get_threshold(),
    )
