"""The one send service: REST, autoreply and plugins all send through it.

``send`` runs ``on_before_send`` (plugins inspect, change or veto; the transport validates the
content there), asks every :class:`SendPolicy` a transport registered whether the message may go
now (WhatsApp's is its 24-hour customer-service window), and stores the message with its outbox
row in one transaction. It returns once the send is durable; a transport plugin's worker delivers
it, woken by the listeners registered with :meth:`SendService.on_queued`.

A transport also registers a :class:`Channel` (``register_channels``): the business numbers it
serves, how it spells a recipient, and the agent actions (read receipts, typing). With it,
:meth:`SendService.start` opens a conversation with someone who never wrote, and
:meth:`SendService.mark_read` / :meth:`SendService.typing` act on a conversation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from core.errors import ApiError, ConflictError, ForbiddenError, NotFoundError, ValidationFailed
from core.models import Conversation, Message, OutgoingMessage, utcnow

if TYPE_CHECKING:
    from core.host import Host
    from core.storage import ModeEvent

__all__ = ["Channel", "SendPolicy", "SendService"]

_encoder = msgspec.json.Encoder(order="sorted")


class SendPolicy(Protocol):
    """A transport's rule about what may be sent to a conversation now.

    Registered with the ``register_send_policies`` hook; the ``whatsapp`` plugin's is the 24-hour
    customer-service window (``plugins/whatsapp/window.py``).
    """

    def refuse(self, outgoing: OutgoingMessage, conversation: Conversation) -> ApiError | None:
        """The error the sender gets when ``outgoing`` may not be queued now, else ``None``."""

    def window_open(self, conversation: Conversation) -> bool:
        """Whether a message of any type may be sent to ``conversation`` now."""


class Channel(Protocol):
    """A transport's business numbers, recipient addresses and agent actions.

    Registered with the ``register_channels`` hook; the ``whatsapp`` plugin's is
    ``plugins/whatsapp/channel.py``. Example (a transport serving one number)::

        class SmsChannel:
            def numbers(self) -> frozenset[str]:
                return frozenset({"sms-1"})

            def recipient(self, to: str) -> str:
                return to.lstrip("+")

            async def mark_read(self, conversation, message): ...
            async def typing(self, conversation, message): ...
    """

    def numbers(self) -> frozenset[str]:
        """The business numbers it serves; empty when it serves whatever number it receives."""

    def recipient(self, to: str) -> str:
        """The contact address for ``to`` as a person types it (``+55 11 99999-9999``).

        Raises:
            ValidationFailed: ``to`` is not an address of this transport (the message says why).
        """

    async def mark_read(self, conversation: Conversation, message: Message) -> None:
        """Tell the contact their inbound ``message`` was read (WhatsApp: blue ticks).

        Raises:
            UpstreamError: the transport refused or did not answer.
        """

    async def typing(self, conversation: Conversation, message: Message) -> None:
        """Show the contact that an agent is typing a reply to their inbound ``message``.

        Raises:
            UpstreamError: the transport refused or did not answer.
        """


class SendService:
    """Queue outbound messages durably; see the module docstring."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.policies: list[SendPolicy] = []
        """Collected from ``register_send_policies`` when the app is built."""
        self.channels: list[Channel] = []
        """Collected from ``register_channels`` when the app is built."""
        self._queued_listeners: list[Callable[[], None]] = []

    def on_queued(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after each newly queued message, so a worker wakes without polling.

        The listener runs inside :meth:`send`: it must be quick and must not raise (setting an
        ``asyncio.Event`` is the intended use). Other processes' sends are not announced here.
        """
        self._queued_listeners.append(listener)

    def window_open(self, conversation: Conversation) -> bool:
        """Whether every registered policy lets a message of any type go to ``conversation`` now."""
        return all(policy.window_open(conversation) for policy in self.policies)

    async def send(
        self,
        conversation_id: int,
        type_: str,
        content: dict[str, Any],
        *,
        automated: bool = False,
        source: str = "api",
        context_wamid: str | None = None,
        idempotency_key: str | None = None,
        idempotency_scope: str = "",
    ) -> tuple[Message, bool]:
        """Queue a message to a conversation's contact.

        Args:
            conversation_id: zaphub's conversation id.
            type_: ``text``, ``template``, ``image``, … (the transport validates ``content``).
            content: the type-specific object, e.g. ``{"body": "Olá!"}`` for text.
            automated: set by bots and auto-replies; a human send (``False``) marks the
                conversation as handled by an agent (and switches it to ``human`` mode with
                ``handoff.agent_reply_takes_over``).
            source: who sends, for logs and plugins (``api``, ``autoreply``, a plugin name).
            context_wamid: reply to this message (quoted in WhatsApp).
            idempotency_key: a repeated key returns the first message instead of sending twice.
            idempotency_scope: namespace of the key (the caller's identity).

        Returns:
            The stored message (status ``queued``) and whether it was created by this call.

        Raises:
            NotFoundError: no such conversation.
            ApiError: a policy refused it, e.g. ``WindowClosedError`` (WhatsApp: a free-form
                message more than 24 hours after the contact last wrote).
            SendVetoed: a plugin refused it.
            ValidationFailed: the content is not valid for its type.
        """
        storage = self.host.storage
        conversation = await storage.get_conversation(conversation_id)
        if conversation is None:
            raise NotFoundError(f"conversation {conversation_id} does not exist")
        contact = await storage.get_contact(conversation.contact_id)
        if contact is None:  # pragma: no cover - foreign key guarantees it
            raise NotFoundError(f"contact of conversation {conversation_id} does not exist")
        outgoing = OutgoingMessage(
            conversation_id=conversation_id,
            type=type_,
            content=content,
            body=content.get("body") if type_ == "text" else None,
            automated=automated,
            source=source,
            context_wamid=context_wamid,
        )
        outgoing = await self.host.hooks.before_send(outgoing, host=self.host, conversation=conversation)
        for policy in self.policies:
            refusal = policy.refuse(outgoing, conversation)
            if refusal is not None:
                raise refusal
        idempotency = None
        if idempotency_key:
            digest = hashlib.sha256(
                _encoder.encode([conversation_id, type_, content, context_wamid])
            ).hexdigest()
            idempotency = (idempotency_scope, idempotency_key, digest)
        took_over: list[ModeEvent] | None = [] if self.host.config.handoff.agent_reply_takes_over else None
        message, created = await storage.queue_outbound(
            conversation, contact.wa_id, outgoing, idempotency=idempotency, took_over=took_over
        )
        for change in took_over or ():
            self.host.events.conversation_updated(change)
        if created:
            self.host.metrics.outbound.labels(outcome="queued").inc()
            for listener in self._queued_listeners:
                listener()
        return message, created

    async def retry(self, message_id: int) -> Message:
        """Queue a ``failed`` outbound message again, with a fresh retry window.

        The send policies are asked again (a free-form message outside WhatsApp's 24-hour window
        would only fail again); ``on_before_send`` is not: the content was accepted when queued.

        Returns:
            The message, back in status ``queued``.

        Raises:
            NotFoundError: no such message.
            ConflictError: it is inbound, or not in ``failed`` (its status is named).
            ApiError: a policy refuses it now, e.g. ``WindowClosedError``.
        """
        storage = self.host.storage
        message = await storage.get_message(message_id)
        if message is None:
            raise NotFoundError(f"message {message_id} does not exist")
        if message.direction != "outbound":
            raise ConflictError(
                f"message {message_id} was received, not sent: only a failed send can be retried"
            )
        if message.status != "failed":
            raise ConflictError(
                f"message {message_id} is {message.status}, not failed: only a failed send can be retried"
            )
        conversation = await storage.get_conversation(message.conversation_id)
        if conversation is None:  # pragma: no cover - foreign key guarantees it
            raise NotFoundError(f"conversation of message {message_id} does not exist")
        outgoing = OutgoingMessage(
            conversation_id=conversation.id,
            type=message.type,
            content=message.content or {},
            body=message.body,
            automated=message.automated,
            source="retry",
            context_wamid=message.context_wamid,
        )
        for policy in self.policies:
            refusal = policy.refuse(outgoing, conversation)
            if refusal is not None:
                raise refusal
        requeued = await storage.outbox_requeue(message_id)
        if requeued is None:
            raise ConflictError(f"message {message_id} is no longer failed: it was retried meanwhile")
        self.host.metrics.outbound.labels(outcome="requeued").inc()
        for listener in self._queued_listeners:
            listener()
        return requeued

    def channel_for(self, phone_number_id: str) -> Channel | None:
        """The channel serving ``phone_number_id``: the one naming it, else one serving any number."""
        for channel in self.channels:
            if phone_number_id in channel.numbers():
                return channel
        return next((c for c in self.channels if not c.numbers()), None)

    def business_number(self, phone_number_id: str | None, allowed: frozenset[str] | None) -> str:
        """The business number a new conversation starts from.

        Args:
            phone_number_id: the one the caller named, if any.
            allowed: the numbers the caller may use (``None``: all).

        Raises:
            ValidationFailed: none named and none or several are served (the message lists them),
                or the named one is not served.
            ForbiddenError: ``allowed`` does not include it.
        """
        served = frozenset().union(*(c.numbers() for c in self.channels))
        any_number = any(not c.numbers() for c in self.channels)
        if phone_number_id is not None:
            if phone_number_id not in served and not any_number:
                raise ValidationFailed(
                    f"phoneNumberId: {phone_number_id} is not a business number of this server; "
                    f"use one of: {', '.join(sorted(served)) or '(none configured)'}"
                )
            if allowed is not None and phone_number_id not in allowed:
                raise ForbiddenError(
                    f"business number {phone_number_id} is not in your token's scope; "
                    f"use one of: {', '.join(sorted(allowed)) or '(none)'}"
                )
            return phone_number_id
        candidates = served if allowed is None else served & allowed
        if len(candidates) == 1:
            return next(iter(candidates))
        if not candidates and allowed is not None and served:
            raise ForbiddenError(
                f"your token's scope includes none of this server's business numbers "
                f"({', '.join(sorted(served))})"
            )
        raise ValidationFailed(
            "phoneNumberId is required: "
            + (
                f"this server serves several business numbers ({', '.join(sorted(candidates))})"
                if candidates
                else "this server has no configured business number to start from"
            )
        )

    async def start(
        self,
        phone_number_id: str,
        to: str,
        type_: str,
        content: dict[str, Any],
        *,
        source: str = "api",
        idempotency_key: str | None = None,
        idempotency_scope: str = "",
    ) -> tuple[Message, bool]:
        """Send to someone who may never have written: contact and conversation are made as needed.

        The policies are asked first, against the conversation as it is (or would be), so a
        refused start (WhatsApp: a free-form message with no open window) stores nothing.

        Args:
            phone_number_id: the business number to send from (see :meth:`business_number`).
            to: the recipient as typed (``+55 11 99999-9999``); the channel normalizes it.
            type_: as for :meth:`send`.
            content: as for :meth:`send`.
            source: as for :meth:`send`.
            idempotency_key: as for :meth:`send`.
            idempotency_scope: as for :meth:`send`.

        Returns:
            As :meth:`send`.

        Raises:
            ValidationFailed: no channel serves the number, or ``to`` is not an address.
            ApiError: as for :meth:`send`.
        """
        channel = self.channel_for(phone_number_id)
        if channel is None:
            raise ValidationFailed(f"phoneNumberId: no transport serves business number {phone_number_id}")
        recipient = channel.recipient(to)
        storage = self.host.storage
        conversation = await storage.find_conversation(phone_number_id, recipient)
        if conversation is None:
            # Not stored yet: the policies judge a conversation nobody has written in.
            probe = Conversation(id=0, phone_number_id=phone_number_id, contact_id=0, created_at=utcnow())
            outgoing = OutgoingMessage(conversation_id=0, type=type_, content=content, source=source)
            for policy in self.policies:
                refusal = policy.refuse(outgoing, probe)
                if refusal is not None:
                    raise refusal
            conversation = await storage.ensure_conversation(phone_number_id, recipient)
        return await self.send(
            conversation.id,
            type_,
            content,
            source=source,
            idempotency_key=idempotency_key,
            idempotency_scope=idempotency_scope,
        )

    async def _agent_action(self, conversation: Conversation, action: str) -> Message:
        channel = self.channel_for(conversation.phone_number_id)
        if channel is None:
            raise ApiError(
                f"no transport serves business number {conversation.phone_number_id}",
                code="unsupported",
                status_code=422,
            )
        message = await self.host.storage.last_inbound_message(conversation.id)
        if message is None:
            raise ApiError(
                f"conversation {conversation.id} has no inbound message to {action}",
                code="nothing_to_acknowledge",
                status_code=409,
            )
        if action == "mark read":
            await channel.mark_read(conversation, message)
        else:
            await channel.typing(conversation, message)
        return message

    async def mark_read(self, conversation: Conversation) -> Message:
        """Mark the contact's last inbound message read at the transport; returns that message.

        Raises:
            ApiError: ``409 nothing_to_acknowledge`` when the contact never wrote.
            UpstreamError: the transport refused or did not answer.
        """
        return await self._agent_action(conversation, "mark read")

    async def typing(self, conversation: Conversation) -> Message:
        """Show the contact that an agent is typing; returns the inbound message it answers.

        Raises:
            ApiError: ``409 nothing_to_acknowledge`` when the contact never wrote.
            UpstreamError: the transport refused or did not answer.
        """
        return await self._agent_action(conversation, "show typing for")
