"""Keyset pages of conversations: the one order and cursor the listing and the search share.

Conversations are ordered by latest activity (the last message, or creation for one without
messages), newest first, ties broken by id. A page after ``before = (timestamp, id)`` starts
strictly below that pair. Activity only moves forward, so a conversation that gets a message while
a client pages moves above the cursor: one walk never shows it twice (the client hears of it live).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from core.storage.schema import conversations

__all__ = ["conversation_page"]


def conversation_page(
    *,
    limit: int,
    before: tuple[datetime, int] | None = None,
    phone_number_ids: Sequence[str] | None = None,
) -> sa.Select[Any]:
    """The query of one page of conversations, newest activity first.

    Args:
        limit: the most rows returned.
        before: the ``(activity, id)`` cursor of the last row of the previous page.
        phone_number_ids: only conversations on these business numbers (``None``: all).

    Callers may add conditions (``.where``, ``.join``) before running it.
    """
    order_ts = sa.func.coalesce(conversations.c.last_message_at, conversations.c.created_at)
    query = sa.select(conversations).order_by(order_ts.desc(), conversations.c.id.desc()).limit(limit)
    if before is not None:
        ts, cid = before
        query = query.where(sa.or_(order_ts < ts, sa.and_(order_ts == ts, conversations.c.id < cid)))
    if phone_number_ids is not None:
        query = query.where(conversations.c.phone_number_id.in_(list(phone_number_ids)))
    return query
