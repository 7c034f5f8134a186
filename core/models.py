"""The domain objects zaphub stores and hands to hooks.

These are transport-neutral: the ``whatsapp`` plugin turns Meta's payloads into
:class:`InboundMessage` / :class:`InboundStatus`, core stores them and gives plugins the stored
:class:`Message`, :class:`Conversation` and :class:`Contact` (with zaphub's integer ids).
All are frozen msgspec Structs, so a hook cannot change what another hook sees.
"""

from __future__ import annotations

import functools
import unicodedata
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

__all__ = [
    "CONVERSATION_MODES",
    "STATUS_RANK",
    "Contact",
    "Conversation",
    "ConversationMode",
    "Event",
    "InboundMessage",
    "InboundStatus",
    "LifecycleAction",
    "Message",
    "MessageChange",
    "MessageEdit",
    "MessageReaction",
    "MessageRevoke",
    "NumberChange",
    "OutgoingMessage",
    "Reaction",
    "Reply",
    "StatusChange",
    "Veto",
    "iso_z",
    "search_key",
    "utcnow",
]

Direction = Literal["inbound", "outbound"]

#: Order of message statuses. A status applies only when its rank is higher than the current
#: one, so statuses never go backwards; ``failed`` outranks everything and is terminal.
#: ``received`` is the status of inbound messages; ``queued``/``accepted`` are zaphub's own
#: (stored in the outbox / Graph answered with a wamid), the others are Meta's.
STATUS_RANK: dict[str, int] = {
    "received": 0,
    "queued": 0,
    "accepted": 1,
    "sent": 2,
    "delivered": 3,
    "read": 4,
    "played": 5,
    "failed": 9,
}


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


def iso_z(value: datetime | None) -> str | None:
    """ISO-8601 UTC with a ``Z`` suffix and second precision, as the Socket.IO contract wants."""
    if value is None:
        return None
    if value.tzinfo is not None and value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return _iso_z_utc(value)


