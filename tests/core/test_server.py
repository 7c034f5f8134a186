"""The HTTP server's limits through real sockets: slow headers, slow bodies, too many connections.

uvicorn on a free port (the same configuration as ``zaphub run``, :func:`core.server.uvicorn_config`);
the clients are raw TCP sockets that behave like attackers. The protocol tests run on both HTTP
parsers: httptools (what ``zaphub run`` uses) and h11 (its fallback where httptools is missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from core.config import ServerConfig
from core.server import (
    FD_RESERVE,
    MAX_HEADER_BYTES,
    HeaderTimedHttpToolsProtocol,
    body_timeout,
    connection_limit,
    single_write,
    uvicorn_config,
)
from tests.core.test_app import Demo, make_app
from tests.helpers import read_body, send_answer, serve

BOUND = 10.0
"""How long a test waits for the server to act; the server's own timeouts are well under it."""


PARSERS = pytest.mark.parametrize("parser", ["httptools", "h11"])


@contextlib.asynccontextmanager
async def running(tmp_path: Path, parser: str = "httptools", **server: Any) -> AsyncIterator[tuple[str, int]]:
    app = make_app(tmp_path, Demo(), server=server)
    async with serve(app, parser=parser) as url:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        yield parts.hostname, parts.port


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length: its head and body (fails after ``BOUND``)."""
    async with asyncio.timeout(BOUND):
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        assert length is not None, head
        return head, await reader.readexactly(int(length[1]))


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``BOUND``).

    A server closing while the client's bytes are still unread resets the connection (RST):
    that is a close too, and whatever the server sent before it may be lost.
    """
    received = b""
    async with asyncio.timeout(BOUND):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


@PARSERS
async def test_slow_headers_are_cut_off(tmp_path: Path, parser: str) -> None:
    async with running(tmp_path, parser, header_timeout_seconds=0.5) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: zaphub\r\n")

        async def dribble() -> None:  # a slowloris: one more header line now and then, never the end
            for i in range(10_000):
                writer.write(b"X-Slow-%d: 1\r\n" % i)
                await asyncio.sleep(0.05)

        task = asyncio.create_task(dribble())
        try:
            assert await closed_by_server(reader) == b""  # closed without an answer
        finally:
            task.cancel()
            writer.close()
        # An ordinary client is served as before.
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://{host}:{port}/health")).status_code == 200


@PARSERS
async def test_the_next_request_on_a_kept_alive_connection_is_timed_too(tmp_path: Path, parser: str) -> None:
    async with running(tmp_path, parser, header_timeout_seconds=0.5, keep_alive_seconds=60) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        for _ in range(2):  # idle longer than the header timeout between requests: kept alive
            writer.write(b"GET /health HTTP/1.1\r\nHost: zaphub\r\n\r\n")
            head, _ = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200")
            await asyncio.sleep(1)  # idle (the keep-alive timeout is 60 s), not a wait for an event
        writer.write(b"GET /health HTTP/1.1\r\n")  # ...and the rest never comes
        try:
            data = await closed_by_server(reader)
        finally:
            writer.close()
        assert b"HTTP/1.1" not in data.split(b"\r\n\r\n", 1)[-1]


@PARSERS
async def test_a_body_that_does_not_arrive_in_time_gets_408(tmp_path: Path, parser: str) -> None:
    async with running(tmp_path, parser, body_timeout_seconds=0.5) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /items HTTP/1.1\r\nHost: zaphub\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"qty":'
        )
        try:
            answer = await closed_by_server(reader)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b'"code":"request_timeout"' in answer
        assert b"within 0.5 s" in answer
        # A complete body is served as before.
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://{host}:{port}/items", json={"qty": 2})
            assert response.json() == {"qty": 2}


@PARSERS
async def test_a_slow_body_is_not_cut_by_the_header_timeout(tmp_path: Path, parser: str) -> None:
    async with running(tmp_path, parser, header_timeout_seconds=0.5, body_timeout_seconds=30) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                b"POST /items HTTP/1.1\r\nHost: zaphub\r\nContent-Type: application/json\r\n"
                b"Content-Length: 9\r\n\r\n"
            )
            for piece in (b'{"qty', b'":', b"3}"):  # 1.5 s of body: three header timeouts
                await asyncio.sleep(0.5)
                writer.write(piece)
            head, body = await read_response(reader)
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 201"), head
        assert body == b'{"qty":3}'


