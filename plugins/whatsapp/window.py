"""WhatsApp's 24-hour customer-service window, as the send policy core's send service consults.

Free-form messages (text, media, interactive…) reach a contact only within 24 hours of the
contact's last message; outside that window Meta delivers approved templates only and fails the
rest with 131047, often minutes later in a status webhook (reference 7.1, 8.3). zaphub refuses
such a send at once instead: ``422 window_closed`` naming the fix.

Core knows none of this: it asks each registered :class:`core.sending.SendPolicy`, and this
plugin registers :class:`ServiceWindow` through ``register_send_policies``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.errors import ApiError, WindowClosedError
from core.models import Conversation, OutgoingMessage, iso_z, utcnow

__all__ = ["TEMPLATE_TYPES", "WINDOW", "ServiceWindow", "window_open"]

#: How long after the contact's last message free-form messages are allowed.
WINDOW = timedelta(hours=24)
#: Types WhatsApp delivers outside the window: approved templates only.
TEMPLATE_TYPES = frozenset({"template"})


def window_open(conversation: Conversation, now: datetime | None = None) -> bool:
    """Whether free-form messages are allowed: the contact wrote within the last 24 hours."""
    last = conversation.last_inbound_at
    if last is None:
        return False
    if last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    return (now or utcnow()) - last < WINDOW


class ServiceWindow:
    """The :class:`core.sending.SendPolicy` of WhatsApp conversations."""

    def refuse(self, outgoing: OutgoingMessage, conversation: Conversation) -> ApiError | None:
        """:class:`WindowClosedError` for a free-form message outside the window, else ``None``."""
        if outgoing.type in TEMPLATE_TYPES or window_open(conversation):
            return None
        last = iso_z(conversation.last_inbound_at) or "never"
        return WindowClosedError(
            f"conversation {conversation.id}: the contact last wrote at {last}, more than 24 hours ago; "
            'outside that window WhatsApp only delivers approved templates: send {"type": "template", '
            '"name": …, "language": …}'
        )

    def window_open(self, conversation: Conversation) -> bool:
        """Whether a message of any type may be sent now (REST's ``window_open``)."""
        return window_open(conversation)