# Memoised: every event payload and REST item formats its timestamps, mostly the same few
# seconds at a time (a hit costs a tenth of strftime). Only UTC or naive (taken as UTC) values
# are keys: equal ones are the same instant, which is not so in a zone with a repeated hour,
# where datetimes with the same tzinfo compare by wall time and ignore ``fold``.
@functools.lru_cache(maxsize=4096)
def _iso_z_utc(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


ConversationMode = Literal["bot", "human"]
"""Who answers a conversation: ``bot`` (automated replies allowed) or ``human`` (an agent)."""
CONVERSATION_MODES: tuple[ConversationMode, ...] = ("bot", "human")


def search_key(text: str) -> str:
    """``text`` as searches compare it: accents removed, case folded (``"Lívia"`` → ``"livia"``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


class Contact(msgspec.Struct, frozen=True, kw_only=True):
    """A WhatsApp user, keyed by ``wa_id``."""

    id: int
    wa_id: str
    name: str | None = None
    phone_number: str = ""


class Conversation(msgspec.Struct, frozen=True, kw_only=True):
    """One conversation per business number (``phone_number_id``) and contact."""

    id: int
    phone_number_id: str
    contact_id: int
    created_at: datetime
    last_message_at: datetime | None = None
    last_inbound_at: datetime | None = None
    last_agent_at: datetime | None = None
    """When a human (REST or plugin, not automated) last queued a message here."""
    last_message_id: int | None = None
    """The newest message (by time), for conversation lists."""
    mode: ConversationMode = "bot"
    """``bot``: automated replies may answer; ``human``: an agent owns it and bots stay silent."""
    mode_changed_at: datetime | None = None
    """When ``mode`` last changed (``None``: never)."""


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """A stored message, inbound (from a contact) or outbound (ours)."""

    id: int
    conversation_id: int
    phone_number_id: str
    direction: Direction
    type: str
    """Meta's message type: ``text``, ``image``, … or a type Meta added after this release."""
    body: str | None
    """Text body; for other types the caption, reply title or emoji; else ``None``."""
    status: str
    wamid: str | None = None
    sender_type: Literal["contact", "user"] = "contact"
    delivered_at: datetime | None = None
    """Inbound: Meta's timestamp. Outbound: when Graph accepted it."""
    received_at: datetime | None = None
    """When zaphub stored it."""
    automated: bool = False
    media_id: str | None = None
    media_mime_type: str | None = None
    context_wamid: str | None = None
    """The wamid this message replies to, if any."""
    content: dict[str, Any] | None = None
    """Outbound: the type-specific object as sent to Graph. Inbound: ``None`` (see ``raw``)."""
    raw: dict[str, Any] | None = None
    """Inbound: Meta's message object exactly as received."""
    error_code: int | None = None
    error_title: str | None = None
    edited_at: datetime | None = None
    """When the contact last edited it (the edit's time), else ``None``."""
    deleted_at: datetime | None = None
    """When the contact deleted it; its ``body`` is then ``None`` (the text is kept as a version)."""

    @property
    def is_inbound(self) -> bool:
        """True for messages from a contact."""
        return self.direction == "inbound"


class MessageChange(msgspec.Struct, frozen=True, kw_only=True):
    """An edit, a deletion or a reaction that changed a stored message."""

    message_id: int
    kind: Literal["edited", "deleted", "reaction"]
    at: datetime
    """The change's time (Meta's timestamp of the edit, deletion or reaction)."""
    body: str | None = None
    """``edited``: the message's new text."""
    emoji: str | None = None
    """``reaction``: the emoji, ``None`` when the reaction was removed."""
    reactor: str | None = None
    """``reaction``: who reacted (the contact's ``wa_id``)."""


class Reaction(msgspec.Struct, frozen=True, kw_only=True):
    """A contact's current reaction to a message (one per contact and message)."""

    emoji: str
    reactor: str
    """Who reacted: the contact's ``wa_id``."""
    at: datetime


class StatusChange(msgspec.Struct, frozen=True, kw_only=True):
    """A status that moved a message forward."""

    message_id: int
    status: str
    timestamp: str
    """Meta's timestamp: a string of Unix seconds."""
    error_code: int | None = None
    error_title: str | None = None


class MessageEdit(msgspec.Struct, frozen=True, kw_only=True, tag="edit"):
    """The contact edited an earlier message: ``body`` is its new text (or caption)."""

    target_wamid: str
    body: str | None


class MessageRevoke(msgspec.Struct, frozen=True, kw_only=True, tag="revoke"):
    """The contact deleted an earlier message for everyone."""

    target_wamid: str


class MessageReaction(msgspec.Struct, frozen=True, kw_only=True, tag="reaction"):
    """The contact reacted to a message; ``emoji`` ``None`` (or ``""``) removes their reaction."""

    target_wamid: str
    emoji: str | None


class NumberChange(msgspec.Struct, frozen=True, kw_only=True, tag="number_change"):
    """The contact moved to a new number (``new_wa_id``); the message itself is stored too."""

    new_wa_id: str


LifecycleAction = MessageEdit | MessageRevoke | MessageReaction | NumberChange
"""What an inbound message does to an earlier message or to its sender (see ``InboundMessage.action``)."""


class InboundMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message as a transport plugin hands it to core for storage."""

    phone_number_id: str
    wamid: str
    wa_id: str
    profile_name: str | None
    type: str
    body: str | None
    timestamp: datetime
    raw: dict[str, Any]
    media_id: str | None = None
    media_mime_type: str | None = None
    context_wamid: str | None = None
    error_code: int | None = None
    """Why Meta could not deliver the content (``unsupported`` with ``errors``, e.g. 131051), if so."""
    error_title: str | None = None
    action: LifecycleAction | None = None
    """Set when this message changes another one instead of being one: an edit, a deletion or a
    reaction is applied to its target (no message row of its own); a number change moves the
    sender's contact (and the message is stored as well)."""


class InboundStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A status webhook for a message we sent."""

    phone_number_id: str
    wamid: str
    status: str
    timestamp: str
    recipient_id: str | None = None
    error_code: int | None = None
    error_title: str | None = None
    raw: dict[str, Any] | None = None
    message_id: int | None = None
    """zaphub's id of the message, when the transport carried it with the send and got it back
    (WhatsApp: in ``biz_opaque_callback_data``). It links a status to a send whose answer was
    lost (a timeout after the request left), so that send is not repeated."""


class OutgoingMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message on its way out, as ``on_before_send`` sees it.

    ``content`` is the type-specific object of Graph's send body (``{"body": "Olá"}`` for text,
    ``{"name": …, "language": {…}}`` for a template). Return a changed copy with
    ``msgspec.structs.replace(outgoing, content=…)``.
    """

    conversation_id: int
    type: str
    content: dict[str, Any]
    body: str | None = None
    automated: bool = False
    source: str = "api"
    """Who asked: ``api`` (a CRM over REST), ``autoreply``, or a plugin's name."""
    context_wamid: str | None = None


class Veto(msgspec.Struct, frozen=True):
    """Returned by ``on_before_send`` to refuse a message; ``reason`` reaches the sender."""

    reason: str


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """An automated reply composed by ``reply_for_message``.

    ``text`` is sent as a text message; ``type``/``content`` send anything else (a template,
    interactive buttons). ``source`` names who composed it, for logs and metrics.
    """

    text: str | None = None
    type: str | None = None
    content: dict[str, Any] | None = None
    source: str = "plugin"


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the event log: a change as the outside world sees it.

    Hooks receive it as ``event``; the REST feed, Socket.IO and outgoing webhooks send ``data``.
    ``id`` increases in commit order and has no gaps (pruning aside), so "everything after
    ``id``" is a complete resume point.
    """

    id: int
    type: str
    """The Socket.IO event name: ``whatsapp:message``, ``whatsapp:message_sent``, …"""
    conversation_id: int | None
    phone_number_id: str | None
    """The business number; scoped tokens see only events of their numbers."""
    message_id: int | None
    created_at: datetime
    data: bytes
    """The payload's JSON (the contract's, without ``eventId``), encoded once at write time."""

    def payload(self) -> dict[str, Any]:
        """``data`` decoded (a new dict on every call)."""
        decoded: dict[str, Any] = msgspec.json.decode(self.data)
        return decoded
