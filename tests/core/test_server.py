"""The HTTP server's limits through real sockets: slow headers, slow bodies, too many connections.

uvicorn on a free port (the same configuration as ``zaphub run``, :func:`core.server.uvicorn_config`);
the clients are raw TCP sockets that behave like attackers.
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
from core.server import FD_RESERVE, connection_limit
from tests.core.test_app import Demo, make_app
from tests.helpers import serve

BOUND = 10.0
"""How long a test waits for the server to act; the server's own timeouts are well under it."""


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **server: Any) -> AsyncIterator[tuple[str, int]]:
    app = make_app(tmp_path, Demo(), server=server)
    async with serve(app) as url:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        yield parts.hostname, parts.port


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``BOUND``)."""
    async with asyncio.timeout(BOUND):
        return await reader.read()


async def test_slow_headers_are_cut_off(tmp_path: Path) -> None:
    async with running(tmp_path, header_timeout_seconds=0.5) as (host, port):
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


async def test_the_next_request_on_a_kept_alive_connection_is_timed_too(tmp_path: Path) -> None:
    async with running(tmp_path, header_timeout_seconds=0.5, keep_alive_seconds=60) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        for _ in range(2):  # idle longer than the header timeout between requests: kept alive
            writer.write(b"GET /health HTTP/1.1\r\nHost: zaphub\r\n\r\n")
            async with asyncio.timeout(BOUND):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200")
                length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
                assert length is not None
                await reader.readexactly(int(length[1]))
            await asyncio.sleep(1)  # idle (the keep-alive timeout is 60 s), not a wait for an event
        writer.write(b"GET /health HTTP/1.1\r\n")  # ...and the rest never comes
        try:
            data = await closed_by_server(reader)
        finally:
            writer.close()
        assert b"HTTP/1.1" not in data.split(b"\r\n\r\n", 1)[-1]


async def test_a_body_that_does_not_arrive_in_time_gets_408(tmp_path: Path) -> None:
    async with running(tmp_path, body_timeout_seconds=0.5) as (host, port):
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
