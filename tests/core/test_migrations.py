"""The migrations build exactly the schema the code declares, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from core.config import StorageConfig
from core.storage import Storage, metadata
from core.storage.migrate import alembic_config


def _diff(connection: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "render_as_batch": True})
    return list(compare_metadata(context, metadata))


def _revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def test_migrations_produce_exactly_the_declared_schema(storage_url: str) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    first, second = Storage(StorageConfig(url=storage_url)), Storage(StorageConfig(url=storage_url))
    try:
        if first.dialect == "postgresql":
            # Processes starting together against one empty database: both come up, one migrates.
            await asyncio.gather(first.open(), second.open())
        else:  # SQLite serves one process
            await first.open()
        await first.open()  # a restart on an up-to-date database changes nothing
        async with first.engine.connect() as conn:
            assert await conn.run_sync(_revision) == head
            diff = await conn.run_sync(_diff)
            tables = set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    finally:
        await first.close()
        await second.close()
    assert diff == [], f"core/migrations and core/storage/schema.py disagree: {diff}"
    assert tables == set(metadata.tables) | {"alembic_version"}
