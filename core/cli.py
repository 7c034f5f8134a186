"""The ``zaphub`` command line.

Built-in commands: ``run``, ``check``, ``plugins``. Plugins add their own through the
``register_commands`` hook (``token`` comes from ``crm_realtime``; ``sandbox`` and ``simulate``
from ``whatsapp``). Errors print one line naming the problem and the fix, and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pluggy

from core import __version__, hookspecs
from core.cli_types import Command
from core.config import DEFAULT_CONFIG_NAME, Config, load_config, redact
from core.errors import ConfigError, PluginError, ZaphubError
from core.plugins import (
    HookRunner,
    build_plugin_manager,
    check_plugin,
    installed_plugins,
    validate_plugin_settings,
)
from core.preflight import preflight

__all__ = ["Command", "load_plugin_settings", "main"]

log = logging.getLogger("zaphub.cli")

EXIT_CONFIG = 2


def load_plugin_settings(config_path: str | None, plugin: str) -> tuple[Config, Any]:
    """For plugin commands: the config and one plugin's validated settings.

    The plugin need not be enabled in the config: its section's defaults are used then.

    Raises:
        ConfigError: the config or that plugin's section is invalid.
    """
    config = load_config(config_path)
    sections = dict(config.plugins)
    sections.setdefault(plugin, {})
    only = Config(plugins={plugin: sections[plugin]})
    pm = build_plugin_manager(only)
    try:
        settings = validate_plugin_settings(pm, only)
    except ConfigError:
        if config.source != "<defaults>":
            raise
        # Blaming a setting (CRM_JWT_SECRET…) would send a newcomer to the wrong fix: the file is
        # what is missing.
        raise ConfigError(
            f"no config file found (no --config, $ZAPHUB_CONFIG is not set, and there is no "
            f"{DEFAULT_CONFIG_NAME} in {Path.cwd()}): run this command in the directory of your "
            f"{DEFAULT_CONFIG_NAME}, or pass --config PATH (or set ZAPHUB_CONFIG)"
        ) from None
    return config, settings[plugin]


def _all_plugins_manager() -> tuple[pluggy.PluginManager, list[str]]:
    """A manager with every installed plugin that loads (for ``plugins`` and plugin commands)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    broken = []
    for name, ep in sorted(installed_plugins().items()):
        try:
            pm.register(ep.load(), name=name)
        except Exception as exc:
            broken.append(f"{name}: {exc.__class__.__name__}: {exc}")
            continue
        try:
            check_plugin(pm, name)
        except PluginError as exc:
            pm.unregister(name=name)  # it would fail at `zaphub run` too: list it as broken
            broken.append(f"{name}: {exc}")
    return pm, broken


def _plugin_commands() -> list[Command]:
    pm, _ = _all_plugins_manager()
    runner = HookRunner(pm, {})
    commands = []
    for plugin, cmd in runner.collect("register_commands"):
        if not isinstance(cmd, Command):
            raise PluginError(plugin, "register_commands must return core.cli_types.Command objects")
        commands.append(cmd)
    return commands


