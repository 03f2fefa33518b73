"""Every table of the database, in portable types (SQLite and PostgreSQL from the same definitions).

This is the schema at the newest migration (models_store/migrations/versions); a change here needs a new migration.
Timestamps are ISO 8601 text (`now_iso`) and documents are JSON text stored exactly as written (canonical JSON
for the signed ones), never a JSON column type that might reorder keys.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, PrimaryKeyConstraint, Table, Text

metadata = MetaData()

# ---- the ledger (revision 0001) -------------------------------------------------------------------------
forget_requests = Table(
    "forget_requests", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", Text, nullable=False, unique=True),
    Column("model", Text, nullable=False),
    Column("classes", Text),
    Column("samples", Text),
    Column("method", Text, nullable=False),
    Column("reason", Text),
    Column("status", Text, nullable=False),
    Column("progress", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("started_at", Text),
    Column("finished_at", Text),
    Column("error", Text),
    Column("result", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("key_id", Text),
    Column("job_id", Text),
    Column("not_before", Float),
    Column("callback_url", Text),
    Column("callback", Text),
    Column("receipt", Text),
    Column("cancel_requested", Integer, nullable=False, server_default="0"),
    Column("accepted_by", Text),  # the X-Request-ID of the HTTP request that accepted it
    Column("callback_pending", Integer, nullable=False, server_default="0"),  # 1: its callback is not settled yet
    Index("forget_requests_model_status", "model", "status"),
    Index("forget_requests_callback_pending", "callback_pending"),
    sqlite_autoincrement=True,
)

idempotency = Table(
    "idempotency", metadata,
    Column("key", Text, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("body_sha256", Text, nullable=False),
    Column("status_code", Integer),
    Column("response", Text),
    Column("headers", Text),
    Column("created_at", Text, nullable=False),
    Column("request_id", Text),
    PrimaryKeyConstraint("key_id", "key"),
    Index("idempotency_created_at", "created_at"),  # revision 0005: expiry
)

audit = Table(
    "audit", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("request_id", Text),
    Column("model", Text),
    Column("detail", Text),
    Index("audit_request", "request_id"),
    sqlite_autoincrement=True,
)

# ---- the store's records (revision 0002) ----------------------------------------------------------------
models = Table(
    "models", metadata,
    Column("name", Text, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("record", Text, nullable=False),
)

model_versions = Table(
    "model_versions", metadata,
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("record", Text, nullable=False),
    PrimaryKeyConstraint("name", "version"),
)

datasets = Table(
    "datasets", metadata,
    Column("name", Text, primary_key=True),
    Column("record", Text, nullable=False),
    Column("created_at", Text, nullable=False),
)

artifacts = Table(
    "artifacts", metadata,
    Column("id", Text, primary_key=True),
    Column("model", Text, nullable=False),
    Column("manifest", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Index("artifacts_model", "model"),
)

served_states = Table(
    "served_states", metadata,
    Column("model", Text, nullable=False),
    Column("state_version", Integer, nullable=False),
    Column("document", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    # Publishing inserts version n+1: a primary-key conflict means another writer published first.
    PrimaryKeyConstraint("model", "state_version"),
)

reports = Table(
    "reports", metadata,
    Column("request_id", Text, primary_key=True),
    Column("sha256", Text, nullable=False),
    Column("blob_key", Text, nullable=False),
    Column("created_at", Text, nullable=False),
)
