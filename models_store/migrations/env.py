"""Alembic environment: migrations run on the connection `Database.migrate` passes in (inside its lock)."""

from __future__ import annotations

from alembic import context

from models_store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
