"""The outbox: queue a send (with its idempotency key), lease it to a worker, record the outcome.

A send is one transaction: message row + outbox row + idempotency key.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import sqlalchemy as sa

from core.errors import ConflictError
from core.models import (
    STATUS_RANK,
    Conversation,
    Event,
    InboundStatus,
    Message,
    OutgoingMessage,
    StatusChange,
    utcnow,
)
from core.storage import lifecycle
from core.storage.events import (
    message_accepted_event,
    message_changed_event,
    mode_changed_event,
    status_changed_event,
    write_events,
)
from core.storage.results import ModeEvent, OutboxItem, StatusEvent
from core.storage.rows import conversation_from_row, message_from_row
from core.storage.schema import conversations, idempotency_keys, messages, outbox, statuses
from core.storage.statuses import StatusMixin, accepted_with_wamid

__all__ = ["OutboxMixin"]


class OutboxMixin(StatusMixin):
    """Outbound sends from queueing to ``done`` or ``failed``."""

    async def queue_outbound(
        self,
        conversation: Conversation,
        recipient: str,
        outgoing: OutgoingMessage,
        *,
        idempotency: tuple[str, str, str] | None = None,
        took_over: list[ModeEvent] | None = None,
    ) -> tuple[Message, bool]:
        """Store an outbound message and its outbox row in one transaction.

        Args:
            conversation: where it goes.
            recipient: the contact's ``wa_id``.
            outgoing: the message after ``on_before_send``.
            idempotency: ``(scope, key, request_hash)``: a repeated key with the same hash returns
                the first message; with another hash raises :class:`ConflictError`.
            took_over: when given, a manual (not automated) send switches a ``bot`` conversation
                to ``human`` in the same transaction (logging ``whatsapp:conversation_updated``),
                and the change is appended.

        Returns:
            The message and whether it was created now (``False`` for an idempotent repeat).
        """
        now = utcnow()
        async with self.write() as conn:
            idem_id: int | None = None
            if idempotency is not None:
                scope, key, digest = idempotency
                idem_id = (
                    await conn.execute(
                        self.insert(idempotency_keys)
                        .on_conflict_do_nothing(
                            index_elements=[idempotency_keys.c.scope, idempotency_keys.c.key]
                        )
                        .returning(idempotency_keys.c.id),
                        {"scope": scope, "key": key, "request_hash": digest, "created_at": now},
                    )
                ).scalar()
                if idem_id is None:
                    existing = (
                        await conn.execute(
                            sa.select(idempotency_keys).where(
                                idempotency_keys.c.scope == scope, idempotency_keys.c.key == key
                            )
                        )
                    ).one()
                    if existing.request_hash != digest:
                        raise ConflictError(
                            f"Idempotency-Key {key!r} was already used with a different request body; "
                            "use a new key for a new message"
                        )
                    if existing.message_id is not None:
                        row = (
                            await conn.execute(
                                sa.select(messages).where(messages.c.id == existing.message_id)
                            )
                        ).one()
                        return message_from_row(row), False
            row = (
                await conn.execute(
                    messages.insert()
                    .values(
                        conversation_id=conversation.id,
                        phone_number_id=conversation.phone_number_id,
                        wamid=None,
                        direction="outbound",
                        type=outgoing.type,
                        body=outgoing.body,
                        status="queued",
                        status_rank=STATUS_RANK["queued"],
                        automated=outgoing.automated,
                        source=outgoing.source,
                        delivered_at=None,
                        received_at=now,
                        context_wamid=outgoing.context_wamid,
                        content=outgoing.content,
                    )
                    .returning(*messages.c)
                )
            ).one()
            message = message_from_row(row)
            await conn.execute(
                outbox.insert().values(
                    message_id=message.id,
                    phone_number_id=conversation.phone_number_id,
                    recipient=recipient,
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
            values: dict[str, Any] = {"last_message_at": now, "last_message_id": message.id}
            if not outgoing.automated:
                values["last_agent_at"] = now
            await conn.execute(
                conversations.update().where(conversations.c.id == conversation.id).values(**values)
            )
            switched = None
            if took_over is not None and not outgoing.automated:
                switched = (
                    await conn.execute(
                        conversations.update()
                        .where(conversations.c.id == conversation.id, conversations.c.mode == "bot")
                        .values(mode="human", mode_changed_at=now)
                        .returning(*conversations.c)
                    )
                ).first()
            if idem_id is not None:
                await conn.execute(
                    idempotency_keys.update()
                    .where(idempotency_keys.c.id == idem_id)
                    .values(message_id=message.id)
                )
            if switched is not None and took_over is not None:
                changed = conversation_from_row(switched)
                (event,) = await self.append_events(conn, [mode_changed_event(changed)], now)  # last
                took_over.append(ModeEvent(changed, event))
        return message, True

    async def claim_outbox(self, *, limit: int = 50, lease_seconds: float = 60.0) -> list[OutboxItem]:
        """Lease due sends to this worker; a crashed worker's lease expires and another takes over.

        Only the oldest pending send of each recipient is due: a message waiting for a retry holds
        back the later ones to the same person, so a customer reads them in the order they were
        sent ("Olá" before "seu código é 1234"), whatever failed in between.
        """
        now = utcnow()
        earlier = outbox.alias("earlier")
        due = (
            sa.select(outbox.c.id)
            .where(
                outbox.c.state == "pending",
                outbox.c.next_attempt_at <= now,
                sa.or_(outbox.c.locked_until.is_(None), outbox.c.locked_until < now),
                ~sa.exists().where(
                    earlier.c.phone_number_id == outbox.c.phone_number_id,
                    earlier.c.recipient == outbox.c.recipient,
                    earlier.c.state == "pending",
                    earlier.c.id < outbox.c.id,
                ),
            )
            .order_by(outbox.c.next_attempt_at, outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with self.write() as conn:
            ids = list((await conn.execute(due)).scalars())
            if not ids:
                return []
            claimed = (
                await conn.execute(
                    outbox.update()
                    .where(outbox.c.id.in_(ids))
                    .values(locked_until=now + timedelta(seconds=lease_seconds), updated_at=now)
                    .returning(
                        outbox.c.id,
                        outbox.c.message_id,
                        outbox.c.recipient,
                        outbox.c.attempts,
                        outbox.c.created_at,
                    )
                )
            ).all()
            msgs = {
                r.id: message_from_row(r)
                for r in await conn.execute(
                    sa.select(messages).where(messages.c.id.in_([c.message_id for c in claimed]))
                )
            }
        items = [
            OutboxItem(
                id=c.id,
                message=msgs[c.message_id],
                recipient=c.recipient,
                attempts=c.attempts,
                queued_at=c.created_at,
            )
            for c in claimed
        ]
        items.sort(key=lambda i: i.id)
        return items

    async def outbox_defer(
        self, item_id: int, *, delay: float, error: str | None = None, attempt: bool
    ) -> None:
        """Release a claimed send to try again after ``delay`` seconds (``attempt``: count this try)."""
        now = utcnow()
        values: dict[str, Any] = {
            "locked_until": None,
            "next_attempt_at": now + timedelta(seconds=delay),
            "updated_at": now,
        }
        if attempt:
            values["attempts"] = outbox.c.attempts + 1
        if error is not None:
            values["last_error"] = error
        async with self.write() as conn:
            await conn.execute(
                outbox.update().where(outbox.c.id == item_id, outbox.c.state == "pending").values(**values)
            )

    async def outbox_sent(self, item_id: int, wamid: str) -> tuple[StatusEvent | None, list[StatusEvent]]:
        """Graph accepted a send: store its wamid and apply statuses that arrived before it.

        Returns:
            ``(accepted, changes)``: the message as accepted (``None`` when a status webhook had
            already linked it), then any parked statuses now applied, in order.
        """
        now = utcnow()

        def body(conn: sa.Connection) -> tuple[StatusEvent | None, list[StatusEvent], list[Event]]:
            if conn.dialect.name == "postgresql":
                # A reaction to this message committed at this instant by another process must
                # see the wamid, or be seen (lifecycle.lock_targets); first, before any row lock.
                number = conn.execute(
                    sa.select(messages.c.phone_number_id)
                    .join(outbox, outbox.c.message_id == messages.c.id)
                    .where(outbox.c.id == item_id)
                ).scalar()
                if number is not None:
                    lifecycle.lock_targets(conn, [(number, wamid)])
            row = (
                conn.execute(
                    outbox.update()
                    .where(outbox.c.id == item_id, outbox.c.state == "pending")
                    .values(state="done", attempts=outbox.c.attempts + 1, locked_until=None, updated_at=now)
                    .returning(outbox.c.message_id)
                )
            ).first()
            if row is None:
                return None, [], []
            updated = (
                conn.execute(
                    messages.update()
                    .where(messages.c.id == row.message_id, messages.c.wamid.is_(None))
                    .values(accepted_with_wamid(wamid, now))
                    .returning(*messages.c)
                )
            ).first()
            if updated is None:
                return None, [], []
            message = message_from_row(updated)
            accepted = self._status_event(
                conn,
                message,
                StatusChange(message_id=message.id, status="accepted", timestamp=str(int(now.timestamp()))),
            )
            parked = (
                conn.execute(
                    sa.select(statuses)
                    .where(
                        statuses.c.phone_number_id == message.phone_number_id,
                        statuses.c.wamid == wamid,
                        statuses.c.message_id.is_(None),
                    )
                    .order_by(statuses.c.id)
                )
            ).all()
            changes: list[StatusEvent] = []
            for st in parked:
                applied = self._apply_status(
                    conn,
                    st.id,
                    InboundStatus(
                        phone_number_id=st.phone_number_id,
                        wamid=st.wamid,
                        status=st.status,
                        timestamp=st.timestamp,
                        error_code=st.error_code,
                        error_title=st.error_title,
                    ),
                )
                if isinstance(applied, StatusEvent):
                    changes.append(applied)
            # A reaction to this message that came before its wamid was known (it waited too).
            reacted = lifecycle.apply_parked(conn, [(message.phone_number_id, wamid, message.id)], now)
            pending = [message_accepted_event(message, accepted.conversation, self.public_url)]
            pending.extend(status_changed_event(c.message, c.conversation, c.change) for c in changes)
            # Hooks read these from the log (the caller hands over the first ones only).
            pending.extend(message_changed_event(c.change, c.conversation) for c in reacted.applied)
            return accepted, changes, write_events(conn, pending, now)

        accepted, changes, logged = await self.run_write(body)
        if accepted is None:
            return None, []
        accepted = msgspec.structs.replace(accepted, event=logged[0])
        changes = [
            msgspec.structs.replace(c, event=e)
            for c, e in zip(changes, logged[1 : 1 + len(changes)], strict=True)
        ]
        return accepted, changes

    async def outbox_failed(self, item_id: int, *, code: int | None, title: str) -> StatusEvent | None:
        """A send failed for good: the message becomes ``failed`` (terminal)."""
        now = utcnow()

        def body(conn: sa.Connection) -> StatusEvent | None:
            row = (
                conn.execute(
                    outbox.update()
                    .where(outbox.c.id == item_id, outbox.c.state == "pending")
                    .values(
                        state="failed",
                        attempts=outbox.c.attempts + 1,
                        locked_until=None,
                        last_error=title,
                        updated_at=now,
                    )
                    .returning(outbox.c.message_id)
                )
            ).first()
            if row is None:
                return None
            updated = (
                conn.execute(
                    messages.update()
                    .where(messages.c.id == row.message_id, messages.c.status_rank < STATUS_RANK["failed"])
                    .values(
                        status="failed", status_rank=STATUS_RANK["failed"], error_code=code, error_title=title
                    )
                    .returning(*messages.c)
                )
            ).first()
            if updated is None:
                return None
            message = message_from_row(updated)
            change = StatusChange(
                message_id=message.id,
                status="failed",
                timestamp=str(int(now.timestamp())),
                error_code=code,
                error_title=title,
            )
            failed = self._status_event(conn, message, change)
            (event,) = write_events(conn, [status_changed_event(message, failed.conversation, change)], now)
            return msgspec.structs.replace(failed, event=event)

        return await self.run_write(body)

    async def outbox_requeue(self, message_id: int) -> Message | None:
        """Queue a failed send again: the message goes back to ``queued`` with a fresh retry window.

        Its wamid and error are cleared (a send Meta refused after accepting it gets a new wamid).
        The outbox row's ``created_at`` becomes now: it is when the current delivery began.

        Returns:
            The message as queued again, or ``None`` when it is not an outbound message in
            ``failed`` (a concurrent retry already re-queued it, for instance).
        """
        now = utcnow()
        async with self.write() as conn:
            updated = (
                await conn.execute(
                    messages.update()
                    .where(
                        messages.c.id == message_id,
                        messages.c.direction == "outbound",
                        messages.c.status == "failed",
                    )
                    .values(
                        status="queued",
                        status_rank=STATUS_RANK["queued"],
                        wamid=None,
                        delivered_at=None,
                        error_code=None,
                        error_title=None,
                    )
                    .returning(*messages.c)
                )
            ).first()
            if updated is None:
                return None
            message = message_from_row(updated)
            # Every outbound message has its outbox row (queue_outbound writes both together).
            await conn.execute(
                outbox.update()
                .where(outbox.c.message_id == message_id)
                .values(
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    locked_until=None,
                    last_error=None,
                    created_at=now,
                    updated_at=now,
                )
            )
        return message

    async def outbox_counts(self) -> dict[str, int]:
        """Outbox rows by state (for metrics and ``/ready``)."""
        async with self.read() as conn:
            rows = (
                await conn.execute(sa.select(outbox.c.state, sa.func.count()).group_by(outbox.c.state))
            ).all()
        return {r[0]: int(r[1]) for r in rows}
