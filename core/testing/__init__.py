"""Test a plugin against a real zaphub: a host on a free port, with real storage and real HTTP.

This is the engine of the pytest plugin in :mod:`core.testing.pytest_plugin` (installed with
zaphub, entry point ``pytest11``), usable without pytest too::

    async with run_host({"plugins": {"whatsapp": {}, "mybot": {}}}, storage_url=url) as zaphub:
        ...  # zaphub.url, zaphub.host, zaphub.http, zaphub.kit("whatsapp")

Plugin test kits. A plugin may ship a module named ``testing`` inside its package (for the
plugin ``plugins.whatsapp``: ``plugins.whatsapp.testing``) with two optional functions:

- ``defaults(section: dict) -> dict``: the plugin's config section with what a test needs
  filled in (the whatsapp plugin turns its sandbox on and sets a test app secret);
- ``kit(running: RunningHost) -> object``: helpers to drive the plugin in a test, returned by
  :meth:`RunningHost.kit` (the whatsapp kit posts signed webhooks and reads the sandbox's
  recorded sends; the crm_realtime kit makes tokens and Socket.IO clients).

Core finds these modules through the plugins' own entry points, when a test asks, so core never
imports a plugin and nothing is imported before a host starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib
import importlib.util
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx
    from litestar import Litestar

    from core.config import Config
    from core.host import Host

__all__ = ["RunningHost", "free_port", "host_config", "run_host", "serve", "wait_for"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    predicate: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
) -> Any:
    """Poll until ``predicate()`` (sync or async) is truthy and return it; fail after ``timeout`` s.

    Raises:
        AssertionError: still falsy after ``timeout`` seconds, naming ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def serve(app: Any, *, host: str = "127.0.0.1", port: int = 0, **options: Any) -> AsyncIterator[str]:
    """Run an ASGI app under a real uvicorn server (lifespan included); yields its base URL.

    ``port=0`` picks a free port. Pass :func:`free_port` (also written to the app's
    ``server.port``) when the app must know its own URL before it starts, e.g. the in-process
    sandbox, which posts webhooks to ``host.public_url``. ``options`` go to
    :func:`core.server.uvicorn_config` (``parser="h11"``, uvicorn settings).
    """
    import uvicorn

    from core.config import ServerConfig
    from core.server import uvicorn_config

    # A zaphub app gets the limits and timeouts of `zaphub run`; any other app the defaults.
    running = getattr(getattr(app, "state", None), "host", None)
    settings = running.config.server if running is not None else ServerConfig()
    server = uvicorn.Server(uvicorn_config(app, settings, host=host, port=port, **options))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started or task.done(), timeout=20, what="uvicorn to start")
    if task.done():
        task.result()
        raise AssertionError("server exited during startup")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


def _testing_module(name: str, plugin: object | None) -> ModuleType | None:
    """The ``testing`` module of plugin ``name`` (from its object, else its entry point), or None."""
    if plugin is not None:
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
    else:
        from core.plugins import installed_plugins

        entry = installed_plugins().get(name)
        if entry is None:
            return None
        module = entry.module
    try:
        found = importlib.util.find_spec(f"{module}.testing")
    except ModuleNotFoundError:  # the plugin is a plain module, not a package
        return None
    return importlib.import_module(f"{module}.testing") if found is not None else None


def host_config(
    config: Mapping[str, Any],
    *,
    storage_url: str,
    port: int,
    plugins: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """``config`` ready for a test host: its port and storage, each plugin's test defaults filled in.

    A value the test gives always wins over a plugin's test default.
    """
    out = copy.deepcopy(dict(config))
    out["server"] = {"host": "127.0.0.1", **out.get("server", {}), "port": port}
    out.setdefault("storage", {})
    out["storage"] = {"url": storage_url, **out["storage"]}
    sections = dict(out.get("plugins") or {})
    for name, section in sections.items():
        module = _testing_module(name, (plugins or {}).get(name))
        defaults = getattr(module, "defaults", None)
        if defaults is not None:
            sections[name] = defaults(dict(section or {}))
    out["plugins"] = sections
    return out


class RunningHost:
    """A zaphub serving on a free port for one test: what the ``zaphub`` fixture gives you.

    Attributes:
        url: its base URL (``http://127.0.0.1:PORT``), also ``host.public_url``.
        host: the running :class:`core.host.Host`, the same object hooks receive (storage,
            sender, stash, settings, metrics).
        app: the Litestar app.
        http: an ``httpx.AsyncClient`` with ``base_url=url``.
        config: the validated config it runs with.
    """

    def __init__(
        self, url: str, app: Litestar, http: httpx.AsyncClient, plugins: Mapping[str, object]
    ) -> None:
        self.url = url
        self.app = app
        self.host: Host = app.state.host
        self.http = http
        self.config: Config = self.host.config
        self._plugins = dict(plugins)
        self._kits: dict[str, Any] = {}

    async def settle(self) -> None:
        """Wait until every webhook answered so far is stored and its events' hooks have returned.

        Work a hook started on its own (``host.spawn``, a send on its way to Graph) may still run.
        """
        await self.host.ingest.drain()
        await self.host.events.drain()

    def kit(self, plugin: str) -> Any:
        """The test kit of an enabled plugin (its ``testing.kit(running)``), built once.

        Raises:
            LookupError: the plugin is not enabled, or ships no test kit.
        """
        if plugin not in self._kits:
            if plugin not in self.config.plugins:
                raise LookupError(
                    f"plugin {plugin!r} is not enabled in this test's config: add a section for it "
                    f"(enabled: {', '.join(self.config.plugins) or 'none'})"
                )
            module = _testing_module(plugin, self._plugins.get(plugin))
            make = getattr(module, "kit", None)
            if make is None:
                raise LookupError(f"plugin {plugin!r} ships no test kit (a testing module with kit())")
            self._kits[plugin] = make(self)
        return self._kits[plugin]


@contextlib.asynccontextmanager
async def run_host(
    config: Mapping[str, Any],
    *,
    storage_url: str,
    plugins: Mapping[str, object] | None = None,
) -> AsyncIterator[RunningHost]:
    """Start zaphub with ``config`` (a dict as in config.yaml) on a free port; stop it on exit.

    Args:
        config: the test's config; ``server.port`` is chosen here, ``storage.url`` defaults to
            ``storage_url``, each plugin's test defaults are filled in (:func:`host_config`).
        storage_url: where to store (a SQLite file in a temp dir, or a fresh PostgreSQL database).
        plugins: plugin objects by name that are not installed (your plugin under test, before
            it is packaged); enabled only when ``config`` names them.

    Raises:
        ConfigError: the config is invalid (the message names the key).
    """
    import httpx

    from core.app import create_app
    from core.config import parse_config

    port = free_port()
    parsed = parse_config(host_config(config, storage_url=storage_url, port=port, plugins=plugins))
    app = create_app(parsed, extra_plugins=plugins)
    async with serve(app, port=port) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield RunningHost(url, app, http, plugins or {})
