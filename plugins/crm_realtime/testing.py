"""The crm_realtime plugin's test kit: a CRM client's side of a test host (``zaphub_crm`` fixture).

Found by :mod:`core.testing` through this plugin's entry point. :func:`defaults` sets a
test JWT secret (unless the test sets keys); :func:`kit` returns a :class:`CrmKit`: tokens,
authorized REST calls, and recording Socket.IO clients (python-socketio, which needs
``aiohttp``: ``pip install 'zaphub[testing]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from plugins.crm_realtime.auth import issue_token
from plugins.crm_realtime.config import CrmRealtimeSettings

if TYPE_CHECKING:
    import httpx

    from core.testing import RunningHost

__all__ = ["TEST_JWT_SECRET", "CrmKit", "SocketClient", "defaults", "kit"]

TEST_JWT_SECRET = "zaphub-test-jwt-secret-0123456789abcdef"
"""The JWT secret a test host gets unless the test configures keys."""


def defaults(section: dict[str, Any]) -> dict[str, Any]:
    """``plugins.crm_realtime`` for a test: a test JWT secret unless the test gives keys."""
    if section.get("jwt_secret") or section.get("jwt_public_key"):
        return section
    return {**section, "jwt_secret": TEST_JWT_SECRET}


class SocketClient:
    """A python-socketio client of the CRM namespace that records every event it receives.

    Args:
        namespace: the namespace (``plugins.crm_realtime.namespace``, default ``/crm``).
    """

    def __init__(self, namespace: str = "/crm") -> None:
        import socketio

        self.namespace = namespace
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        """Every ``(event, payload)`` received, in order."""
        self.received_at: list[float] = []
        self.connect_error: Any = None
        """Why the server refused the connection (``{"message": "unauthorized", …}``), if it did."""
        self.disconnect_reason: Any = None
        self.disconnected = asyncio.Event()
        self._changed = asyncio.Event()

        async def any_event(event: str, data: Any = None) -> None:
            self.events.append((event, data))
            self.received_at.append(time.perf_counter())
            self._changed.set()

        def on_connect_error(data: Any = None) -> None:
            self.connect_error = data

        def on_disconnect(reason: Any = None) -> None:
            self.disconnect_reason = reason
            self.disconnected.set()

        self.sio.on("*", any_event, namespace=namespace)
        self.sio.on("connect_error", on_connect_error, namespace=namespace)
        self.sio.on("disconnect", on_disconnect, namespace=namespace)

    async def connect(
        self,
        url: str,
        token: str | None,
        *,
        transports: list[str] | None = None,
        last_event_id: int | None = None,
    ) -> None:
        """Connect (websocket unless ``transports`` says otherwise).

        ``last_event_id`` resumes: the server first replays every event after it.

        Raises:
            socketio.exceptions.ConnectionError: refused (see :attr:`connect_error`).
        """
        auth: dict[str, Any] | None = {"token": token} if token is not None else None
        if auth is not None and last_event_id is not None:
            auth["lastEventId"] = last_event_id
        await self.sio.connect(
            url,
            namespaces=[self.namespace],
            auth=auth,
            transports=transports or ["websocket"],
            wait_timeout=5,
        )

    def of(self, event: str) -> list[Any]:
        """Payloads received for one event, in order."""
        return [data for name, data in self.events if name == event]

    async def wait(
        self, event: str, predicate: Callable[[Any], bool] = lambda _: True, *, within: float = 10.0
    ) -> Any:
        """The first payload of ``event`` matching ``predicate`` (already received or to come).

        Raises:
            TimeoutError: none within ``within`` seconds.
        """
        async with asyncio.timeout(within):
            while True:
                for data in self.of(event):
                    if predicate(data):
                        return data
                self._changed.clear()
                await self._changed.wait()

    async def call(self, event: str, data: Any = None) -> Any:
        """Emit with an ack (``join_conversation``…) and return the ack."""
        return await self.sio.call(event, data, namespace=self.namespace, timeout=5)

    async def close(self) -> None:
        """Disconnect (quietly if already gone)."""
        with contextlib.suppress(Exception):
            await self.sio.disconnect()


class CrmKit:
    """Tokens, REST and Socket.IO against a running test host.

    Args:
        running: the host (the ``zaphub`` fixture).
    """

    def __init__(self, running: RunningHost) -> None:
        self.running = running
        self.settings = running.host.settings("crm_realtime", CrmRealtimeSettings)

    def token(self, sub: str = "test-agent", *, scope: Iterable[str] | None = None, ttl: float = 3600) -> str:
        """A JWT this host accepts, for ``sub``, limited to the business numbers in ``scope``."""
        return issue_token(self.settings, sub=sub, scope=scope, ttl=ttl)

    def headers(self, token: str | None = None) -> dict[str, str]:
        """``Authorization: Bearer …`` headers (a fresh ``test-agent`` token by default)."""
        return {"Authorization": f"Bearer {token or self.token()}"}

    async def request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """An authorized request to the host (``/api/…`` or your plugin's protected route)."""
        headers = {**self.headers(token), **kwargs.pop("headers", {})}
        return await self.running.http.request(method, path, headers=headers, **kwargs)

    @contextlib.asynccontextmanager
    async def socketio(
        self, token: str | None = None, *, transports: list[str] | None = None
    ) -> AsyncIterator[SocketClient]:
        """A connected, recording Socket.IO client; disconnected on exit."""
        client = SocketClient(self.settings.namespace)
        await client.connect(self.running.url, token or self.token(), transports=transports)
        try:
            yield client
        finally:
            await client.close()


def kit(running: RunningHost) -> CrmKit:
    """The kit :meth:`core.testing.RunningHost.kit` returns for ``crm_realtime``."""
    return CrmKit(running)
