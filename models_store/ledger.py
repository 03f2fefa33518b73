"""The request ledger: one SQLite row per accepted forget request, the source of truth for its status.

Redis only carries the work; this file says what was accepted and how it ended. SQLite in WAL mode with
synchronous=FULL, so a row committed before the API answers 202 survives a crash of any process.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from models_store.errors import NotFoundError
from models_store.store import now_iso

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
_JSON_FIELDS = ("classes", "samples", "progress", "result")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forget_requests (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    model        TEXT NOT NULL,
    classes      TEXT,
    samples      TEXT,
    method       TEXT NOT NULL,
    reason       TEXT,
    status       TEXT NOT NULL,
    progress     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    error        TEXT,
    result       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    key_id       TEXT,
    job_id       TEXT
);
CREATE INDEX IF NOT EXISTS forget_requests_model_status ON forget_requests (model, status);
"""


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")
        try:
            yield db
        finally:
            db.close()

    @staticmethod
    def _to_dict(row: sqlite3.Row) -> dict[str, Any]:
        record = dict(row)
        for key in _JSON_FIELDS:
            if record[key] is not None:
                record[key] = json.loads(record[key])
        return record

    def create(self, record: dict[str, Any]) -> dict[str, Any]:
        """Insert a new request in status `queued`; returns the stored record."""
        row = {
            "id": record["id"], "model": record["model"], "method": record["method"],
            "classes": json.dumps(record.get("classes")) if record.get("classes") is not None else None,
            "samples": json.dumps(record.get("samples")) if record.get("samples") is not None else None,
            "reason": record.get("reason"), "status": "queued",
            "progress": json.dumps({"fraction": 0.0, "stage": "queued"}),
            "created_at": now_iso(), "key_id": record.get("key_id"),
        }
        with self._connect() as db:
            db.execute(
                f"INSERT INTO forget_requests ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
        return self.get(record["id"])

    def get(self, request_id: str) -> dict[str, Any]:
        with self._connect() as db:
            row = db.execute("SELECT * FROM forget_requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no forget request {request_id!r}")
        return self._to_dict(row)

    def list(
        self, model: str | None = None, status: str | None = None, limit: int = 50, after_seq: int = 0
    ) -> list[dict[str, Any]]:
        """Requests in acceptance order, optionally filtered, starting after sequence number `after_seq`."""
        query, args = "SELECT * FROM forget_requests WHERE seq > ?", [after_seq]
        if model is not None:
            query, args = query + " AND model = ?", [*args, model]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        return [self._to_dict(r) for r in rows]

    def active(self) -> list[dict[str, Any]]:
        """Every request not yet in a terminal state."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM forget_requests WHERE status IN (?, ?) ORDER BY seq", ACTIVE
            ).fetchall()
        return [self._to_dict(r) for r in rows]

    def _update(self, request_id: str, allowed_from: tuple[str, ...], **fields: Any) -> bool:
        """Set fields if the request is in one of `allowed_from`; returns whether it changed."""
        values = [json.dumps(v) if k in _JSON_FIELDS else v for k, v in fields.items()]
        sets = ", ".join(f"{k} = ?" for k in fields)
        marks = ", ".join("?" * len(allowed_from))
        with self._connect() as db:
            cursor = db.execute(
                f"UPDATE forget_requests SET {sets} WHERE id = ? AND status IN ({marks})",
                (*values, request_id, *allowed_from),
            )
        return cursor.rowcount == 1

    def mark_running(self, request_id: str) -> bool:
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE forget_requests SET status = 'running', started_at = ?, attempts = attempts + 1, "
                "progress = ? WHERE id = ? AND status IN ('queued', 'running')",
                (now_iso(), json.dumps({"fraction": 0.0, "stage": "starting"}), request_id),
            )
        return cursor.rowcount == 1

    def set_progress(self, request_id: str, progress: dict[str, Any]) -> bool:
        return self._update(request_id, ("running",), progress=progress)

    def mark_succeeded(self, request_id: str, result: dict[str, Any]) -> bool:
        return self._update(
            request_id, ACTIVE, status="succeeded", result=result, finished_at=now_iso(), error=None,
            progress={"fraction": 1.0, "stage": "done"},
        )

    def mark_failed(self, request_id: str, error: str) -> bool:
        return self._update(request_id, ACTIVE, status="failed", error=error, finished_at=now_iso())

    def count_attempt(self, request_id: str) -> bool:
        """Count an attempt whose job died before it could mark the request running."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE forget_requests SET attempts = attempts + 1 WHERE id = ? AND status IN ('queued', 'running')",
                (request_id,),
            )
        return cursor.rowcount == 1

    def set_job(self, request_id: str, job_id: str) -> bool:
        """Record the id of the queue job that currently carries this request."""
        return self._update(request_id, ACTIVE, job_id=job_id)

    def mark_queued(self, request_id: str) -> bool:
        """Put a request whose work was lost (crashed worker, restarted Redis) back in the queue."""
        return self._update(
            request_id, ACTIVE, status="queued", progress={"fraction": 0.0, "stage": "requeued"}
        )
