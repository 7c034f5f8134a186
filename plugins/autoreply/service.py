"""The auto-reply flow: which inbound messages get a reply, and sending it safely.

For each newly stored inbound message (``on_message_received`` fires once per message, whatever
Meta repeats), in this order:

1. **Eligibility**, inline in the hook and without I/O: the plugin is enabled; the message is
   inbound and of a type a person writes (:data:`ANSWERED_TYPES`; never reactions, system notices,
   unsupported or unknown types); it is at most ``max_message_age_seconds`` old by Meta's
   timestamp; the conversation is in ``bot`` mode (``conversation.mode``: not taken over by an
   agent, see ``core/handoff.py``). Everything
   else runs in a task, so the host's single event dispatcher (which also feeds Socket.IO) never
   waits for the database, a bot or a send.
2. **Compose**: the ``reply_for_message`` bots first (only when one is installed, and only after a
   cheap look at the cooldown spares them messages that could not be answered anyway), then the
   rules (:class:`~plugins.autoreply.rules.RuleEngine`). Nothing to say → nothing is claimed.
3. **Handoff, again**: the conversation is read afresh; an agent who took it over meanwhile (while
   a bot was thinking, say) wins and nothing is sent.
4. **Claim the cooldown** in storage (``state_claim``, atomic across processes): of all messages of
   a conversation within ``cooldown_seconds``, exactly one wins. A loser sends nothing.
5. **Send** through the core send service (``automated=True``, ``source="autoreply"``): the
   ``on_before_send`` plugins, the 24-hour window and the durable outbox apply as to any other send.

Ordering: the tasks of one conversation run one after the other, in commit order, so the first
message of a burst is the one answered and a bot is not asked again while it is still answering
the previous message. Across processes the claim alone decides; two processes may then both ask
their bots, but only one reply is sent.

Why compose before claiming: a claim marks "this conversation got its auto-reply", so spending it
on a message nothing answers would silence the next one that a rule does answer.

Once claimed, the claim stands even if the send is refused (a veto, a closed window, invalid bot
content): the failure is logged and counted, and the conversation is not retried on every further
message. A bot that raises, returns something that is not a :class:`~core.models.Reply`, or takes
longer than ``bot_timeout_seconds`` is isolated (logged, counted) and the rules answer instead.

Echoes cannot loop: replies are outbound messages, and neither outbound messages nor status
webhooks ever fire ``on_message_received``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from prometheus_client import Counter

from core.errors import ApiError
from core.models import Contact, Conversation, Event, Message, Reply, utcnow
from plugins.autoreply.rules import Decision, RuleEngine

if TYPE_CHECKING:
    from core.host import Host
    from plugins.autoreply.config import AutoreplySettings

__all__ = ["ANSWERED_TYPES", "PLUGIN", "AutoreplyService", "Planned"]

log = logging.getLogger("zaphub.autoreply")

PLUGIN = "autoreply"
"""Namespace of this plugin's rows in storage (``plugin_state``)."""

ANSWERED_TYPES = frozenset(
    {
        "text",
        "button",  # a quick-reply button tapped on a template
        "interactive",  # a button or list reply, a flow answer
        "image",
        "video",
        "document",
        "audio",
        "sticker",
        "location",
        "contacts",
        "order",
    }
)
"""Message types a person writes on purpose. Everything else is never answered: ``reaction``
(answering a 👍 is noise), ``system`` (a number change), ``unsupported`` (Meta could not deliver
the content), ``request_welcome`` and types Meta adds after this release. Rules read the text or
caption; media without a caption can still get the away reply or the greeting."""

SkipReason = Literal["disabled", "direction", "type", "too_old", "handoff", "cooldown", "no_reply"]


class Planned(msgspec.Struct, frozen=True, kw_only=True):
    """A reply about to be sent.

    Attributes:
        type: outbound type (``text``, ``template``, ``interactive`` …).
        content: the type-specific object, e.g. ``{"body": "Olá"}``.
        reason: ``rule``, ``away``, ``greeting`` or ``bot`` (the metrics label).
        composer: who composed it: ``autoreply`` or the bot's ``Reply.source``.
    """

    type: str
    content: dict[str, Any]
    reason: Literal["rule", "away", "greeting", "bot"]
    composer: str = PLUGIN


def _from_decision(decision: Decision) -> Planned:
    return Planned(type="text", content={"body": decision.reply}, reason=decision.reason)


