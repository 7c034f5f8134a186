"""Reading stored messages, conversations, contacts and status histories."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from core.models import Contact, Conversation, Message
from core.storage.engine import StorageEngine
from core.storage.rows import contact_from_row, conversation_from_row, message_from_row
from core.storage.schema import contacts, conversations, messages, statuses

__all__ = ["ReadsMixin"]


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
        ids = list(set(conversation_ids))
        if not ids:
            return {}
        async with self.read() as conn:
            rows = (await conn.execute(sa.select(conversations).where(conversations.c.id.in_(ids)))).all()
        return {r.id: conversation_from_row(r) for r in rows}

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
        ids = list(set(contact_ids))
        if not ids:
            return {}
        async with self.read() as conn:
            rows = (await conn.execute(sa.select(contacts).where(contacts.c.id.in_(ids)))).all()
        return {r.id: contact_from_row(r) for r in rows}

    async def get_messages(self, message_ids: Iterable[int]) -> dict[int, Message]:
        """Messages by id (missing ids are absent from the result)."""
        ids = list(set(message_ids))
        if not ids:
            return {}
        async with self.read() as conn:
            rows = (await conn.execute(sa.select(messages).where(messages.c.id.in_(ids)))).all()
        return {r.id: message_from_row(r) for r in rows}

    async def list_conversations(
        self,
        *,
        limit: int = 50,
        before: tuple[datetime, int] | None = None,
        phone_number_ids: Sequence[str] | None = None,
    ) -> list[Conversation]:
        """Newest activity first; ``before`` is the (last_message_at, id) cursor of the previous page."""
        order_ts = sa.func.coalesce(conversations.c.last_message_at, conversations.c.created_at)
        query = sa.select(conversations).order_by(order_ts.desc(), conversations.c.id.desc()).limit(limit)
        if before is not None:
            ts, cid = before
            query = query.where(sa.or_(order_ts < ts, sa.and_(order_ts == ts, conversations.c.id < cid)))
        if phone_number_ids is not None:
            query = query.where(conversations.c.phone_number_id.in_(list(phone_number_ids)))
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
