"""Durable storage: one code path for SQLite (embedded default) and PostgreSQL.

Everything that must survive a crash goes through here, in as few transactions as the work
allows: a whole batch of webhooks is one transaction (:meth:`Storage.ingest`), a send is one
transaction (message row + outbox row + idempotency key). Unique keys in the database, not
in-memory caches, make repeated webhooks harmless across processes and restarts.

SQLite allows one writer at a time; an in-process lock serialises our write transactions so
they queue in asyncio instead of failing with ``database is locked``. Several processes need
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from core.config import StorageConfig, redact_url
from core.errors import ConfigError, ConflictError, ZaphubError
from core.models import (
    STATUS_RANK,
    Contact,
    Conversation,
    InboundMessage,
    InboundStatus,
    Message,
    OutgoingMessage,
    StatusChange,
    utcnow,
)
from core.storage.schema import (
    UTCDateTime,
    contacts,
    conversations,
    idempotency_keys,
    messages,
    metadata,
    outbox,
    plugin_state,
    statuses,
)

__all__ = [
    "CALLBACK_PREFIX",
    "IngestResult",
    "MessageEvent",
    "OutboxItem",
    "StatusEvent",
    "Storage",
    "StorageError",
    "database_url",
    "metadata",
]

log = logging.getLogger("zaphub.storage")

#: Prefix of ``biz_opaque_callback_data`` on our sends: Meta echoes it in status webhooks, which
#: lets a status link a message whose Graph answer never arrived (a timeout after sending).
CALLBACK_PREFIX = "zaphub:"
_KNOWN_MAX = 100_000


class StorageError(ZaphubError):
    """The database failed (unreachable, constraint, timeout). Retryable by the caller."""


class MessageEvent(msgspec.Struct, frozen=True):
    """A newly stored message with its conversation and contact, for hooks."""

    message: Message
    conversation: Conversation
    contact: Contact


class StatusEvent(msgspec.Struct, frozen=True):
    """A status that moved a message forward, for hooks."""

    message: Message
    conversation: Conversation
    change: StatusChange


class IngestResult(msgspec.Struct, kw_only=True):
    """What one :meth:`Storage.ingest` call changed."""

    new_messages: list[MessageEvent] = msgspec.field(default_factory=list)
    status_changes: list[StatusEvent] = msgspec.field(default_factory=list)
    duplicate_messages: int = 0
    duplicate_statuses: int = 0
    stale_statuses: int = 0
    pending_statuses: int = 0
    """Statuses kept for a message not known yet; applied when it appears."""


class OutboxItem(msgspec.Struct, frozen=True, kw_only=True):
    """A claimed send: the outbox row and its message."""

    id: int
    message: Message
    recipient: str
    attempts: int
    """Attempts made before this one."""


def database_url(url: str) -> sa.URL:
    """``storage.url`` as the async driver URL it will be opened with; nothing is created.

    ``zaphub check`` and ``zaphub run`` both go through here, so check refuses what run would.

    Raises:
        ConfigError: not a URL, an unsupported database, or an in-memory SQLite database.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(
            f"{redact_url(url)!r} is not a database URL: use sqlite:///zaphub.db or postgresql://user:pass@host/db",
            "storage.url",
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise ConfigError(
                "an in-memory SQLite database loses everything on restart: use a file, sqlite:///zaphub.db",
                "storage.url",
            )
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://", "storage.url")


def _message(row: Any) -> Message:
    m = row._mapping
    return Message(
        id=m["id"],
        conversation_id=m["conversation_id"],
        phone_number_id=m["phone_number_id"],
        direction=m["direction"],
        type=m["type"],
        body=m["body"],
        status=m["status"],
        wamid=m["wamid"],
        sender_type="contact" if m["direction"] == "inbound" else "user",
        delivered_at=m["delivered_at"],
        received_at=m["received_at"],
        automated=bool(m["automated"]),
        media_id=m["media_id"],
        media_mime_type=m["media_mime_type"],
        context_wamid=m["context_wamid"],
        content=m["content"],
        raw=m["raw"],
        error_code=m["error_code"],
        error_title=m["error_title"],
    )


def _conversation(row: Any) -> Conversation:
    m = row._mapping
    return Conversation(
        id=m["id"],
        phone_number_id=m["phone_number_id"],
        contact_id=m["contact_id"],
        created_at=m["created_at"],
        last_message_at=m["last_message_at"],
        last_inbound_at=m["last_inbound_at"],
        last_agent_at=m["last_agent_at"],
        last_message_id=m["last_message_id"],
    )


def _contact(row: Any) -> Contact:
    m = row._mapping
    return Contact(id=m["id"], wa_id=m["wa_id"], name=m["name"], phone_number=m["wa_id"])


class Storage:
    """The database behind a host. Create, :meth:`open`, use, :meth:`close`."""

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self.url = database_url(config.url)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            assert self.url.database is not None  # database_url refuses a SQLite URL without a file
            Path(self.url.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if self.dialect == "postgresql":
            kwargs.update(pool_size=config.pool_size, max_overflow=config.pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        # Rows this process has seen committed; an optimisation only, never a source of truth.
        self._known_contacts: dict[str, Contact] = {}
        self._known_conversations: dict[tuple[str, int], None] = {}
        if self.dialect == "sqlite":
            synchronous = config.sqlite_synchronous

            @sa.event.listens_for(self.engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA synchronous={synchronous}")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()

    def describe(self) -> str:
        """The URL with its password (and any secret query parameter) hidden, for logs."""
        return redact_url(self.url.render_as_string(hide_password=False))

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations run under a lock)."""
        from core.storage.migrate import upgrade

        try:
            await upgrade(self.engine)
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise StorageError(f"cannot open database {self.describe()}: {exc}") from exc

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    async def ping(self) -> None:
        """Raise :class:`StorageError` unless the database answers a trivial query."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise StorageError(f"database unreachable: {exc.__class__.__name__}") from exc

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: committed on exit, rolled back on error."""
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self.engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only connection (no transaction held open beyond the block)."""
        async with self.engine.connect() as conn:
            yield conn

    def insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which knows ``ON CONFLICT`` (same API on both backends)."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # -- inbound -----------------------------------------------------------------------------

    async def ingest(
        self, inbound: Sequence[InboundMessage], inbound_statuses: Sequence[InboundStatus]
    ) -> IngestResult:
        """Store a batch of inbound messages and statuses in one transaction.

        Repeated messages (same business number + wamid) and statuses (same wamid + status) are
        absorbed by unique keys; stale statuses change nothing; statuses for unknown wamids are
        kept and applied when the message appears. Returns what is new, for hooks.
        """
        now = utcnow()
        result = IngestResult()
        # Deduplicate inside the batch first: ON CONFLICT DO UPDATE may not touch a row twice.
        unique_msgs: dict[tuple[str, str], InboundMessage] = {}
        for msg in inbound:
            key = (msg.phone_number_id, msg.wamid)
            if key in unique_msgs:
                result.duplicate_messages += 1
            else:
                unique_msgs[key] = msg
        learned: tuple[list[Contact], list[tuple[str, int]]] = ([], [])
        try:
            async with self.write() as conn:
                if unique_msgs:
                    learned = await self._ingest_messages(conn, list(unique_msgs.values()), now, result)
                if inbound_statuses:
                    await self._ingest_statuses(conn, inbound_statuses, now, result)
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            raise StorageError(f"storing a webhook batch failed: {exc.__class__.__name__}: {exc}") from exc
        # Only committed rows may enter the caches (a rolled-back id would not exist).
        for contact in learned[0]:
            self._known_contacts[contact.wa_id] = contact
        self._known_conversations.update(dict.fromkeys(learned[1]))
        while len(self._known_contacts) > _KNOWN_MAX:
            del self._known_contacts[next(iter(self._known_contacts))]
        while len(self._known_conversations) > _KNOWN_MAX:
            del self._known_conversations[next(iter(self._known_conversations))]
        return result

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
                    set_={"name": ins.excluded.name, "updated_at": ins.excluded.updated_at},
                    where=sa.and_(
                        ins.excluded.name.is_not(None), ins.excluded.name.is_distinct_from(contacts.c.name)
                    ),
                ),
                [{"wa_id": w, "name": names[w], "created_at": now, "updated_at": now} for w in unknown],
            )
            found = (await conn.execute(sa.select(contacts).where(contacts.c.wa_id.in_(unknown)))).all()
            new_contacts = [_contact(r) for r in found]
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
        conv_rows = {
            (r.phone_number_id, r.contact_id): _conversation(r)
            for r in await conn.execute(
                sa.select(conversations).where(
                    sa.tuple_(conversations.c.phone_number_id, conversations.c.contact_id).in_(pairs)
                )
            )
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
                    "error_code": None,
                    "error_title": None,
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
            message = _message(_Row({**row, "id": mid}))
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
            if outcome == "pending":
                linked = await self._link_by_callback(conn, st, now)
                outcome = await self._apply_status(conn, status_id, st) if linked else "pending"
            if isinstance(outcome, StatusEvent):
                result.status_changes.append(outcome)
            elif outcome == "stale":
                result.stale_statuses += 1
            else:
                result.pending_statuses += 1

    async def _apply_status(
        self, conn: AsyncConnection, status_id: int, st: InboundStatus
    ) -> StatusEvent | str:
        """Move a message forward to ``st`` if it outranks its status; mark the status row."""
        rank = STATUS_RANK.get(st.status)
        target = sa.and_(
            messages.c.phone_number_id == st.phone_number_id,
            messages.c.wamid == st.wamid,
            messages.c.direction == "outbound",
        )
        if rank is None:  # a status Meta invented after this release: keep it in the history only
            row = (await conn.execute(sa.select(messages.c.id).where(target))).first()
            if row is None:
                return "pending"
            await conn.execute(statuses.update().where(statuses.c.id == status_id).values(message_id=row.id))
            return "stale"
        updated = (
            await conn.execute(
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
            row = (await conn.execute(sa.select(messages.c.id).where(target))).first()
            if row is None:
                return "pending"
            await conn.execute(statuses.update().where(statuses.c.id == status_id).values(message_id=row.id))
            return "stale"
        await conn.execute(statuses.update().where(statuses.c.id == status_id).values(message_id=updated.id))
        if st.status == "failed":
            await conn.execute(
                outbox.update()
                .where(outbox.c.message_id == updated.id, outbox.c.state == "pending")
                .values(state="failed", last_error=st.error_title, updated_at=utcnow())
            )
        message = _message(updated)
        conv = _conversation(
            (
                await conn.execute(
                    sa.select(conversations).where(conversations.c.id == message.conversation_id)
                )
            ).one()
        )
        change = StatusChange(
            message_id=message.id,
            status=st.status,
            timestamp=st.timestamp,
            error_code=st.error_code if st.status == "failed" else None,
            error_title=st.error_title if st.status == "failed" else None,
        )
        return StatusEvent(message, conv, change)

    async def _link_by_callback(self, conn: AsyncConnection, st: InboundStatus, now: datetime) -> bool:
        """Learn a wamid from a status echoing our callback data (its Graph answer was lost)."""
        data = (st.raw or {}).get("biz_opaque_callback_data")
        if not isinstance(data, str) or not data.startswith(CALLBACK_PREFIX):
            return False
        try:
            message_id = int(data[len(CALLBACK_PREFIX) :])
        except ValueError:
            return False
        linked = (
            await conn.execute(
                messages.update()
                .where(
                    messages.c.id == message_id,
                    messages.c.wamid.is_(None),
                    messages.c.phone_number_id == st.phone_number_id,
                )
                .values(wamid=st.wamid, delivered_at=now)
                .returning(messages.c.id)
            )
        ).first()
        if linked is None:
            return False
        await conn.execute(
            outbox.update()
            .where(outbox.c.message_id == message_id, outbox.c.state == "pending")
            .values(state="done", updated_at=now, last_error="linked by status webhook")
        )
        log.info("message %s linked to %s by a status webhook after an ambiguous send", message_id, st.wamid)
        return True

    # -- reads ------------------------------------------------------------------------------

    async def get_message(self, message_id: int) -> Message | None:
        """One message by zaphub id."""
        async with self.read() as conn:
            row = (await conn.execute(sa.select(messages).where(messages.c.id == message_id))).first()
        return _message(row) if row else None

    async def get_conversation(self, conversation_id: int) -> Conversation | None:
        """One conversation by zaphub id."""
        async with self.read() as conn:
            row = (
                await conn.execute(sa.select(conversations).where(conversations.c.id == conversation_id))
            ).first()
        return _conversation(row) if row else None

    async def get_contact(self, contact_id: int) -> Contact | None:
        """One contact by zaphub id."""
        async with self.read() as conn:
            row = (await conn.execute(sa.select(contacts).where(contacts.c.id == contact_id))).first()
        return _contact(row) if row else None

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
        return {r.id: _contact(r) for r in rows}

    async def get_messages(self, message_ids: Iterable[int]) -> dict[int, Message]:
        """Messages by id (missing ids are absent from the result)."""
        ids = list(set(message_ids))
        if not ids:
            return {}
        async with self.read() as conn:
            rows = (await conn.execute(sa.select(messages).where(messages.c.id.in_(ids)))).all()
        return {r.id: _message(r) for r in rows}

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
        return [_conversation(r) for r in rows]

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
        return [_message(r) for r in rows]

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

    # -- outbound ---------------------------------------------------------------------------

    async def queue_outbound(
        self,
        conversation: Conversation,
        recipient: str,
        outgoing: OutgoingMessage,
        *,
        idempotency: tuple[str, str, str] | None = None,
    ) -> tuple[Message, bool]:
        """Store an outbound message and its outbox row in one transaction.

        Args:
            conversation: where it goes.
            recipient: the contact's ``wa_id``.
            outgoing: the message after ``on_before_send``.
            idempotency: ``(scope, key, request_hash)``: a repeated key with the same hash returns
                the first message; with another hash raises :class:`ConflictError`.

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
                        return _message(row), False
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
            message = _message(row)
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
            if idem_id is not None:
                await conn.execute(
                    idempotency_keys.update()
                    .where(idempotency_keys.c.id == idem_id)
                    .values(message_id=message.id)
                )
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
                    .returning(outbox.c.id, outbox.c.message_id, outbox.c.recipient, outbox.c.attempts)
                )
            ).all()
            msgs = {
                r.id: _message(r)
                for r in await conn.execute(
                    sa.select(messages).where(messages.c.id.in_([c.message_id for c in claimed]))
                )
            }
        items = [
            OutboxItem(id=c.id, message=msgs[c.message_id], recipient=c.recipient, attempts=c.attempts)
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
        async with self.write() as conn:
            row = (
                await conn.execute(
                    outbox.update()
                    .where(outbox.c.id == item_id, outbox.c.state == "pending")
                    .values(state="done", attempts=outbox.c.attempts + 1, locked_until=None, updated_at=now)
                    .returning(outbox.c.message_id)
                )
            ).first()
            if row is None:
                return None, []
            updated = (
                await conn.execute(
                    messages.update()
                    .where(messages.c.id == row.message_id, messages.c.wamid.is_(None))
                    .values(
                        wamid=wamid,
                        delivered_at=now,
                        status=sa.case(
                            (messages.c.status_rank < STATUS_RANK["accepted"], "accepted"),
                            else_=messages.c.status,
                        ),
                        status_rank=sa.case(
                            (messages.c.status_rank < STATUS_RANK["accepted"], STATUS_RANK["accepted"]),
                            else_=messages.c.status_rank,
                        ),
                    )
                    .returning(*messages.c)
                )
            ).first()
            if updated is None:
                return None, []
            message = _message(updated)
            conv = _conversation(
                (
                    await conn.execute(
                        sa.select(conversations).where(conversations.c.id == message.conversation_id)
                    )
                ).one()
            )
            accepted = StatusEvent(
                message,
                conv,
                StatusChange(message_id=message.id, status="accepted", timestamp=str(int(now.timestamp()))),
            )
            parked = (
                await conn.execute(
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
                applied = await self._apply_status(
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
        return accepted, changes

    async def outbox_failed(self, item_id: int, *, code: int | None, title: str) -> StatusEvent | None:
        """A send failed for good: the message becomes ``failed`` (terminal)."""
        now = utcnow()
        async with self.write() as conn:
            row = (
                await conn.execute(
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
                await conn.execute(
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
            message = _message(updated)
            conv = _conversation(
                (
                    await conn.execute(
                        sa.select(conversations).where(conversations.c.id == message.conversation_id)
                    )
                ).one()
            )
        change = StatusChange(
            message_id=message.id,
            status="failed",
            timestamp=str(int(now.timestamp())),
            error_code=code,
            error_title=title,
        )
        return StatusEvent(message, conv, change)

    async def outbox_counts(self) -> dict[str, int]:
        """Outbox rows by state (for metrics and ``/ready``)."""
        async with self.read() as conn:
            rows = (
                await conn.execute(sa.select(outbox.c.state, sa.func.count()).group_by(outbox.c.state))
            ).all()
        return {r[0]: int(r[1]) for r in rows}

    # -- plugin state -----------------------------------------------------------------------

    async def state_get(self, plugin: str, key: str) -> tuple[Any, datetime] | None:
        """A plugin's stored value and when it was last set, or ``None``."""
        async with self.read() as conn:
            row = (
                await conn.execute(
                    sa.select(plugin_state.c.value, plugin_state.c.updated_at).where(
                        plugin_state.c.plugin == plugin, plugin_state.c.key == key
                    )
                )
            ).first()
        return (row.value, row.updated_at) if row else None

    async def state_set(self, plugin: str, key: str, value: Any) -> None:
        """Store a JSON-able value for a plugin (insert or replace)."""
        now = utcnow()
        ins = self.insert(plugin_state)
        async with self.write() as conn:
            await conn.execute(
                ins.on_conflict_do_update(
                    index_elements=[plugin_state.c.plugin, plugin_state.c.key],
                    set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at},
                ),
                {"plugin": plugin, "key": key, "value": value, "updated_at": now},
            )

    async def state_claim(self, plugin: str, key: str, value: Any, *, older_than: float) -> bool:
        """Set ``key`` only if it is unset or was last set more than ``older_than`` seconds ago.

        Atomic across processes: of two concurrent claims exactly one wins. This is how cooldowns
        work ("at most one auto-reply per conversation per N seconds").
        """
        now = utcnow()
        ins = self.insert(plugin_state)
        async with self.write() as conn:
            won = (
                await conn.execute(
                    ins.on_conflict_do_update(
                        index_elements=[plugin_state.c.plugin, plugin_state.c.key],
                        set_={"value": ins.excluded.value, "updated_at": ins.excluded.updated_at},
                        where=plugin_state.c.updated_at <= now - timedelta(seconds=older_than),
                    ).returning(plugin_state.c.key),
                    {"plugin": plugin, "key": key, "value": value, "updated_at": now},
                )
            ).first()
        return won is not None


class _Row:
    """Adapts a dict to the ``row._mapping`` shape the converters read."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: dict[str, Any]) -> None:
        self._mapping = mapping
