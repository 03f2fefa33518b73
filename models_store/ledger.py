"""The request ledger: one database row per accepted forget request, the source of truth for its status.

Redis only carries the work; the ledger says what was accepted and how it ended. Every change is committed
durably before its method returns (`models_store.database`: SQLite in WAL mode with synchronous=FULL, or
PostgreSQL), so a row committed before the API answers 202 survives a crash of any process.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, case, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from models_store import schema
from models_store.database import Database, DatabaseSettings, open_database
from models_store.errors import NotFoundError
from models_store.store import now_iso


class RequestStatus(str, Enum):
    """Where a forget request stands: queued or running until it ends succeeded, failed or cancelled; a succeeded
    one becomes reverted when a rollback takes it out of force."""

    # A str: the database stores and the API shows the plain value. Format `.value`, not the member, in messages
    # and pass `.value` to the database (psycopg writes an Enum's member name).
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

_requests, _audit_log, _idempotency = schema.forget_requests, schema.audit, schema.idempotency


def _plain(value: Any) -> Any:
    """What the database stores for a value: an Enum member as its value."""
    return value.value if isinstance(value, Enum) else value


def _statuses(statuses: Sequence[RequestStatus | str]) -> builtins.list[str]:
    return [str(_plain(s)) for s in statuses]


def _audit_values(action: str, actor: str, request_id: str | None, model: str | None,
                  detail: dict[str, Any] | None, at: str | None = None) -> dict[str, Any]:
    """An audit row (`at`: now unless given)."""
    return {"at": at or now_iso(), "action": action, "actor": actor, "request_id": request_id, "model": model,
            "detail": json.dumps(detail or {})}


def _audit(conn: Connection, action: str, actor: str, request_id: str | None, model: str | None,
           detail: dict[str, Any] | None) -> None:
    conn.execute(insert(_audit_log).values(_audit_values(action, actor, request_id, model, detail)))


def _to_dict(row: Row[Any]) -> dict[str, Any]:
    record = dict(row._mapping)
    for key in _JSON_FIELDS:
        if record.get(key) is not None:
            record[key] = json.loads(record[key])
    return record


_BULKY = ("samples", "result", "receipt")
"""Columns `Ledger.active()` leaves out: a forget set of up to UNLEARND_MAX_SAMPLE_IDS ids is megabytes of JSON,
and the janitor reads every active request on each of its passes."""


def _ending(at: str, *, finished: bool = True) -> dict[str, Any]:
    """The values that end a request at `at` (`finished`: it sets `finished_at`; a reversal keeps it). When it has a
    callback_url, its callback becomes pending (a record without a message yet) in the same statement as the
    ending, so that no crash between ending it and queueing the callback loses the callback: the janitor queues
    what stayed unqueued."""
    has_url = _requests.c.callback_url.is_not(None)
    marker = json.dumps({"delivered": False, "pending": True, "attempts": 0, "message_id": None, "at": at})
    return {"callback": case((has_url, marker), else_=_requests.c.callback),
            "callback_pending": case((has_url, 1), else_=0), **({"finished_at": at} if finished else {})}


def _may_record(current: dict[str, Any] | None, outcome: dict[str, Any]) -> bool:
    """Whether `outcome` of a message may replace the callback record `current`: only for the message it tracks
    (a record of a newer ending, even one without its message yet, supersedes every older message; rows from before
    callbacks were tracked have none), and never backwards: not over a settled record, nor with fewer attempts."""
    if current is None:
        return True
    if current.get("message_id") != outcome.get("message_id"):
        return False
    return bool(current.get("pending")) and outcome.get("attempts", 0) >= current.get("attempts", 0)


@dataclass(frozen=True)
class IdempotencyClaim:
    """A caller's Idempotency-Key, with a digest of what the request asks (its model and its body, canonical:
    the same request written with other whitespace or key order has the same digest). `raw_sha256`: the digest of
    the body's bytes, what versions before canonical digests stored, which a stored key may still hold."""

    key_id: str
    key: str
    body_sha256: str
    raw_sha256: str | None = None

    @classmethod
    def of(cls, key_id: str, key: str, model: str, body: bytes, raw_body: bytes | None = None) -> IdempotencyClaim:
        def digest(data: bytes) -> str:
            return hashlib.sha256(model.encode() + b"\0" + data).hexdigest()

        return cls(key_id, key, digest(body), None if raw_body is None else digest(raw_body))

    def same_body(self, stored_sha256: str) -> bool:
        """Whether a stored key's digest is of this request's body."""
        return stored_sha256 in (self.body_sha256, self.raw_sha256)


