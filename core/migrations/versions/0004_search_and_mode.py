"""contact search key, conversation mode

Revision ID: 0004
Revises: 0003
"""

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _search_key(text: str) -> str:
    # A copy of core.models.search_key as of this revision: migrations do not import live code.
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def upgrade() -> None:
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("search_name", sa.String(length=256), nullable=True))
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mode", sa.String(length=16), server_default="bot", nullable=False))
    bind = op.get_bind()
    contacts = sa.table(
        "contacts", sa.column("id", sa.BigInteger()), sa.column("name"), sa.column("search_name")
    )
    rows = bind.execute(sa.select(contacts.c.id, contacts.c.name)).all()
    if rows:
        bind.execute(
            contacts.update()
            .where(contacts.c.id == sa.bindparam("cid"))
            .values(search_name=sa.bindparam("key")),
            [{"cid": r.id, "key": _search_key(r.name or "")} for r in rows],
        )


def downgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_column("mode")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("search_name")
