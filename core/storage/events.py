"""The event log: appending in the transaction of a change, reading, named cursors, pruning.

Every change that the outside world hears about (an inbound message stored, a send accepted or
failed, a status moved forward, a conversation's mode changed) appends a row here in the *same
transaction* as the change, so an event exists exactly when its change does, across ``kill -9`` too.

Ordering across concurrent writers (several processes on PostgreSQL). A sequence hands out ids
in call order but transactions commit in any order, so a reader that remembers "the highest id
seen" could skip an id committed a moment later. Instead, ids come from one counter row
(``event_sequence``), updated as the *last* statement of each event-producing transaction: the
row lock is held until commit, so the next writer gets its ids only after this one committed.
Ids are therefore dense (a rolled-back transaction rolls its counter back too) and in commit
order: once id ``n`` is visible, every id below it is visible or pruned. Readers need no gap
handling, and ``after=<id>`` is a complete resume point. The cost is that event-producing
commits take turns on one row for the few milliseconds of their commit; group commit (one
transaction per batch of webhooks) keeps that small. SQLite has one writer anyway and runs the
same code path.

Payloads are encoded once (msgspec JSON) when written; readers hand out the stored bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from core.event_payloads import (
    CHANGE_EVENT_TYPES,
    EVENT_CONVERSATION,
    EVENT_MESSAGE,
    EVENT_SENT,
    EVENT_STATUS,
    conversation_updated_event,
    encode_payload,
    message_change_event,
    message_event,
    message_sent_event,
    message_status_event,
)
from core.models import Contact, Conversation, Event, Message, MessageChange, StatusChange, utcnow
from core.storage.engine import StorageEngine, StorageError
from core.storage.rows import event_from_row
from core.storage.schema import event_cursors, event_log, event_sequence
from core.storage.sqlite_raw import RawStatement, raw_cursor, sqlite_time

__all__ = ["EventBounds", "EventLogMixin", "LeaderLock", "PendingEvent", "write_events"]

_SEQUENCE_ROW = 1


class PendingEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event built inside a transaction, before the log gives it an id."""

    type: str
    conversation_id: int | None
    phone_number_id: str | None
    message_id: int | None
    data: bytes


class EventBounds(msgspec.Struct, frozen=True, kw_only=True):
    """What the log holds: ``oldest`` id still stored (``None`` when empty) and the ``last`` id given."""

    oldest: int | None
    last: int


def message_received_event(
    message: Message, conversation: Conversation, contact: Contact, public_url: str
) -> PendingEvent:
    """``whatsapp:message`` for a newly stored inbound message."""
    return PendingEvent(
        type=EVENT_MESSAGE,
        conversation_id=conversation.id,
        phone_number_id=conversation.phone_number_id,
        message_id=message.id,
        data=encode_payload(message_event(message, conversation, contact, public_url)),
    )


def message_accepted_event(message: Message, conversation: Conversation, public_url: str) -> PendingEvent:
    """``whatsapp:message_sent`` for a send Graph accepted."""
    return PendingEvent(
        type=EVENT_SENT,
        conversation_id=conversation.id,
        phone_number_id=conversation.phone_number_id,
        message_id=message.id,
        data=encode_payload(message_sent_event(message, conversation, public_url)),
    )


def status_changed_event(message: Message, conversation: Conversation, change: StatusChange) -> PendingEvent:
    """``whatsapp:message_status`` for a status that moved a message forward."""
    return PendingEvent(
        type=EVENT_STATUS,
        conversation_id=conversation.id,
        phone_number_id=conversation.phone_number_id,
        message_id=message.id,
        data=encode_payload(message_status_event(change, conversation)),
    )


def mode_changed_event(conversation: Conversation) -> PendingEvent:
    """``whatsapp:conversation_updated`` for a conversation whose mode just changed."""
    return PendingEvent(
        type=EVENT_CONVERSATION,
        conversation_id=conversation.id,
        phone_number_id=conversation.phone_number_id,
        message_id=None,
        data=encode_payload(conversation_updated_event(conversation)),
    )


def message_changed_event(change: MessageChange, conversation: Conversation) -> PendingEvent:
    """``whatsapp:message_updated``, ``_deleted`` or ``_reaction`` for a change applied to a message."""
    return PendingEvent(
        type=CHANGE_EVENT_TYPES[change.kind],
        conversation_id=conversation.id,
        phone_number_id=conversation.phone_number_id,
        message_id=change.message_id,
        data=encode_payload(message_change_event(change, conversation)),
    )


