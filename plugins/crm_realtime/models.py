"""Wire payloads of the CRM contract: REST bodies as msgspec Structs.

REST bodies use snake_case, except the send answer, which the contract spells in camelCase.

The send bodies' constrained fields (text length, caption, file name, media link) are the types
of :mod:`plugins.whatsapp.send_rules`, the one home of Meta's send rules: the REST contract is a
WhatsApp send, so this plugin depends on that public module (which imports nothing but msgspec)
rather than repeating its limits. The whole content is checked again by the transport's
``on_before_send``, whatever sent it.

The Socket.IO event payloads are core's (:mod:`core.event_payloads`): storage writes them into
the event log in the transaction of each change; they are re-exported here for existing imports.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from core.event_payloads import (
    ConversationUpdatedEvent,
    EventContact,
    EventMessage,
    FeedEvent,
    MediaRef,
    MessageEvent,
    MessageSentEvent,
    MessageStatusEvent,
    StatusError,
    feed_event,
    media_url,
    message_event,
    message_sent_event,
    message_status_event,
)
from core.models import Contact, Conversation, Event, Message, Reaction, iso_z
from plugins.whatsapp import send_rules

__all__ = [
    "AgentActionDone",
    "ApiContact",
    "ApiConversation",
    "ApiMessage",
    "ApiMessageDetail",
    "ApiReaction",
    "ApiStatus",
    "AudioSend",
    "AudioStart",
    "ContactPage",
    "ConversationPage",
    "ConversationPatch",
    "ConversationUpdatedEvent",
    "DocumentSend",
    "DocumentStart",
    "ErrorBody",
    "ErrorDetail",
    "EventContact",
    "EventMessage",
    "EventPage",
    "EventPageDoc",
    "FeedEvent",
    "FeedEventDoc",
    "ImageSend",
    "ImageStart",
    "MediaRef",
    "MessageEvent",
    "MessagePage",
    "MessageSentEvent",
    "MessageStatusEvent",
    "SendAccepted",
    "SendBody",
    "StartBody",
    "StatusError",
    "TemplateSend",
    "TemplateStart",
    "TextSend",
    "TextStart",
    "VideoSend",
    "VideoStart",
    "api_contact",
    "api_conversation",
    "api_message",
    "api_message_detail",
    "encode_event_page",
    "media_url",
    "message_event",
    "message_sent_event",
    "message_status_event",
    "send_content",
]


# ---------------------------------------------------------------------------------------------
# REST
# ---------------------------------------------------------------------------------------------


class ErrorDetail(msgspec.Struct, frozen=True):
    """What went wrong: a stable machine ``code`` and a message naming the fix."""

    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    """Every error answer: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class ApiContact(msgspec.Struct, frozen=True, kw_only=True):
    """A WhatsApp user."""

    id: int
    name: str | None
    """The WhatsApp profile name (``null`` when Meta sent none)."""
    phone_number: str
    wa_id: str


class ApiReaction(msgspec.Struct, frozen=True, kw_only=True):
    """A contact's reaction to a message (one per contact; the newest replaces the older)."""

    emoji: str
    from_: str = msgspec.field(name="from")
    """Who reacted: the contact's ``wa_id``."""
    at: str | None
    """When (Meta's time of the reaction)."""


class ApiMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message, inbound (``sender_type: contact``) or outbound (``user``)."""

    id: int
    conversation_id: int
    phone_number_id: str
    direction: Literal["inbound", "outbound"]
    sender_type: Literal["contact", "user"]
    type: str
    body: str | None
    """Text; for other types the caption, reply title or emoji; else ``null``."""
    status: str
    """Inbound: ``received``. Outbound: ``queued``, ``accepted``, ``sent``, ``delivered``, ``read`` or
    ``failed``."""
    delivered_at: str | None
    """Inbound: Meta's timestamp. Outbound: when Graph accepted it (``null`` while queued)."""
    received_at: str | None
    """When zaphub stored it."""
    automated: bool
    wamid: str | None
    context_wamid: str | None
    """The wamid this message replies to."""
    media: MediaRef | None
    error: StatusError | None
    """A failed send, or inbound content Meta could not deliver (``unsupported``): Meta's code and title."""
    edited_at: str | None
    """When the contact last edited the message (``body`` is the new text), else ``null``."""
    deleted_at: str | None
    """When the contact deleted the message; ``body`` is then ``null``."""
    reactions: list[ApiReaction]
    """Current reactions, one per contact."""


class ApiStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One status webhook received for a message (stale ones included)."""

    status: str
    timestamp: str
    """Meta's timestamp: a string of Unix seconds."""
    received_at: str | None
    error: StatusError | None


class ApiMessageDetail(ApiMessage, frozen=True, kw_only=True):
    """A message with its status history and its full content."""

    statuses: list[ApiStatus]
    content: dict[str, Any] | None
    """Outbound: the object sent to Graph for its type."""
    raw: dict[str, Any] | None
    """Inbound: Meta's message object exactly as received."""


class ApiConversation(msgspec.Struct, frozen=True, kw_only=True):
    """One conversation: a contact with one business number."""

    id: int
    phone_number_id: str
    contact: ApiContact
    last_message: ApiMessage | None
    created_at: str | None
    last_message_at: str | None
    last_inbound_at: str | None
    window_open: bool
    """Whether free-form messages are allowed (the contact wrote within 24 hours); else templates only."""
    mode: Literal["bot", "human"]
    """``bot``: auto-replies may answer; ``human``: an agent owns the conversation, bots stay silent."""


class ConversationPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of conversations, newest activity first."""

    conversations: list[ApiConversation]
    next_before: str | None
    """Pass as ``before`` for the next page; ``null`` on the last page."""


class MessagePage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of messages, oldest first."""

    messages: list[ApiMessage]
    next_after_id: int | None
    """Pass as ``after_id`` for the next page; ``null`` when there is nothing more right now."""


