"""The database schema, one definition for SQLite and PostgreSQL (SQLAlchemy Core).

Migrations in ``core/migrations`` create exactly this; ``tests/core/test_migrations.py`` fails when
they drift apart. The unique keys here are what makes effects exactly-once across processes and
restarts: a repeated webhook hits them and is absorbed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

__all__ = ["UTCDateTime", "metadata"]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite has no timezone type)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC (naive on SQLite) before storing."""
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite stores text; keep it naive-UTC so string order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Constraint names are explicit so migrations are identical on both dialects.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

JSON = sa.JSON().with_variant(sa.JSON(none_as_null=True), "postgresql")

contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("wa_id", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(256)),
    # The name as searches compare it (core.models.search_key): accents removed, case folded, so
    # one LIKE finds "Lívia" from "livia" on SQLite and PostgreSQL alike.
    sa.Column("search_name", sa.String(256)),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("phone_number_id", sa.String(64), nullable=False),
    sa.Column("contact_id", sa.BigInteger(), sa.ForeignKey("contacts.id"), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_message_at", UTCDateTime()),
    sa.Column("last_inbound_at", UTCDateTime()),
    sa.Column("last_agent_at", UTCDateTime()),
    sa.Column("last_message_id", sa.BigInteger()),
    sa.Column("mode", sa.String(16), nullable=False, server_default="bot"),
    sa.Column("mode_changed_at", UTCDateTime()),
    sa.UniqueConstraint("phone_number_id", "contact_id"),
    sa.Index(None, "last_message_at", "id"),
    # The idle sweep looks at human conversations only.
    sa.Index(None, "mode", "mode_changed_at"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("conversation_id", sa.BigInteger(), sa.ForeignKey("conversations.id"), nullable=False),
    sa.Column("phone_number_id", sa.String(64), nullable=False),
    sa.Column("wamid", sa.String(256)),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("body", sa.Text()),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("status_rank", sa.SmallInteger(), nullable=False, server_default="0"),
    sa.Column("automated", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("source", sa.String(64)),
    sa.Column("delivered_at", UTCDateTime()),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("media_id", sa.String(256)),
    sa.Column("media_mime_type", sa.String(128)),
    sa.Column("context_wamid", sa.String(256)),
    sa.Column("content", JSON),
    sa.Column("raw", JSON),
    sa.Column("error_code", sa.Integer()),
    sa.Column("error_title", sa.Text()),
    sa.Column("edited_at", UTCDateTime()),
    sa.Column("deleted_at", UTCDateTime()),
    # NULL wamids (queued outbound) never collide: both backends treat NULLs as distinct.
    sa.UniqueConstraint("phone_number_id", "wamid"),
    sa.Index(None, "conversation_id", "id"),
)

statuses = sa.Table(
    "statuses",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("phone_number_id", sa.String(64), nullable=False),
    sa.Column("wamid", sa.String(256), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("timestamp", sa.String(32), nullable=False),
    # NULL while the message is not known yet (the webhook beat the Graph answer).
    sa.Column("message_id", sa.BigInteger(), sa.ForeignKey("messages.id")),
    sa.Column("error_code", sa.Integer()),
    sa.Column("error_title", sa.Text()),
    sa.Column("raw", JSON),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("phone_number_id", "wamid", "status"),
    sa.Index(None, "message_id"),
)

# Edits, deletions and reactions as received, one row per Meta message (redeliveries hit the
# unique key): the audit trail of a message's lifecycle and, while ``message_id`` is NULL, the
# changes whose target is not stored yet (applied when it is; see core/storage/lifecycle.py).
message_changes = sa.Table(
    "message_changes",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("phone_number_id", sa.String(64), nullable=False),
    sa.Column("wamid", sa.String(256), nullable=False),
    sa.Column("target_wamid", sa.String(256), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # edit | revoke | reaction
    sa.Column("wa_id", sa.String(64), nullable=False),
    # edit: the new text; reaction: the emoji (NULL: removed); revoke: NULL.
    sa.Column("body", sa.Text()),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("message_id", sa.BigInteger(), sa.ForeignKey("messages.id")),
    sa.Column("raw", JSON),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("phone_number_id", "wamid"),
    sa.Index(None, "phone_number_id", "target_wamid"),
    sa.Index(None, "message_id"),
)

# The texts a message had before its current one (edited away, or deleted), with when each was
# written (the message's time, or the edit's).
message_versions = sa.Table(
    "message_versions",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("message_id", sa.BigInteger(), sa.ForeignKey("messages.id"), nullable=False),
    sa.Column("body", sa.Text()),
    sa.Column("written_at", UTCDateTime()),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index(None, "message_id", "id"),
)

# One reaction per reactor per message: the newest one wins. A removed reaction keeps its row
# with a NULL emoji, so an older reaction delivered late cannot bring it back.
message_reactions = sa.Table(
    "message_reactions",
    metadata,
    sa.Column("message_id", sa.BigInteger(), sa.ForeignKey("messages.id"), primary_key=True),
    sa.Column("wa_id", sa.String(64), primary_key=True),
    sa.Column("emoji", sa.Text()),
    sa.Column("at", UTCDateTime(), nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("message_id", sa.BigInteger(), sa.ForeignKey("messages.id"), nullable=False, unique=True),
    sa.Column("phone_number_id", sa.String(64), nullable=False),
    sa.Column("recipient", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending → done | failed
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
    sa.Column("locked_until", UTCDateTime()),
    sa.Column("last_error", sa.Text()),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Index(None, "state", "next_attempt_at"),
    # Finds the oldest pending send of a recipient (sends to one person go out in order).
    sa.Index(None, "phone_number_id", "recipient", "state", "id"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("scope", sa.String(256), nullable=False),
    sa.Column("key", sa.String(256), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("message_id", sa.BigInteger(), sa.ForeignKey("messages.id")),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("scope", "key"),
)

plugin_state = sa.Table(
    "plugin_state",
    metadata,
    sa.Column("plugin", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(256), primary_key=True),
    sa.Column("value", JSON),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # Bumped by every write: compare-and-set compares it (core/storage/state.py).
    sa.Column("version", sa.BigInteger(), nullable=False, server_default="1"),
    sa.Column("expires_at", UTCDateTime()),
    sa.Index(None, "expires_at"),
)

# The event log: one row per event, written in the transaction of the change it reports.
# ``id`` is assigned from ``event_sequence`` at the end of that transaction, so ids are dense and
# in commit order on both backends (see core/storage/events.py); no autoincrement.
event_log = sa.Table(
    "event_log",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False
    ),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("conversation_id", sa.BigInteger()),
    sa.Column("message_id", sa.BigInteger()),
    sa.Column("phone_number_id", sa.String(64)),
    sa.Column("data", sa.LargeBinary(), nullable=False),  # the payload's JSON, encoded once
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # Replays of one room (``join_conversation`` / ``join_message`` with ``lastEventId``).
    sa.Index(None, "conversation_id", "id"),
    sa.Index(None, "message_id", "id"),
)

# One row (id 1): the last event id handed out. Updating it last in a transaction makes
# concurrent writers take positions in commit order.
event_sequence = sa.Table(
    "event_sequence",
    metadata,
    sa.Column("id", sa.SmallInteger(), primary_key=True, autoincrement=False),
    sa.Column("last_id", sa.BigInteger(), nullable=False),
)

# Named, persisted read positions in the log: "every event up to ``position`` was handled".
event_cursors = sa.Table(
    "event_cursors",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("position", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)
