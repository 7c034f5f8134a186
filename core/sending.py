"""The one send service: REST, autoreply and plugins all send through it.

``send`` runs ``on_before_send`` (plugins inspect, change or veto; the transport validates the
content there), enforces WhatsApp's 24-hour customer-service window, and stores the message with
its outbox row in one transaction. It returns once the send is durable; a transport plugin's
worker delivers it (``host.outbox_wakeup`` tells the worker there is work).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import msgspec

from core.errors import NotFoundError, WindowClosedError
from core.models import Message, OutgoingMessage, iso_z

if TYPE_CHECKING:
    from core.host import Host

__all__ = ["TEMPLATE_TYPES", "SendService"]

#: Types WhatsApp allows outside the 24-hour window (approved templates only).
TEMPLATE_TYPES = frozenset({"template"})

_encoder = msgspec.json.Encoder(order="sorted")


class SendService:
    """Queue outbound messages durably; see the module docstring."""

    def __init__(self, host: Host) -> None:
        self.host = host

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
            WindowClosedError: a free-form message more than 24 hours after the contact last wrote.
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
        if outgoing.type not in TEMPLATE_TYPES and not conversation.window_open():
            last = iso_z(conversation.last_inbound_at) or "never"
            raise WindowClosedError(
                f"conversation {conversation_id}: the contact last wrote at {last}, more than 24 hours ago; "
                'outside that window WhatsApp only delivers approved templates: send {"type": "template", '
                '"name": …, "language": …}'
            )
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
            self.host.outbox_wakeup.set()
        return message, created
