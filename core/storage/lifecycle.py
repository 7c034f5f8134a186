"""A message's life after it arrived: edits, deletions, reactions, and a contact's new number.

Plain synchronous functions over a ``sqlalchemy.Connection``, run inside the ingest transaction
(the body :meth:`~core.storage.engine.StorageEngine.run_write` runs), so a change and its event
commit together, like statuses.

Every edit, deletion and reaction is a row of ``message_changes``, unique per business number and
Meta's id of the change: a redelivery hits the key and does nothing. A change whose target is not
stored yet stays there with ``message_id`` NULL (parked) and is applied in the transaction that
stores its target (:func:`apply_parked`).

Order never matters. Of the edits of a message, the newest (Meta's time, then its id) gives the
body; the older ones become versions. Of one contact's reactions to a message, the newest wins
(an empty emoji removes it, and a removal keeps its row so an older reaction delivered late
cannot bring it back). A deletion is final: the body becomes ``NULL``, the text is kept as a
version. So the same changes give the same state whatever order, batch or repetition they come
in; an event is appended only when the visible state changes.

Several processes (PostgreSQL): a change and its target stored at the same instant by two
transactions would not see each other's uncommitted row, and the change would stay parked. So
both the transaction that stores a message (or learns its wamid) and the one that records a
change to it take a transaction-scoped advisory lock on ``(phone_number_id, target wamid)``
first (:func:`lock_targets`): the second waits for the first to commit, and its lookups, new
statements under READ COMMITTED, then see the first's row. SQLite has one writer at a time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from core.models import (
    InboundMessage,
    MessageChange,
    MessageEdit,
    MessageReaction,
    MessageRevoke,
)
from core.storage.results import ChangeEvent
from core.storage.rows import conversation_from_row, message_from_row
from core.storage.schema import (
    contacts,
    conversations,
    message_changes,
    message_reactions,
    message_versions,
    messages,
)
from core.storage.sqlite_raw import RawCursor, RawStatement, raw_cursor, sqlite_time_value

__all__ = [
    "LifecycleOutcome",
    "apply_parked",
    "ingest_lifecycle",
    "lock_targets",
    "move_contact",
    "store_changes",
]

log = logging.getLogger("zaphub.storage")


def _insert(conn: sa.Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which knows ``ON CONFLICT`` (as ``Storage.insert``)."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


class LifecycleOutcome:
    """What storing changes did: those applied (for events), and how many were parked, stale, repeated."""

    __slots__ = ("applied", "duplicates", "moved", "parked", "stale")

    def __init__(self) -> None:
        self.applied: list[ChangeEvent] = []
        self.parked = 0
        self.stale = 0
        self.duplicates = 0
        self.moved: list[int] = []
        """Ids of contacts a number change touched (their cached rows are stale)."""


def lock_targets(conn: sa.Connection, keys: Iterable[tuple[str, str]]) -> None:
    """PostgreSQL: lock ``(phone_number_id, wamid)`` pairs a change may target, until commit.

    Call it before the transaction writes anything, with every message it stores (or gives a
    wamid) and every change's target: a change and its target stored concurrently then
    serialise (see the module docstring). Taking them first, all at once and in one order,
    means a transaction never waits for one while holding a row another waiter needs, so
    these locks add no deadlock. Other databases: nothing (one writer at a time).
    """
    if conn.dialect.name != "postgresql":
        return
    ids = sorted({_lock_key(pnid, wamid) for pnid, wamid in keys})
    if ids:
        # Volatile functions in the select list are evaluated after ORDER BY: locks in ``ids`` order.
        conn.execute(_LOCK_TARGETS, {"keys": ids})


_LOCK_TARGETS = sa.text(
    "SELECT pg_advisory_xact_lock(k) FROM unnest(:keys) WITH ORDINALITY AS u(k, n) ORDER BY n"
).bindparams(sa.bindparam("keys", type_=postgresql.ARRAY(sa.BigInteger())))


def _lock_key(phone_number_id: str, wamid: str) -> int:
    """A stable 64-bit advisory lock key for a message (a collision only makes two wait)."""
    digest = hashlib.blake2b(f"message\x1f{phone_number_id}\x1f{wamid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def ingest_lifecycle(
    conn: sa.Connection,
    arrived: Sequence[tuple[str, str, int]],
    changes: Sequence[InboundMessage],
    number_changes: Sequence[tuple[str, str]],
    now: datetime,
) -> LifecycleOutcome:
    """The lifecycle part of an ingest transaction, after its messages are stored.

    Args:
        conn: the ingest transaction's connection.
        arrived: messages this transaction stored, ``(phone_number_id, wamid, id)``: their parked
            changes are applied.
        changes: edits, deletions and reactions received (``InboundMessage.action``).
        number_changes: ``(old wa_id, new wa_id)`` of number changes stored in this transaction.
        now: the transaction's time.
    """
    outcome = LifecycleOutcome()
    apply_parked(conn, arrived, now, outcome)
    store_changes(conn, changes, now, outcome)
    for old, new in number_changes:
        outcome.moved += move_contact(conn, old, new, now)
    return outcome


def store_changes(
    conn: sa.Connection,
    inbound: Sequence[InboundMessage],
    now: datetime,
    outcome: LifecycleOutcome | None = None,
) -> LifecycleOutcome:
    """Record edits, deletions and reactions; apply each whose target is stored, park the others."""
    outcome = outcome or LifecycleOutcome()
    rows = [row for msg in inbound if (row := _change_row(msg, now)) is not None]
    if not rows:
        return outcome
    inserted = conn.execute(
        _insert(conn, message_changes)
        .on_conflict_do_nothing(index_elements=[message_changes.c.phone_number_id, message_changes.c.wamid])
        .returning(*message_changes.c),
        rows,
    ).all()
    outcome.duplicates += len(rows) - len(inserted)
    if not inserted:
        return outcome
    pairs = sorted({(r.phone_number_id, r.target_wamid) for r in inserted})
    targets = {
        (r.phone_number_id, r.wamid): r.id
        for r in conn.execute(
            sa.select(messages.c.id, messages.c.phone_number_id, messages.c.wamid).where(
                sa.tuple_(messages.c.phone_number_id, messages.c.wamid).in_(pairs)
            )
        )
    }
    found = []
    for change in inserted:
        message_id = targets.get((change.phone_number_id, change.target_wamid))
        if message_id is None:
            outcome.parked += 1
        else:
            found.append((message_id, change.id, change))
    # Messages are locked in id order, so two transactions changing the same messages cannot
    # deadlock on PostgreSQL; the outcome does not depend on the order anyway.
    for message_id, _, change in sorted(found, key=lambda f: f[:2]):
        _apply(conn, change, message_id, now, outcome)
    return outcome


def apply_parked(
    conn: sa.Connection,
    arrived: Sequence[tuple[str, str, int]],
    now: datetime,
    outcome: LifecycleOutcome | None = None,
) -> LifecycleOutcome:
    """Apply the parked changes of messages just stored (``(phone_number_id, wamid, id)`` each)."""
    outcome = outcome or LifecycleOutcome()
    if not arrived:
        return outcome
    ids = {(pnid, wamid): mid for pnid, wamid, mid in arrived}
    cursor = raw_cursor(conn)
    if cursor is not None:
        parked: Sequence[Any] = _raw_parked(cursor, ids)
    else:
        parked = conn.execute(
            sa.select(*_PARKED_COLUMNS)
            .where(
                message_changes.c.message_id.is_(None),
                sa.tuple_(message_changes.c.phone_number_id, message_changes.c.target_wamid).in_(sorted(ids)),
            )
            .order_by(message_changes.c.id)
        ).all()
    for change in parked:
        _apply(conn, change, ids[(change.phone_number_id, change.target_wamid)], now, outcome)
    return outcome


# What _apply reads of a change.
_PARKED_COLUMNS = (
    message_changes.c.id,
    message_changes.c.phone_number_id,
    message_changes.c.target_wamid,
    message_changes.c.kind,
    message_changes.c.wa_id,
    message_changes.c.body,
    message_changes.c.at,
)


class _Parked(NamedTuple):
    """A parked change read on SQLite's raw cursor, shaped like a row of ``_PARKED_COLUMNS``."""

    id: int
    phone_number_id: str
    target_wamid: str
    kind: str
    wa_id: str
    body: str | None
    at: datetime


