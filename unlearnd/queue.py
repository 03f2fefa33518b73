"""Putting forget requests on the RQ queue. Torch-free: the API process imports it.

Jobs are enqueued by dotted path with the JSON serializer and carry only the request id; the ledger row
holds everything else. A job enqueued while the API accepts the forget request also carries that HTTP request's id
(`X-Request-ID`) in its `meta`, so the job logs it too; a retry the janitor enqueues has none, and the
`forget request enqueued` line (API: with the request id) ties the two together by `forget_request_id`.
"""

from __future__ import annotations

import uuid

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


def enqueue_request(queue: Queue, ledger: Ledger, request_id: str, settings: Settings) -> str:
    """Enqueue a job for the request and record its id in the ledger; returns the job id."""
    job_id = f"{request_id}-{uuid.uuid4().hex[:8]}"
    ledger.set_job(request_id, job_id)
    accepted_by = current_request_id()  # the HTTP request accepting it; None when the janitor retries it
    queue.enqueue(
        JOB_FUNCTION, request_id, job_id=job_id, job_timeout=settings.job_timeout_s,
        result_ttl=RESULT_TTL_S, failure_ttl=FAILURE_TTL_S, description=f"forget request {request_id}",
        meta={REQUEST_ID: accepted_by} if accepted_by else None,
    )
    log.info("forget request enqueued", forget_request_id=request_id, job_id=job_id)
    return job_id

