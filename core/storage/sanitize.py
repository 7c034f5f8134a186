"""One step between decoded models and the database: both backends store the same input.

SQLite stores almost anything; PostgreSQL refuses a NUL character in text, a string longer than
its ``VARCHAR(n)``, an integer outside its column's range, and fails the whole transaction, so one
odd item would fail every valid message in its webhook, on every retry by Meta. Before a batch is
stored, :func:`sanitize_batch` makes each item storable the same way on both backends:

- text (bodies, captions, profile names, error titles, ids): NUL becomes U+FFFD, the replacement
  character; Meta's original stays in the message's ``raw`` JSON, which stores NUL escaped.
- a profile name longer than its column is shortened (the contact keeps the first characters).
- an id, type, status or timestamp longer than its column cannot be shortened without two items
  colliding on a unique key: that one item is set aside and logged; its neighbours are stored.
- an optional reference longer than its column (media id, MIME type, replied-to wamid) is dropped
  (``None``); ``raw`` keeps it.
- an error code outside a 32-bit integer, or a message id outside a 64-bit one, is dropped
  (``None``); ``raw`` keeps the code.

Column lengths are read from :mod:`core.storage.schema`, the one home of those limits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec
import sqlalchemy as sa

from core.models import InboundMessage, InboundStatus, NumberChange
from core.storage.schema import contacts, message_changes, messages, statuses

__all__ = ["sanitize_batch", "storable_text"]

log = logging.getLogger("zaphub.storage")

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
_NUL = "\x00"
_REPLACEMENT = "\ufffd"


def _length(column: sa.Column[Any]) -> int:
    length = getattr(column.type, "length", None)
    assert isinstance(length, int), f"{column} has no length"
    return length


# Fields whose overflow sets the item aside (they identify it), and the column that limits each.
_MESSAGE_KEYS = {
    "phone_number_id": _length(messages.c.phone_number_id),
    "wamid": _length(messages.c.wamid),
    "wa_id": _length(contacts.c.wa_id),
    "type": _length(messages.c.type),
}
_MESSAGE_OPTIONAL = {
    "media_id": _length(messages.c.media_id),
    "media_mime_type": _length(messages.c.media_mime_type),
    "context_wamid": _length(messages.c.context_wamid),
}
_NAME_LENGTH = _length(contacts.c.name)
_TARGET_LENGTH = _length(message_changes.c.target_wamid)
_STATUS_KEYS = {
    "phone_number_id": _length(statuses.c.phone_number_id),
    "wamid": _length(statuses.c.wamid),
    "status": _length(statuses.c.status),
    "timestamp": _length(statuses.c.timestamp),
}


def storable_text(value: str) -> str:
    """``value`` with NUL characters (which PostgreSQL text refuses) replaced by U+FFFD."""
    return value.replace(_NUL, _REPLACEMENT) if _NUL in value else value


def _clean_fields(item: Any, fields: Sequence[str]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name in fields:
        value = getattr(item, name)
        if isinstance(value, str) and _NUL in value:
            changes[name] = storable_text(value)
    return changes


def _too_long(item: Any, limits: dict[str, int], changes: dict[str, Any]) -> str | None:
    for name, limit in limits.items():
        value = changes.get(name, getattr(item, name))
        if isinstance(value, str) and len(value) > limit:
            return f"{name} is {len(value)} characters, over the {limit} the database stores"
    return None


def _sanitize_message(msg: InboundMessage) -> InboundMessage | str:
    text_fields = (*_MESSAGE_KEYS, *_MESSAGE_OPTIONAL, "profile_name", "body")
    changes = _clean_fields(msg, text_fields)
    problem = _too_long(msg, _MESSAGE_KEYS, changes)
    if problem is not None:
        return problem
    for name, limit in _MESSAGE_OPTIONAL.items():
        value = changes.get(name, getattr(msg, name))
        if isinstance(value, str) and len(value) > limit:
            changes[name] = None
    action = msg.action
    if action is not None:  # an edit, deletion, reaction or number change names its target
        limit, value = (
            (_length(contacts.c.wa_id), action.new_wa_id)
            if isinstance(action, NumberChange)
            else (_TARGET_LENGTH, action.target_wamid)
        )
        if len(value) > limit:
            return f"the {action.__struct_config__.tag} names an id of {len(value)} characters, over {limit}"
        text = {k: storable_text(v) for k, v in msgspec.structs.asdict(action).items() if isinstance(v, str)}
        changes["action"] = msgspec.structs.replace(action, **text)
    profile_name = changes.get("profile_name", msg.profile_name)
    if profile_name is not None and len(profile_name) > _NAME_LENGTH:
        changes["profile_name"] = profile_name[:_NAME_LENGTH]
    return msgspec.structs.replace(msg, **changes) if changes else msg


def _sanitize_status(st: InboundStatus) -> InboundStatus | str:
    changes = _clean_fields(st, (*_STATUS_KEYS, "recipient_id", "error_title"))
    problem = _too_long(st, _STATUS_KEYS, changes)
    if problem is not None:
        return problem
    if st.error_code is not None and not -INT32_MAX - 1 <= st.error_code <= INT32_MAX:
        changes["error_code"] = None
    if st.message_id is not None and not 0 < st.message_id <= INT64_MAX:
        changes["message_id"] = None
    return msgspec.structs.replace(st, **changes) if changes else st


def sanitize_batch(
    inbound: Sequence[InboundMessage], inbound_statuses: Sequence[InboundStatus]
) -> tuple[list[InboundMessage], list[InboundStatus], int]:
    """Storable copies of ``inbound`` and ``inbound_statuses``, and how many items were set aside.

    Each item set aside is logged (a warning naming its wamid and the field); the others are
    returned, changed only where the module docstring says.
    """
    kept_messages: list[InboundMessage] = []
    kept_statuses: list[InboundStatus] = []
    set_aside = 0
    for msg in inbound:
        clean = _sanitize_message(msg)
        if isinstance(clean, str):
            set_aside += 1
            log.warning("inbound message %r set aside, not stored: %s", msg.wamid[:80], clean)
        else:
            kept_messages.append(clean)
    for st in inbound_statuses:
        clean_st = _sanitize_status(st)
        if isinstance(clean_st, str):
            set_aside += 1
            log.warning("status %r of %r set aside, not stored: %s", st.status[:40], st.wamid[:80], clean_st)
        else:
            kept_statuses.append(clean_st)
    return kept_messages, kept_statuses, set_aside