class SendAccepted(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """``202``: the message is stored in the outbox and will be sent."""

    message_id: int
    conversation_id: int
    status: Literal["queued"]


class _Send(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="type",
    omit_defaults=True,
):
    reply_to: int | None = None
    """zaphub id of a message of this conversation to quote (WhatsApp shows it as a reply)."""


class TextSend(_Send, frozen=True, kw_only=True, tag="text"):
    """``{"type": "text", "body": "Olá!"}`` (inside the 24-hour window)."""

    body: send_rules.TextBody
    preview_url: bool | None = None


class TemplateSend(_Send, frozen=True, kw_only=True, tag="template"):
    """An approved template (the only type allowed outside the 24-hour window)."""

    name: send_rules.TemplateName
    language: send_rules.NonBlank | dict[str, Any]
    """``"pt_BR"`` or ``{"code": "pt_BR"}``."""
    components: list[dict[str, Any]] | None = None
    """Meta's template components (header, body, button parameters)."""


class _MediaSend(_Send, frozen=True, kw_only=True):
    link: send_rules.MediaLink | None = None
    """A public http(s) URL Meta downloads the media from."""
    media_id: send_rules.MediaId | None = None
    """An id from Graph's media upload. Exactly one of ``link`` and ``media_id``."""


class ImageSend(_MediaSend, frozen=True, kw_only=True, tag="image"):
    """An image with an optional caption."""

    caption: send_rules.Caption | None = None


class VideoSend(_MediaSend, frozen=True, kw_only=True, tag="video"):
    """A video with an optional caption."""

    caption: send_rules.Caption | None = None


class DocumentSend(_MediaSend, frozen=True, kw_only=True, tag="document"):
    """A document with an optional caption and file name."""

    caption: send_rules.Caption | None = None
    filename: send_rules.Filename | None = None


class AudioSend(_MediaSend, frozen=True, kw_only=True, tag="audio"):
    """An audio file (no caption)."""


SendBody = TextSend | TemplateSend | ImageSend | VideoSend | DocumentSend | AudioSend
"""The body of ``POST /api/conversations/{id}/messages``, chosen by ``type``."""


# Starting a conversation: a send body plus whom to and from which number. One subclass per type,
# so the same rules (send_rules) validate both bodies.
class TextStart(TextSend, frozen=True, kw_only=True, tag="text"):
    """``{"to": "+5511999999999", "type": "text", "body": …}`` (only inside an open window)."""

    to: str
    """The recipient in international format: ``+5511999999999`` (spaces and dashes allowed)."""
    phone_number_id: str | None = msgspec.field(default=None, name="phoneNumberId")
    """The business number to send from; required when the server serves several."""


class TemplateStart(TemplateSend, frozen=True, kw_only=True, tag="template"):
    """``{"to": "+5511999999999", "type": "template", "name": …, "language": …}``."""

    to: str
    """The recipient in international format: ``+5511999999999`` (spaces and dashes allowed)."""
    phone_number_id: str | None = msgspec.field(default=None, name="phoneNumberId")
    """The business number to send from; required when the server serves several."""


class ImageStart(ImageSend, frozen=True, kw_only=True, tag="image"):
    """An image to a number (only inside an open window)."""

    to: str
    """The recipient in international format."""
    phone_number_id: str | None = msgspec.field(default=None, name="phoneNumberId")
    """The business number to send from; required when the server serves several."""


class VideoStart(VideoSend, frozen=True, kw_only=True, tag="video"):
    """A video to a number (only inside an open window)."""

    to: str
    """The recipient in international format."""
    phone_number_id: str | None = msgspec.field(default=None, name="phoneNumberId")
    """The business number to send from; required when the server serves several."""


class DocumentStart(DocumentSend, frozen=True, kw_only=True, tag="document"):
    """A document to a number (only inside an open window)."""

    to: str
    """The recipient in international format."""
    phone_number_id: str | None = msgspec.field(default=None, name="phoneNumberId")
    """The business number to send from; required when the server serves several."""


class AudioStart(AudioSend, frozen=True, kw_only=True, tag="audio"):
    """An audio file to a number (only inside an open window)."""

    to: str
    """The recipient in international format."""
    phone_number_id: str | None = msgspec.field(default=None, name="phoneNumberId")
    """The business number to send from; required when the server serves several."""


StartBody = TextStart | TemplateStart | ImageStart | VideoStart | DocumentStart | AudioStart
"""The body of ``POST /api/messages``: a send body with ``to`` and, optionally, ``phoneNumberId``."""


class ConversationPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PATCH /api/conversations/{id}``: what an agent may change."""

    mode: str
    """``bot`` (auto-replies may answer) or ``human`` (an agent owns the conversation)."""


class ContactPage(msgspec.Struct, frozen=True, kw_only=True):
    """Contacts matching a search, by name."""

    contacts: list[ApiContact]


class AgentActionDone(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A read receipt or typing indicator went to the contact."""

    conversation_id: int
    message_id: int
    """The contact's last inbound message, which the action acknowledged."""


def send_content(body: SendBody | StartBody) -> dict[str, Any]:
    """The type-specific content handed to the send service (type, reply_to, to, number removed)."""
    content = msgspec.to_builtins(body)
    for key in ("type", "reply_to", "to", "phoneNumberId"):
        content.pop(key, None)
    return content  # type: ignore[no-any-return]  # to_builtins of a Struct is a dict


def api_contact(contact: Contact) -> ApiContact:
    """A contact as REST shows it."""
    return ApiContact(
        id=contact.id,
        name=contact.name,
        phone_number=contact.phone_number or contact.wa_id,
        wa_id=contact.wa_id,
    )


def _api_message_fields(message: Message, public_url: str, reactions: list[Reaction]) -> dict[str, Any]:
    media = None
    if message.media_id is not None and message.is_inbound:
        media = MediaRef(media_url(public_url, message.id), message.media_mime_type)
    error = None
    if message.status == "failed" or (message.is_inbound and message.error_code is not None):
        # A failed send, or content Meta could not deliver to us (an ``unsupported`` message).
        error = StatusError(message.error_code, message.error_title)
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "phone_number_id": message.phone_number_id,
        "direction": message.direction,
        "sender_type": message.sender_type,
        "type": message.type,
        "body": message.body,
        "status": message.status,
        "delivered_at": iso_z(message.delivered_at),
        "received_at": iso_z(message.received_at),
        "automated": message.automated,
        "wamid": message.wamid,
        "context_wamid": message.context_wamid,
        "media": media,
        "error": error,
        "edited_at": iso_z(message.edited_at),
        "deleted_at": iso_z(message.deleted_at),
        "reactions": [ApiReaction(emoji=r.emoji, from_=r.reactor, at=iso_z(r.at)) for r in reactions],
    }