def _from_reply(reply: object) -> Planned | str:
    """A bot's answer as a :class:`Planned`, or why it cannot be sent."""
    if not isinstance(reply, Reply):
        return f"reply_for_message must return core.models.Reply or None, got {type(reply).__name__}"
    if reply.type is not None:
        if reply.content is None:
            return f"Reply from {reply.source!r} has type {reply.type!r} but no content"
        return Planned(type=reply.type, content=reply.content, reason="bot", composer=reply.source)
    if reply.text is None or not reply.text.strip():
        return f"Reply from {reply.source!r} has neither text nor type/content"
    return Planned(type="text", content={"body": reply.text}, reason="bot", composer=reply.source)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _seconds_since(value: datetime | None, now: datetime) -> float | None:
    return None if value is None else (now - _aware(value)).total_seconds()


class AutoreplyService:
    """The decision flow of the module docstring, bound to one host. Built once at startup."""

    def __init__(self, host: Host, settings: AutoreplySettings) -> None:
        self.host = host
        self.settings = settings
        self.engine = RuleEngine(settings)
        registry = host.metrics.registry
        self.replies = Counter(
            "zaphub_autoreply_replies",
            "Auto-replies queued, by reason: rule, away, greeting, bot.",
            ["reason"],
            registry=registry,
        )
        self.skipped = Counter(
            "zaphub_autoreply_skipped",
            "Inbound messages left without an auto-reply, by reason: disabled, type, too_old, handoff, "
            "cooldown, no_reply, direction.",
            ["reason"],
            registry=registry,
        )
        self.failures = Counter(
            "zaphub_autoreply_failures",
            "Auto-replies that could not be sent, by reason: bot_timeout, bot_invalid, a send error code "
            "(window_closed, send_vetoed, validation_error, …) or error.",
            ["reason"],
            registry=registry,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._latest: dict[int, asyncio.Task[None]] = {}
        """The newest task of each conversation with one running; the next one waits for it."""

    # -- entry point ------------------------------------------------------------------------

    def on_message_received(
        self, message: Message, conversation: Conversation, contact: Contact, event: Event | None = None
    ) -> None:
        """Decide whether one newly stored inbound message may get an auto-reply; if so, start on it.

        Called from the host's event dispatcher, so it does no I/O: the rest runs in a task,
        after the previous task of the same conversation. The dispatcher holds its cursor before
        ``event`` until that task is done, so a crash in between hands the message over again.
        """
        reason = self.ineligible(message, conversation, utcnow())
        if reason is not None:
            self._skip(reason, message)
            return
        previous = self._latest.get(conversation.id)
        task = self.host.spawn(
            self._handle(previous, message, conversation, contact),
            name=f"autoreply-{message.id}",
        )
        self._latest[conversation.id] = task
        self._tasks.add(task)
        if event is not None:
            self.host.events.hold(event, task)

        def forget(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            if self._latest.get(conversation.id) is done:
                del self._latest[conversation.id]

        task.add_done_callback(forget)

    def ineligible(self, message: Message, conversation: Conversation, now: datetime) -> SkipReason | None:
        """Why ``message`` may not be auto-replied at all (checks without I/O), or ``None``."""
        settings = self.settings
        if not settings.enabled:
            return "disabled"
        if message.direction != "inbound":
            return "direction"
        if message.type not in ANSWERED_TYPES:
            return "type"
        age = _seconds_since(message.delivered_at or message.received_at, now)
        if age is not None and age > settings.max_message_age_seconds:
            return "too_old"
        if self._agent_owns(conversation):
            return "handoff"
        return None

    async def drain(self, seconds: float) -> None:
        """Wait (bounded) for replies being composed or queued, so a clean shutdown keeps them."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)

    # -- steps ------------------------------------------------------------------------------

    @staticmethod
    def _agent_owns(conversation: Conversation) -> bool:
        # One source of truth for the handoff: the conversation's mode (core/handoff.py).
        return conversation.mode == "human"

    def _has_bot(self) -> bool:
        return bool(self.host.pm.hook.reply_for_message.get_hookimpls())

    async def _decide(self, message: Message) -> Decision | None:
        # Business hours follow the customer's clock: Meta's timestamp, not when we got to it.
        when = _aware(message.delivered_at) if message.delivered_at is not None else utcnow()
        decision = self.engine.decide(message.body, now=when, first_message=False)
        if decision is None and self.settings.greeting is not None and await self._is_first(message):
            decision = self.engine.decide(message.body, now=when, first_message=True)
        return decision

    async def _is_first(self, message: Message) -> bool:
        # The conversation's oldest message, not "the only one": in a burst (an album) every
        # message is stored before the first hook runs, and only the first one opened it.
        oldest = await self.host.storage.list_messages(message.conversation_id, limit=1)
        return bool(oldest) and oldest[0].id == message.id

    async def _cooling_down(self, conversation_id: int, now: datetime) -> bool:
        """A read-only look at the cooldown (the claim itself comes later, atomically)."""
        found = await self.host.storage.state_get(PLUGIN, _cooldown_key(conversation_id))
        if found is None:
            return False
        since = _seconds_since(found[1], now)
        return since is not None and since < self.settings.cooldown_seconds

    async def _claim(self, conversation_id: int, message: Message, planned: Planned) -> bool:
        key = _cooldown_key(conversation_id)
        won = await self.host.storage.state_claim(
            PLUGIN,
            key,
            {"message_id": message.id, "reason": planned.reason, "composer": planned.composer},
            older_than=self.settings.cooldown_seconds,
        )
        if won:
            return True
        # A redelivered event (hooks are fed at least once): a crash may have come between this
        # message's claim and its send. The claim is still ours; the send's idempotency key
        # makes sure the reply is stored once.
        found = await self.host.storage.state_get(PLUGIN, key)
        return found is not None and isinstance(found[0], dict) and found[0].get("message_id") == message.id

    async def _handle(
        self,
        previous: asyncio.Task[None] | None,
        message: Message,
        conversation: Conversation,
        contact: Contact,
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own business
        try:
            await self._reply(message, conversation, contact)
        except Exception:  # storage trouble, a bug: one message's reply, never the host
            self.failures.labels(reason="error").inc()
            log.exception("message %s: the auto-reply failed", message.id)

    async def _reply(self, message: Message, conversation: Conversation, contact: Contact) -> None:
        planned: Planned | None = None
        if self._has_bot():
            if await self._cooling_down(conversation.id, utcnow()):
                self._skip("cooldown", message)
                return
            planned = await self._ask_bots(message, conversation, contact)
        if planned is None:
            decision = await self._decide(message)
            if decision is None:
                self._skip("no_reply", message)
                return
            planned = _from_decision(decision)
        fresh = await self.host.storage.get_conversation(conversation.id)
        if fresh is not None and self._agent_owns(fresh):
            self._skip("handoff", message)
            return
        if not await self._claim(conversation.id, message, planned):
            self._skip("cooldown", message)
            return
        await self._send(message, planned)

    async def _ask_bots(
        self, message: Message, conversation: Conversation, contact: Contact
    ) -> Planned | None:
        """The first bot's reply, or ``None`` to let the rules answer."""
        try:
            async with asyncio.timeout(self.settings.bot_timeout_seconds):
                reply = await self.host.hooks.first(
                    "reply_for_message",
                    host=self.host,
                    message=message,
                    conversation=conversation,
                    contact=contact,
                )
        except TimeoutError:
            self.failures.labels(reason="bot_timeout").inc()
            log.warning(
                "message %s: bots exceeded bot_timeout_seconds=%s; the rules answer instead",
                message.id,
                self.settings.bot_timeout_seconds,
            )
            return None
        except ApiError as exc:  # HookRunner lets deliberate client errors through; here they are bugs
            self.failures.labels(reason="bot_invalid").inc()
            log.error(
                "message %s: a reply_for_message bot raised %s; the rules answer instead", message.id, exc
            )
            return None
        if reply is None:
            return None
        planned = _from_reply(reply)
        if isinstance(planned, str):
            self.failures.labels(reason="bot_invalid").inc()
            log.error("message %s: %s; the rules answer instead", message.id, planned)
            return None
        return planned

    async def _send(self, message: Message, planned: Planned) -> None:
        try:
            # Hooks are fed at least once: after a crash this message may come again, perhaps
            # after the cooldown ran out. The key makes its reply one stored send, whatever happens.
            sent, created = await self.host.sender.send(
                message.conversation_id,
                planned.type,
                planned.content,
                automated=True,
                source=PLUGIN,
                idempotency_key=f"reply-to:{message.id}",
                idempotency_scope=PLUGIN,
            )
        except ApiError as exc:
            # Refused (window closed, vetoed, invalid content): the claim stays, see the module docstring.
            self.failures.labels(reason=exc.code).inc()
            log.warning(
                "message %s: the %s auto-reply (from %s) was refused: %s",
                message.id,
                planned.reason,
                planned.composer,
                exc.message,
            )
            return
        if not created:
            log.info("message %s: already answered by message %s (a redelivered event)", message.id, sent.id)
            return
        self.replies.labels(reason=planned.reason).inc()
        log.info(
            "message %s: auto-reply %s queued as message %s (%s, from %s)",
            message.id,
            planned.type,
            sent.id,
            planned.reason,
            planned.composer,
        )

    # -- plumbing ---------------------------------------------------------------------------

    def _skip(self, reason: SkipReason, message: Message) -> None:
        self.skipped.labels(reason=reason).inc()
        log.debug("message %s (%s): no auto-reply (%s)", message.id, message.type, reason)


def _cooldown_key(conversation_id: int) -> str:
    return f"cooldown:{conversation_id}"