def late_reader(seconds: float, *, read_after: float = 0.0, answer_after: float = 0.0) -> Any:
    """An app under :func:`body_timeout` echoing the body; it may start reading it late, or answer late."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(read_after)  # the app is busy: not a wait of the test
        body = await read_body(receive)
        await asyncio.sleep(answer_after)
        await send_answer(send, body)

    return body_timeout(app, seconds)


async def post_raw(url: str, request: bytes) -> bytes:
    """Send ``request`` (perhaps incomplete); everything the server answers until it closes."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        return await closed_by_server(reader)
    finally:
        writer.close()


REQUEST_HEAD = b"POST /echo HTTP/1.1\r\nHost: zaphub\r\nConnection: close\r\nContent-Length: 9\r\n\r\n"


@PARSERS
@pytest.mark.parametrize(
    "late", [{"read_after": 0.9}, {"answer_after": 0.9}], ids=["reads-late", "answers-late"]
)
async def test_a_body_in_by_the_deadline_is_served_however_late_the_app_reads_or_answers(
    parser: str, late: dict[str, float]
) -> None:
    async with serve(late_reader(0.3, **late), parser=parser) as url:
        answer = await post_raw(url, REQUEST_HEAD + b'{"qty":3}')
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b'{"qty":3}')


@PARSERS
async def test_a_body_half_sent_by_the_deadline_gets_408_when_the_app_reads_late(parser: str) -> None:
    # The first piece is on time; the next read has to wait past the deadline.
    async with serve(late_reader(0.3, read_after=0.9), parser=parser) as url:
        answer = await post_raw(url, REQUEST_HEAD + b'{"qty')
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"within 0.3 s" in answer


async def test_a_cancellation_the_body_clock_did_not_cause_is_not_answered_408() -> None:
    # Past the deadline, each read re-arms the clock's expiry with call_soon. A cancellation that
    # reaches the read before that expiry has run is someone else's: it must propagate, not
    # become a 408 (the clock used to test "the deadline has passed", not "I cancelled it").
    loop = asyncio.get_running_loop()
    reads = 0
    sent: list[Any] = []

    async def receive() -> Any:
        nonlocal reads
        reads += 1
        if reads == 1:  # on time
            return {"type": "http.request", "body": b'{"qty', "more_body": True}
        waited = loop.create_future()
        waited.cancel()  # what the read waits for is cancelled by someone else, right away
        return await waited

    async def send(message: Any) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await asyncio.sleep(0.01)  # the 0 s deadline's timer, due first, fires meanwhile
        await receive()

    timed = body_timeout(app, 0.0)
    request = asyncio.ensure_future(timed({"type": "http", "method": "POST", "path": "/"}, receive, send))
    with pytest.raises(asyncio.CancelledError):
        await request
    assert reads == 2
    assert sent == []


@PARSERS
async def test_a_long_running_response_is_not_cut_by_the_header_timeout(parser: str) -> None:
    release = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"done"})

    async with serve(slow, parser=parser, header_timeout=0.3) as url:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(b"GET /slow HTTP/1.1\r\nHost: zaphub\r\n\r\n")
            await asyncio.sleep(1.2)  # four header timeouts while the app works
            release.set()
            head, body = await read_response(reader)
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 200")
        assert body == b"done"


