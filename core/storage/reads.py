"""Reading stored messages, conversations, contacts and status histories."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from core.models import Contact, Conversation, Message, Reaction
from core.storage.engine import StorageEngine
from core.storage.pages import conversation_page
from core.storage.rows import contact_from_row, conversation_from_row, message_from_row
from core.storage.schema import contacts, conversations, message_reactions, messages, statuses

__all__ = ["ReadsMixin"]

_Model = TypeVar("_Model")


class ReadsMixin(StorageEngine):
    """Single rows by id, pages of conversations and messages, a message's status history."""

    async def get_message(self, message_id: int) -> Message | None:
        """One message by zaphub id."""
        async with self.read() as conn:
            row = (await conn.execute(sa.select(messages).where(messages.c.id == message_id))).first()
        return message_from_row(row) if row else None

    async def get_conversation(self, conversation_id: int) -> Conversation | None:
        """One conversation by zaphub id."""
        async with self.read() as conn:
            row = (
                await conn.execute(sa.select(conversations).where(conversations.c.id == conversation_id))
            ).first()
        return conversation_from_row(row) if row else None

    async def get_conversations(self, conversation_ids: Iterable[int]) -> dict[int, Conversation]:
        """Conversations by id (missing ids are absent from the result)."""
        return await self._by_ids(conversations, conversation_ids, conversation_from_row)

    async def get_contact(self, contact_id: int) -> Contact | None:
        """One contact by zaphub id."""
        async with self.read() as conn:
            row = (await conn.execute(sa.select(contacts).where(contacts.c.id == contact_id))).first()
        return contact_from_row(row) if row else None

    async def contact_phone_number_ids(self, contact_id: int) -> set[str]:
        """The business numbers a contact has a conversation with."""
        query = sa.select(conversations.c.phone_number_id).where(conversations.c.contact_id == contact_id)
        async with self.read() as conn:
            return set((await conn.execute(query)).scalars())

    async def get_contacts(self, contact_ids: Iterable[int]) -> dict[int, Contact]:
        """Contacts by id (missing ids are absent from the result)."""
        return await self._by_ids(contacts, contact_ids, contact_from_row)

    async def get_messages(self, message_ids: Iterable[int]) -> dict[int, Message]:
        """Messages by id (missing ids are absent from the result)."""
        return await self._by_ids(messages, message_ids, message_from_row)

    async def _by_ids(
        self, table: sa.Table, ids: Iterable[int], convert: Callable[[Any], _Model]
    ) -> dict[int, _Model]:
        # One query for a whole page's related rows (the REST listing, the event feed).
        wanted = list(set(ids))
        if not wanted:
            return {}
        async with self.read() as conn:
            rows = (await conn.execute(sa.select(table).where(table.c.id.in_(wanted)))).all()
        return {r.id: convert(r) for r in rows}

    async def list_conversations(
        self,
        *,
        limit: int = 50,
        before: tuple[datetime, int] | None = None,
        phone_number_ids: Sequence[str] | None = None,
    ) -> list[Conversation]:
        """Newest activity first; ``before`` is the (last_message_at, id) cursor of the previous page."""
        query = conversation_page(limit=limit, before=before, phone_number_ids=phone_number_ids)
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [conversation_from_row(r) for r in rows]

    async def list_messages(
        self, conversation_id: int, *, after_id: int = 0, limit: int = 100
    ) -> list[Message]:
        """Oldest first, ids greater than ``after_id``: the resync cursor of a reconnecting client."""
        query = (
            sa.select(messages)
            .where(messages.c.conversation_id == conversation_id, messages.c.id > after_id)
            .order_by(messages.c.id)
            .limit(limit)
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [message_from_row(r) for r in rows]

    async def reactions(self, message_ids: Iterable[int]) -> dict[int, list[Reaction]]:
        """The current reactions of messages, oldest first (messages without any are absent)."""
        ids = list(set(message_ids))
        if not ids:
            return {}
        query = (
            sa.select(message_reactions)
            .where(message_reactions.c.message_id.in_(ids), message_reactions.c.emoji.is_not(None))
            .order_by(message_reactions.c.at, message_reactions.c.wa_id)
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        found: dict[int, list[Reaction]] = {}
        for r in rows:
            found.setdefault(r.message_id, []).append(Reaction(emoji=r.emoji, reactor=r.wa_id, at=r.at))
        return found

    async def status_history(self, message_id: int) -> list[dict[str, Any]]:
        """Every status received for a message, in arrival order (stale ones included)."""
        query = (
            sa.select(
                statuses.c.status,
                statuses.c.timestamp,
                statuses.c.error_code,
                statuses.c.error_title,
                statuses.c.received_at,
            )
            .where(statuses.c.message_id == message_id)
            .order_by(statuses.c.id)
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [dict(r._mapping) for r in rows]
