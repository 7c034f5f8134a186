"""The one send service: REST, autoreply and plugins all send through it.

``send`` runs ``on_before_send`` (plugins inspect, change or veto; the transport validates the
content there), asks every :class:`SendPolicy` a transport registered whether the message may go
now (WhatsApp's is its 24-hour customer-service window), and stores the message with its outbox
row in one transaction. It returns once the send is durable; a transport plugin's worker delivers
it, woken by the listeners registered with :meth:`SendService.on_queued`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from core.errors import ApiError, ConflictError, NotFoundError
from core.models import Conversation, Message, OutgoingMessage

if TYPE_CHECKING:
    from core.host import Host

__all__ = ["SendPolicy", "SendService"]

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


class SendService:
    """Queue outbound messages durably; see the module docstring."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.policies: list[SendPolicy] = []
        """Collected from ``register_send_policies`` when the app is built."""
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
                conversation as handled by an agent.
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
        message, created = await storage.queue_outbound(
            conversation, contact.wa_id, outgoing, idempotency=idempotency
        )
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
