"""forget_requests.accepted_by: the X-Request-ID of the HTTP request that accepted the request, so that a retry the
janitor enqueues carries it too.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("forget_requests", sa.Column("accepted_by", sa.Text))