def _cmd_run(args: argparse.Namespace) -> int:
    import uvicorn

    from core.app import create_app
    from core.logs import setup_logging
    from core.server import FD_RESERVE, connection_limit, freeze_startup_heap, raise_fd_limit, uvicorn_config

    config = load_config(args.config)
    checked = preflight(config)  # refuses what check refuses, before anything listens
    if args.workers < 1:
        raise ConfigError(f"--workers must be 1 or more, not {args.workers}")
    if args.workers > 1:
        from core.workers import workers_problem

        problem = workers_problem(config, checked.settings, args.workers)
        if problem is not None:
            raise ConfigError(*problem)
    server = config.server
    if args.host is not None:
        server = msgspec.structs.replace(server, host=args.host)
    if args.port is not None:
        server = msgspec.structs.replace(server, port=args.port)
    # Bind before the app is built, so a port of 0 is resolved and plugins (media links, the
    # in-process sandbox) know the real address during startup.
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((server.host, server.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {server.host}:{server.port}: {exc.strerror} (is zaphub already running?): "
            "stop what uses it, or pick another port with --port or ZAPHUB_PORT",
            "server.port",
        ) from exc
    server = msgspec.structs.replace(server, port=sock.getsockname()[1])
    config = msgspec.structs.replace(config, server=server)
    setup_logging(config.logging)
    if config.source == "<defaults>":
        log.warning(
            "no config file found (--config, $ZAPHUB_CONFIG or ./config.yaml): running with built-in "
            "defaults and no plugins enabled; start from the config.yaml shipped with zaphub"
        )
    fds = raise_fd_limit()
    limit = connection_limit(server, fds)
    if limit > fds - FD_RESERVE:
        log.warning(
            "server.max_connections is %d but the file-descriptor limit is %d: past about %d connections "
            "new ones (webhooks included) fail; raise the limit (ulimit -n, LimitNOFILE=) or lower "
            "server.max_connections",
            limit,
            fds,
            fds - FD_RESERVE,
        )
    log.info(
        "HTTP limits: %d connections (file descriptors: %d), headers within %g s, bodies within %g s",
        limit,
        fds,
        server.header_timeout_seconds,
        server.body_timeout_seconds,
    )
    listening = f"zaphub {__version__} listening on http://{server.host}:{server.port}"
    if args.workers > 1:
        # Migrations run here, once, before any worker starts.
        asyncio.run(_open_storage(config))
        return _run_workers(config, sock, fds, args.workers, listening)
    app = create_app(config)
    # A database that is missing or unreachable is one line naming storage.url and the fix
    # (raised as StorageError, printed by main), not a traceback from inside the server's startup.
    asyncio.run(_open_storage(config))
    uv = uvicorn_config(app, server, fds=fds, access_log=config.logging.access_log)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:  # said only once the app started and the socket serves
                freeze_startup_heap()
                print(listening, file=sys.stderr, flush=True)

    # uvicorn re-raises the SIGTERM it handled once the graceful shutdown is over, which would end
    # the process "killed by signal 15". The shutdown was clean by then: exit 0 instead.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    uv_server = _Server(uv)
    try:
        uv_server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not uv_server.started:
        print("error: zaphub did not start; the log above says why", file=sys.stderr)
        return 1
    return 0


def _run_workers(config: Config, sock: socket.socket, fds: int, workers: int, listening: str) -> int:
    """Serve ``sock`` from ``workers`` processes until SIGINT/SIGTERM (see :mod:`core.workers`)."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from core.server import uvicorn_config
    from core.workers import WorkerApp

    uv = uvicorn_config(
        WorkerApp(config, listening),
        config.server,
        fds=fds,
        access_log=config.logging.access_log,
        factory=True,
        workers=workers,
        # The supervisor kills a worker that does not answer its health check in time, and a
        # worker answers only once its interpreter has imported everything: on a busy machine
        # that takes longer than uvicorn's 5 s, and workers would be killed while starting.
        timeout_worker_healthcheck=60,
    )
    print(f"zaphub {__version__}: starting {workers} workers", file=sys.stderr, flush=True)
    supervisor = Multiprocess(uv, sockets=[sock])
    supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        print("error: a zaphub worker did not start; the log above says why", file=sys.stderr)
        return 1
    return 0


async def _open_storage(config: Config) -> None:
    """Open (and migrate) the database once before serving; raises ``StorageError`` with the fix."""
    from core.storage.engine import StorageEngine

    engine = StorageEngine(config.storage)
    try:
        await engine.open()
    finally:
        await engine.close()


def _cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    checked = preflight(config)
    runner = HookRunner(checked.pm, checked.settings)
    print(f"config OK: {config.source}")
    print(f"storage: {redact(config.storage.url)}")
    print(f"redis: {redact(config.redis.url) if config.redis.url else 'off (single process)'}")
    hooks = runner.plugin_hooks()
    print("plugins enabled:")
    for name in config.plugins:
        print(f"  {name}: {', '.join(hooks.get(name, [])) or 'no hooks'}")
    if not config.plugins:
        print("  none (add a section under plugins: to enable one)")
    if checked.development:
        print("development mode (not for production):")
        for finding in checked.development:
            print(f"  {finding.path}: {finding.message}")
    for finding in checked.warnings:
        print(f"warning: {finding.path}: {finding.message}")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    pm, broken = _all_plugins_manager()
    enabled: set[str] = set()
    with contextlib.suppress(ConfigError):  # listing plugins must work with a broken config
        enabled = set(load_config(args.config).plugins)
    dists = {name: dist for name, dist in ((pm.get_name(p), d) for p, d in pm.list_plugin_distinfo())}
    runner = HookRunner(pm, {})
    hooks = runner.plugin_hooks()
    eps = installed_plugins()
    for name in sorted(eps):
        dist = eps[name].dist
        where = f"{dist.name} {dist.version}" if dist is not None else dists.get(name, "?")
        state = "enabled" if name in enabled else "installed"
        print(f"{name} ({where}) [{state}]")
        print(f"  hooks: {', '.join(hooks.get(name, [])) or '-'}")
    for line in broken:
        print(f"broken: {line}")
    return 0


def build_parser(commands: Sequence[Command] = ()) -> argparse.ArgumentParser:
    """The argument parser, with plugin commands added."""
    parser = argparse.ArgumentParser(
        prog="zaphub",
        description="zaphub connects the Meta WhatsApp Cloud API to your CRM in real time.",
        epilog=(
            "Start with `zaphub run` (uses ./config.yaml), then `zaphub token --sub you` for a CRM client."
        ),
    )
    parser.add_argument("--version", action="version", version=f"zaphub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description or help_)
        p.add_argument(
            "--config",
            metavar="PATH",
            default=None,
            help="config file (default: $ZAPHUB_CONFIG, else ./config.yaml, else built-in defaults)",
        )
        return p

    run = add("run", "serve the webhook, the CRM API and Socket.IO", "Serve HTTP and Socket.IO on one port.")
    run.add_argument("--host", default=None, help="interface to bind (overrides server.host)")
    run.add_argument("--port", type=int, default=None, help="TCP port (overrides server.port; 0 = any free)")
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes serving the port (default 1); more than 1 needs PostgreSQL, Redis and "
        "Socket.IO's websocket transport (docs/operations.md)",
    )
    run.set_defaults(func=_cmd_run)
    check = add(
        "check",
        "validate the config and list the enabled plugins",
        "Validate config.yaml and every enabled plugin's section, and refuse what `zaphub run` would "
        "refuse (development secrets without a sandbox, an unsupported storage.url); exit 2 naming "
        "each problem and its fix.",
    )
    check.set_defaults(func=_cmd_check)
    plugins = add("plugins", "list installed plugins and the hooks they implement")
    plugins.set_defaults(func=_cmd_plugins)
    for cmd in commands:
        p = add(cmd.name, cmd.help, cmd.description)
        cmd.configure(p)
        p.set_defaults(func=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zaphub`` console script."""
    try:
        commands = _plugin_commands()
    except ZaphubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        commands = []
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ZaphubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
