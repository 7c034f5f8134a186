"""The payloads of zaphub's events, as the CRM contract spells them (docs/events.md).

Storage builds each payload once, in the transaction of the change it reports, and keeps it
encoded in the event log (:mod:`core.storage.events`); Socket.IO, the REST change feed and
outgoing webhooks all send those stored bytes. The builders live in core, not in a plugin,
because the log is core's.

Keys keep the seed's spelling exactly: camelCase at the top level (``conversationId``) and
snake_case inside ``message`` and ``contact`` (``sender_type``). Keys beyond the seed's
(``type``, ``wamid``, ``phoneNumberId``…) are additions the contract allows.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from core.models import Contact, Conversation, Event, Message, MessageChange, StatusChange, iso_z

__all__ = [
    "CHANGE_EVENT_TYPES",
    "EVENT_CONVERSATION",
    "EVENT_DELETED",
    "EVENT_MESSAGE",
    "EVENT_REACTION",
    "EVENT_SENT",
    "EVENT_STATUS",
    "EVENT_TYPES",
    "EVENT_UPDATED",
    "ConversationUpdatedEvent",
    "EventContact",
    "EventMessage",
    "FeedEvent",
    "MediaRef",
    "MessageDeletedEvent",
    "MessageEvent",
    "MessageReactionEvent",
    "MessageSentEvent",
    "MessageStatusEvent",
    "MessageUpdatedEvent",
    "StatusError",
    "conversation_updated_event",
    "encode_payload",
    "feed_event",
    "media_url",
    "message_change_event",
    "message_event",
    "message_sent_event",
    "message_status_event",
]

EVENT_MESSAGE = "whatsapp:message"
"""An inbound message was stored."""
EVENT_SENT = "whatsapp:message_sent"
"""Graph accepted an outbound message."""
EVENT_STATUS = "whatsapp:message_status"
"""A message's status moved forward (``failed`` included)."""

EVENT_CONVERSATION = "whatsapp:conversation_updated"
"""A conversation's mode changed (``bot`` ↔ ``human``)."""
EVENT_UPDATED = "whatsapp:message_updated"
"""The contact edited a message."""
EVENT_DELETED = "whatsapp:message_deleted"
"""The contact deleted a message for everyone."""
EVENT_REACTION = "whatsapp:message_reaction"
"""The contact reacted to a message, changed or removed their reaction."""

EVENT_TYPES: tuple[str, ...] = (
    EVENT_MESSAGE,
    EVENT_SENT,
    EVENT_STATUS,
    EVENT_CONVERSATION,
    EVENT_UPDATED,
    EVENT_DELETED,
    EVENT_REACTION,
)
"""Every event type the log holds (the ``types=`` filter accepts these)."""

_encoder = msgspec.json.Encoder()


def encode_payload(payload: msgspec.Struct) -> bytes:
    """The JSON bytes of a payload, as stored in the log and sent to clients."""
    return _encoder.encode(payload)


class MediaRef(msgspec.Struct, frozen=True):
    """Where a client downloads a message's media (``GET``, same bearer token)."""

    url: str
    mime_type: str | None


class StatusError(msgspec.Struct, frozen=True):
    """Why a message failed: Meta's error code and title."""

    code: int | None
    title: str | None


class EventMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """``message`` inside ``whatsapp:message`` and ``whatsapp:message_sent``."""

    id: int
    body: str | None
    sender_type: Literal["contact", "user"]
    delivered_at: str | None
    type: str
    media: MediaRef | None = None
    automated: bool = False
    wamid: str | None = None
    error: StatusError | None = None
    """Inbound content Meta could not deliver (``unsupported``): Meta's code and title."""


class EventContact(msgspec.Struct, frozen=True):
    """``contact`` inside ``whatsapp:message``."""

    id: int
    name: str | None
    phone_number: str


class MessageEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """``whatsapp:message``: an inbound message was stored."""

    conversation_id: int
    message: EventMessage
    contact: EventContact
    phone_number_id: str


class MessageSentEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """``whatsapp:message_sent``: Graph accepted an outbound message."""

    message_id: int
    conversation_id: int
    message: EventMessage
    # No defaults on the two constant keys: omit_defaults would leave them out.
    type: Literal["sent"]
    platform: Literal["whatsapp"]
    phone_number_id: str
    automated: bool = False


class MessageStatusEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """``whatsapp:message_status``: a message's status moved forward."""

    message_id: int
    status: str
    timestamp: str
    conversation_id: int
    error: StatusError | None = None


class ConversationUpdatedEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """``whatsapp:conversation_updated``: the conversation's mode changed."""

    conversation_id: int
    mode: Literal["bot", "human"]
    phone_number_id: str


class MessageUpdatedEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """``whatsapp:message_updated``: the contact edited a message; ``body`` is its new text."""

    message_id: int
    conversation_id: int
    body: str | None
    edited_at: str | None
    phone_number_id: str


class MessageDeletedEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """``whatsapp:message_deleted``: the contact deleted a message for everyone."""

    message_id: int
    conversation_id: int
    deleted_at: str | None
    phone_number_id: str


class MessageReactionEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """``whatsapp:message_reaction``: a reaction was set (``emoji``) or removed (``emoji: ""``)."""

    message_id: int
    conversation_id: int
    emoji: str
    from_: str = msgspec.field(name="from")
    """Who reacted: the contact's ``wa_id``."""
    at: str | None
    phone_number_id: str


def message_change_event(
    change: MessageChange, conversation: Conversation
) -> MessageUpdatedEvent | MessageDeletedEvent | MessageReactionEvent:
    """The payload of an edit, a deletion or a reaction applied to a stored message."""
    if change.kind == "edited":
        return MessageUpdatedEvent(
            message_id=change.message_id,
            conversation_id=conversation.id,
            body=change.body,
            edited_at=iso_z(change.at),
            phone_number_id=conversation.phone_number_id,
        )
    if change.kind == "deleted":
        return MessageDeletedEvent(
            message_id=change.message_id,
            conversation_id=conversation.id,
            deleted_at=iso_z(change.at),
            phone_number_id=conversation.phone_number_id,
        )
    return MessageReactionEvent(
        message_id=change.message_id,
        conversation_id=conversation.id,
        emoji=change.emoji or "",
        from_=change.reactor or "",
        at=iso_z(change.at),
        phone_number_id=conversation.phone_number_id,
    )


#: The event type of each kind of :class:`~core.models.MessageChange`.
CHANGE_EVENT_TYPES: dict[str, str] = {
    "edited": EVENT_UPDATED,
    "deleted": EVENT_DELETED,
    "reaction": EVENT_REACTION,
}


def media_url(public_url: str, message_id: int) -> str:
    """The REST URL serving a message's media bytes."""
    return f"{public_url}/api/messages/{message_id}/media"


def _event_message(message: Message, public_url: str) -> EventMessage:
    media = None
    if message.media_id is not None and message.is_inbound:
        media = MediaRef(media_url(public_url, message.id), message.media_mime_type)
    return EventMessage(
        id=message.id,
        body=message.body,
        sender_type=message.sender_type,
        delivered_at=iso_z(message.delivered_at),
        type=message.type,
        media=media,
        automated=message.automated,
        wamid=message.wamid,
        error=StatusError(message.error_code, message.error_title)
        if message.is_inbound and message.error_code is not None
        else None,
    )


def message_event(
    message: Message, conversation: Conversation, contact: Contact, public_url: str
) -> MessageEvent:
    """The ``whatsapp:message`` payload of a stored inbound message."""
    return MessageEvent(
        conversation_id=conversation.id,
        message=_event_message(message, public_url),
        contact=EventContact(contact.id, contact.name, contact.phone_number or contact.wa_id),
        phone_number_id=conversation.phone_number_id,
    )


def message_sent_event(message: Message, conversation: Conversation, public_url: str) -> MessageSentEvent:
    """The ``whatsapp:message_sent`` payload of a message Graph accepted."""
    return MessageSentEvent(
        message_id=message.id,
        conversation_id=conversation.id,
        message=_event_message(message, public_url),
        type="sent",
        platform="whatsapp",
        phone_number_id=conversation.phone_number_id,
        automated=message.automated,
    )


def message_status_event(change: StatusChange, conversation: Conversation) -> MessageStatusEvent:
    """The ``whatsapp:message_status`` payload of a status change (``error`` only for ``failed``)."""
    error = None
    if change.status == "failed":
        error = StatusError(change.error_code, change.error_title)
    return MessageStatusEvent(
        message_id=change.message_id,
        status=change.status,
        timestamp=change.timestamp,
        conversation_id=conversation.id,
        error=error,
    )


def conversation_updated_event(conversation: Conversation) -> ConversationUpdatedEvent:
    """The ``whatsapp:conversation_updated`` payload of a conversation whose mode just changed."""
    return ConversationUpdatedEvent(
        conversation_id=conversation.id,
        mode=conversation.mode,
        phone_number_id=conversation.phone_number_id,
    )


class FeedEvent(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One event as the outside world reads it from the log.

    An item of ``GET /api/events`` and the body of an outgoing webhook; ``data`` is the stored
    payload, sent as stored.
    """

    id: int
    type: str
    conversation_id: int | None
    phone_number_id: str | None
    created_at: str | None
    data: msgspec.Raw


def feed_event(event: Event) -> FeedEvent:
    """The outside shape of a stored event; its payload bytes are copied, never re-encoded."""
    return FeedEvent(
        id=event.id,
        type=event.type,
        conversation_id=event.conversation_id,
        phone_number_id=event.phone_number_id,
        created_at=iso_z(event.created_at),
        data=msgspec.Raw(event.data),
    )
