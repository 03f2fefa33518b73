"""Putting forget requests on the RQ queue. Torch-free: the API process imports it.

Jobs are enqueued by dotted path with the JSON serializer and carry only the request id; the ledger row
holds everything else.
"""

from __future__ import annotations

import uuid

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from models_store import Ledger
from unlearnd.settings import Settings

JOB_FUNCTION = "workers.jobs.process_forget_request"
RESULT_TTL_S = 7 * 24 * 3600
"""How long RQ keeps a finished job, seconds. The ledger keeps the record for good."""
FAILURE_TTL_S = 7 * 24 * 3600
"""How long RQ keeps a failed job (and its traceback), seconds."""


def redis_connection(settings: Settings) -> Redis:
    return Redis.from_url(settings.effective_redis_url, socket_timeout=10, socket_connect_timeout=5)


def forget_queue(connection: Redis, settings: Settings) -> Queue:
    return Queue(settings.queue_name, connection=connection, serializer=JSONSerializer)


def enqueue_request(queue: Queue, ledger: Ledger, request_id: str, settings: Settings) -> str:
    """Enqueue a job for the request and record its id in the ledger; returns the job id."""
    job_id = f"{request_id}-{uuid.uuid4().hex[:8]}"
    ledger.set_job(request_id, job_id)
    queue.enqueue(
        JOB_FUNCTION, request_id, job_id=job_id, job_timeout=settings.job_timeout_s,
        result_ttl=RESULT_TTL_S, failure_ttl=FAILURE_TTL_S, description=f"forget request {request_id}",
    )
    return job_id
