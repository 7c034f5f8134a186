"""The ``autoreply`` plugin: rules, business hours, a greeting, and the bot hook.

Hook implementations only; the decision flow lives in :mod:`plugins.autoreply.service`, the rules
in :mod:`plugins.autoreply.rules`, the settings in :mod:`plugins.autoreply.config`.
"""

from __future__ import annotations

import msgspec

from core import hookimpl
from core.host import Host
from core.models import Contact, Conversation, Event, Message
from core.stash import StashKey
from plugins.autoreply.config import AutoreplySettings
from plugins.autoreply.service import AutoreplyService

__all__ = ["SERVICE"]

SERVICE: StashKey[AutoreplyService] = StashKey("autoreply.service")

#: How long shutdown waits for replies still being composed or queued.
_DRAIN_SECONDS = 5.0


@hookimpl
def config_schema() -> type[msgspec.Struct]:
    """``plugins.autoreply`` is validated against :class:`AutoreplySettings` (regexes, hours, zone)."""
    return AutoreplySettings


@hookimpl
def on_startup(host: Host, settings: AutoreplySettings) -> None:
    """Compile the rules once and keep the service for the message hook."""
    host.stash[SERVICE] = AutoreplyService(host, settings)


@hookimpl
def on_message_received(
    host: Host, message: Message, conversation: Conversation, contact: Contact, event: Event
) -> None:
    """Start on the auto-reply to a new inbound message, when one may be due (no I/O here)."""
    service = host.stash.get(SERVICE)
    if service is not None:
        service.on_message_received(message, conversation, contact, event)


@hookimpl
async def on_shutdown(host: Host) -> None:
    """Let replies already decided reach the outbox before the host cancels its tasks."""
    service = host.stash.get(SERVICE)
    if service is not None:
        await service.drain(_DRAIN_SECONDS)
