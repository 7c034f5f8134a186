"""Inbound webhooks into the database: contacts, conversations, messages and statuses in one batch.

A whole batch of webhooks is one transaction (:meth:`IngestMixin.ingest`). Unique keys in the
database, not in-memory caches, make repeated webhooks harmless across processes and restarts.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from core.config import StorageConfig
from core.models import (
    Contact,
    Conversation,
    InboundMessage,
    InboundStatus,
    NumberChange,
    search_key,
    utcnow,
)
from core.storage import lifecycle
from core.storage.events import (
    message_accepted_event,
    message_changed_event,
    message_received_event,
    status_changed_event,
    write_events,
)
from core.storage.results import IngestResult, MessageEvent, StatusEvent
from core.storage.rows import Row, contact_from_row, conversation_from_row, message_from_row
from core.storage.sanitize import sanitize_batch
from core.storage.schema import UTCDateTime, contacts, conversations, messages, statuses
from core.storage.sqlite_raw import RawStatement, raw_cursor, sqlite_json, sqlite_time, sqlite_time_value
from core.storage.statuses import StatusMixin

__all__ = ["INLINE_BATCH", "IngestMixin"]

_KNOWN_MAX = 100_000

INLINE_BATCH = 8
"""Messages + statuses from which an ingest transaction's body runs on the event loop.

