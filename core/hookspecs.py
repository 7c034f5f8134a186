"""Every hook a zaphub plugin can implement.

Hooks are called with keyword arguments; an implementation may accept any subset of them.
Any hook may be a plain function or a coroutine function: the host awaits whatever is awaitable
(see :class:`core.plugins.HookRunner`, which calls each plugin through pluggy on its own, so
pluggy's tracing sees every call; hook wrappers, ``wrapper=True`` or ``hookwrapper=True``, are
refused when a plugin is loaded). A hook that raises is isolated: logged with the
plugin's name and counted in ``zaphub_hook_errors_total``; the other plugins still run. The
exceptions are the build-time hooks (``config_schema``, ``register_*``), whose failure stops
startup with the plugin's name, because a half-configured host is worse than none.

Arguments that mean the same thing always have the same name and type:

- ``host`` — :class:`core.host.Host`, the running host (storage, send service, stash, config).
- ``settings`` — this plugin's own validated config section (an instance of the Struct its
  ``config_schema`` returned), or ``None`` when it declared no schema.
- ``message`` / ``conversation`` / ``contact`` — :mod:`core.models` objects as stored.
- ``event`` — :class:`core.models.Event`, the event log row the ``on_*`` event hooks report:
  ``event.id`` (increasing, in commit order), ``event.type`` (the Socket.IO event name) and
  ``event.data`` (the contract payload's JSON bytes; ``event.payload()`` decodes it).

Event hooks (``on_message_received``, ``on_message_sent``, ``on_status_changed``,
``on_conversation_updated``, and ``on_event`` for every event of any type) are fed from
the event log behind a persisted cursor: **at least once**. After a crash, the events since the
last saved cursor position are dispatched again, so a hook with effects outside zaphub must be
idempotent per ``event.id`` (or per message, as ``autoreply`` claims each reply in storage).

Example::

    from core import hookimpl

    @hookimpl
    async def on_message_received(message, contact):
        print(f"{contact.name} wrote {message.body!r}")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import pluggy

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from core.cli_types import Command
    from core.config import Config, ConfigFinding
    from core.host import Host, MediaStream, ReadinessCheck
    from core.models import (
        Contact,
        Conversation,
        Event,
        Message,
        MessageChange,
        OutgoingMessage,
        Reply,
        StatusChange,
        Veto,
    )
    from core.sending import Channel, SendPolicy
    from core.server import DirectRoute

PROJECT = "zaphub"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------------------------


@hookspec
def config_schema() -> type[msgspec.Struct] | None:
    """Declare the schema of this plugin's section under ``plugins:``.

    Called once per plugin while the config is loaded, before the app exists. Return a
    ``msgspec.Struct`` subclass (use ``forbid_unknown_fields=True`` so typos are reported);
    the host validates the section against it and passes the instance as ``settings`` to
    every other hook of this plugin. Field names matching
    ``secret|token|password|passwd|private_key|api_key`` are redacted wherever config is printed.

    Returns:
        The Struct type, or ``None`` for a plugin without settings.
    """


@hookspec
def check_settings(settings: Any, config: Config) -> Sequence[ConfigFinding] | None:
    """Report what is valid but unsafe in this plugin's settings, or that it runs a sandbox.

    Called by ``zaphub check``, ``zaphub run`` and the app factory, after the settings were
    validated (sync only). A finding of kind ``"unsafe"`` (a published development secret, an
    empty token) stops ``check`` and ``run`` with exit 2 unless some plugin reports a
    ``"development"`` finding (it runs a sandbox, e.g. ``whatsapp.sandbox: true``); then it is a
    warning. Development findings are printed by ``check``, logged at startup and listed by
    ``GET /ready`` under ``warnings``.

    Returns:
        A list of :class:`core.config.ConfigFinding`.
    """


@hookspec
def register_routes(host: Host, settings: Any) -> Sequence[Any] | None:
    """Contribute Litestar route handlers, controllers, routers or ASGI mounts.

    Called once while the app is built (sync only). Mounts (``@asgi(path, is_mount=True)``) share
    the port: this is how Socket.IO is served.

    Returns:
        A list of anything ``Litestar(route_handlers=…)`` accepts.
    """


@hookspec
def register_direct_routes(host: Host, settings: Any) -> Sequence[DirectRoute] | None:
    """Contribute raw ASGI endpoints answered before Litestar, each for one exact method and path.

    Called once while the app is built (sync only). For an endpoint whose cost per request
    matters more than Litestar's conveniences (Meta's webhook ``POST``): the host dispatches the
    request straight to it, skipping Litestar's router, middleware, dependency injection and
    exception handlers. The host still applies what it promises for every route: the body timeout
    (``408``) and the JSON error envelope for an exception raised before the response started.
    Other methods on the same path are Litestar's (register a route there too for them); a path
    and method two plugins register stop startup.

    Returns:
        A list of :class:`core.server.DirectRoute`.
    """


@hookspec
def register_readiness_checks(host: Host, settings: Any) -> Sequence[ReadinessCheck] | None:
    """Contribute checks run by ``GET /ready``.

    Called once while the app is built. A check is ``(name, async fn)`` where the function
    returns ``None`` when healthy or a short reason string (``"access token expired (code 190)"``)
    that ``/ready`` reports with status 503.
    """


@hookspec
def register_commands() -> Sequence[Command] | None:
    """Contribute ``zaphub`` sub-commands (``zaphub sandbox``, ``zaphub simulate``).

    Called when the CLI starts, for every installed plugin (enabled or not), sync only.

    Returns:
        A list of :class:`core.cli.Command`.
    """


@hookspec
def on_startup(host: Host, settings: Any) -> Awaitable[None] | None:
    """The app is starting: storage is migrated and open, nothing is served yet.

    Start background work here with ``host.spawn(coro, name=…)``; spawned tasks are cancelled
    and awaited at shutdown. May be async. Like every hook, implementations run in pluggy's
    order: the plugin enabled last runs first; ``@hookimpl(tryfirst=True)`` pins one earlier.
    """


@hookspec
def on_shutdown(host: Host, settings: Any) -> Awaitable[None] | None:
    """The app is stopping: no new requests; close clients and flush. May be async."""


# ---------------------------------------------------------------------------------------------
# Inbound
# ---------------------------------------------------------------------------------------------


@hookspec
def on_message_received(
    host: Host, settings: Any, message: Message, conversation: Conversation, contact: Contact, event: Event
) -> Awaitable[None] | None:
    """An inbound message was stored for the first time (after commit).

    Whatever Meta repeats, the message is stored and logged once (``event``, a
    ``whatsapp:message``); the hook sees that event at least once (again after a crash that
    came before the dispatcher saved its cursor). ``conversation.last_inbound_at`` is already
    updated. May be async; slow work delays the hooks after it (never the webhook), so it
    belongs in a task of your own.
    """


@hookspec
def on_status_changed(
    host: Host,
    settings: Any,
    message: Message,
    conversation: Conversation,
    change: StatusChange,
    event: Event,
) -> Awaitable[None] | None:
    """A message's status moved forward (``sent`` → ``delivered`` → ``read``, or ``failed``).

    Stale and repeated statuses never fire it. ``change`` is the status of this event; ``message``
    is the message as stored when the hook runs (a redelivered event may see a later status).
    A ``failed`` change carries ``error_code`` and ``error_title``. ``event`` is its
    ``whatsapp:message_status`` row (at least once, see the module docstring). May be async.
    """


@hookspec
def on_message_changed(
    host: Host,
    settings: Any,
    message: Message,
    conversation: Conversation,
    change: MessageChange,
    event: Event,
) -> Awaitable[None] | None:
    """The contact edited or deleted a message, or reacted to one (after commit).

    ``change.kind`` is ``edited`` (``change.body`` is the new text), ``deleted`` (``message.body``
    is now ``None``) or ``reaction`` (``change.emoji``, ``None`` when removed, by
    ``change.reactor``). A change that arrived before its message fires once the message is
    stored, after its ``on_message_received``; repeated and superseded changes never fire it.
    ``event`` is its ``whatsapp:message_updated``, ``_deleted`` or ``_reaction`` row (at least
    once). May be async.
    """


@hookspec
def on_event(host: Host, settings: Any, event: Event) -> Awaitable[None] | None:
    """Any logged event, whatever its type, after the hook of its type (if any) returned.

    For plugins that forward events (``crm_realtime`` emits each to Socket.IO): every event of the
    log reaches it, at least once and in ``event.id`` order, including types added by later
    releases (``event.type`` names it; ``event.payload()`` is the contract payload). May be async;
    slow work delays every later event, so it belongs in a task of your own.
    """


# ---------------------------------------------------------------------------------------------
# Outbound
# ---------------------------------------------------------------------------------------------


@hookspec
def on_conversation_updated(
    host: Host, settings: Any, conversation: Conversation, event: Event
) -> Awaitable[None] | None:
    """A conversation's ``mode`` changed (``bot`` ↔ ``human``).

    Whoever made the change (an agent with ``PATCH /api/conversations/{id}``, an agent's manual
    reply with ``handoff.agent_reply_takes_over``, or the return to ``bot`` after
    ``handoff.return_to_bot_seconds`` without agent activity), it is logged once (``event``, a
    ``whatsapp:conversation_updated``) and the hook sees it at least once (see the module
    docstring). ``conversation`` is as stored when the hook runs, with ``mode`` as of this event.
    May be async.
    """


@hookspec
def on_before_send(
    host: Host, settings: Any, outgoing: OutgoingMessage, conversation: Conversation
) -> OutgoingMessage | Veto | Awaitable[OutgoingMessage | Veto | None] | None:
    """Inspect, change or veto a message before it is queued.

    Every sender goes through it: REST, autoreply, other plugins. Plugins run in turn, each
    seeing the message as the previous one left it. Return ``None`` to pass it on unchanged, a
    changed :class:`~core.models.OutgoingMessage` to replace it, or :class:`~core.models.Veto`
    to refuse it (the sender gets ``422 send_vetoed`` with the reason). May be async.
    """


@hookspec
def register_send_policies(host: Host, settings: Any) -> Sequence[SendPolicy] | None:
    """Contribute rules about what may be sent to a conversation now (a transport's window).

    Called once while the app is built (sync only). Every send consults every policy after
    ``on_before_send``: ``policy.refuse(outgoing, conversation)`` returns the ``ApiError`` the
    sender gets, or ``None``; ``policy.window_open(conversation)`` says whether any type may go now
    (REST's ``window_open``). The ``whatsapp`` plugin registers WhatsApp's 24-hour window.

    Returns:
        A list of :class:`core.sending.SendPolicy`.
    """


@hookspec
def register_channels(host: Host, settings: Any) -> Sequence[Channel] | None:
    """Contribute a transport's business numbers, recipient addresses and agent actions.

    Called once while the app is built (sync only). The send service uses them to start a
    conversation with someone who never wrote (``POST /api/messages``: which business number,
    how ``to`` is spelled) and for agent actions on a conversation (mark read, typing). The
    ``whatsapp`` plugin registers WhatsApp's.

    Returns:
        A list of :class:`core.sending.Channel`.
    """


@hookspec
def on_message_sent(
    host: Host, settings: Any, message: Message, conversation: Conversation, event: Event
) -> Awaitable[None] | None:
    """Graph accepted an outbound message (``message.wamid`` is now known).

    ``event`` is its ``whatsapp:message_sent`` row (at least once, see the module docstring).
    May be async.
    """


@hookspec(firstresult=True)
def media_for_message(host: Host, settings: Any, message: Message) -> Awaitable[MediaStream | None] | None:
    """Fetch the media bytes of an inbound media message (``firstresult``).

    The transport that received the message answers with a :class:`core.host.MediaStream`;
    others return ``None``. May be async.
    """


# ---------------------------------------------------------------------------------------------
# Autoreply
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def reply_for_message(
    host: Host, settings: Any, message: Message, conversation: Conversation, contact: Contact
) -> Reply | Awaitable[Reply | None] | None:
    """Compose the automated reply to an inbound message (``firstresult``): plug a bot in here.

    Called by the ``autoreply`` plugin only when an auto-reply is allowed (not a duplicate, not
    during cooldown or a human handoff, not a reaction, system or unsupported message). Media,
    location, contacts and order messages are asked too, with the caption (if any) in ``body``.
    The first plugin returning a :class:`~core.models.Reply` wins and ``autoreply``'s own rules
    are skipped; return ``None``
    to defer to the next plugin and finally to the rules. May be async (an LLM call): the host
    awaits each implementation before deciding whether to ask the next one.

    Example::

        @hookimpl
        async def reply_for_message(message):
            if message.body and "pedido" in message.body.lower():
                return Reply(text="Seu pedido está a caminho!", source="orders-bot")
            return None
    """
