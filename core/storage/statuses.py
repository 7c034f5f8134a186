"""The status machine: move a message forward, park statuses that came early, link by message id.

Statuses only move a message forward (``STATUS_RANK``); a stale one is kept in the history only.
A status for a wamid not known yet is parked and applied when the message gets that wamid.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from core.models import STATUS_RANK, InboundStatus, Message, StatusChange, utcnow
from core.storage.events import EventLogMixin
from core.storage.results import StatusEvent
from core.storage.rows import conversation_from_row, message_from_row
from core.storage.schema import conversations, messages, outbox, statuses

__all__ = ["StatusMixin"]

log = logging.getLogger("zaphub.storage")


def accepted_with_wamid(wamid: str, now: datetime) -> dict[str, Any]:
    """A sent message's new values once Meta's wamid is known.

    The wamid, and ``accepted`` unless a status already moved it further: Graph's answer
    (``outbox_sent``) and a status naming the send (``_link_by_message_id``) both give it.
    """
    raised = messages.c.status_rank < STATUS_RANK["accepted"]
    return {
        "wamid": wamid,
        "delivered_at": now,
        "status": sa.case((raised, "accepted"), else_=messages.c.status),
        "status_rank": sa.case((raised, STATUS_RANK["accepted"]), else_=messages.c.status_rank),
    }


class StatusMixin(EventLogMixin):
    """Applies statuses to messages inside the caller's transaction."""

    def _apply_status(self, conn: sa.Connection, status_id: int, st: InboundStatus) -> StatusEvent | str:
        """Move a message forward to ``st`` if it outranks its status; mark the status row."""
        rank = STATUS_RANK.get(st.status)
        target = sa.and_(
            messages.c.phone_number_id == st.phone_number_id,
            messages.c.wamid == st.wamid,
            messages.c.direction == "outbound",
        )
        if rank is None:  # a status Meta invented after this release: keep it in the history only
            row = (conn.execute(sa.select(messages.c.id).where(target))).first()
            if row is None:
                return "pending"
            conn.execute(statuses.update().where(statuses.c.id == status_id).values(message_id=row.id))
            return "stale"
        updated = (
            conn.execute(
                messages.update()
                .where(target, messages.c.status_rank < rank)
                .values(
                    status=st.status,
                    status_rank=rank,
                    error_code=st.error_code if st.status == "failed" else messages.c.error_code,
                    error_title=st.error_title if st.status == "failed" else messages.c.error_title,
                )
                .returning(*messages.c)
            )
        ).first()
        if updated is None:
            row = (conn.execute(sa.select(messages.c.id).where(target))).first()
            if row is None:
                return "pending"
            conn.execute(statuses.update().where(statuses.c.id == status_id).values(message_id=row.id))
            return "stale"
        conn.execute(statuses.update().where(statuses.c.id == status_id).values(message_id=updated.id))
        if st.status == "failed":
            conn.execute(
                outbox.update()
                .where(outbox.c.message_id == updated.id, outbox.c.state == "pending")
                .values(state="failed", last_error=st.error_title, updated_at=utcnow())
            )
        message = message_from_row(updated)
        change = StatusChange(
            message_id=message.id,
            status=st.status,
            timestamp=st.timestamp,
            error_code=st.error_code if st.status == "failed" else None,
            error_title=st.error_title if st.status == "failed" else None,
        )
        return self._status_event(conn, message, change)

    def _status_event(self, conn: sa.Connection, message: Message, change: StatusChange) -> StatusEvent:
        """The event hooks see for ``change``: the moved message with its conversation as stored now."""
        conv = conversation_from_row(
            (
                conn.execute(sa.select(conversations).where(conversations.c.id == message.conversation_id))
            ).one()
        )
        return StatusEvent(message, conv, change)

    def _link_by_message_id(
        self, conn: sa.Connection, st: InboundStatus, now: datetime
    ) -> StatusEvent | None:
        """Learn a wamid from a status that names our message (its send's answer was lost or is late).

        Returns the send as accepted, for ``on_message_sent`` (``None``: nothing to link). The
        link settles the outbox row, so Graph's answer, if it still comes, finds nothing to record:
        the acceptance is reported here or never.
        """
        message_id = st.message_id
        if message_id is None:
            return None
        linked = (
            conn.execute(
                messages.update()
                .where(
                    messages.c.id == message_id,
                    messages.c.wamid.is_(None),
                    messages.c.phone_number_id == st.phone_number_id,
                )
                .values(accepted_with_wamid(st.wamid, now))
                .returning(*messages.c)
            )
        ).first()
        if linked is None:
            return None
        conn.execute(
            outbox.update()
            .where(outbox.c.message_id == message_id, outbox.c.state == "pending")
            .values(
                state="done",
                # A try still under its lease has reached Meta too (maybe as the very send this
                # status reports); its outcome will find the row done and record nothing: count it.
                attempts=sa.case(
                    (outbox.c.locked_until > now, outbox.c.attempts + 1), else_=outbox.c.attempts
                ),
                locked_until=None,
                updated_at=now,
                last_error="linked by status webhook",
            )
        )
        # Either the send's answer was lost (an ambiguous send) or this status simply overtook it.
        log.info(
            "message %s linked to %s by a status webhook before its send's answer was stored",
            message_id,
            st.wamid,
        )
        message = message_from_row(linked)
        accepted = StatusChange(message_id=message.id, status="accepted", timestamp=str(int(now.timestamp())))
        return self._status_event(conn, message, accepted)