@dataclass(frozen=True)
class NewRequest:
    """A forget request to insert (`Ledger.accept`): the record as the API builds it, the id of the job that will
    carry it, and its Idempotency-Key claim."""

    record: dict[str, Any]
    job_id: str | None = None
    claim: IdempotencyClaim | None = None


@dataclass(frozen=True)
class KeyInUse:
    """The Idempotency-Key of a new request was claimed before: its row (with the answer to replay, or a claim
    bound to a request whose answer is missing, or a fresh claim bound to none)."""

    row: dict[str, Any]


StoredAnswer = tuple[int | None, str | None, dict[str, str] | None]
"""What a retry with the same Idempotency-Key replays: status code, body, headers."""


def _this_key(claim: IdempotencyClaim) -> tuple[Any, Any]:
    return _idempotency.c.key_id == claim.key_id, _idempotency.c.key == claim.key


def _claim_row(conn: Connection, claim: IdempotencyClaim) -> dict[str, Any] | None:
    row = conn.execute(select(_idempotency).where(*_this_key(claim))).mappings().first()
    return None if row is None else dict(row)


def _ago(seconds: float) -> str:
    """The timestamp (as `now_iso` writes them, so they compare as text) of `seconds` ago."""
    return datetime.fromtimestamp(time.time() - seconds, timezone.utc).isoformat(timespec="milliseconds")


def _abandoned(row: dict[str, Any], stale_claim_s: float) -> bool:
    """A claim bound to no request and older than `stale_claim_s`."""
    return row["request_id"] is None and row["status_code"] is None and row["created_at"] < _ago(stale_claim_s)


def _expired(row: dict[str, Any], key_ttl_s: float | None) -> bool:
    """A key older than `key_ttl_s` (None: keys never expire): forgotten, even before the janitor deletes it."""
    return key_ttl_s is not None and row["created_at"] < _ago(key_ttl_s)


class _OneByOne(Exception):
    """A group that `Ledger.accept` cannot insert at once: a key in it is claimed already, or twice in it."""


def _request_values(new: NewRequest, at: str) -> dict[str, Any]:
    """The row of a new request, status `queued`."""
    record = new.record
    return {"id": record["id"], "model": record["model"], "method": record["method"],
            "classes": None if record.get("classes") is None else json.dumps(record["classes"]),
            "samples": None if record.get("samples") is None else json.dumps(record["samples"]),
            "reason": record.get("reason"), "status": RequestStatus.QUEUED.value,
            "progress": json.dumps({"fraction": 0.0, "stage": "queued"}), "created_at": at,
            "key_id": record.get("key_id"), "callback_url": record.get("callback_url"), "job_id": new.job_id,
            "accepted_by": record.get("accepted_by")}


def _accepted_audit_values(stored: dict[str, Any], at: str) -> dict[str, Any]:
    """The audit row `request.accepted` of a stored request."""
    detail = {"classes": stored["classes"], "samples": len(stored["samples"] or []) or None,
              "method": stored["method"]}
    return _audit_values("request.accepted", stored["key_id"] or "system", stored["id"], stored["model"], detail, at)


def _claim_values(claim: IdempotencyClaim, stored: dict[str, Any],
                  answer: Callable[[dict[str, Any]], StoredAnswer] | None, at: str) -> dict[str, Any]:
    """The Idempotency-Key row that binds `claim` to a stored request, with the answer a retry replays."""
    status_code, response, headers = answer(stored) if answer is not None else (None, None, None)
    return {"key": claim.key, "key_id": claim.key_id, "body_sha256": claim.body_sha256, "created_at": at,
            "request_id": stored["id"], "status_code": status_code, "response": response,
            "headers": None if headers is None else json.dumps(headers)}


