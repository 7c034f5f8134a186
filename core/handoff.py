"""Who answers a conversation: the bot or an agent (``conversation.mode``).

``bot``: automated replies may answer (``autoreply``, and third-party bots, which see
``conversation.mode``). ``human``: an agent owns the conversation; bots stay silent. The mode
changes three ways, each logged once and reported to ``on_conversation_updated`` (``crm_realtime`` emits
``whatsapp:conversation_updated``):

- an agent sets it (``PATCH /api/conversations/{id}``, :meth:`HandoffService.set_mode`);
- an agent's manual reply takes the conversation over (``handoff.agent_reply_takes_over``; the
  send service does it in the transaction that queues the reply);
- a ``human`` conversation with no agent activity (a manual reply or a takeover) for
  ``handoff.return_to_bot_seconds`` returns to ``bot`` (:meth:`HandoffService.run`).

Every change is one conditional ``UPDATE … RETURNING`` that appends its
``whatsapp:conversation_updated`` to the event log in the same transaction, so with several
processes each change is made and logged by exactly one of them, and the event dispatcher
reports it to the hooks at least once (:mod:`core.events`), after a crash too.
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
        """Put a conversation in ``mode``; the change is logged and reported (nothing when it already was).

        Raises:
            NotFoundError: no such conversation.
        """
        conversation, change = await self.host.storage.set_mode(conversation_id, mode)
        if conversation is None:
            raise NotFoundError(f"conversation {conversation_id} does not exist")
        if change is not None:
            self.host.events.conversation_updated(change)
        return conversation

    async def release_idle(self) -> list[Conversation]:
        """Return every ``human`` conversation idle for ``idle_seconds`` to ``bot``; reports each."""
        cutoff = utcnow() - timedelta(seconds=self.idle_seconds)
        released = await self.host.storage.release_idle(cutoff)
        for change in released:
            self.host.events.conversation_updated(change)
        return [change.conversation for change in released]

    async def run(self) -> None:
        """Sweep idle conversations until cancelled (a tenth of the idle time, 0.5 to 30 s apart)."""
        interval = min(30.0, max(0.5, self.idle_seconds / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.release_idle()
            except Exception:  # a database hiccup must not end the timer; the next sweep retries
                log.exception("returning idle conversations to the bot failed; retrying in %.1f s", interval)
