"""The running host, handed to every hook as ``host``.

It owns what lives as long as the app: the config, storage, the hook runner, metrics, the send
service, the ingest batcher and event dispatcher, background tasks, and the typed ``stash`` where
plugins keep their own runtime state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar, overload

import msgspec
import pluggy

from core.auth import BearerAuth
from core.config import Config
from core.events import EventDispatcher
from core.handoff import HandoffService
from core.ingest import IngestBatcher
from core.metrics import Metrics
from core.plugins import HookRunner
from core.sending import SendService
from core.stash import Stash
from core.storage import PluginStore, Storage

__all__ = ["Host", "MediaStream", "ReadinessCheck"]

log = logging.getLogger("zaphub.host")

S = TypeVar("S", bound=msgspec.Struct)

STATE_PURGE_SECONDS = 300.0
"""How often expired plugin-store entries are deleted from the table."""

#: ``(name, check)``: the check returns ``None`` when healthy, or a short reason.
ReadinessCheck = tuple[str, Callable[[], Awaitable[str | None]]]


class MediaStream(msgspec.Struct, frozen=True, kw_only=True):
    """Media bytes on their way to a client (``GET /api/messages/{id}/media``)."""

    mime_type: str
    chunks: AsyncIterator[bytes]
    size: int | None = None
    filename: str | None = None


class Host:
    """See the module docstring. Built by :func:`core.app.create_app`."""

    def __init__(self, config: Config, pm: pluggy.PluginManager, settings: dict[str, Any]) -> None:
        self.config = config
        self.pm = pm
        self.metrics = Metrics()
        self.hooks = HookRunner(pm, settings, self.metrics.hook_errors)
        self.storage = Storage(config.storage)
        self.stash = Stash()
        self.auth = BearerAuth()
        """Bearer tokens for routes: a plugin registers the verifier, routes ask for ``agent``."""
        self.sender = SendService(self)
        self.events = EventDispatcher(self)
        self.handoff = HandoffService(self)
        self.ingest = IngestBatcher(self)
        self.readiness_checks: list[ReadinessCheck] = []
        self.public_url = config.server.public_url or f"http://{config.server.host}:{config.server.port}"
        """Base URL clients reach this host at (media links); updated once the port is known."""
        self.storage.public_url = self.public_url
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handoff_task: asyncio.Task[Any] | None = None
        self._stores: dict[str, PluginStore] = {}
        self.started = False

    @overload
    def settings(self, plugin: str) -> Any: ...
    @overload
    def settings(self, plugin: str, schema: type[S]) -> S: ...
    def settings(self, plugin: str, schema: type[S] | None = None) -> Any:
        """A plugin's validated settings (``None`` when it is not enabled or declared no schema).

        Args:
            plugin: its name under ``plugins:``.
            schema: the ``Struct`` it declared: the result is typed as such (and checked).

        Raises:
            TypeError: ``schema`` given, and the plugin's settings are not an instance of it.
        """
        value = self.hooks.settings.get(plugin)
        if schema is not None and not isinstance(value, schema):
            raise TypeError(
                f"plugins.{plugin} settings are {type(value).__name__}, not {schema.__name__}"
                + ("" if plugin in self.hooks.settings else f" (plugin {plugin!r} is not enabled)")
            )
        return value

    def store(self, plugin: str) -> PluginStore:
        """Plugin ``plugin``'s durable key-value store (the same object on every call).

        Raises:
            LookupError: no enabled plugin has that name (a typo would read another namespace).
        """
        if plugin not in self.hooks.settings:
            enabled = ", ".join(sorted(self.hooks.settings)) or "none"
            raise LookupError(f"no enabled plugin is named {plugin!r}; enabled: {enabled}")
        store = self._stores.get(plugin)
        if store is None:
            store = self._stores[plugin] = PluginStore(self.storage, plugin)
        return store

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Run background work owned by the host: cancelled and awaited at shutdown.

        A task that dies with an exception is logged with its name; nothing restarts it, so
        long-running workers should catch and retry inside their loop.
        """
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s died", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def start(self) -> None:
        """Open storage, start the writers, then run plugins' ``on_startup``."""
        await self.storage.open()
        self.ingest.start()
        self.events.start()
        if self.handoff.idle_seconds > 0:
            self._handoff_task = self.spawn(self.handoff.run(), name="zaphub-handoff")
        self.spawn(self.events.prune_forever(), name="zaphub-event-retention")
        await self.hooks.call_strict("on_startup", host=self)
        self.spawn(self._purge_expired_state(), name="plugin-state-expiry")
        self.started = True

    async def stop(self) -> None:
        """Stop producers, then consumers: writes are flushed, then plugins stop, then events.

        Producers first: the ingest writer, then plugins' ``on_shutdown`` (the outbox worker
        finishes its in-flight sends there) while the dispatcher still runs, so the events
        those raise reach hooks too. Then the dispatcher delivers what is left and saves its
        cursor; anything it cannot finish in time stays in the log for the next start.
        """
        if self._handoff_task is not None:  # a producer of events: stopped before the dispatcher
            self._handoff_task.cancel()
            await asyncio.gather(self._handoff_task, return_exceptions=True)
        await self.ingest.stop()
        await self.hooks.call("on_shutdown", host=self)
        await self.events.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.storage.close()
        self.started = False

    async def _purge_expired_state(self) -> None:
        """Delete expired plugin-store entries now and then (reads never see them anyway)."""
        while True:
            await asyncio.sleep(STATE_PURGE_SECONDS)
            try:
                purged = await self.storage.state_purge_expired()
            except Exception as exc:  # storage down: the next round tries again
                log.warning("purging expired plugin state failed: %s", exc)
            else:
                if purged:
                    log.debug("purged %d expired plugin state entries", purged)
