"""WhatsApp's 24-hour customer-service window: free-form messages only within it, templates always."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.errors import WindowClosedError
from core.models import Conversation, OutgoingMessage
from plugins.whatsapp.window import ServiceWindow, window_open

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def conversation(last_inbound_at: datetime | None) -> Conversation:
    return Conversation(
        id=7, phone_number_id="100", contact_id=1, created_at=NOW, last_inbound_at=last_inbound_at
    )


@pytest.mark.parametrize(
    ("last_inbound_at", "is_open"),
    [
        (None, False),  # the contact never wrote: templates only
        (NOW - timedelta(hours=23, minutes=59), True),
        (NOW - timedelta(hours=24), False),
        ((NOW - timedelta(hours=1)).replace(tzinfo=None), True),  # naive datetimes are UTC
    ],
)
def test_the_window_is_24_hours_after_the_contact_last_wrote(
    last_inbound_at: datetime | None, is_open: bool
) -> None:
    assert window_open(conversation(last_inbound_at), now=NOW) is is_open


def test_outside_the_window_only_templates_go_and_the_refusal_names_the_fix() -> None:
    closed = conversation(datetime(2020, 1, 1, tzinfo=UTC))
    policy = ServiceWindow()
    text = OutgoingMessage(conversation_id=7, type="text", content={"body": "oi"})
    template = OutgoingMessage(conversation_id=7, type="template", content={"name": "retomada"})

    refusal = policy.refuse(text, closed)
    assert isinstance(refusal, WindowClosedError)
    assert (refusal.status_code, refusal.code) == (422, "window_closed")
    assert "2020-01-01T00:00:00Z" in refusal.message
    assert '{"type": "template"' in refusal.message
    assert policy.refuse(template, closed) is None
    assert policy.window_open(closed) is False
    assert policy.refuse(text, conversation(datetime.now(UTC))) is None
