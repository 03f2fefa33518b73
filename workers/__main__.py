"""`python -m workers`: one forking RQ worker on the forget queue, then the callbacks queue (JSON serializer).

Queues are served in that order: a queued forget job always goes before a queued callback delivery, and a
delivery attempt holds the worker for at most UNLEARND_CALLBACK_TIMEOUT_S.
"""

from __future__ import annotations

import os

from rq import Worker
from rq.serializers import JSONSerializer

import unlearning  # noqa: F401  (import torch once in the parent so each forked work-horse starts warm)
import workers.report  # noqa: F401  (and matplotlib, which renders each succeeded request's report)
from unlearnd.callbacks import callback_queue
from unlearnd.cli.processes import die_with_parent
from unlearnd.logs import configure_logging
from unlearnd.queue import forget_queue, redis_connection
from unlearnd.settings import get_settings

JOB_MONITORING_INTERVAL_S = 5
"""How often the worker refreshes a running job's heartbeat, seconds; the janitor reads it."""
WORKER_TTL_S = 20
"""A worker's registration expires this long after its last heartbeat, so /readyz stops counting a dead
worker within about this many seconds (RQ's default is 420)."""


class _Worker(Worker):
    """RQ's forking worker whose work-horses die with it (the worker dies with `unlearnd run`)."""

    def main_work_horse(self, job, queue):
        die_with_parent(os.getppid())
        super().main_work_horse(job, queue)


def main() -> None:
    settings = get_settings()
    configure_logging(settings, "worker")
    connection = redis_connection(settings)
    worker = _Worker(
        [forget_queue(connection, settings), callback_queue(connection, settings)],
        connection=connection, serializer=JSONSerializer,
        job_monitoring_interval=JOB_MONITORING_INTERVAL_S, worker_ttl=WORKER_TTL_S,
    )
    worker.work(logging_level=settings.log_level.upper())


if __name__ == "__main__":
    main()
