"""Idempotency keys expire, and a quoted key is its content.

- idempotency.created_at is indexed: keys older than UNLEARND_IDEMPOTENCY_KEY_TTL_S are deleted by the janitor.
- A key stored as the header's raw value in the Structured Field string form (`"k1"`, quotes included) is stored
  as its content (`k1`), which is how keys are looked up from now on; unless that key is stored as well.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_QUOTED = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])+)"'
                     r'(?:;[ ]*[a-z*][a-z0-9_.*-]*(?:=(?:"(?:[^"\\]|\\.)*"|[^;",\s]+))?)*')
"""A Structured Field string (RFC 8941 3.3.3) with optional parameters, as the service parses keys at 0005."""


def upgrade() -> None:
    op.create_index("idempotency_created_at", "idempotency", ["created_at"])
    keys = sa.table("idempotency", sa.column("key_id"), sa.column("key"))
    bind = op.get_bind()
    quoted = bind.execute(sa.select(keys.c.key_id, keys.c.key).where(keys.c.key.like('"%'))
                          .order_by(keys.c.key_id, keys.c.key)).all()
    for key_id, key in quoted:
        match = _QUOTED.fullmatch(key)
        if match is None:
            continue
        content = re.sub(r'\\(["\\])', r"\1", match.group(1))
        taken = bind.execute(sa.select(sa.func.count()).select_from(keys).where(
            keys.c.key_id == key_id, keys.c.key == content)).scalar()
        if not taken:
            bind.execute(sa.update(keys).where(keys.c.key_id == key_id, keys.c.key == key).values(key=content))
