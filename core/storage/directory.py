"""Contacts and conversations an agent looks for or starts: search, find-or-create, the last inbound.

Search compares names through ``contacts.search_name`` (:func:`core.models.search_key`: accents
removed, case folded, kept in step with ``name`` by every write) and phone numbers by their digits,
so ``livia``, ``LÍVIA`` and ``99912`` behave the same on SQLite and PostgreSQL without extensions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from core.models import Contact, Conversation, Message, search_key, utcnow
from core.storage.events import EventLogMixin, mode_changed_event
from core.storage.pages import conversation_page
from core.storage.results import ModeEvent
from core.storage.rows import contact_from_row, conversation_from_row, message_from_row
from core.storage.schema import contacts, conversations, messages

__all__ = ["DirectoryMixin", "contact_matches"]


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def contact_matches(q: str) -> Any:
    """The SQL condition: a contact whose name or phone number contains ``q``.

    Names compare without accents or case; when ``q`` has digits, numbers compare by digits only
    (``+55 (11) 9999`` finds ``5511999991234``). A blank ``q`` matches nothing.
    """
    key = search_key(q.strip())
    digits = re.sub(r"\D", "", q)
    conditions = []
    if key:
        conditions.append(contacts.c.search_name.like(_like(key), escape="\\"))
    if digits:
        conditions.append(contacts.c.wa_id.like(_like(digits), escape="\\"))
    return sa.or_(*conditions) if conditions else sa.false()


class DirectoryMixin(EventLogMixin):
    """Search contacts and conversations; find or create a conversation to start one."""

    async def search_contacts(
        self, q: str, *, limit: int = 50, phone_number_ids: Sequence[str] | None = None
    ) -> list[Contact]:
        """Contacts whose name or number contains ``q`` (see :func:`contact_matches`), by name.

        ``phone_number_ids`` limits them to contacts with a conversation on one of those numbers.
        """
        query = (
            sa.select(contacts)
            .where(contact_matches(q))
            .order_by(contacts.c.search_name, contacts.c.id)
            .limit(limit)
        )
        if phone_number_ids is not None:
            query = query.where(
                sa.exists().where(
                    conversations.c.contact_id == contacts.c.id,
                    conversations.c.phone_number_id.in_(list(phone_number_ids)),
                )
            )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [contact_from_row(r) for r in rows]

    async def search_conversations(
        self,
        *,
        q: str | None = None,
        mode: str | None = None,
        limit: int = 50,
        before: tuple[datetime, int] | None = None,
        phone_number_ids: Sequence[str] | None = None,
    ) -> list[Conversation]:
        """Like ``list_conversations``, keeping those whose contact matches ``q`` and in ``mode``."""
        query = conversation_page(limit=limit, before=before, phone_number_ids=phone_number_ids)
        if q is not None:
            query = query.join(contacts, contacts.c.id == conversations.c.contact_id).where(
                contact_matches(q)
            )
        if mode is not None:
            query = query.where(conversations.c.mode == mode)
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [conversation_from_row(r) for r in rows]

    async def find_conversation(self, phone_number_id: str, wa_id: str) -> Conversation | None:
        """The conversation of a business number with a contact address, if it exists."""
        query = (
            sa.select(conversations)
            .join(contacts, contacts.c.id == conversations.c.contact_id)
            .where(conversations.c.phone_number_id == phone_number_id, contacts.c.wa_id == wa_id)
        )
        async with self.read() as conn:
            row = (await conn.execute(query)).first()
        return conversation_from_row(row) if row else None

    async def ensure_conversation(self, phone_number_id: str, wa_id: str) -> Conversation:
        """The conversation of a business number with a contact address, created with its contact.

        Safe against a webhook or another process creating them at the same moment: both go
        through the same unique keys, and whoever comes second reads the first's rows.
        """
        now = utcnow()
        async with self.write() as conn:
            await conn.execute(
                self.insert(contacts).on_conflict_do_nothing(index_elements=[contacts.c.wa_id]),
                [{"wa_id": wa_id, "name": None, "search_name": "", "created_at": now, "updated_at": now}],
            )
            contact_id = (
                await conn.execute(sa.select(contacts.c.id).where(contacts.c.wa_id == wa_id))
            ).scalar_one()
            await conn.execute(
                self.insert(conversations).on_conflict_do_nothing(
                    index_elements=[conversations.c.phone_number_id, conversations.c.contact_id]
                ),
                [{"phone_number_id": phone_number_id, "contact_id": contact_id, "created_at": now}],
            )
            row = (
                await conn.execute(
                    sa.select(conversations).where(
                        conversations.c.phone_number_id == phone_number_id,
                        conversations.c.contact_id == contact_id,
                    )
                )
            ).one()
        return conversation_from_row(row)

    async def set_mode(self, conversation_id: int, mode: str) -> tuple[Conversation | None, ModeEvent | None]:
        """Put a conversation in ``mode``, logging ``whatsapp:conversation_updated`` in the same transaction.

        Returns:
            The conversation (``None`` if missing) and the change (``None`` when it already was
            in ``mode``: nothing is logged).
        """
        now = utcnow()
        async with self.write() as conn:
            row = (
                await conn.execute(
                    conversations.update()
                    .where(conversations.c.id == conversation_id, conversations.c.mode != mode)
                    .values(mode=mode, mode_changed_at=now)
                    .returning(*conversations.c)
                )
            ).first()
            if row is not None:
                changed = conversation_from_row(row)
                (event,) = await self.append_events(conn, [mode_changed_event(changed)], now)
                return changed, ModeEvent(changed, event)
            row = (
                await conn.execute(sa.select(conversations).where(conversations.c.id == conversation_id))
            ).first()
        return (conversation_from_row(row) if row else None), None

    async def release_idle(self, cutoff: datetime) -> list[ModeEvent]:
        """Switch ``human`` conversations without agent activity since ``cutoff`` back to ``bot``.

        Activity is a manual send (``last_agent_at``) or the switch to ``human`` itself. One
        conditional UPDATE: each conversation is released, logged and returned by one caller only.
        """
        now = utcnow()
        idle = sa.and_(
            conversations.c.mode == "human",
            sa.or_(conversations.c.mode_changed_at.is_(None), conversations.c.mode_changed_at < cutoff),
            sa.or_(conversations.c.last_agent_at.is_(None), conversations.c.last_agent_at < cutoff),
        )
        async with self.write() as conn:
            rows = (
                await conn.execute(
                    conversations.update()
                    .where(idle)
                    .values(mode="bot", mode_changed_at=now)
                    .returning(*conversations.c)
                )
            ).all()
            released = sorted((conversation_from_row(r) for r in rows), key=lambda c: c.id)
            events = await self.append_events(conn, [mode_changed_event(c) for c in released], now)
        return [ModeEvent(c, e) for c, e in zip(released, events, strict=True)]

    async def last_inbound_message(self, conversation_id: int) -> Message | None:
        """The newest message the contact sent in a conversation (by id: arrival order)."""
        query = (
            sa.select(messages)
            .where(messages.c.conversation_id == conversation_id, messages.c.direction == "inbound")
            .order_by(messages.c.id.desc())
            .limit(1)
        )
        async with self.read() as conn:
            row = (await conn.execute(query)).first()
        return message_from_row(row) if row else None
