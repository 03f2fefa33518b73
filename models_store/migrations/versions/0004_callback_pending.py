"""forget_requests.callback_pending: 1 from the moment a request with a callback_url ends until its callback is
settled (delivered, or given up), so that the janitor can find a callback that was never queued or whose queued
attempt Redis lost.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("forget_requests", sa.Column("callback_pending", sa.Integer, nullable=False, server_default="0"))
    op.create_index("forget_requests_callback_pending", "forget_requests", ["callback_pending"])
