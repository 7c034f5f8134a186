"""plugin state versions and expiry

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

import core.storage.schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plugin_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.BigInteger(), server_default="1", nullable=False))
        batch_op.add_column(
            sa.Column("expires_at", core.storage.schema.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(batch_op.f("ix_plugin_state_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("plugin_state", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugin_state_expires_at"))
        batch_op.drop_column("expires_at")
        batch_op.drop_column("version")