# Most transactions store messages nobody changed before they arrived: one indexed probe
# (message_changes.message_id) answers "is anything parked at all?" for the whole batch, and
# only then one lookup per stored message. Both are prepared once (sqlite_raw); building and
# compiling a tuple IN of a batch-dependent length was a fifth of the writer's CPU.
_RAW_ANY_PARKED = RawStatement(
    sa.select(message_changes.c.id).where(message_changes.c.message_id.is_(None)).limit(1)
)
_RAW_PARKED_FOR = RawStatement(
    sa.select(*_PARKED_COLUMNS).where(
        message_changes.c.message_id.is_(None),
        message_changes.c.phone_number_id == sa.bindparam("pnid"),
        message_changes.c.target_wamid == sa.bindparam("target"),
    )
)


def _raw_parked(cursor: RawCursor, ids: dict[tuple[str, str], int]) -> list[_Parked]:
    """The parked changes of ``ids``' messages in id order (the order the SQLAlchemy query gives)."""
    if not _RAW_ANY_PARKED.execute(cursor, {}):
        return []
    found = [
        _Parked._make([*values[:-1], sqlite_time_value(values[-1])])
        for pnid, wamid in ids
        for values in _RAW_PARKED_FOR.execute(cursor, {"pnid": pnid, "target": wamid})
    ]
    return sorted(found)