def write_events(conn: sa.Connection, pending: Sequence[PendingEvent], now: datetime) -> list[Event]:
    """Append ``pending`` to the log inside the caller's transaction; call it *last*.

    The counter row stays locked until the caller commits (see the module docstring), so
    nothing may follow this in the transaction but the commit.
    """
    if not pending:
        return []
    cursor = raw_cursor(conn)
    if cursor is not None:
        last = _RAW_ADVANCE.execute(cursor, {"n": len(pending)})[0][0]
    else:
        last = conn.execute(_ADVANCE, {"n": len(pending)}).scalar_one()
    first = last - len(pending) + 1
    events = [
        Event(
            id=first + i,
            type=p.type,
            conversation_id=p.conversation_id,
            phone_number_id=p.phone_number_id,
            message_id=p.message_id,
            created_at=now,
            data=p.data,
        )
        for i, p in enumerate(pending)
    ]
    created = sqlite_time(now) if cursor is not None else now
    rows = [
        {
            "id": e.id,
            "type": e.type,
            "conversation_id": e.conversation_id,
            "phone_number_id": e.phone_number_id,
            "message_id": e.message_id,
            "data": e.data,
            "created_at": created,
        }
        for e in events
    ]
    if cursor is not None:
        _RAW_LOG.executemany(cursor, rows)
    else:
        conn.execute(event_log.insert(), rows)
    return events


_ADVANCE = (
    event_sequence.update()
    .where(event_sequence.c.id == _SEQUENCE_ROW)
    .values(last_id=event_sequence.c.last_id + sa.bindparam("n"))
    .returning(event_sequence.c.last_id)
)
_RAW_ADVANCE = RawStatement(_ADVANCE)
_RAW_LOG = RawStatement(
    event_log.insert(),
    ["id", "type", "conversation_id", "phone_number_id", "message_id", "data", "created_at"],
)


