"""Schema migrations (Alembic), run programmatically at startup.

``zaphub run`` upgrades the database to the latest revision before serving. On PostgreSQL an
advisory lock makes processes that start together take turns, so only one migrates.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["alembic_config", "upgrade"]

_LOCK_ID = 0x7A6170687562  # "zaphub"


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    """An Alembic config pointing at ``core/migrations`` (no ini file needed)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "core:migrations")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
    command.upgrade(alembic_config(connection), "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the latest revision."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
