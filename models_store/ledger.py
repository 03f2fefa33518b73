"""The request ledger: one SQLite row per accepted forget request, the source of truth for its status.

Redis only carries the work; this file says what was accepted and how it ended. SQLite in WAL mode with
synchronous=FULL, so a row committed before the API answers 202 survives a crash of any process.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from models_store.errors import NotFoundError
from models_store.store import now_iso


class RequestStatus(str, Enum):
    """Where a forget request stands: queued or running until it ends succeeded, failed or cancelled; a succeeded
    one becomes reverted when a rollback takes it out of force."""

    # A str: SQLite stores and the API shows the plain value. Format `.value`, not the member, in messages.
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REVERTED = "reverted"
    """It had succeeded, and an explicit rollback took its forgetting out of force."""


ACTIVE = (RequestStatus.QUEUED, RequestStatus.RUNNING)
TERMINAL = (RequestStatus.SUCCEEDED, RequestStatus.FAILED, RequestStatus.CANCELLED, RequestStatus.REVERTED)
_JSON_FIELDS = ("classes", "samples", "progress", "result", "callback", "receipt")

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
    job_id       TEXT,
    not_before   REAL,
    callback_url TEXT,
    callback     TEXT,
    receipt      TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS forget_requests_model_status ON forget_requests (model, status);

CREATE TABLE IF NOT EXISTS idempotency (
    key          TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    body_sha256  TEXT NOT NULL,
    status_code  INTEGER,
    response     TEXT,
    headers      TEXT,
    created_at   TEXT NOT NULL,
    request_id   TEXT,
    PRIMARY KEY (key_id, key)
);

CREATE TABLE IF NOT EXISTS audit (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    action       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    request_id   TEXT,
    model        TEXT,
    detail       TEXT
);
CREATE INDEX IF NOT EXISTS audit_request ON audit (request_id);
"""


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _audit(db: sqlite3.Connection, action: str, actor: str, request_id: str | None, model: str | None,
           detail: dict[str, Any] | None) -> None:
    db.execute("INSERT INTO audit (at, action, actor, request_id, model, detail) VALUES (?, ?, ?, ?, ?, ?)",
               (now_iso(), action, actor, request_id, model, json.dumps(detail or {})))


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(idempotency)")}
            if "request_id" not in columns:  # ledgers created before the column existed
                db.execute("ALTER TABLE idempotency ADD COLUMN request_id TEXT")

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

    def create(self, record: dict[str, Any], idempotency: tuple[str, str] | None = None) -> dict[str, Any]:
        """Insert a new request in status `queued`; returns the stored record.

        `idempotency` = (key_id, key) of a claimed Idempotency-Key: the claim is bound to this request in
        the same transaction, so a retry after a crash finds the request instead of a claim that never
        finishes."""
        row = {
            "id": record["id"], "model": record["model"], "method": record["method"],
            "classes": json.dumps(record.get("classes")) if record.get("classes") is not None else None,
            "samples": json.dumps(record.get("samples")) if record.get("samples") is not None else None,
            "reason": record.get("reason"), "status": RequestStatus.QUEUED,
            "progress": json.dumps({"fraction": 0.0, "stage": "queued"}),
            "created_at": now_iso(), "key_id": record.get("key_id"),
            "callback_url": record.get("callback_url"),
        }
        with self._connect() as db, _transaction(db):
            db.execute(
                f"INSERT INTO forget_requests ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
            _audit(db, "request.accepted", row["key_id"] or "system", row["id"], row["model"],
                   {"classes": record.get("classes"), "samples": len(record.get("samples") or []) or None,
                    "method": row["method"]})
            if idempotency is not None:
                db.execute("UPDATE idempotency SET request_id = ? WHERE key_id = ? AND key = ?",
                           (row["id"], *idempotency))
        return self.get(record["id"])

    def get(self, request_id: str) -> dict[str, Any]:
        with self._connect() as db:
            row = db.execute("SELECT * FROM forget_requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no forget request {request_id!r}")
        return self._to_dict(row)

    # Below this method `list` names it, not the builtin: annotations there say `builtins.list`.
    def list(
        self, model: str | None = None, status: RequestStatus | str | None = None, limit: int = 50,
        after_seq: int = 0, *, statuses: Sequence[RequestStatus] = (), newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Requests in acceptance order (or newest first), optionally filtered by model and by one `status` or
        any of `statuses`, starting after the request with sequence number `after_seq` in that order (0: from
        the start)."""
        wanted = [*statuses, *([status] if status is not None else [])]
        args: builtins.list[Any]
        if newest_first:
            query, args = "SELECT * FROM forget_requests WHERE (? = 0 OR seq < ?)", [after_seq, after_seq]
        else:
            query, args = "SELECT * FROM forget_requests WHERE seq > ?", [after_seq]
        if model is not None:
            query, args = query + " AND model = ?", [*args, model]
        if wanted:
            query, args = query + f" AND status IN ({', '.join('?' * len(wanted))})", [*args, *wanted]
        order = "DESC" if newest_first else "ASC"
        with self._connect() as db:
            rows = db.execute(query + f" ORDER BY seq {order} LIMIT ?", (*args, limit)).fetchall()
        return [self._to_dict(r) for r in rows]

    def active(self) -> builtins.list[dict[str, Any]]:
        """Every request not yet in a terminal state."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM forget_requests WHERE status IN (?, ?) ORDER BY seq", ACTIVE
            ).fetchall()
        return [self._to_dict(r) for r in rows]

    def _update(self, request_id: str, allowed_from: tuple[RequestStatus, ...], audit: str | None = None,
                actor: str = "system", detail: dict[str, Any] | None = None, **fields: Any) -> bool:
        """Set fields if the request is in one of `allowed_from` (and audit it); returns whether it
        changed."""
        values = [json.dumps(v) if k in _JSON_FIELDS else v for k, v in fields.items()]
        sets = ", ".join(f"{k} = ?" for k in fields)
        marks = ", ".join("?" * len(allowed_from))
        with self._connect() as db, _transaction(db):
            cursor = db.execute(
                f"UPDATE forget_requests SET {sets} WHERE id = ? AND status IN ({marks})",
                (*values, request_id, *allowed_from),
            )
            changed = cursor.rowcount == 1
            if changed and audit:
                model = db.execute(
                    "SELECT model FROM forget_requests WHERE id = ?", (request_id,)
                ).fetchone()[0]
                _audit(db, audit, actor, request_id, model, detail)
        return changed

    def mark_running(self, request_id: str) -> bool:
        with self._connect() as db, _transaction(db):
            cursor = db.execute(
                "UPDATE forget_requests SET status = ?, started_at = ?, attempts = attempts + 1, "
                "progress = ?, not_before = NULL WHERE id = ? AND status IN (?, ?)",
                (RequestStatus.RUNNING, now_iso(), json.dumps({"fraction": 0.0, "stage": "starting"}),
                 request_id, *ACTIVE),
            )
            if cursor.rowcount == 1:
                row = db.execute(
                    "SELECT model, attempts FROM forget_requests WHERE id = ?", (request_id,)
                ).fetchone()
                _audit(db, "request.running", "worker", request_id, row[0], {"attempt": row[1]})
        return cursor.rowcount == 1

    def set_progress(self, request_id: str, progress: dict[str, Any]) -> bool:
        """Record progress; False when the request is no longer running (e.g. cancelled)."""
        return self._update(request_id, (RequestStatus.RUNNING,), progress=progress)

    def mark_succeeded(
        self, request_id: str, result: dict[str, Any], receipt: dict[str, Any] | None = None
    ) -> bool:
        return self._update(
            request_id, ACTIVE, audit="request.succeeded", actor="worker",
            detail={"artifact_id": result.get("artifact_id"), "state_version": result.get("state_version")},
            status=RequestStatus.SUCCEEDED, result=result, receipt=receipt, finished_at=now_iso(), error=None,
            progress={"fraction": 1.0, "stage": "done"},
        )

    def mark_reverted(self, request_id: str, *, actor: str, to_state: int, reason: str | None) -> bool:
        """A succeeded request whose forgetting a rollback to `to_state` took out of force; its result keeps
        what was computed, plus who reverted it, to which state and why."""
        try:
            record = self.get(request_id)
        except NotFoundError:  # a state may name requests this ledger never held (another installation's)
            return False
        reverted = {"by": actor, "to_state": to_state, "reason": reason, "at": now_iso()}
        return self._update(request_id, (RequestStatus.SUCCEEDED,), audit="request.reverted", actor=actor,
                            detail={"to_state": to_state, "reason": reason}, status=RequestStatus.REVERTED,
                            result={**(record["result"] or {}), "reverted": reverted})

    def mark_failed(self, request_id: str, error: str, actor: str = "worker",
                    result: dict[str, Any] | None = None) -> bool:
        """End the request `failed` with `error`; `result` keeps what was measured (e.g. the guard's figures)."""
        return self._update(request_id, ACTIVE, audit="request.failed", actor=actor, detail={"error": error},
                            status=RequestStatus.FAILED, error=error, finished_at=now_iso(), result=result)

    def request_cancel(self, request_id: str, actor: str) -> str:
        """Cancel a queued request at once, or ask the worker to stop a running one.

        Returns "cancelled-now", "cancelling" (the worker stops at its next progress report, or finishes first
        if it is already publishing) or the terminal status the request already had.
        """
        with self._connect() as db, _transaction(db):
            row = db.execute(
                "SELECT status, model FROM forget_requests WHERE id = ?", (request_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no forget request {request_id!r}")
            status, model = row
            if status == RequestStatus.QUEUED:
                progress = json.dumps({"fraction": 0.0, "stage": "cancelled"})
                db.execute(
                    "UPDATE forget_requests SET status = ?, finished_at = ?, progress = ? WHERE id = ?",
                    (RequestStatus.CANCELLED, now_iso(), progress, request_id),
                )
                _audit(db, "request.cancelled", actor, request_id, model, {})
                return "cancelled-now"
            if status == RequestStatus.RUNNING:
                db.execute("UPDATE forget_requests SET cancel_requested = 1 WHERE id = ?", (request_id,))
                _audit(db, "request.cancel_requested", actor, request_id, model, {})
                return "cancelling"
            return status

    def cancel_requested(self, request_ids: builtins.list[str]) -> builtins.list[str]:
        """Which of these requests someone asked to cancel."""
        marks = ", ".join("?" * len(request_ids))
        with self._connect() as db:
            rows = db.execute(
                f"SELECT id FROM forget_requests WHERE cancel_requested = 1 AND id IN ({marks})", request_ids
            ).fetchall()
        return [r[0] for r in rows]

    def mark_cancelled(self, request_id: str, actor: str) -> bool:
        return self._update(request_id, ACTIVE, audit="request.cancelled", actor=actor,
                            status=RequestStatus.CANCELLED,
                            finished_at=now_iso(), progress={"fraction": 0.0, "stage": "cancelled"})

    def count_attempt(self, request_id: str) -> bool:
        """Count an attempt whose job died before it could mark the request running."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE forget_requests SET attempts = attempts + 1 WHERE id = ? AND status IN (?, ?)",
                (request_id, *ACTIVE),
            )
        return cursor.rowcount == 1

    def set_job(self, request_id: str, job_id: str | None) -> bool:
        """Record the id of the queue job that currently carries this request."""
        return self._update(request_id, ACTIVE, job_id=job_id)

    def mark_queued(self, request_id: str, not_before: float, reason: str, actor: str = "janitor",
                    refund_attempt: bool = False) -> bool:
        """Put a request whose work was lost back in line, to be enqueued at `not_before` (epoch seconds).
        `refund_attempt`: the attempt it used ended through no fault of its own (a partner of its batch was
        cancelled or failed), so it does not count towards `max_attempts`."""
        changed = self._update(
            request_id, ACTIVE, audit="request.requeued", actor=actor, detail={"reason": reason},
            status=RequestStatus.QUEUED, job_id=None, not_before=not_before,
            progress={"fraction": 0.0, "stage": "waiting to retry"},
        )
        if changed and refund_attempt:
            with self._connect() as db:
                db.execute("UPDATE forget_requests SET attempts = MAX(attempts - 1, 0) WHERE id = ?", (request_id,))
        return changed

    def set_callback(self, request_id: str, outcome: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE forget_requests SET callback = ? WHERE id = ?", (json.dumps(outcome), request_id)
            )

    def queued_for_model(self, model: str, exclude: str) -> builtins.list[dict[str, Any]]:
        """Other queued requests of a model, oldest first (candidates to coalesce into one job)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM forget_requests WHERE model = ? AND status = ? AND id != ? ORDER BY seq",
                (model, RequestStatus.QUEUED, exclude),
            ).fetchall()
        return [self._to_dict(r) for r in rows]

    def count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM forget_requests").fetchone()[0]

    def counts_by_method_and_status(self) -> builtins.list[tuple[str, str, int]]:
        """(method, status, number of requests) for every combination present."""
        with self._connect() as db:
            rows = db.execute("SELECT method, status, COUNT(*) FROM forget_requests GROUP BY method, status")
            return [(str(method), str(status), int(n)) for method, status, n in rows.fetchall()]

    # ---- audit log ------------------------------------------------------------------------------------
    def audit(self, action: str, actor: str, request_id: str | None = None, model: str | None = None,
              detail: dict[str, Any] | None = None) -> None:
        """Append one entry to the audit log (admin actions, state changes)."""
        with self._connect() as db:
            _audit(db, action, actor, request_id, model, detail)

    def audit_entries(
        self, action: str | None = None, request_id: str | None = None, model: str | None = None,
        actor: str | None = None, limit: int = 100, after_seq: int = 0,
    ) -> builtins.list[dict[str, Any]]:
        query = "SELECT * FROM audit WHERE seq > ?"
        args: builtins.list[Any] = [after_seq]
        filters = (("action", action), ("request_id", request_id), ("model", model), ("actor", actor))
        for column, value in filters:
            if value is not None:
                query, args = query + f" AND {column} = ?", [*args, value]
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]

    # ---- idempotency keys (draft-ietf-httpapi-idempotency-key-header) -------------------------------------
    def idempotency_begin(self, key_id: str, key: str, body_sha256: str) -> dict[str, Any] | None:
        """Claim an idempotency key. None = claimed now, go ahead; else the existing row (pending or done)."""
        with self._connect() as db, _transaction(db):
            row = db.execute(
                "SELECT * FROM idempotency WHERE key_id = ? AND key = ?", (key_id, key)
            ).fetchone()
            if row is not None:
                return dict(row)
            db.execute("INSERT INTO idempotency (key, key_id, body_sha256, created_at) VALUES (?, ?, ?, ?)",
                       (key, key_id, body_sha256, now_iso()))
        return None

    def idempotency_finish(self, key_id: str, key: str, status_code: int, response: str,
                           headers: dict[str, str]) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE idempotency SET status_code = ?, response = ?, headers = ? "
                "WHERE key_id = ? AND key = ?",
                (status_code, response, json.dumps(headers), key_id, key),
            )

    def idempotency_take_over(self, key_id: str, key: str, older_than_s: float) -> bool:
        """Take over a pending claim bound to no request and older than `older_than_s` (its API process died
        before accepting): True if the caller now holds it."""
        cutoff = datetime.fromtimestamp(time.time() - older_than_s, timezone.utc)
        cutoff_iso = cutoff.isoformat(timespec="milliseconds")
        with self._connect() as db:
            taken = db.execute(
                "UPDATE idempotency SET created_at = ? WHERE key_id = ? AND key = ? AND status_code IS NULL "
                "AND request_id IS NULL AND created_at < ?", (now_iso(), key_id, key, cutoff_iso))
            return taken.rowcount == 1

    def idempotency_release(self, key_id: str, key: str) -> None:
        """Forget a claim whose request was refused, so the client may retry with the same key."""
        with self._connect() as db:
            db.execute(
                "DELETE FROM idempotency WHERE key_id = ? AND key = ? AND status_code IS NULL", (key_id, key)
            )
