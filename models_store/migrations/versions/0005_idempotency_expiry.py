"""idempotency.created_at indexed: keys older than UNLEARND_IDEMPOTENCY_KEY_TTL_S are deleted by the janitor.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("idempotency_created_at", "idempotency", ["created_at"])
