"""Putting forget requests on the RQ queue. Torch-free: the API process imports it.

Jobs are enqueued by dotted path with the JSON serializer and carry only the request id; the ledger row
holds everything else. A job enqueued while the API accepts the forget request also carries that HTTP request's id
(`X-Request-ID`) in its `meta`, so the job logs it too; so does a retry the janitor enqueues (the ledger row keeps
it as `accepted_by`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from models_store import Ledger
from unlearnd.logs import REQUEST_ID, current_request_id
from unlearnd.settings import Settings

JOB_FUNCTION = "workers.jobs.process_forget_request"
RESULT_TTL_S = 7 * 24 * 3600
"""How long RQ keeps a finished job, seconds. The ledger keeps the record for good."""
FAILURE_TTL_S = 7 * 24 * 3600
"""How long RQ keeps a failed job (and its traceback), seconds."""

log = structlog.stdlib.get_logger(__name__)


def redis_connection(settings: Settings) -> Redis:
    return Redis.from_url(settings.effective_redis_url, socket_timeout=10, socket_connect_timeout=5)


def forget_queue(connection: Redis, settings: Settings) -> Queue:
    return Queue(settings.queue_name, connection=connection, serializer=JSONSerializer)


def new_job_id(request_id: str) -> str:
    """A fresh id for a job carrying the request (a retry gets another one)."""
    return f"{request_id}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class JobToEnqueue:
    request_id: str
    job_id: str
    accepted_by: str | None = None
    """The X-Request-ID of the HTTP request that accepted it (None: not known, e.g. a request accepted before the
    ledger kept it)."""


def enqueue_jobs(queue: Queue, jobs: Sequence[JobToEnqueue], settings: Settings) -> None:
    """Put jobs on the queue, all in one Redis pipeline (the ledger rows name their job ids already)."""
    queue.enqueue_many([Queue.prepare_data(
        JOB_FUNCTION, (job.request_id,), job_id=job.job_id, timeout=settings.job_timeout_s, result_ttl=RESULT_TTL_S,
        failure_ttl=FAILURE_TTL_S, description=f"forget request {job.request_id}",
        meta={REQUEST_ID: job.accepted_by} if job.accepted_by else None,
    ) for job in jobs])
    for job in jobs:  # with the accepting request's id, also when logged by another thread than its handler
        traced = {REQUEST_ID: job.accepted_by} if job.accepted_by else {}
        log.info("forget request enqueued", forget_request_id=job.request_id, job_id=job.job_id, **traced)


def enqueue_request(queue: Queue, ledger: Ledger, record: dict[str, Any], settings: Settings) -> str:
    """Enqueue a job for a request (its ledger record) that has none (the janitor's retry), recording the job's id
    in the ledger first; returns the job id. The job carries the id of the HTTP request that accepted the request
    (`accepted_by`), as the first did."""
    request_id = record["id"]
    job_id = new_job_id(request_id)
    ledger.set_job(request_id, job_id)
    accepted_by = record.get("accepted_by") or current_request_id()
    enqueue_jobs(queue, [JobToEnqueue(request_id, job_id, accepted_by)], settings)
    return job_id