def _change_row(msg: InboundMessage, now: datetime) -> dict[str, Any] | None:
    action = msg.action
    if isinstance(action, MessageEdit):
        kind, body = "edit", action.body
    elif isinstance(action, MessageRevoke):
        kind, body = "revoke", None
    elif isinstance(action, MessageReaction):
        kind, body = "reaction", action.emoji or None  # missing or "" = removed
    else:
        return None
    return {
        "phone_number_id": msg.phone_number_id,
        "wamid": msg.wamid,
        "target_wamid": action.target_wamid,
        "kind": kind,
        "wa_id": msg.wa_id,
        "body": body,
        "at": msg.timestamp,
        "raw": msg.raw,
        "received_at": now,
    }


def _newest(conn: sa.Connection, message_id: int, kind: str, wa_id: str | None = None) -> int:
    """The id of the newest change of ``kind`` to a message (by Meta's time, then Meta's id)."""
    query = (
        sa.select(message_changes.c.id)
        .where(message_changes.c.message_id == message_id, message_changes.c.kind == kind)
        .order_by(message_changes.c.at.desc(), message_changes.c.wamid.desc())
        .limit(1)
    )
    if wa_id is not None:
        query = query.where(message_changes.c.wa_id == wa_id)
    return int(conn.execute(query).scalar_one())


def _keep_version(
    conn: sa.Connection, message_id: int, body: str | None, written_at: Any, now: datetime
) -> None:
    conn.execute(
        message_versions.insert().values(
            message_id=message_id, body=body, written_at=written_at, created_at=now
        )
    )


