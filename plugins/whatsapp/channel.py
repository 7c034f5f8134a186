"""WhatsApp as core's :class:`core.sending.Channel`: its numbers, its addresses, read and typing.

A WhatsApp address (``wa_id``) is the international number in digits: ``+55 (11) 99999-9999``
becomes ``5511999999999``. Meta may answer a send with a different ``wa_id`` for the same person
(Brazil's ninth digit); the contact keeps the address it was started with until the person writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from core.errors import ApiError, UpstreamError, ValidationFailed
from core.models import Conversation, Message
from plugins.whatsapp.client import GraphClient
from plugins.whatsapp.config import WhatsAppSettings

__all__ = ["WhatsAppChannel", "wa_id_for"]

# E.164: at most 15 digits; 8 is the shortest national number WhatsApp serves with a country code.
_ADDRESS = re.compile(r"^\+?\d{8,15}$")
_SEPARATORS = re.compile(r"[\s().-]")


def wa_id_for(to: str) -> str:
    """The ``wa_id`` of a number typed with country code (spaces, dots, dashes, brackets allowed).

    Raises:
        ValidationFailed: not 8 to 15 digits after an optional ``+``.
    """
    compact = _SEPARATORS.sub("", to)
    if not _ADDRESS.match(compact):
        raise ValidationFailed(
            f"to: {to[:40]!r} is not a phone number; write it in international format with the "
            "country code, e.g. +5511999999999"
        )
    return compact.lstrip("+")


class WhatsAppChannel:
    """The numbers this host serves, and Graph's read receipts and typing indicator."""

    def __init__(self, settings: WhatsAppSettings, client: Callable[[], GraphClient]) -> None:
        self.settings = settings
        # The client exists from startup on; the channel is registered while the app is built.
        self._client = client

    def numbers(self) -> frozenset[str]:
        """``phone_number_id`` and ``phone_number_ids`` (the sandbox's when none is set)."""
        return self.settings.served_numbers()

    def recipient(self, to: str) -> str:
        """The ``wa_id`` for ``to`` (see :func:`wa_id_for`)."""
        return wa_id_for(to)

    async def mark_read(self, conversation: Conversation, message: Message) -> None:
        """Blue ticks on ``message`` in the customer's phone."""
        await self._read(conversation, message, typing=False)

    async def typing(self, conversation: Conversation, message: Message) -> None:
        """Show "typing…" for up to 25 s or until the reply; Graph marks ``message`` read with it."""
        await self._read(conversation, message, typing=True)

    async def _read(self, conversation: Conversation, message: Message, *, typing: bool) -> None:
        if message.wamid is None:  # pragma: no cover - inbound messages always have one
            raise ValidationFailed(f"message {message.id} has no WhatsApp id")
        try:
            await self._client().mark_read(conversation.phone_number_id, message.wamid, typing=typing)
        except UpstreamError as exc:
            raise ApiError(
                f"WhatsApp refused to {'show typing' if typing else 'mark the message read'}: {exc.title}"
                + (" (try again)" if exc.retryable else ""),
                code="upstream_error",
                status_code=502 if exc.retryable else 422,
            ) from exc
