"""Inbound webhooks into the database: contacts, conversations, messages and statuses in one batch.

A whole batch of webhooks is one transaction (:meth:`IngestMixin.ingest`). Unique keys in the
database, not in-memory caches, make repeated webhooks harmless across processes and restarts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

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
from core.storage.engine import StorageError
from core.storage.events import message_changed_event, message_received_event, status_changed_event
from core.storage.results import IngestResult, MessageEvent, StatusEvent
from core.storage.rows import Row, contact_from_row, conversation_from_row, message_from_row
from core.storage.sanitize import sanitize_batch
from core.storage.schema import UTCDateTime, contacts, conversations, messages, statuses
from core.storage.statuses import StatusMixin

__all__ = ["IngestMixin"]

_KNOWN_MAX = 100_000


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
        learned: tuple[list[Contact], list[tuple[str, int]]] = ([], [])
        moved: list[int] = []
        try:
            async with self.write() as conn:
                if any(isinstance(m.action, NumberChange) for m in plain):
                    plain = await self._drop_stored_number_changes(conn, plain, result)
                if plain:
                    learned = await self._ingest_messages(conn, plain, now, result)
                if inbound_statuses:
                    await self._ingest_statuses(conn, inbound_statuses, now, result)
                if changes or result.new_messages:
                    moved = await self._ingest_lifecycle(conn, changes, plain, now, result)
                await self._log_ingest(conn, result, now)
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise StorageError(f"storing a webhook batch failed: {exc.__class__.__name__}: {exc}") from exc
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

    async def _drop_stored_number_changes(
        self, conn: AsyncConnection, batch: list[InboundMessage], result: IngestResult
    ) -> list[InboundMessage]:
        """``batch`` without number changes already stored (redelivered by Meta).

        Their sender's number is gone once applied: storing them again would create an empty
        contact for it before the message's unique key absorbed the repeat.
        """
        keys = [(m.phone_number_id, m.wamid) for m in batch if isinstance(m.action, NumberChange)]
        query = sa.select(messages.c.phone_number_id, messages.c.wamid).where(
            sa.tuple_(messages.c.phone_number_id, messages.c.wamid).in_(keys)
        )
        stored = {(r.phone_number_id, r.wamid) for r in await conn.execute(query)}
        result.duplicate_messages += len(stored)
        return [m for m in batch if (m.phone_number_id, m.wamid) not in stored]

    async def _ingest_lifecycle(
        self,
        conn: AsyncConnection,
        changes: list[InboundMessage],
        plain: list[InboundMessage],
        now: datetime,
        result: IngestResult,
    ) -> list[int]:
        """Edits, deletions, reactions and number changes (:mod:`core.storage.lifecycle`).

        Returns the ids of contacts that changed number.
        """
        arrived = [
            (m.message.phone_number_id, m.message.wamid or "", m.message.id) for m in result.new_messages
        ]
        stored = {(pnid, wamid) for pnid, wamid, _ in arrived}
        result.moved_contacts = [
            (m.wa_id, m.action.new_wa_id)
            for m in plain
            if isinstance(m.action, NumberChange) and (m.phone_number_id, m.wamid) in stored
        ]
        outcome = await conn.run_sync(
            lifecycle.ingest_lifecycle, arrived, changes, result.moved_contacts, now
        )
        result.message_changes.extend(outcome.applied)
        result.pending_changes += outcome.parked
        result.stale_changes += outcome.stale
        result.duplicate_messages += outcome.duplicates
        return outcome.moved

    async def _log_ingest(self, conn: AsyncConnection, result: IngestResult, now: datetime) -> None:
        """Append the batch's events (messages, statuses, then changes), last; attach them to the result."""
        pending = [
            message_received_event(m.message, m.conversation, m.contact, self.public_url)
            for m in result.new_messages
        ]
        pending.extend(
            status_changed_event(s.message, s.conversation, s.change) for s in result.status_changes
        )
        pending.extend(message_changed_event(c.change, c.conversation) for c in result.message_changes)
        events = iter(await self.append_events(conn, pending, now))
        result.new_messages = [msgspec.structs.replace(m, event=next(events)) for m in result.new_messages]
        result.status_changes = [
            msgspec.structs.replace(s, event=next(events)) for s in result.status_changes
        ]
        result.message_changes = [
            msgspec.structs.replace(c, event=next(events)) for c in result.message_changes
        ]

    async def _ingest_messages(
        self, conn: AsyncConnection, batch: list[InboundMessage], now: datetime, result: IngestResult
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
            await conn.execute(
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
            found = (await conn.execute(sa.select(contacts).where(contacts.c.wa_id.in_(unknown)))).all()
            new_contacts = [contact_from_row(r) for r in found]
            contact_by_wa.update((c.wa_id, c) for c in new_contacts)

        pairs = sorted({(m.phone_number_id, contact_by_wa[m.wa_id].id) for m in batch})
        missing = [p for p in pairs if p not in self._known_conversations]
        if missing:
            await conn.execute(
                self.insert(conversations).on_conflict_do_nothing(
                    index_elements=[conversations.c.phone_number_id, conversations.c.contact_id]
                ),
                [{"phone_number_id": p, "contact_id": c, "created_at": now} for p, c in missing],
            )
        conv_query = sa.select(conversations).where(
            sa.tuple_(conversations.c.phone_number_id, conversations.c.contact_id).in_(pairs)
        )
        conv_rows = {
            (r.phone_number_id, r.contact_id): conversation_from_row(r)
            for r in await conn.execute(conv_query)
        }
        if len(conv_rows) < len(pairs):
            # A conversation this process remembered has moved to another contact (a number
            # change stored by another process): create the missing ones after all.
            gone = [p for p in pairs if p not in conv_rows]
            await conn.execute(
                self.insert(conversations).on_conflict_do_nothing(
                    index_elements=[conversations.c.phone_number_id, conversations.c.contact_id]
                ),
                [{"phone_number_id": p, "contact_id": c, "created_at": now} for p, c in gone],
            )
            missing = sorted({*missing, *gone})
            conv_rows = {
                (r.phone_number_id, r.contact_id): conversation_from_row(r)
                for r in await conn.execute(conv_query)
            }

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
        inserted = await conn.execute(
            self.insert(messages)
            .on_conflict_do_nothing(index_elements=[messages.c.phone_number_id, messages.c.wamid])
            .returning(messages.c.id, messages.c.phone_number_id, messages.c.wamid),
            rows,
        )
        new_ids = {(r.phone_number_id, r.wamid): r.id for r in inserted}
        result.duplicate_messages += len(batch) - len(new_ids)
        if not new_ids:
            return new_contacts, missing

        # Advance the conversations in one statement. The CASEs never move a timestamp backwards,
        # whatever order concurrent transactions commit in (a backlog replayed by Meta included).
        latest: dict[int, tuple[datetime, int]] = {}
        for row in rows:
            mid = new_ids.get((row["phone_number_id"], row["wamid"]))
            if mid is None:
                continue
            cid = row["conversation_id"]
            ts = row["delivered_at"]
            if cid not in latest or (ts, mid) > latest[cid]:
                latest[cid] = (ts, mid)
        ts_param = sa.bindparam("ts", type_=UTCDateTime())
        mid_param: sa.BindParameter[int] = sa.bindparam("mid")
        newer_inbound = sa.or_(
            conversations.c.last_inbound_at.is_(None), conversations.c.last_inbound_at < ts_param
        )
        newer_message = sa.or_(
            conversations.c.last_message_at.is_(None), conversations.c.last_message_at <= ts_param
        )
        await conn.execute(
            conversations.update()
            .where(conversations.c.id == sa.bindparam("cid"))
            .values(
                last_inbound_at=sa.case((newer_inbound, ts_param), else_=conversations.c.last_inbound_at),
                last_message_at=sa.case((newer_message, ts_param), else_=conversations.c.last_message_at),
                last_message_id=sa.case((newer_message, mid_param), else_=conversations.c.last_message_id),
            ),
            [{"cid": cid, "ts": ts, "mid": mid} for cid, (ts, mid) in sorted(latest.items())],
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

    async def _ingest_statuses(
        self, conn: AsyncConnection, batch: Sequence[InboundStatus], now: datetime, result: IngestResult
    ) -> None:
        unique: dict[tuple[str, str, str], InboundStatus] = {}
        for st in batch:
            key = (st.phone_number_id, st.wamid, st.status)
            if key in unique:
                result.duplicate_statuses += 1
            else:
                unique[key] = st
        inserted = await conn.execute(
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
            outcome = await self._apply_status(conn, status_id, st)
            if outcome == "pending" and st.message_id is not None:
                # The status names our message: link it if the send's answer never came. If that
                # answer is being stored right now, the link waits for it and then finds the wamid
                # set; applying again sees it (a new statement), where parking the status would
                # lose it: the answer has already looked for parked statuses and not seen this one.
                await self._link_by_message_id(conn, st, now)
                outcome = await self._apply_status(conn, status_id, st)
            if isinstance(outcome, StatusEvent):
                result.status_changes.append(outcome)
            elif outcome == "stale":
                result.stale_statuses += 1
            else:
                result.pending_statuses += 1
