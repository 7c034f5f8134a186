"""The ``whatsapp`` plugin: Meta's webhook, the Graph API client, the outbox, the sandbox.

Hook implementations only; the work lives in the modules named in README.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from redis.asyncio import Redis

from core import hookimpl
from core.cli_types import Command
from core.config import ConfigFinding
from core.errors import ApiError, UpstreamError, ValidationFailed
from core.host import Host, MediaStream, ReadinessCheck
from core.models import Conversation, Message, OutgoingMessage
from core.sending import Channel, SendPolicy
from core.server import DirectRoute
from core.stash import StashKey
from plugins.whatsapp.channel import WhatsAppChannel
from plugins.whatsapp.client import GraphClient
from plugins.whatsapp.config import SANDBOX_PHONE_NUMBER_ID, WhatsAppSettings
from plugins.whatsapp.outbound import OUTBOUND_TYPES, body_for, validate_content
from plugins.whatsapp.routes import WEBHOOK_PATH, webhook_direct_routes, webhook_routes
from plugins.whatsapp.sandbox import Sandbox, SandboxOptions
from plugins.whatsapp.window import ServiceWindow
from plugins.whatsapp.worker import OutboxWorker

__all__ = ["GRAPH", "SANDBOX", "SANDBOX_PREFIX", "WORKER"]

log = logging.getLogger("zaphub.whatsapp")

GRAPH: StashKey[GraphClient] = StashKey("whatsapp.graph")
WORKER: StashKey[OutboxWorker] = StashKey("whatsapp.worker")
SANDBOX: StashKey[Sandbox] = StashKey("whatsapp.sandbox")

#: Where the in-process sandbox is mounted (``whatsapp.sandbox: true``).
SANDBOX_PREFIX = "/_sandbox/graph"


def _sandbox_graph_token(settings: WhatsAppSettings) -> str:
    """The Graph token of the in-process sandbox when no access token is set.

    Derived from the app secret rather than published, so strangers cannot call the emulator's
    Graph endpoints on the public port; the same for every process sharing the config.
    """
    if settings.access_token:
        return settings.access_token
    digest = hmac.new(settings.app_secret.encode(), b"zaphub sandbox graph token", hashlib.sha256)
    return "sandbox-" + digest.hexdigest()


@hookimpl
def config_schema() -> type[msgspec.Struct]:
    """``plugins.whatsapp`` is validated against :class:`WhatsAppSettings`."""
    return WhatsAppSettings


@hookimpl
def check_settings(settings: WhatsAppSettings) -> list[ConfigFinding]:
    """The sandbox is on; published secrets or no access token (errors without the sandbox)."""
    return settings.findings()


@hookimpl
def register_routes(host: Host, settings: WhatsAppSettings) -> list[Any]:
    """The webhook, and the sandbox's Graph emulator when ``sandbox: true``."""
    routes = webhook_routes(host, settings)
    if settings.sandbox:
        sandbox = Sandbox(
            SandboxOptions(
                app_secret=settings.app_secret,
                webhook_url=host.public_url + WEBHOOK_PATH,
                access_token=_sandbox_graph_token(settings),
                phone_number_id=settings.phone_number_id or SANDBOX_PHONE_NUMBER_ID,
                prefix=SANDBOX_PREFIX,
                controls_enabled=bool(settings.sandbox_token),
                control_token=settings.sandbox_token,
                control_loopback_only=not settings.sandbox_remote_control,
            )
        )
        host.stash[SANDBOX] = sandbox
        routes.append(sandbox.router)
    return routes


@hookimpl
def register_direct_routes(host: Host, settings: WhatsAppSettings) -> list[DirectRoute]:
    """The webhook ``POST``, Meta's hot path, answered before Litestar's router."""
    return webhook_direct_routes(host, settings)


@hookimpl
def register_readiness_checks(host: Host, settings: WhatsAppSettings) -> list[ReadinessCheck]:
    """``/ready`` fails while Graph rejects the token, or when no token is configured."""

    async def graph() -> str | None:
        if not settings.sandbox and not settings.access_token:
            return "plugins.whatsapp.access_token is empty: set WHATSAPP_ACCESS_TOKEN (or sandbox: true)"
        worker = host.stash.get(WORKER)
        return worker.auth_problem if worker is not None else "outbox worker not running"

    return [("whatsapp", graph)]


