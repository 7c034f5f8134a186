"""message lifecycle: edits, deletions, reactions, and the changes that arrive before their message

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

import core.storage.schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("edited_at", core.storage.schema.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("deleted_at", core.storage.schema.UTCDateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "message_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("phone_number_id", sa.String(length=64), nullable=False),
        sa.Column("wamid", sa.String(length=256), nullable=False),
        sa.Column("target_wamid", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("wa_id", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("at", core.storage.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("raw", sa.JSON().with_variant(sa.JSON(none_as_null=True), "postgresql"), nullable=True),
        sa.Column("received_at", core.storage.schema.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_message_changes_message_id_messages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_changes")),
        sa.UniqueConstraint(
            "phone_number_id", "wamid", name=op.f("uq_message_changes_phone_number_id_wamid")
        ),
    )
    with op.batch_alter_table("message_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_message_changes_message_id"), ["message_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_message_changes_phone_number_id_target_wamid"),
            ["phone_number_id", "target_wamid"],
            unique=False,
        )
    op.create_table(
        "message_versions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("written_at", core.storage.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", core.storage.schema.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_message_versions_message_id_messages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_versions")),
    )
    with op.batch_alter_table("message_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_message_versions_message_id_id"), ["message_id", "id"], unique=False
        )
    op.create_table(
        "message_reactions",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("wa_id", sa.String(length=64), nullable=False),
        sa.Column("emoji", sa.Text(), nullable=True),
        sa.Column("at", core.storage.schema.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_message_reactions_message_id_messages")
        ),
        sa.PrimaryKeyConstraint("message_id", "wa_id", name=op.f("pk_message_reactions")),
    )


def downgrade() -> None:
    op.drop_table("message_reactions")
    with op.batch_alter_table("message_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_message_versions_message_id_id"))
    op.drop_table("message_versions")
    with op.batch_alter_table("message_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_message_changes_phone_number_id_target_wamid"))
        batch_op.drop_index(batch_op.f("ix_message_changes_message_id"))
    op.drop_table("message_changes")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("edited_at")