def api_message(message: Message, public_url: str, reactions: list[Reaction] | None = None) -> ApiMessage:
    """A message as REST lists it (``reactions``: ``Storage.reactions`` of it)."""
    return ApiMessage(**_api_message_fields(message, public_url, reactions or []))


def api_message_detail(
    message: Message,
    history: list[dict[str, Any]],
    public_url: str,
    reactions: list[Reaction] | None = None,
) -> ApiMessageDetail:
    """A message with its status history (rows of ``Storage.status_history``)."""
    statuses = [
        ApiStatus(
            status=row["status"],
            timestamp=row["timestamp"],
            received_at=iso_z(row.get("received_at")),
            error=StatusError(row.get("error_code"), row.get("error_title"))
            if row["status"] == "failed"
            else None,
        )
        for row in history
    ]
    return ApiMessageDetail(
        **_api_message_fields(message, public_url, reactions or []),
        statuses=statuses,
        content=message.content,
        raw=message.raw,
    )


def api_conversation(
    conversation: Conversation,
    contact: Contact,
    last_message: Message | None,
    public_url: str,
    *,
    window_open: bool,
    reactions: list[Reaction] | None = None,
) -> ApiConversation:
    """A conversation with its contact and last message.

    ``window_open`` is the send service's answer (``host.sender.window_open``): the transport
    knows its window (WhatsApp: 24 hours after the contact last wrote).
    """
    return ApiConversation(
        id=conversation.id,
        phone_number_id=conversation.phone_number_id,
        contact=api_contact(contact),
        last_message=api_message(last_message, public_url, reactions) if last_message is not None else None,
        created_at=iso_z(conversation.created_at),
        last_message_at=iso_z(conversation.last_message_at),
        last_inbound_at=iso_z(conversation.last_inbound_at),
        window_open=window_open,
        mode=conversation.mode,
    )


# ---------------------------------------------------------------------------------------------
# The change feed
# ---------------------------------------------------------------------------------------------


class EventPage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A page of the change feed, oldest first."""

    events: list[FeedEvent]
    next_after: int | None


class FeedEventDoc(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One event of the change feed (the OpenAPI shape of :class:`FeedEvent`)."""

    id: int
    """The event id: increasing in commit order, never reused."""
    type: str
    """The Socket.IO event name: ``whatsapp:message``, ``whatsapp:message_sent``, …"""
    conversation_id: int | None
    phone_number_id: str | None
    """The business number."""
    created_at: str | None
    """When the change was committed (ISO-8601 UTC)."""
    data: dict[str, Any]
    """The Socket.IO payload of the event, exactly as emitted (without ``eventId``)."""


class EventPageDoc(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A page of the change feed, oldest first (the OpenAPI shape of :class:`EventPage`)."""

    events: list[FeedEventDoc]
    next_after: int | None
    """Pass as ``after`` for the next page; ``null`` when there is nothing more right now (then
    continue from the last event's ``id``)."""


_page_encoder = msgspec.json.Encoder()


def encode_event_page(events: list[Event], next_after: int | None) -> bytes:
    """The JSON of a feed page; each payload is copied from storage, never re-encoded."""
    return _page_encoder.encode(
        EventPage(
            events=[feed_event(e) for e in events],
            next_after=next_after,
        )
    )
