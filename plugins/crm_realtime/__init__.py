"""The ``crm_realtime`` plugin: Socket.IO ``/crm``, the REST API that CRM clients call, the agent console.

Hook implementations only; the work lives in the modules named in README.md.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from core import hookimpl
from core.cli_types import Command
from core.config import ConfigFinding
from core.host import Host, ReadinessCheck
from core.models import Event
from core.stash import StashKey
from plugins.crm_realtime.auth import TokenVerifier
from plugins.crm_realtime.config import CrmRealtimeSettings
from plugins.crm_realtime.console import console_router
from plugins.crm_realtime.realtime import Realtime
from plugins.crm_realtime.routes import REALTIME, api_router, socketio_mount

__all__ = ["REALTIME", "VERIFIER"]

VERIFIER: StashKey[TokenVerifier] = StashKey("crm_realtime.verifier")

log = logging.getLogger("zaphub.crm_realtime")


@hookimpl
def config_schema() -> type[msgspec.Struct]:
    """``plugins.crm_realtime`` is validated against :class:`CrmRealtimeSettings`."""
    return CrmRealtimeSettings


@hookimpl
def check_settings(settings: CrmRealtimeSettings) -> list[ConfigFinding]:
    """A published or short ``jwt_secret`` (an error for ``check``/``run`` without a sandbox)."""
    return settings.findings()


@hookimpl
def register_routes(host: Host, settings: CrmRealtimeSettings) -> list[Any]:
    """The ``/api`` router, the Socket.IO mount and, unless turned off, the agent console."""
    verifier = TokenVerifier(settings)
    host.stash[VERIFIER] = verifier
    host.auth.use(verifier, by="crm_realtime")  # plugin routes may require the same token as /api
    routes = [api_router(settings), socketio_mount(host)]
    if settings.console.enabled:
        routes.append(console_router(settings))
    return routes


@hookimpl
def register_readiness_checks(host: Host) -> list[ReadinessCheck]:
    """``/ready`` fails while the Socket.IO emit loop is down or its queue overflows.

    With ``redis.url``, check ``relay`` fails while the Redis relay cannot publish or listen.
    """

    async def realtime() -> str | None:
        running = host.stash.get(REALTIME)
        return running.problem() if running is not None else "the Socket.IO server is not started"

    checks: list[ReadinessCheck] = [("crm_realtime", realtime)]
    if host.config.redis.url:

        async def relay() -> str | None:
            running = host.stash.get(REALTIME)
            if running is None or running.relay is None:
                return "the Socket.IO server is not started"
            return running.relay.problem()

        checks.append(("relay", relay))
    return checks


@hookimpl
def register_commands() -> list[Command]:
    """``zaphub token``."""
    from plugins.crm_realtime.cli import token_command

    return [token_command()]


@hookimpl
def on_startup(host: Host, settings: CrmRealtimeSettings) -> None:
    """Build the Socket.IO server (with the Redis manager when ``redis.url`` is set) and start emitting."""
    if settings.short_secret:
        log.warning(
            "plugins.crm_realtime.jwt_secret is shorter than 32 bytes: anyone who guesses it can read every "
            "conversation; set CRM_JWT_SECRET to a long random value (openssl rand -hex 32)"
        )
    realtime = Realtime(host, settings, host.stash[VERIFIER])
    host.stash[REALTIME] = realtime
    realtime.start()
    log.info(
        "Socket.IO namespace %s on /socket.io/ (%s); fan-out %s",
        settings.namespace,
        "+".join(settings.transports),
        f"through Redis channel {host.config.redis.channel!r}"
        if host.config.redis.url
        else "in this process",
    )


@hookimpl
async def on_shutdown(host: Host) -> None:
    """Emit what is queued, then stop Socket.IO."""
    realtime = host.stash.get(REALTIME)
    if realtime is not None:
        await realtime.close()


@hookimpl
def on_event(host: Host, event: Event) -> None:
    """Emit every logged event to the sockets its route names (``realtime.ROUTES``), with ``eventId``."""
    realtime = host.stash.get(REALTIME)
    if realtime is not None:
        realtime.deliver(event)
