"""Who answers a conversation: the bot or an agent (``conversation.mode``).

``bot``: automated replies may answer (``autoreply``, and third-party bots, which see
``conversation.mode``). ``human``: an agent owns the conversation; bots stay silent. The mode
changes three ways, each reported once to ``on_conversation_updated`` (``crm_realtime`` emits
``whatsapp:conversation_updated``):

- an agent sets it (``PATCH /api/conversations/{id}``, :meth:`HandoffService.set_mode`);
- an agent's manual reply takes the conversation over (``handoff.agent_reply_takes_over``; the
  send service does it in the transaction that queues the reply);
- a ``human`` conversation with no agent activity (a manual reply or a takeover) for
  ``handoff.return_to_bot_seconds`` returns to ``bot`` (:meth:`HandoffService.run`).

Every change is one conditional ``UPDATE … RETURNING``, so with several processes each change is
made, and reported, by exactly one of them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from core.errors import NotFoundError
from core.models import Conversation, ConversationMode, utcnow

if TYPE_CHECKING:
    from core.host import Host

__all__ = ["HandoffService"]

log = logging.getLogger("zaphub.handoff")


class HandoffService:
    """Changes a conversation's mode and returns idle ``human`` conversations to ``bot``."""

    def __init__(self, host: Host) -> None:
        self.host = host

    @property
    def idle_seconds(self) -> float:
        """``handoff.return_to_bot_seconds`` (``0``: never)."""
        return self.host.config.handoff.return_to_bot_seconds

    async def set_mode(self, conversation_id: int, mode: ConversationMode) -> Conversation:
        """Put a conversation in ``mode``; reports the change (nothing when it already was).

        Raises:
            NotFoundError: no such conversation.
        """
        conversation, changed = await self.host.storage.set_mode(conversation_id, mode)
        if conversation is None:
            raise NotFoundError(f"conversation {conversation_id} does not exist")
        if changed:
            await self.changed(conversation)
        return conversation

    async def changed(self, conversation: Conversation) -> None:
        """Report a stored mode change to ``on_conversation_updated``."""
        await self.host.events.publish("on_conversation_updated", conversation=conversation)

    async def release_idle(self) -> list[Conversation]:
        """Return every ``human`` conversation idle for ``idle_seconds`` to ``bot``; reports each."""
        cutoff = utcnow() - timedelta(seconds=self.idle_seconds)
        released = await self.host.storage.release_idle(cutoff)
        for conversation in released:
            await self.changed(conversation)
        return released

    async def run(self) -> None:
        """Sweep idle conversations until cancelled (a tenth of the idle time, 0.5 to 30 s apart)."""
        interval = min(30.0, max(0.5, self.idle_seconds / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.release_idle()
            except Exception:  # a database hiccup must not end the timer; the next sweep retries
                log.exception("returning idle conversations to the bot failed; retrying in %.1f s", interval)
