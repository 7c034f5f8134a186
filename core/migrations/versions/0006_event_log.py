"""event log, its sequence and named cursors

Revision ID: 0006
Revises: 0005
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import core.storage.schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_log",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False
        ),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.BigInteger(), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("phone_number_id", sa.String(length=64), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", core.storage.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_log")),
    )
    with op.batch_alter_table("event_log", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_event_log_conversation_id_id"), ["conversation_id", "id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_event_log_message_id_id"), ["message_id", "id"], unique=False)
    sequence = op.create_table(
        "event_sequence",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_sequence")),
    )
    cursors = op.create_table(
        "event_cursors",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", core.storage.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_event_cursors")),
    )
    op.bulk_insert(sequence, [{"id": 1, "last_id": 0}])
    # The hook dispatcher's cursor exists from the start, so an event committed before the very
    # first dispatch is never mistaken for history.
    op.bulk_insert(cursors, [{"name": "hooks", "position": 0, "updated_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table("event_cursors")
    op.drop_table("event_sequence")
    with op.batch_alter_table("event_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_event_log_message_id_id"))
        batch_op.drop_index(batch_op.f("ix_event_log_conversation_id_id"))
    op.drop_table("event_log")