class EventLogMixin(StorageEngine):
    """The event log part of :class:`core.storage.Storage`; see the module docstring."""

    public_url: str = ""
    """Base URL written into media links of event payloads (set by the host)."""

    # -- writing ---------------------------------------------------------------------------

    async def append_events(
        self, conn: AsyncConnection, pending: Sequence[PendingEvent], now: datetime
    ) -> list[Event]:
        """:func:`write_events` for an async transaction (``write()``); call it *last*."""
        return await conn.run_sync(write_events, pending, now)

    # -- reading ---------------------------------------------------------------------------

    async def read_events(
        self,
        after: int = 0,
        limit: int = 100,
        *,
        types: Sequence[str] | None = None,
        phone_number_ids: Sequence[str] | None = None,
        conversation_id: int | None = None,
        message_id: int | None = None,
        until: int | None = None,
    ) -> list[Event]:
        """Events with ``after < id`` (``<= until`` when given), oldest first, at most ``limit``.

        Every filter narrows: ``types`` (event names), ``phone_number_ids`` (a token's scope;
        ``None`` means every number), ``conversation_id`` and ``message_id`` (one room). Ids
        are commit-ordered with no gaps, so the last id returned is a safe next ``after``.

        Raises:
            StorageError: the database failed.
        """
        query = sa.select(event_log).where(event_log.c.id > after).order_by(event_log.c.id).limit(limit)
        if until is not None:
            query = query.where(event_log.c.id <= until)
        if types is not None:
            query = query.where(event_log.c.type.in_(list(types)))
        if phone_number_ids is not None:
            query = query.where(event_log.c.phone_number_id.in_(list(phone_number_ids)))
        if conversation_id is not None:
            query = query.where(event_log.c.conversation_id == conversation_id)
        if message_id is not None:
            query = query.where(event_log.c.message_id == message_id)
        try:
            async with self.read() as conn:
                rows = (await conn.execute(query)).all()
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise StorageError(f"reading the event log failed: {exc.__class__.__name__}") from exc
        return [event_from_row(r) for r in rows]

    async def event_bounds(self) -> EventBounds:
        """The oldest stored id and the last id given out (every id up to it is committed)."""
        async with self.read() as conn:
            last = (
                await conn.execute(
                    sa.select(event_sequence.c.last_id).where(event_sequence.c.id == _SEQUENCE_ROW)
                )
            ).scalar_one()
            oldest = (await conn.execute(sa.select(sa.func.min(event_log.c.id)))).scalar()
        return EventBounds(oldest=oldest, last=int(last))

    # -- cursors ---------------------------------------------------------------------------

    async def get_cursor(self, name: str) -> int | None:
        """The position stored under ``name`` (every event up to it was handled), or ``None``."""
        async with self.read() as conn:
            value = (
                await conn.execute(sa.select(event_cursors.c.position).where(event_cursors.c.name == name))
            ).scalar()
        return None if value is None else int(value)

    async def set_cursor(self, name: str, position: int, *, forward_only: bool = True) -> int:
        """Store ``position`` under ``name`` (created when missing); returns the stored position.

        With ``forward_only`` (the default) a cursor never moves back, so a late writer cannot
        undo a newer one's progress; pass ``False`` to rewind it on purpose (a replay).
        """
        now = utcnow()
        ins = self.insert(event_cursors)
        update = {"position": ins.excluded.position, "updated_at": ins.excluded.updated_at}
        where = event_cursors.c.position < ins.excluded.position if forward_only else None
        upsert = ins.on_conflict_do_update(index_elements=[event_cursors.c.name], set_=update, where=where)

        def body(conn: sa.Connection) -> int:
            conn.execute(upsert, {"name": name, "position": position, "updated_at": now})
            return int(
                conn.execute(
                    sa.select(event_cursors.c.position).where(event_cursors.c.name == name)
                ).scalar_one()
            )

        return await self.run_write(body)

    async def delete_cursor(self, name: str) -> None:
        """Forget a cursor (a removed subscriber)."""
        await self.write_one(event_cursors.delete().where(event_cursors.c.name == name))

    async def list_cursors(self) -> dict[str, int]:
        """Every cursor by name."""
        async with self.read() as conn:
            rows = (await conn.execute(sa.select(event_cursors.c.name, event_cursors.c.position))).all()
        return {r.name: int(r.position) for r in rows}

    # -- retention -------------------------------------------------------------------------

    async def prune_events(
        self,
        *,
        max_age: timedelta | None,
        max_count: int | None,
        keep_after: int | None = None,
        batch: int = 5_000,
    ) -> int:
        """Delete the oldest events beyond ``max_age`` or beyond the newest ``max_count``.

        Works from the oldest row up in short transactions of ``batch`` rows, so writers are
        never held for long. Events after ``keep_after`` (a cursor that must not lose
        anything, such as the hook dispatcher's) are kept whatever their age.

        Returns:
            How many events were deleted.
        """
        cutoff = utcnow() - max_age if max_age is not None else None
        deleted = 0
        while True:
            bounds_last = (await self.event_bounds()).last
            count_cut = bounds_last - max_count if max_count is not None else None
            async with self.read() as conn:
                rows = (
                    await conn.execute(
                        sa.select(event_log.c.id, event_log.c.created_at)
                        .order_by(event_log.c.id)
                        .limit(batch)
                    )
                ).all()
            upto: int | None = None
            for row in rows:
                if (count_cut is not None and row.id <= count_cut) or (
                    cutoff is not None and row.created_at < cutoff
                ):
                    upto = row.id
                else:
                    break
            if upto is not None and keep_after is not None:
                upto = min(upto, keep_after)
            if upto is None or upto < rows[0].id:
                return deleted
            deleted += await self.write_one(event_log.delete().where(event_log.c.id <= upto))
            if upto != rows[-1].id:
                return deleted


class LeaderLock:
    """One holder at a time across processes sharing a database.

    PostgreSQL: a session advisory lock on a connection of its own, in autocommit so it never
    holds a transaction (and the vacuum horizon) open. SQLite: an exclusive ``flock`` on a file
    beside the database. Either way a process that dies loses the lock with its connection or
    file descriptor, so another process takes over at its next :meth:`held` call.
    """

    def __init__(self, storage: StorageEngine, name: str) -> None:
        self.storage = storage
        self.name = name
        # Advisory lock keys are 64-bit integers; derive a stable one from the name.
        self.key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
        self._conn: AsyncConnection | None = None
        self._fd: int | None = None

    async def held(self) -> bool:
        """Whether this process holds the lock now (taking it when free)."""
        if self.storage.dialect != "postgresql":
            return self._held_file()
        try:
            if self._conn is not None:
                await self._conn.execute(sa.text("SELECT 1"))
                return True
            conn = await self.storage.engine.connect()
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            got = (await conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key})).scalar()
            if got:
                self._conn = conn
                return True
            await conn.close()
            return False
        except (OSError, sa.exc.SQLAlchemyError):
            await self.release()
            return False

    def _held_file(self) -> bool:
        if self._fd is not None:
            return True
        path = f"{self.storage.url.database}.{self.name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def release(self) -> None:
        """Give the lock up (closing its connection or file releases it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock
