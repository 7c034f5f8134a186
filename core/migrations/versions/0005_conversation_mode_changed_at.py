"""when a conversation's mode last changed (handoff)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

import core.storage.schema

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("mode_changed_at", core.storage.schema.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            batch_op.f("ix_conversations_mode_mode_changed_at"), ["mode", "mode_changed_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_conversations_mode_mode_changed_at"))
        batch_op.drop_column("mode_changed_at")