@PARSERS
async def test_a_streamed_response_starts_before_its_body(parser: str) -> None:
    # A response of unknown length is not held back for its body (single_write writes only a
    # sized one in one go): the client has the head while the app still makes the body.
    head_read = asyncio.Event()

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await head_read.wait()
        await send({"type": "http.response.body", "body": b"late"})

    async with serve(single_write(streaming), parser=parser) as url:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(b"GET /stream HTTP/1.1\r\nHost: zaphub\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(BOUND):
                head = await reader.readuntil(b"\r\n\r\n")
            head_read.set()
            rest = await closed_by_server(reader)
        finally:
            writer.close()
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"transfer-encoding: chunked" in head.lower()
    assert rest == b"4\r\nlate\r\n0\r\n\r\n"


@PARSERS
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_sized_responses_arrive_whole_on_a_kept_alive_connection(parser: str, method: str) -> None:
    # On httptools single_write has a response that declares its length written in one write:
    # status line, headers and body as before, request after request on one connection, HEAD
    # without its body.
    async def sized(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send_answer(send, b"answer %s" % scope["path"].encode())

    async with serve(single_write(sized), parser=parser) as url:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            for n in range(3):
                writer.write(f"{method} /r{n} HTTP/1.1\r\nHost: zaphub\r\n\r\n".encode())
                async with asyncio.timeout(BOUND):
                    head = await reader.readuntil(b"\r\n\r\n")
                    body = await reader.readexactly(10) if method == "GET" else b""
                assert head.startswith(b"HTTP/1.1 200 "), head
                assert b"content-length: 10\r\n" in head.lower()
                assert body == (b"answer /r%d" % n if method == "GET" else b"")
        finally:
            writer.close()


@PARSERS
async def test_an_app_failing_between_a_sized_start_and_its_body_answers_500(parser: str) -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        raise RuntimeError("the body could not be made")

    async with serve(single_write(failing), parser=parser) as url:
        answer = await post_raw(url, b"GET / HTTP/1.1\r\nHost: zaphub\r\nConnection: close\r\n\r\n")
    if parser == "httptools":  # the start was held for its body: uvicorn answers the failure
        assert answer.startswith(b"HTTP/1.1 500 "), answer
    else:  # h11 wrote the start at once: the connection is cut after it
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert not answer.endswith(b"\r\n\r\nok")


@PARSERS
async def test_an_app_returning_without_the_body_it_announced_has_its_connection_cut(parser: str) -> None:
    # The head goes out when the app returns (not held for a body that never comes), then uvicorn
    # closes the connection on the unfinished response: the client sees a broken answer, as it
    # would without single_write, never a 500 that looks like an ordinary server error.
    async def bodiless(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"9")]})

    async with serve(single_write(bodiless), parser=parser) as url:
        answer = await post_raw(url, b"GET / HTTP/1.1\r\nHost: zaphub\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-length: 9" in head.lower() and body == b"", answer


@PARSERS
async def test_request_headers_that_keep_growing_are_refused(tmp_path: Path, parser: str) -> None:
    async with running(tmp_path, parser, header_timeout_seconds=60) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: zaphub\r\n")

        async def flood() -> None:  # fast, so the header timeout never applies: only the size limit
            with contextlib.suppress(ConnectionError):
                for i in range(100_000):
                    writer.write(b"X-Flood-%d: %s\r\n" % (i, b"b" * 1000))
                    await writer.drain()

        task = asyncio.create_task(flood())
        try:
            answer = await closed_by_server(reader)
            sent = await asyncio.wait_for(task, BOUND)
        finally:
            task.cancel()
            writer.close()
        assert sent is None
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:100]
        # Headers under the limit are served.
        async with httpx.AsyncClient() as client:
            headers = {"X-Big": "a" * (MAX_HEADER_BYTES // 2)}
            assert (await client.get(f"http://{host}:{port}/health", headers=headers)).status_code == 200


def test_zaphub_run_uses_the_httptools_parser() -> None:
    # The C parser costs a fraction of h11's per request (docs/benchmarks.md, "Levers: HTTP").
    config = uvicorn_config(None, ServerConfig(header_timeout_seconds=3))
    assert config.http is HeaderTimedHttpToolsProtocol
    assert config.header_timeout == 3


async def test_connections_beyond_the_limit_are_answered_503_not_left_hanging(tmp_path: Path) -> None:
    async with running(tmp_path, max_connections=4) as (host, port):
        idle = [await asyncio.open_connection(host, port) for _ in range(4)]
        try:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://{host}:{port}/health")
            assert response.status_code == 503
        finally:
            for _, writer in idle:
                writer.close()


def test_the_connection_limit_leaves_descriptors_for_the_database_and_files() -> None:
    assert connection_limit(ServerConfig(), 1024) == 1024 - FD_RESERVE
    assert connection_limit(ServerConfig(max_connections=300), 1024) == 300
    assert connection_limit(ServerConfig(), 100) == 16  # never zero


@pytest.mark.parametrize("key", ["header_timeout_seconds", "body_timeout_seconds", "max_connections"])
def test_limits_must_be_positive(tmp_path: Path, key: str) -> None:
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match=f"server.{key}"):
        make_app(tmp_path, server={key: 0})