On SQLite (:meth:`~core.storage.engine.StorageEngine.run_write_inline`); measured in
docs/benchmarks.md ("Issue 13, sixth session"): at 64 connections (about 30 webhooks per
transaction) 4,700-4,900 -> 5,200-5,700 webhooks/s; at 1,000 webhooks/s (one or two per
transaction) the thread's way kept a lower ack tail at less CPU.
"""


@functools.cache
def _raw_message_insert(columns: tuple[str, ...]) -> RawStatement:
    """One message on SQLite's raw cursor (sqlite_raw) setting ``columns``; others take their defaults.

    Compiled from the keys of the rows themselves, so a column added to ``messages`` later needs
    no change here (as with SQLAlchemy, which inserts the keys it is given).
    """
    return RawStatement(
        sqlite.insert(messages)
        .on_conflict_do_nothing(index_elements=[messages.c.phone_number_id, messages.c.wamid])
        .returning(messages.c.id),
        list(columns),
    )


_RAW_CONVERSATION = RawStatement(
    sa.select(conversations).where(
        conversations.c.phone_number_id == sa.bindparam("pnid"),
        conversations.c.contact_id == sa.bindparam("cid"),
    )
)
# The positions _sqlite_conversation reads (a new column appends; a reorder would fail here).
assert [c.key for c in conversations.c][:10] == [
    "id",
    "phone_number_id",
    "contact_id",
    "created_at",
    "last_message_at",
    "last_inbound_at",
    "last_agent_at",
    "last_message_id",
    "mode",
    "mode_changed_at",
]


def _sqlite_conversation(v: Sequence[Any]) -> Conversation:
    """A row of ``_RAW_CONVERSATION`` as a :class:`Conversation`, straight from the tuple.

    What ``conversation_from_row`` gives for the row SQLAlchemy would read, without a dict and an
    adapter in between: one conversation is read per message of a batch.
    """
    return Conversation(
        id=v[0],
        phone_number_id=v[1],
        contact_id=v[2],
        created_at=sqlite_time_value(v[3]),  # type: ignore[arg-type]  # a NOT NULL column
        last_message_at=sqlite_time_value(v[4]),
        last_inbound_at=sqlite_time_value(v[5]),
        last_agent_at=sqlite_time_value(v[6]),
        last_message_id=v[7],
        mode=v[8],  # NOT NULL, server default "bot"
        mode_changed_at=sqlite_time_value(v[9]),
    )


# Advance a conversation to its newest message. The CASEs never move a timestamp backwards,
# whatever order concurrent transactions commit in (a backlog replayed by Meta included).
_ts = sa.bindparam("ts", type_=UTCDateTime())
_newer_inbound = sa.or_(conversations.c.last_inbound_at.is_(None), conversations.c.last_inbound_at < _ts)
_newer_message = sa.or_(conversations.c.last_message_at.is_(None), conversations.c.last_message_at <= _ts)
_ADVANCE_CONVERSATION = (
    conversations.update()
    .where(conversations.c.id == sa.bindparam("cid"))
    .values(
        last_inbound_at=sa.case((_newer_inbound, _ts), else_=conversations.c.last_inbound_at),
        last_message_at=sa.case((_newer_message, _ts), else_=conversations.c.last_message_at),
        last_message_id=sa.case((_newer_message, sa.bindparam("mid")), else_=conversations.c.last_message_id),
    )
)
_RAW_ADVANCE_CONVERSATION = RawStatement(_ADVANCE_CONVERSATION)


class IngestMixin(StatusMixin):
    """Stores inbound batches; remembers committed contacts and conversations to skip upserts."""

    def __init__(self, config: StorageConfig) -> None:
        super().__init__(config)
        # Rows this process has seen committed; an optimisation only, never a source of truth.
        self._known_contacts: dict[str, Contact] = {}
        self._known_conversations: dict[tuple[str, int], None] = {}

    async def ingest(
        self, inbound: Sequence[InboundMessage], inbound_statuses: Sequence[InboundStatus]
    ) -> IngestResult:
        """Store a batch of inbound messages and statuses in one transaction.

        Repeated messages (same business number + wamid) and statuses (same wamid + status) are
        absorbed by unique keys; stale statuses change nothing; statuses for unknown wamids are
        kept and applied when the message appears. What PostgreSQL would refuse is made storable
        first, or that one item set aside (:mod:`core.storage.sanitize`), so both backends store
        the same. Returns what is new, for hooks.
        """
        now = utcnow()
        inbound, inbound_statuses, set_aside = sanitize_batch(inbound, inbound_statuses)
        result = IngestResult(set_aside=set_aside)
        # Deduplicate inside the batch first: ON CONFLICT DO UPDATE may not touch a row twice.
        unique_msgs: dict[tuple[str, str], InboundMessage] = {}
        for msg in inbound:
            key = (msg.phone_number_id, msg.wamid)
            if key in unique_msgs:
                result.duplicate_messages += 1
            else:
                unique_msgs[key] = msg
        # Edits, deletions and reactions change another message instead of being one.
        plain: list[InboundMessage] = []
        changes: list[InboundMessage] = []
        for msg in unique_msgs.values():
            (plain if msg.action is None or isinstance(msg.action, NumberChange) else changes).append(msg)

        def body(conn: sa.Connection) -> tuple[tuple[list[Contact], list[tuple[str, int]]], list[int]]:
            # The whole transaction in one go (on SQLite, see INLINE_BATCH below for which thread).
            learned: tuple[list[Contact], list[tuple[str, int]]] = ([], [])
            moved: list[int] = []
            # A change and its target committed at once by two processes must see each other.
            lifecycle.lock_targets(  # lazily: consumed on PostgreSQL only
                conn,
                itertools.chain(
                    ((m.phone_number_id, m.wamid) for m in plain),
                    ((st.phone_number_id, st.wamid) for st in inbound_statuses if st.message_id is not None),
                    (
                        (m.phone_number_id, m.action.target_wamid)
                        for m in changes
                        if m.action is not None and not isinstance(m.action, NumberChange)
                    ),
                ),
            )
            batch = plain
            if any(isinstance(m.action, NumberChange) for m in batch):
                batch = self._drop_stored_number_changes(conn, batch, result)
            if batch:
                learned = self._ingest_messages(conn, batch, now, result)
            linked: list[tuple[str, str, int]] = []
            if inbound_statuses:
                linked = self._ingest_statuses(conn, inbound_statuses, now, result)
            if changes or result.new_messages or linked:
                moved = self._ingest_lifecycle(conn, changes, batch, now, result, linked)
            self._log_ingest(conn, result, now)
            return learned, moved

        # A large batch's body runs on the event loop (only its COMMIT in SQLite's writer thread):
        # at full rate that saves the two threads taking turns on the interpreter lock for every
        # statement. A small one runs whole in the thread, which keeps the loop serving meanwhile:
        # at a paced rate (one or two webhooks per transaction) that gives the lower tail.
        inline = len(inbound) + len(inbound_statuses) >= INLINE_BATCH
        learned, moved = await (self.run_write_inline(body) if inline else self.run_write(body))
        if moved:  # a contact changed number: its cached rows are stale
            for old, new in result.moved_contacts:
                self._known_contacts.pop(old, None)
                self._known_contacts.pop(new, None)
            for pair in [p for p in self._known_conversations if p[1] in moved]:
                del self._known_conversations[pair]
        # Only committed rows may enter the caches (a rolled-back id would not exist).
        for contact in learned[0]:
            self._known_contacts[contact.wa_id] = contact
        self._known_conversations.update(dict.fromkeys(learned[1]))
        while len(self._known_contacts) > _KNOWN_MAX:
            del self._known_contacts[next(iter(self._known_contacts))]
        while len(self._known_conversations) > _KNOWN_MAX:
            del self._known_conversations[next(iter(self._known_conversations))]
        return result

    def _drop_stored_number_changes(
        self, conn: sa.Connection, batch: list[InboundMessage], result: IngestResult
    ) -> list[InboundMessage]:
        """``batch`` without number changes already stored (redelivered by Meta).

        Their sender's number is gone once applied: storing them again would create an empty
        contact for it before the message's unique key absorbed the repeat.
        """
        keys = [(m.phone_number_id, m.wamid) for m in batch if isinstance(m.action, NumberChange)]
        query = sa.select(messages.c.phone_number_id, messages.c.wamid).where(
            sa.tuple_(messages.c.phone_number_id, messages.c.wamid).in_(keys)
        )
        stored = {(r.phone_number_id, r.wamid) for r in conn.execute(query)}
        result.duplicate_messages += len(stored)
        return [m for m in batch if (m.phone_number_id, m.wamid) not in stored]

    def _ingest_lifecycle(
        self,
        conn: sa.Connection,
        changes: list[InboundMessage],
        plain: list[InboundMessage],
        now: datetime,
        result: IngestResult,
        linked: list[tuple[str, str, int]],
    ) -> list[int]:
        """Edits, deletions, reactions and number changes (:mod:`core.storage.lifecycle`).

        ``linked`` are our messages whose wamid a status webhook just gave (``(phone_number_id,
        wamid, id)``): changes parked for them are applied, as for new messages.
        Returns the ids of contacts that changed number.
        """
        arrived = [
            (m.message.phone_number_id, m.message.wamid or "", m.message.id) for m in result.new_messages
        ]
        arrived += linked
        stored = {(pnid, wamid) for pnid, wamid, _ in arrived}
        result.moved_contacts = [
            (m.wa_id, m.action.new_wa_id)
            for m in plain
            if isinstance(m.action, NumberChange) and (m.phone_number_id, m.wamid) in stored
        ]
        outcome = lifecycle.ingest_lifecycle(conn, arrived, changes, result.moved_contacts, now)
        result.message_changes.extend(outcome.applied)
        result.pending_changes += outcome.parked
        result.stale_changes += outcome.stale
        result.duplicate_messages += outcome.duplicates
        return outcome.moved

    def _log_ingest(self, conn: sa.Connection, result: IngestResult, now: datetime) -> None:
        """Append the batch's events (messages, sends, statuses, changes), last; attach them to the result."""
        pending = [
            message_received_event(m.message, m.conversation, m.contact, self.public_url)
            for m in result.new_messages
        ]
        # A linked send is reported accepted before the status that linked it, as Graph's answer would.
        pending.extend(
            message_accepted_event(s.message, s.conversation, self.public_url) for s in result.sent_messages
        )
        pending.extend(
            status_changed_event(s.message, s.conversation, s.change) for s in result.status_changes
        )
        pending.extend(message_changed_event(c.change, c.conversation) for c in result.message_changes)
        events = iter(write_events(conn, pending, now))
        result.new_messages = [msgspec.structs.replace(m, event=next(events)) for m in result.new_messages]
        result.sent_messages = [msgspec.structs.replace(s, event=next(events)) for s in result.sent_messages]
        result.status_changes = [
            msgspec.structs.replace(s, event=next(events)) for s in result.status_changes
        ]
        result.message_changes = [
            msgspec.structs.replace(c, event=next(events)) for c in result.message_changes
        ]

    def _ingest_messages(
        self, conn: sa.Connection, batch: list[InboundMessage], now: datetime, result: IngestResult
    ) -> tuple[list[Contact], list[tuple[str, int]]]:
        # Contacts: the latest non-empty profile name in the batch wins. Contacts and
        # conversations are never deleted, so ones this process already stored (with the same
        # name) need no upsert: warm traffic costs three statements per batch, not six.
        names: dict[str, str | None] = {}
        for msg in batch:
            names[msg.wa_id] = msg.profile_name or names.get(msg.wa_id)
        contact_by_wa: dict[str, Contact] = {}
        unknown: list[str] = []
        for wa_id, name in names.items():
            known = self._known_contacts.get(wa_id)
            if known is not None and (name is None or name == known.name):
                contact_by_wa[wa_id] = known
            else:
                unknown.append(wa_id)
        new_contacts: list[Contact] = []
        if unknown:
            unknown.sort()  # stable lock order across concurrent transactions (no deadlocks)
            ins = self.insert(contacts)
            conn.execute(
                ins.on_conflict_do_update(
                    index_elements=[contacts.c.wa_id],
                    set_={
                        "name": ins.excluded.name,
                        "search_name": ins.excluded.search_name,
                        "updated_at": ins.excluded.updated_at,
                    },
                    where=sa.and_(
                        ins.excluded.name.is_not(None), ins.excluded.name.is_distinct_from(contacts.c.name)
                    ),
                ),
                [
                    {
                        "wa_id": w,
                        "name": names[w],
                        "search_name": search_key(names[w] or ""),
                        "created_at": now,
                        "updated_at": now,
                    }
                    for w in unknown
                ],
            )
            found = (conn.execute(sa.select(contacts).where(contacts.c.wa_id.in_(unknown)))).all()
            new_contacts = [contact_from_row(r) for r in found]
            contact_by_wa.update((c.wa_id, c) for c in new_contacts)

        pairs = sorted({(m.phone_number_id, contact_by_wa[m.wa_id].id) for m in batch})
        missing = [p for p in pairs if p not in self._known_conversations]
        if missing:
            conn.execute(
                self.insert(conversations).on_conflict_do_nothing(
                    index_elements=[conversations.c.phone_number_id, conversations.c.contact_id]
                ),
                [{"phone_number_id": p, "contact_id": c, "created_at": now} for p, c in missing],
            )
        cursor = raw_cursor(conn)

        def read_conversations() -> dict[tuple[str, int], Conversation]:
            if cursor is not None:
                # SQLite: one prepared lookup per pair (C speed), rows converted without SQLAlchemy.
                return {
                    pair: _sqlite_conversation(v)
                    for pair in pairs
                    for v in _RAW_CONVERSATION.execute(cursor, {"pnid": pair[0], "cid": pair[1]})
                }
            query = sa.select(conversations).where(
                sa.tuple_(conversations.c.phone_number_id, conversations.c.contact_id).in_(pairs)
            )
            return {(r.phone_number_id, r.contact_id): conversation_from_row(r) for r in conn.execute(query)}

        conv_rows = read_conversations()
        if len(conv_rows) < len(pairs):
            # A conversation this process remembered has moved to another contact (a number
            # change stored by another process): create the missing ones after all.
            gone = [p for p in pairs if p not in conv_rows]
            conn.execute(
                self.insert(conversations).on_conflict_do_nothing(
                    index_elements=[conversations.c.phone_number_id, conversations.c.contact_id]
                ),
                [{"phone_number_id": p, "contact_id": c, "created_at": now} for p, c in gone],
            )
            missing = sorted({*missing, *gone})
            conv_rows = read_conversations()

        rows: list[dict[str, Any]] = []
        for msg in batch:
            rows.append(
                {
                    "conversation_id": conv_rows[(msg.phone_number_id, contact_by_wa[msg.wa_id].id)].id,
                    "phone_number_id": msg.phone_number_id,
                    "wamid": msg.wamid,
                    "direction": "inbound",
                    "type": msg.type,
                    "body": msg.body,
                    "status": "received",
                    "status_rank": 0,
                    "automated": False,
                    "source": None,
                    "delivered_at": msg.timestamp,
                    "received_at": now,
                    "media_id": msg.media_id,
                    "media_mime_type": msg.media_mime_type,
                    "context_wamid": msg.context_wamid,
                    "content": None,
                    "raw": msg.raw,
                    "error_code": msg.error_code,
                    "error_title": msg.error_title,
                }
            )
        if cursor is not None:
            # SQLite: one prepared statement per row; values as SQLAlchemy would store them.
            received, null = sqlite_time(now), sqlite_json(None)
            insert = _raw_message_insert(tuple(rows[0]))
            new_ids: dict[tuple[str, str | None], int] = {}
            for row in rows:
                stored = {
                    **row,
                    "delivered_at": sqlite_time(row["delivered_at"]),
                    "received_at": received,
                    "content": null,
                    "raw": sqlite_json(row["raw"]),
                }
                for (mid,) in insert.execute(cursor, stored):
                    new_ids[(row["phone_number_id"], row["wamid"])] = mid
        else:
            inserted = conn.execute(
                self.insert(messages)
                .on_conflict_do_nothing(index_elements=[messages.c.phone_number_id, messages.c.wamid])
                .returning(messages.c.id, messages.c.phone_number_id, messages.c.wamid),
                rows,
            )
            new_ids = {(r.phone_number_id, r.wamid): r.id for r in inserted}
        result.duplicate_messages += len(batch) - len(new_ids)
        if not new_ids:
            return new_contacts, missing

        # Advance the conversations (_ADVANCE_CONVERSATION), each to its newest message.
        latest: dict[int, tuple[datetime, int]] = {}
        for row in rows:
            mid = new_ids.get((row["phone_number_id"], row["wamid"]))
            if mid is None:
                continue
            cid = row["conversation_id"]
            ts = row["delivered_at"]
            if cid not in latest or (ts, mid) > latest[cid]:
                latest[cid] = (ts, mid)
        order = sorted(latest.items())
        if cursor is not None:
            _RAW_ADVANCE_CONVERSATION.executemany(
                cursor, [{"cid": cid, "ts": sqlite_time(ts), "mid": mid} for cid, (ts, mid) in order]
            )
        else:
            conn.execute(
                _ADVANCE_CONVERSATION, [{"cid": cid, "ts": ts, "mid": mid} for cid, (ts, mid) in order]
            )
        # The same rule applied to the rows read above gives what the hooks see, without a re-read.
        conv_by_id: dict[int, Conversation] = {}
        for conv in conv_rows.values():
            if conv.id not in latest:
                continue
            ts, mid = latest[conv.id]
            newer = conv.last_message_at is None or conv.last_message_at <= ts
            conv_by_id[conv.id] = msgspec.structs.replace(
                conv,
                last_inbound_at=max(conv.last_inbound_at, ts) if conv.last_inbound_at else ts,
                last_message_at=ts if newer else conv.last_message_at,
                last_message_id=mid if newer else conv.last_message_id,
            )
        contact_by_id = {c.id: c for c in contact_by_wa.values()}
        for row in rows:
            mid = new_ids.get((row["phone_number_id"], row["wamid"]))
            if mid is None:
                continue
            conv = conv_by_id[row["conversation_id"]]
            message = message_from_row(Row({**row, "id": mid}))
            result.new_messages.append(MessageEvent(message, conv, contact_by_id[conv.contact_id]))
        return new_contacts, missing

    def _ingest_statuses(
        self, conn: sa.Connection, batch: Sequence[InboundStatus], now: datetime, result: IngestResult
    ) -> list[tuple[str, str, int]]:
        """Store and apply statuses; the messages a status gave their wamid (``_link_by_message_id``)."""
        linked: list[tuple[str, str, int]] = []
        unique: dict[tuple[str, str, str], InboundStatus] = {}
        for st in batch:
            key = (st.phone_number_id, st.wamid, st.status)
            if key in unique:
                result.duplicate_statuses += 1
            else:
                unique[key] = st
        inserted = conn.execute(
            self.insert(statuses)
            .on_conflict_do_nothing(
                index_elements=[statuses.c.phone_number_id, statuses.c.wamid, statuses.c.status]
            )
            .returning(statuses.c.id, statuses.c.phone_number_id, statuses.c.wamid, statuses.c.status),
            [
                {
                    "phone_number_id": st.phone_number_id,
                    "wamid": st.wamid,
                    "status": st.status,
                    "timestamp": st.timestamp,
                    "error_code": st.error_code,
                    "error_title": st.error_title,
                    "raw": st.raw,
                    "received_at": now,
                }
                for st in unique.values()
            ],
        )
        new_rows = {(r.phone_number_id, r.wamid, r.status): r.id for r in inserted}
        result.duplicate_statuses += len(unique) - len(new_rows)
        # Apply in arrival order; the rank check makes the outcome order-independent.
        for key, st in unique.items():
            status_id = new_rows.get(key)
            if status_id is None:
                continue
            outcome = self._apply_status(conn, status_id, st)
            if outcome == "pending" and st.message_id is not None:
                # The status names our message: link it if the send's answer never came. If that
                # answer is being stored right now, the link waits for it and then finds the wamid
                # set; applying again sees it (a new statement), where parking the status would
                # lose it: the answer has already looked for parked statuses and not seen this one.
                accepted = self._link_by_message_id(conn, st, now)
                if accepted is not None:
                    linked.append((st.phone_number_id, st.wamid, st.message_id))
                    result.sent_messages.append(accepted)
                outcome = self._apply_status(conn, status_id, st)
            if isinstance(outcome, StatusEvent):
                result.status_changes.append(outcome)
            elif outcome == "stale":
                result.stale_statuses += 1
            else:
                result.pending_statuses += 1
        return linked
