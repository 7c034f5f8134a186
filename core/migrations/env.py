"""Alembic environment: runs on the connection handed over by core.storage.migrate."""

from alembic import context

from core.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through core.storage.migrate.upgrade (zaphub run does it at startup)")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
