"""Database rows to models: the converters every storage part reads rows through."""

from __future__ import annotations

from typing import Any

from core.models import Contact, Conversation, Event, Message

__all__ = ["Row", "contact_from_row", "conversation_from_row", "event_from_row", "message_from_row"]


def message_from_row(row: Any) -> Message:
    """A ``messages`` row as a :class:`Message`."""
    m = row._mapping
    return Message(
        id=m["id"],
        conversation_id=m["conversation_id"],
        phone_number_id=m["phone_number_id"],
        direction=m["direction"],
        type=m["type"],
        body=m["body"],
        status=m["status"],
        wamid=m["wamid"],
        sender_type="contact" if m["direction"] == "inbound" else "user",
        delivered_at=m["delivered_at"],
        received_at=m["received_at"],
        automated=bool(m["automated"]),
        media_id=m["media_id"],
        media_mime_type=m["media_mime_type"],
        context_wamid=m["context_wamid"],
        content=m["content"],
        raw=m["raw"],
        error_code=m["error_code"],
        error_title=m["error_title"],
        edited_at=m.get("edited_at"),
        deleted_at=m.get("deleted_at"),
    )


def event_from_row(row: Any) -> Event:
    """An ``event_log`` row as an :class:`Event` (its payload as the stored bytes)."""
    m = row._mapping
    return Event(
        id=m["id"],
        type=m["type"],
        conversation_id=m["conversation_id"],
        phone_number_id=m["phone_number_id"],
        message_id=m["message_id"],
        created_at=m["created_at"],
        data=bytes(m["data"]),
    )


def conversation_from_row(row: Any) -> Conversation:
    """A ``conversations`` row as a :class:`Conversation`."""
    m = row._mapping
    return Conversation(
        id=m["id"],
        phone_number_id=m["phone_number_id"],
        contact_id=m["contact_id"],
        created_at=m["created_at"],
        last_message_at=m["last_message_at"],
        last_inbound_at=m["last_inbound_at"],
        last_agent_at=m["last_agent_at"],
        last_message_id=m["last_message_id"],
        mode=m["mode"] if m.get("mode") is not None else "bot",
        mode_changed_at=m.get("mode_changed_at"),
    )


def contact_from_row(row: Any) -> Contact:
    """A ``contacts`` row as a :class:`Contact`."""
    m = row._mapping
    return Contact(id=m["id"], wa_id=m["wa_id"], name=m["name"], phone_number=m["wa_id"])


class Row:
    """Adapts a dict to the ``row._mapping`` shape the converters read."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: dict[str, Any]) -> None:
        self._mapping = mapping