@hookimpl
def register_send_policies() -> list[SendPolicy]:
    """WhatsApp's 24-hour customer-service window: outside it, templates only."""
    return [ServiceWindow()]


@hookimpl
def register_channels(host: Host, settings: WhatsAppSettings) -> list[Channel]:
    """WhatsApp's numbers and addresses, Graph's read receipts and typing indicator."""
    return [WhatsAppChannel(settings, lambda: host.stash[GRAPH])]


@hookimpl
def register_commands() -> list[Command]:
    """``zaphub sandbox`` and ``zaphub simulate``."""
    from plugins.whatsapp.cli import commands

    return commands()


@hookimpl
async def on_startup(host: Host, settings: WhatsAppSettings) -> None:
    """Open the Graph client and start the outbox worker (and the sandbox, if enabled)."""
    sandbox = host.stash.get(SANDBOX)
    if sandbox is not None:
        sandbox.options.webhook_url = host.public_url + WEBHOOK_PATH
        await sandbox.start()
        log.warning(
            "SANDBOX MODE: sends go to the built-in Meta emulator at %s%s, not to WhatsApp; %s; set "
            "WHATSAPP_SANDBOX=false (plugins.whatsapp.sandbox) with real credentials for production",
            host.public_url,
            SANDBOX_PREFIX,
            settings.sandbox_controls(),
        )
    base_url = host.public_url + SANDBOX_PREFIX if settings.sandbox else settings.graph_api_url
    token = (
        _sandbox_graph_token(settings)
        if settings.sandbox
        else settings.access_token or "missing-access-token"
    )
    client = GraphClient(
        base_url=base_url,
        version=settings.graph_api_version,
        access_token=token,
        timeout=httpx.Timeout(connect=5.0, read=settings.request_timeout_seconds, write=20.0, pool=5.0),
    )
    host.stash[GRAPH] = client
    # With redis.url, processes share their send pacing there (short timeouts: a hung Redis
    # degrades pacing to per-process, it must not stall sends).
    redis = (
        Redis.from_url(host.config.redis.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        if host.config.redis.url
        else None
    )
    worker = OutboxWorker(host, settings, client, redis=redis)
    host.stash[WORKER] = worker
    host.spawn(worker.run(), name="whatsapp-outbox")


@hookimpl
async def on_shutdown(host: Host) -> None:
    """Let in-flight sends finish, then close the client and the sandbox."""
    worker = host.stash.get(WORKER)
    if worker is not None:
        await worker.stop()
    client = host.stash.get(GRAPH)
    if client is not None:
        await client.aclose()
    if worker is not None and worker.redis is not None:
        await worker.redis.aclose()
    sandbox = host.stash.get(SANDBOX)
    if sandbox is not None:
        await sandbox.stop()


@hookimpl
def on_before_send(outgoing: OutgoingMessage, conversation: Conversation) -> OutgoingMessage:
    """Validate the content for its type (400 with the field and the fix) and fill ``body``."""
    if outgoing.type not in OUTBOUND_TYPES:
        raise ValidationFailed(
            f"type {outgoing.type!r} cannot be sent; use one of: {', '.join(sorted(OUTBOUND_TYPES))}"
        )
    content = validate_content(outgoing.type, outgoing.content)
    return msgspec.structs.replace(outgoing, content=content, body=body_for(outgoing.type, content))


@hookimpl
async def media_for_message(host: Host, message: Message) -> MediaStream | None:
    """Stream an inbound message's media from Graph (id → URL → bytes with the token)."""
    if message.media_id is None or message.direction != "inbound":
        return None
    client = host.stash[GRAPH]
    try:
        info = await client.media_info(message.media_id, phone_number_id=message.phone_number_id)
    except UpstreamError as exc:
        raise ApiError(
            f"Graph could not find media {message.media_id}: {exc.title} (media ids expire after 7 days)",
            code="media_unavailable",
            status_code=502 if exc.retryable else 404,
        ) from exc

    async def chunks() -> AsyncIterator[bytes]:
        async with client.stream_media(info.url) as download:
            async for chunk in download.aiter_bytes(64 * 1024):
                yield chunk

    return MediaStream(
        mime_type=info.mime_type or message.media_mime_type or "application/octet-stream",
        chunks=chunks(),
        size=info.file_size,
    )
