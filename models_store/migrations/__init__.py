"""Alembic migrations of the database (`Database.migrate` runs them; no alembic.ini needed)."""