class Ledger:
    """Forget requests, the audit log and idempotency keys in a (migrated) `Database`; see `open_ledger`."""

    def __init__(self, db: Database):
        self.db = db

    def create(self, record: dict[str, Any]) -> dict[str, Any]:
        """Insert one new request in status `queued` (see `accept`); returns the stored record."""
        outcome = self.accept([NewRequest(record)])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, dict)  # no claim, so no KeyInUse
        return outcome

    def accept(self, requests: Sequence[NewRequest], answer: Callable[[dict[str, Any]], StoredAnswer] | None = None,
               stale_claim_s: float = 60.0, key_ttl_s: float | None = None,
               ) -> builtins.list[dict[str, Any] | KeyInUse | Exception]:
        """Insert new requests in status `queued`, all in one transaction (group commit: one durable commit for
        many requests); one outcome per request, in order: its stored record, `KeyInUse`, or the exception that
        refused it alone.

        A request with an Idempotency-Key `claim` binds the key to itself, with the answer that `answer(record)`
        gives (what a retry with the key replays). A key claimed before gives `KeyInUse`, except a claim bound to
        no request and older than `stale_claim_s` (left by a process that died while accepting, before claims
        were written with their request), and a key older than `key_ttl_s` (expired), which this request takes
        over.

        The whole group is inserted by three multi-row statements when none of its keys is claimed already (nor
        twice in the group) and nothing is refused; otherwise that savepoint is rolled back and each request is
        inserted in its own savepoint, so that a refused one does not undo the others."""
        with self.db.transaction() as conn:
            try:
                with conn.begin_nested():
                    outcomes: builtins.list[dict[str, Any] | KeyInUse | Exception] = [
                        *self._insert_group(conn, requests, answer)]
                return outcomes
            except (_OneByOne, DBAPIError):
                outcomes = []
            for new in requests:
                try:
                    with conn.begin_nested():
                        outcomes.append(self._insert(conn, new, answer, stale_claim_s, key_ttl_s))
                except IntegrityError as exc:  # another process claimed the key since our read: its row
                    row = None if new.claim is None else _claim_row(conn, new.claim)
                    outcomes.append(exc if row is None else KeyInUse(row))
                except Exception as exc:  # refuses this request only; the others go on
                    outcomes.append(exc)
        return outcomes

    @staticmethod
    def _insert_group(conn: Connection, requests: Sequence[NewRequest],
                      answer: Callable[[dict[str, Any]], StoredAnswer] | None) -> builtins.list[dict[str, Any]]:
        """Every request of the group at once, or `_OneByOne` when a key is claimed already or twice in it."""
        claims = {(new.claim.key_id, new.claim.key) for new in requests if new.claim is not None}
        if len(claims) < sum(new.claim is not None for new in requests):
            raise _OneByOne
        if claims:
            held = conn.execute(select(_idempotency.c.key_id, _idempotency.c.key).where(  # by the primary key
                _idempotency.c.key_id.in_({key_id for key_id, _ in claims}),
                _idempotency.c.key.in_([key for _, key in claims])))
            if claims & {(key_id, key) for key_id, key in held}:
                raise _OneByOne
        at = now_iso()
        inserted = conn.execute(insert(_requests).returning(*_requests.c), [_request_values(new, at)
                                                                             for new in requests])
        by_id = {row.id: _to_dict(row) for row in inserted}
        stored = [by_id[new.record["id"]] for new in requests]
        conn.execute(insert(_audit_log), [_accepted_audit_values(record, at) for record in stored])
        claimed = [_claim_values(new.claim, record, answer, at)
                   for new, record in zip(requests, stored, strict=True) if new.claim is not None]
        if claimed:
            conn.execute(insert(_idempotency), claimed)
        return stored

    @staticmethod
    def _insert(conn: Connection, new: NewRequest, answer: Callable[[dict[str, Any]], StoredAnswer] | None,
                stale_claim_s: float, key_ttl_s: float | None) -> dict[str, Any] | KeyInUse:
        claim = new.claim
        if claim is not None:
            row = _claim_row(conn, claim)
            if row is not None and not (_abandoned(row, stale_claim_s) or _expired(row, key_ttl_s)):
                return KeyInUse(row)
            if row is not None:
                conn.execute(delete(_idempotency).where(*_this_key(claim)))
        at = now_iso()
        stored = _to_dict(conn.execute(insert(_requests).returning(*_requests.c), _request_values(new, at)).one())
        conn.execute(insert(_audit_log).values(_accepted_audit_values(stored, at)))
        if claim is not None:
            conn.execute(insert(_idempotency).values(_claim_values(claim, stored, answer, at)))
        return stored

    def get(self, request_id: str) -> dict[str, Any]:
        with self.db.connect() as conn:
            row = conn.execute(select(_requests).where(_requests.c.id == request_id)).first()
        if row is None:
            raise NotFoundError(f"no forget request {request_id!r}")
        return _to_dict(row)

    # Below this method `list` names it, not the builtin: annotations there say `builtins.list`.
    def list(
        self, model: str | None = None, status: RequestStatus | str | None = None, limit: int = 50,
        after_seq: int = 0, *, statuses: Sequence[RequestStatus | str] = (), newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Requests in acceptance order (or newest first), optionally filtered by model and by one `status` or
        any of `statuses`, starting after the request with sequence number `after_seq` in that order (0: from
        the start)."""
        wanted = [*statuses, *([status] if status is not None else [])]
        seq = _requests.c.seq
        query = select(_requests).order_by(seq.desc() if newest_first else seq).limit(limit)
        if not newest_first:
            query = query.where(seq > after_seq)
        elif after_seq:
            query = query.where(seq < after_seq)
        if model is not None:
            query = query.where(_requests.c.model == model)
        if wanted:
            query = query.where(_requests.c.status.in_(_statuses(wanted)))
        with self.db.connect() as conn:
            return [_to_dict(r) for r in conn.execute(query)]

    def active(self) -> builtins.list[dict[str, Any]]:
        """Every request not yet in a terminal state, in acceptance order, without its bulky columns (`_BULKY`:
        the forget set's sample ids, result and receipt; `get` has them)."""
        columns = [column for column in _requests.c if column.name not in _BULKY]
        query = select(*columns).where(_requests.c.status.in_(_statuses(ACTIVE))).order_by(_requests.c.seq)
        with self.db.connect() as conn:
            return [_to_dict(r) for r in conn.execute(query)]

    def _update(self, request_id: str, allowed_from: tuple[RequestStatus, ...], audit: str | None = None,
                actor: str = "system", detail: dict[str, Any] | None = None, **fields: Any) -> bool:
        """Set fields if the request is in one of `allowed_from` (and audit it); returns whether it
        changed."""
        values = {k: v if isinstance(v, ColumnElement) else json.dumps(v) if k in _JSON_FIELDS else _plain(v)
                  for k, v in fields.items()}
        with self.db.transaction() as conn:
            changed = conn.execute(
                update(_requests)
                .where(_requests.c.id == request_id, _requests.c.status.in_(_statuses(allowed_from)))
                .values(**values)
            ).rowcount == 1
            if changed and audit:
                model = conn.scalar(select(_requests.c.model).where(_requests.c.id == request_id))
                _audit(conn, audit, actor, request_id, model, detail)
        return changed

    def mark_running(self, request_id: str) -> bool:
        with self.db.transaction() as conn:
            changed = conn.execute(
                update(_requests)
                .where(_requests.c.id == request_id, _requests.c.status.in_(_statuses(ACTIVE)))
                .values(status=RequestStatus.RUNNING.value, started_at=now_iso(), attempts=_requests.c.attempts + 1,
                        progress=json.dumps({"stage": "loading", "stage_fraction": 0.0, "fraction": 0.0,
                                             "elapsed_s": 0.0, "eta_s": None}), not_before=None)
            ).rowcount == 1
            if changed:
                model, attempts = conn.execute(
                    select(_requests.c.model, _requests.c.attempts).where(_requests.c.id == request_id)
                ).one()
                _audit(conn, "request.running", "worker", request_id, model, {"attempt": attempts})
        return changed

    def set_progress(self, request_id: str, progress: dict[str, Any]) -> bool:
        """Record progress; False when the request is no longer running (e.g. cancelled)."""
        return self._update(request_id, (RequestStatus.RUNNING,), progress=progress)

    def mark_succeeded(
        self, request_id: str, result: dict[str, Any], receipt: dict[str, Any] | None = None
    ) -> bool:
        return self._update(
            request_id, ACTIVE, audit="request.succeeded", actor="worker",
            detail={"artifact_id": result.get("artifact_id"), "state_version": result.get("state_version")},
            status=RequestStatus.SUCCEEDED, result=result, receipt=receipt, error=None,
            progress={"fraction": 1.0, "stage": "done"}, **_ending(now_iso()),
        )

    def mark_reverted(self, request_id: str, *, actor: str, to_state: int, reason: str | None) -> bool:
        """A succeeded request whose forgetting a rollback to `to_state` took out of force; its result keeps
        what was computed, plus who reverted it, to which state and why."""
        try:
            record = self.get(request_id)
        except NotFoundError:  # a state may name requests this ledger never held (another installation's)
            return False
        at = now_iso()
        reverted = {"by": actor, "to_state": to_state, "reason": reason, "at": at}
        return self._update(request_id, (RequestStatus.SUCCEEDED,), audit="request.reverted", actor=actor,
                            detail={"to_state": to_state, "reason": reason}, status=RequestStatus.REVERTED,
                            result={**(record["result"] or {}), "reverted": reverted}, **_ending(at, finished=False))

    def mark_failed(self, request_id: str, error: str, actor: str = "worker",
                    result: dict[str, Any] | None = None) -> bool:
        """End the request `failed` with `error`; `result` keeps what was measured (e.g. the guard's figures)."""
        return self._update(request_id, ACTIVE, audit="request.failed", actor=actor, detail={"error": error},
                            status=RequestStatus.FAILED, error=error, result=result, **_ending(now_iso()))

    def request_cancel(self, request_id: str, actor: str) -> str:
        """Cancel a queued request at once, or ask the worker to stop a running one.

        Returns "cancelled-now", "cancelling" (the worker stops at its next progress report, or finishes first
        if it is already publishing) or the terminal status the request already had.
        """
        where = _requests.c.id == request_id
        with self.db.transaction() as conn:
            # FOR UPDATE: on PostgreSQL no worker changes the status between this read and the update below.
            row = conn.execute(select(_requests.c.status, _requests.c.model).where(where).with_for_update()).first()
            if row is None:
                raise NotFoundError(f"no forget request {request_id!r}")
            status, model = row
            if status == RequestStatus.QUEUED:
                conn.execute(update(_requests).where(where).values(
                    status=RequestStatus.CANCELLED.value, progress=json.dumps({"fraction": 0.0, "stage": "cancelled"}),
                    **_ending(now_iso())))
                _audit(conn, "request.cancelled", actor, request_id, model, {})
                return "cancelled-now"
            if status == RequestStatus.RUNNING:
                conn.execute(update(_requests).where(where).values(cancel_requested=1))
                _audit(conn, "request.cancel_requested", actor, request_id, model, {})
                return "cancelling"
            return str(status)

    def cancel_requested(self, request_ids: builtins.list[str]) -> builtins.list[str]:
        """Which of these requests someone asked to cancel."""
        query = select(_requests.c.id).where(_requests.c.cancel_requested == 1, _requests.c.id.in_(request_ids))
        with self.db.connect() as conn:
            return [str(r) for r in conn.scalars(query)]

    def job_ids(self, request_ids: builtins.list[str]) -> dict[str, str]:
        """The RQ job id of each of these requests that has one."""
        query = select(_requests.c.id, _requests.c.job_id).where(_requests.c.id.in_(request_ids),
                                                                 _requests.c.job_id.is_not(None))
        with self.db.connect() as conn:
            return {str(request_id): str(job_id) for request_id, job_id in conn.execute(query)}

    def mark_cancelled(self, request_id: str, actor: str) -> bool:
        return self._update(request_id, ACTIVE, audit="request.cancelled", actor=actor,
                            status=RequestStatus.CANCELLED, progress={"fraction": 0.0, "stage": "cancelled"},
                            **_ending(now_iso()))

    def count_attempt(self, request_id: str) -> bool:
        """Count an attempt whose job died before it could mark the request running."""
        return self._update(request_id, ACTIVE, attempts=_requests.c.attempts + 1)

    def set_job(self, request_id: str, job_id: str | None) -> bool:
        """Record the id of the queue job that currently carries this request."""
        return self._update(request_id, ACTIVE, job_id=job_id)

    def mark_queued(self, request_id: str, not_before: float, reason: str, actor: str = "janitor",
                    refund_attempt: bool = False) -> bool:
        """Put a request whose work was lost back in line, to be enqueued at `not_before` (epoch seconds).
        `refund_attempt`: the attempt it used ended through no fault of its own (a partner of its batch was
        cancelled or failed), so it does not count towards `max_attempts`."""
        attempts = _requests.c.attempts
        refund = {"attempts": case((attempts > 0, attempts - 1), else_=0)} if refund_attempt else {}
        return self._update(
            request_id, ACTIVE, audit="request.requeued", actor=actor, detail={"reason": reason},
            status=RequestStatus.QUEUED, job_id=None, not_before=not_before,
            progress={"fraction": 0.0, "stage": "waiting to retry"}, **refund,
        )

    def set_callback(self, request_id: str, outcome: dict[str, Any]) -> bool:
        """Record where the request's callback message stands (`outcome["pending"]`: attempts are still to come),
        if `_may_record` allows it: a late or repeated attempt, or one of a superseded message, changes nothing.
        Returns whether it was recorded."""
        where = _requests.c.id == request_id
        with self.db.transaction() as conn:
            current = conn.scalar(select(_requests.c.callback).where(where).with_for_update())
            if not _may_record(None if current is None else json.loads(current), outcome):
                return False
            return conn.execute(update(_requests).where(where).values(
                callback=json.dumps(outcome), callback_pending=1 if outcome.get("pending") else 0)).rowcount == 1

    def claim_callback(self, request_id: str, message_id: str, at: str) -> dict[str, Any] | None:
        """Make `message_id` the callback message of the request's latest ending, once per ending: its record as
        read in the same transaction (the body to send), or None when the ending has its message already (another
        process made it) or the request has no pending callback."""
        where = _requests.c.id == request_id

        def unclaimed(marker: dict[str, Any] | None) -> bool:
            return bool(marker and marker.get("pending") and marker.get("message_id") is None)

        with self.db.connect() as conn:  # most endings have no callback: no write transaction for them
            current = conn.scalar(select(_requests.c.callback).where(where))
        if not unclaimed(None if current is None else json.loads(current)):
            return None
        with self.db.transaction() as conn:
            row = conn.execute(select(_requests).where(where).with_for_update()).first()
            if row is None:
                return None
            record = _to_dict(row)
            marker = record["callback"]
            if not unclaimed(marker):
                return None
            claimed = {**marker, "message_id": message_id, "at": at}
            conn.execute(update(_requests).where(where).values(callback=json.dumps(claimed)))
        return {**record, "callback": claimed}

    def count_pending_callbacks(self) -> int:
        """How many ended requests have a callback not settled yet."""
        query = select(func.count()).select_from(_requests).where(_requests.c.callback_pending == 1)
        with self.db.connect() as conn:
            return int(conn.scalar(query) or 0)

    def pending_callbacks(self, after_seq: int = 0, limit: int = 1000) -> builtins.list[dict[str, Any]]:
        """Requests whose callback is not settled, in acceptance order after sequence number `after_seq`, without
        their bulky columns."""
        columns = [column for column in _requests.c if column.name not in _BULKY]
        query = select(*columns).where(_requests.c.callback_pending == 1, _requests.c.seq > after_seq).order_by(
            _requests.c.seq).limit(limit)
        with self.db.connect() as conn:
            return [_to_dict(r) for r in conn.execute(query)]

    def queued_for_model(self, model: str, exclude: str) -> builtins.list[dict[str, Any]]:
        """Other queued requests of a model, oldest first (candidates to coalesce into one job)."""
        query = select(_requests).where(
            _requests.c.model == model, _requests.c.status == RequestStatus.QUEUED.value, _requests.c.id != exclude,
        ).order_by(_requests.c.seq)
        with self.db.connect() as conn:
            return [_to_dict(r) for r in conn.execute(query)]

    def count(self) -> int:
        with self.db.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(_requests)) or 0)

    def counts_by_method_and_status(self) -> builtins.list[tuple[str, str, int]]:
        """(method, status, number of requests) for every combination present."""
        query = select(_requests.c.method, _requests.c.status, func.count()).group_by(
            _requests.c.method, _requests.c.status)
        with self.db.connect() as conn:
            return [(str(method), str(status), int(n)) for method, status, n in conn.execute(query)]

    # ---- audit log ------------------------------------------------------------------------------------
    def audit(self, action: str, actor: str, request_id: str | None = None, model: str | None = None,
              detail: dict[str, Any] | None = None) -> None:
        """Append one entry to the audit log (admin actions, state changes)."""
        with self.db.transaction() as conn:
            _audit(conn, action, actor, request_id, model, detail)

    def audit_entries(
        self, action: str | None = None, request_id: str | None = None, model: str | None = None,
        actor: str | None = None, limit: int = 100, after_seq: int = 0,
    ) -> builtins.list[dict[str, Any]]:
        query = select(_audit_log).where(_audit_log.c.seq > after_seq).order_by(_audit_log.c.seq).limit(limit)
        filters = (("action", action), ("request_id", request_id), ("model", model), ("actor", actor))
        for column, value in filters:
            if value is not None:
                query = query.where(_audit_log.c[column] == value)
        with self.db.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [{**r, "detail": json.loads(r["detail"] or "{}")} for r in rows]

    # ---- idempotency keys (draft-ietf-httpapi-idempotency-key-header) -------------------------------------
    def idempotency_row(self, claim: IdempotencyClaim, key_ttl_s: float | None = None) -> dict[str, Any] | None:
        """The row of an Idempotency-Key, or None when it was never claimed (or is older than `key_ttl_s`)."""
        with self.db.connect() as conn:
            row = _claim_row(conn, claim)
        return None if row is None or _expired(row, key_ttl_s) else row

    def expire_idempotency_keys(self, key_ttl_s: float, batch: int = 5000, max_batches: int = 20) -> int:
        """Delete the keys older than `key_ttl_s`, about `batch` per transaction (a backlog never holds the
        database's write lock for long) and at most `max_batches` transactions (the rest is left to the next
        call); returns how many."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        created_at, cutoff, deleted = _idempotency.c.created_at, _ago(key_ttl_s), 0
        for _ in range(max_batches):
            with self.db.transaction() as conn:
                bound = conn.scalar(select(created_at).where(created_at < cutoff).order_by(created_at)
                                    .offset(batch - 1).limit(1))  # the batch-th oldest expired key, if so many
                expired = created_at <= bound if bound is not None else created_at < cutoff
                count = conn.execute(delete(_idempotency).where(expired)).rowcount
            deleted += count
            if bound is None:
                break
        return deleted

    def idempotency_finish(self, claim: IdempotencyClaim, request_id: str, status_code: int, response: str,
                           headers: dict[str, str]) -> None:
        """Store the answer of a claim bound to `request_id` whose process died before storing it (unless the key
        has been taken over since, or answered)."""
        with self.db.transaction() as conn:
            conn.execute(update(_idempotency)
                         .where(*_this_key(claim), _idempotency.c.request_id == request_id,
                                _idempotency.c.status_code.is_(None))
                         .values(status_code=status_code, response=response, headers=json.dumps(headers)))


def open_ledger(settings: DatabaseSettings) -> Ledger:
    """The ledger every process uses: in `UNLEARND_DATABASE_URL`, else <data_dir>/ledger.sqlite3."""
    return Ledger(open_database(settings))
