"""`python -m workers`: one forking RQ worker on the forget queue (JSON serializer)."""

from __future__ import annotations

import logging

from rq import Worker
from rq.serializers import JSONSerializer

import unlearning  # noqa: F401  (import torch once in the parent so each forked work-horse starts warm)
from unlearnd.queue import forget_queue, redis_connection
from unlearnd.settings import get_settings

JOB_MONITORING_INTERVAL_S = 5
"""How often the worker refreshes a running job's heartbeat, seconds; the janitor reads it."""
WORKER_TTL_S = 20
"""A worker's registration expires this long after its last heartbeat, so /readyz stops counting a dead
worker within about this many seconds (RQ's default is 420)."""


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    settings = get_settings()
    connection = redis_connection(settings)
    worker = Worker(
        [forget_queue(connection, settings)], connection=connection, serializer=JSONSerializer,
        job_monitoring_interval=JOB_MONITORING_INTERVAL_S, worker_ttl=WORKER_TTL_S,
    )
    worker.work(logging_level="INFO")


if __name__ == "__main__":
    main()
