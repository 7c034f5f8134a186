"""The ``webhooks`` plugin: outgoing webhooks fed from the event log (docs/webhooks.md).

Hook implementations only; delivery lives in :mod:`plugins.webhooks.worker`, outbound HTTP in
:mod:`plugins.webhooks.client`, dead letters in :mod:`plugins.webhooks.deadletters`, the
settings in :mod:`plugins.webhooks.config`, the ``zaphub webhooks`` command in
:mod:`plugins.webhooks.cli`.
"""

from __future__ import annotations

import msgspec

from core import hookimpl
from core.cli_types import Command
from core.config import ConfigFinding
from core.host import Host
from core.stash import StashKey
from plugins.webhooks.config import WebhooksSettings
from plugins.webhooks.worker import Webhooks

__all__ = ["WEBHOOKS"]

WEBHOOKS: StashKey[Webhooks] = StashKey("webhooks.running")


@hookimpl
def config_schema() -> type[msgspec.Struct]:
    """``plugins.webhooks`` is validated against :class:`WebhooksSettings` (URLs, secrets, event names)."""
    return WebhooksSettings


@hookimpl
def check_settings(settings: WebhooksSettings) -> list[ConfigFinding]:
    """A published or short subscriber secret."""
    return settings.findings()


@hookimpl
def register_commands() -> list[Command]:
    """``zaphub webhooks status | dead-letters | replay``."""
    from plugins.webhooks.cli import webhooks_command

    return [webhooks_command()]


@hookimpl
async def on_startup(host: Host, settings: WebhooksSettings) -> None:
    """Place new subscribers at the end of the log, then deliver (in the process that takes the lead).

    A subscriber's cursor is created here, before the server answers, so every event committed
    after its first start reaches it.
    """
    running = Webhooks(host, settings)
    await running.place_new_subscribers()
    host.stash[WEBHOOKS] = running
    running.start()


@hookimpl
def on_message_received(host: Host) -> None:
    """Wake the subscribers: an event was just written (they read it from the log)."""
    _nudge(host)


@hookimpl
def on_message_sent(host: Host) -> None:
    """Wake the subscribers."""
    _nudge(host)


@hookimpl
def on_status_changed(host: Host) -> None:
    """Wake the subscribers."""
    _nudge(host)


def _nudge(host: Host) -> None:
    running = host.stash.get(WEBHOOKS)
    if running is not None:
        running.nudge()


@hookimpl
async def on_shutdown(host: Host) -> None:
    """Stop delivering and release the lead, so another process takes over at once."""
    running = host.stash.get(WEBHOOKS)
    if running is not None:
        await running.stop()
