"""The janitor makes sure every accepted request ends `succeeded` or `failed`, and every callback is settled,
whatever crashed; it also deletes expired Idempotency-Keys.

The ledger says which requests are still active; RQ says what happened to the job carrying each one.
A request whose job is gone (Redis lost it, the API died before enqueueing), failed without the job
recording an outcome (work-horse killed), or stopped heartbeating (whole worker killed) is enqueued again,
until it has used `max_attempts`; then it ends `failed` with the last error.

Likewise for callbacks (`reconcile_callbacks`): a request whose callback is pending names its message and the
attempts made; the job of the next attempt must be in Redis. A message never queued (Redis down, or a crash just
after the request ended) is queued, an attempt Redis lost is queued again for when it was due, and an attempt
whose job failed for good (it crashed on every RQ retry) counts as a failed attempt: the next one follows, if any
remain.
`python -m workers.janitor`.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from models_store import Ledger, open_ledger
from models_store.ledger import RequestStatus
from unlearnd.callbacks import (
    Attempt,
    attempt_job_id,
    callback_queue,
    enqueue_attempt,
    notify_terminal,
    payload_of,
    record_failed_attempt,
)
from unlearnd.logs import configure_logging
from unlearnd.queue import enqueue_request, forget_queue, redis_connection
from unlearnd.settings import Settings, get_settings

log = logging.getLogger(__name__)

ENQUEUE_GRACE_S = 10.0
"""A queued request without a job is left alone this long: the API may be enqueueing it right now."""
RETRY_BACKOFF_S = (2.0, 10.0, 30.0, 60.0)
"""Wait before retrying after the n-th failed attempt (the last value repeats)."""
INTERVAL_S = 2.0
"""Seconds between two passes."""
SLOW_INTERVAL_S = 30.0
"""Seconds between two passes over the pending callbacks and the expired Idempotency-Keys (nothing there is looked
at before it is a minute old)."""
CALLBACK_GRACE_S = 60.0
"""A pending callback recorded less than this long ago is left alone: whoever recorded it may be queueing its
attempt right now."""

_WAITING = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def _age_s(iso_timestamp: str | None) -> float:
    if not iso_timestamp:
        return float("inf")
    return (datetime.now(timezone.utc) - datetime.fromisoformat(iso_timestamp)).total_seconds()


def _job_error(job: Job | None) -> str:
    if job is None:
        return "the queue lost the job"
    result = job.latest_result()
    if result is not None and result.exc_string:
        return result.exc_string.strip().splitlines()[-1][:500]
    status = job.get_status(refresh=False)
    return f"job ended {status.value if status is not None else 'in an unknown state'} without recording an outcome"


def _job_alive(job: Job, stale_s: float) -> bool:
    status = job.get_status(refresh=False)  # as fetched in this pass
    if status in _WAITING:
        return True
    if status == JobStatus.STARTED:
        beat = job.last_heartbeat or job.started_at
        if beat is None:
            return True
        return (datetime.now(timezone.utc) - beat.replace(tzinfo=timezone.utc)).total_seconds() < stale_s
    return False


def _jobs_of(records: list[dict], queue: Queue) -> list[Job | None]:
    """The RQ job of each record (None: it has none, or Redis does not know it), all read in one Redis round trip."""
    fetched = _fetch_jobs([record["job_id"] for record in records if record["job_id"]], queue)
    return [fetched.get(record["job_id"]) for record in records]


def _fetch_jobs(job_ids: list[str], queue: Queue) -> dict[str, Job | None]:
    """Each job by its id (None: Redis does not know it), in one Redis round trip: a pass over a backlog of 3,000
    requests took 1.1 s of CPU reading them one by one, every 2 s."""
    try:
        jobs = Job.fetch_many(job_ids, queue.connection, serializer=queue.serializer)
    except ValueError:  # a job RQ cannot read: read them one by one, that one as gone
        jobs = [_job(job_id, queue) for job_id in job_ids]
    return dict(zip(job_ids, jobs, strict=True))


def _job(job_id: str, queue: Queue) -> Job | None:
    try:
        return Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except (NoSuchJobError, ValueError):
        return None


def reconcile_once(ledger: Ledger, queue: Queue, settings: Settings) -> list[str]:
    """One pass over the active requests; returns what it did, one line per action."""
    actions: list[str] = []
    active = ledger.active()
    for record, job in zip(active, _jobs_of(active, queue), strict=True):
        request_id = record["id"]
        if record["status"] == RequestStatus.QUEUED and record["job_id"] is None:
            # Waiting to be enqueued: by the API right now (grace period), or after a retry backoff.
            due = record["not_before"] if record["not_before"] is not None else (
                datetime.fromisoformat(record["created_at"]).timestamp() + ENQUEUE_GRACE_S)
            if time.time() >= due:
                enqueue_request(queue, ledger, record, settings)
                actions.append(f"enqueued {request_id}")
            continue
        if job is not None and _job_alive(job, settings.worker_stale_s):
            continue
        queued = record["status"] == RequestStatus.QUEUED
        if job is None and queued and _age_s(record["created_at"]) < ENQUEUE_GRACE_S:
            continue
        if record["cancel_requested"]:
            if ledger.mark_cancelled(request_id, actor="janitor"):
                notify_terminal(ledger, request_id, settings, queue.connection)
            actions.append(f"cancelled {request_id}: its job ended while cancelling")
            continue
        error = _job_error(job)
        if job is not None and queued:
            ledger.count_attempt(request_id)  # the job died before it could mark the request running
        attempts = ledger.get(request_id)["attempts"]
        if attempts >= settings.max_attempts:
            if ledger.mark_failed(request_id, f"gave up after {attempts} attempts; last error: {error}",
                                  actor="janitor"):
                notify_terminal(ledger, request_id, settings, queue.connection)
            actions.append(f"failed {request_id}: {error}")
            continue
        backoff = RETRY_BACKOFF_S[min(attempts, len(RETRY_BACKOFF_S)) - 1] if attempts else 0.0
        ledger.mark_queued(request_id, not_before=time.time() + backoff, reason=error)
        actions.append(f"will retry {request_id} in {backoff:g} s (attempt {attempts + 1}): {error}")
    return actions


def reconcile_callbacks(ledger: Ledger, queue: Queue, settings: Settings) -> list[str]:
    """One pass over the pending callbacks (`queue`: the callbacks queue), all of them, a page at a time; returns
    what it did, one line each."""
    actions: list[str] = []
    after_seq = 0
    while page := ledger.pending_callbacks(after_seq=after_seq):
        after_seq = page[-1]["seq"]
        due = [record for record in page if _age_s((record["callback"] or {}).get("at")) >= CALLBACK_GRACE_S]
        actions += _reconcile_callback_page(ledger, queue, settings, due)
    return actions


def _reconcile_callback_page(ledger: Ledger, queue: Queue, settings: Settings, due: list[dict]) -> list[str]:
    actions: list[str] = []
    queued = [record for record in due if (record["callback"] or {}).get("message_id")]
    made = {record["id"] for record in queued}
    for record in due:  # those whose request ended with no message made yet
        if record["id"] not in made and notify_terminal(ledger, record["id"], settings, queue.connection):
            actions.append(f"queued the callback of {record['id']}")
    next_attempts = [attempt_job_id(record["callback"]["message_id"], record["callback"]["attempts"] + 1)
                     for record in queued]
    jobs = _fetch_jobs(next_attempts, queue)
    for record, job_id in zip(queued, next_attempts, strict=True):
        job = jobs[job_id]
        request_id, marker = record["id"], record["callback"]
        message_id, attempt = marker["message_id"], marker["attempts"] + 1
        if job is None:
            wait_s = -_age_s(marker.get("next_attempt_at")) if marker.get("next_attempt_at") else 0.0
            enqueue_attempt(queue, settings, request_id, message_id, payload_of(ledger, request_id), attempt,
                            wait_s if wait_s > 0 else None)
            actions.append(f"queued attempt {attempt} of the callback of {request_id}: the queue had lost it")
        elif job.get_status(refresh=False) in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            # it crashed on every RQ retry: a failed attempt like any other, and the next one follows if any remain
            outcome = Attempt(False, marker.get("status"), f"attempt {attempt} could not run: {_job_error(job)}")
            delay = record_failed_attempt(ledger, record, message_id, attempt, outcome, settings)
            if delay is not None:
                enqueue_attempt(queue, settings, request_id, message_id, payload_of(ledger, request_id),
                                attempt + 1, delay)
            actions.append(f"attempt {attempt} of the callback of {request_id} could not run"
                           + ("" if delay is not None else "; gave it up"))
    return actions


def expire_idempotency_keys(ledger: Ledger, settings: Settings) -> list[str]:
    """Delete the Idempotency-Keys older than UNLEARND_IDEMPOTENCY_KEY_TTL_S (lookups ignore them already)."""
    expired = ledger.expire_idempotency_keys(settings.idempotency_key_ttl_s)
    return [f"deleted {expired} expired Idempotency-Keys"] if expired else []


def main() -> None:
    settings = get_settings()
    configure_logging(settings, "janitor")
    ledger = open_ledger(settings)
    connection = redis_connection(settings)
    queue, callbacks = forget_queue(connection, settings), callback_queue(connection, settings)
    every_pass = [lambda: reconcile_once(ledger, queue, settings)]
    slow_passes = [lambda: reconcile_callbacks(ledger, callbacks, settings),
                   lambda: expire_idempotency_keys(ledger, settings)]
    slow_due = time.monotonic()
    while True:
        passes = every_pass
        if time.monotonic() >= slow_due:
            passes, slow_due = every_pass + slow_passes, time.monotonic() + SLOW_INTERVAL_S
        for one_pass in passes:
            try:
                for action in one_pass():
                    log.info(action)
            except RedisError as exc:
                log.warning("Redis unavailable, will retry: %s", exc)
            except Exception:  # keep reconciling; one bad pass must not stop the janitor
                log.exception("janitor pass failed")
        time.sleep(INTERVAL_S)


if __name__ == "__main__":
    main()