def _apply(
    conn: sa.Connection, change: Any, message_id: int, now: datetime, outcome: LifecycleOutcome
) -> None:
    """Apply one recorded change to its message; an event only when what clients see changes."""
    # Lock the message first (PostgreSQL; SQLite has one writer): concurrent changes to one
    # message then decide "newest" one after the other, each seeing the other's committed row.
    target = conn.execute(sa.select(messages).where(messages.c.id == message_id).with_for_update()).one()
    conn.execute(
        message_changes.update().where(message_changes.c.id == change.id).values(message_id=message_id)
    )
    applied: MessageChange | None = None
    current_written = target.edited_at or target.delivered_at
    if change.kind == "edit":
        if target.deleted_at is None and _newest(conn, message_id, "edit") == change.id:
            _keep_version(conn, message_id, target.body, current_written, now)
            conn.execute(
                messages.update()
                .where(messages.c.id == message_id)
                .values(body=change.body, edited_at=change.at)
            )
            applied = MessageChange(message_id=message_id, kind="edited", at=change.at, body=change.body)
        else:  # superseded by a newer edit, or the message is deleted: history only
            _keep_version(conn, message_id, change.body, change.at, now)
            if target.edited_at is None or change.at > target.edited_at:
                conn.execute(messages.update().where(messages.c.id == message_id).values(edited_at=change.at))
            outcome.stale += target.deleted_at is None
    elif change.kind == "revoke":
        if target.deleted_at is None:
            _keep_version(conn, message_id, target.body, current_written, now)
            conn.execute(
                messages.update().where(messages.c.id == message_id).values(body=None, deleted_at=change.at)
            )
            applied = MessageChange(message_id=message_id, kind="deleted", at=change.at)
    elif _newest(conn, message_id, "reaction", change.wa_id) == change.id:
        stmt = _insert(conn, message_reactions).values(
            message_id=message_id, wa_id=change.wa_id, emoji=change.body, at=change.at
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[message_reactions.c.message_id, message_reactions.c.wa_id],
                set_={"emoji": stmt.excluded.emoji, "at": stmt.excluded.at},
            )
        )
        applied = MessageChange(
            message_id=message_id, kind="reaction", at=change.at, emoji=change.body, reactor=change.wa_id
        )
    else:
        outcome.stale += 1
    if applied is None:
        return
    stored = conn.execute(sa.select(messages).where(messages.c.id == message_id)).one()
    conv = conn.execute(sa.select(conversations).where(conversations.c.id == stored.conversation_id)).one()
    outcome.applied.append(ChangeEvent(message_from_row(stored), conversation_from_row(conv), applied))


def move_contact(conn: sa.Connection, old_wa_id: str, new_wa_id: str, now: datetime) -> list[int]:
    """Move the contact of ``old_wa_id`` to ``new_wa_id``, keeping its conversations.

    When ``new_wa_id`` already is a contact (the customer wrote from the new number before this
    notice arrived), the old contact's conversations move to it, except with a business number
    it already has a conversation with: that one stays with the old contact (logged), so no
    message changes thread.

    Returns:
        The ids of the contacts involved (to forget cached conversations of).
    """
    if old_wa_id == new_wa_id:
        return []
    old = conn.execute(sa.select(contacts).where(contacts.c.wa_id == old_wa_id)).first()
    if old is None:
        return []
    new = conn.execute(sa.select(contacts).where(contacts.c.wa_id == new_wa_id).with_for_update()).first()
    if new is None:
        conn.execute(contacts.update().where(contacts.c.id == old.id).values(wa_id=new_wa_id, updated_at=now))
        return [old.id]
    taken = sa.select(conversations.c.phone_number_id).where(conversations.c.contact_id == new.id)
    conn.execute(
        conversations.update()
        .where(conversations.c.contact_id == old.id, conversations.c.phone_number_id.not_in(taken))
        .values(contact_id=new.id)
    )
    if new.name is None and old.name is not None:
        conn.execute(
            contacts.update()
            .where(contacts.c.id == new.id)
            .values(name=old.name, search_name=old.search_name, updated_at=now)
        )
    left = conn.execute(
        sa.select(sa.func.count()).select_from(conversations).where(conversations.c.contact_id == old.id)
    ).scalar_one()
    if left:
        log.warning(
            "contact %s changed number to %s, which already has conversations with the same business "
            "number(s): %d conversation(s) stay with the old number",
            old_wa_id,
            new_wa_id,
            left,
        )
    return [old.id, new.id]
