"""What storage hands back: new messages, status changes, a batch's outcome, claimed sends."""

from __future__ import annotations

from datetime import datetime

import msgspec

from core.models import Contact, Conversation, Event, Message, MessageChange, StatusChange

__all__ = ["ChangeEvent", "IngestResult", "MessageEvent", "ModeEvent", "OutboxItem", "StatusEvent"]


class MessageEvent(msgspec.Struct, frozen=True):
    """A newly stored message with its conversation and contact, for hooks."""

    message: Message
    conversation: Conversation
    contact: Contact
    event: Event | None = None
    """Its row in the event log (``whatsapp:message``)."""


class StatusEvent(msgspec.Struct, frozen=True):
    """A status that moved a message forward, for hooks."""

    message: Message
    conversation: Conversation
    change: StatusChange
    event: Event | None = None
    """Its row in the event log (``whatsapp:message_status``, or ``whatsapp:message_sent`` for
    an ``accepted`` change: from ``outbox_sent``, or from a status that linked the send)."""


class ModeEvent(msgspec.Struct, frozen=True):
    """A conversation whose mode changed, as stored after the change, for hooks."""

    conversation: Conversation
    event: Event
    """Its row in the event log (``whatsapp:conversation_updated``)."""


class ChangeEvent(msgspec.Struct, frozen=True):
    """An edit, a deletion or a reaction applied to a stored message, for hooks."""

    message: Message
    """The message as stored after the change."""
    conversation: Conversation
    change: MessageChange
    event: Event | None = None
    """Its row in the event log (``whatsapp:message_updated``, ``_deleted`` or ``_reaction``)."""


class IngestResult(msgspec.Struct, kw_only=True):
    """What one :meth:`Storage.ingest` call changed."""

    new_messages: list[MessageEvent] = msgspec.field(default_factory=list)
    sent_messages: list[StatusEvent] = msgspec.field(default_factory=list)
    """Our sends a status linked by their message id (``accepted``, for ``on_message_sent``): Graph's
    answer was lost, or had not been stored yet and will record nothing."""
    status_changes: list[StatusEvent] = msgspec.field(default_factory=list)
    message_changes: list[ChangeEvent] = msgspec.field(default_factory=list)
    """Edits, deletions and reactions applied (on arrival, or parked ones whose message arrived)."""
    duplicate_messages: int = 0
    duplicate_statuses: int = 0
    stale_statuses: int = 0
    pending_statuses: int = 0
    """Statuses kept for a message not known yet; applied when it appears."""
    pending_changes: int = 0
    """Edits, deletions and reactions kept for a message not known yet; applied when it appears."""
    stale_changes: int = 0
    """Edits and reactions older than the one already applied (kept in the history only)."""
    moved_contacts: list[tuple[str, str]] = msgspec.field(default_factory=list)
    """``(old wa_id, new wa_id)`` of each contact that changed number."""
    set_aside: int = 0
    """Items the database cannot hold (an id over its column length), logged and not stored."""


class OutboxItem(msgspec.Struct, frozen=True, kw_only=True):
    """A claimed send: the outbox row and its message."""

    id: int
    message: Message
    recipient: str
    attempts: int
    """Attempts made before this one."""
    queued_at: datetime
    """When this delivery began: the send was queued, or re-queued by a retry (the retry window
    counts from here)."""
