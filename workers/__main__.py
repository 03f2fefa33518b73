"""`python -m workers`: one forking RQ worker on the forget queue, then the callbacks queue (JSON serializer).

Queues are served in that order: a queued forget job always goes before a queued callback delivery, and a
delivery attempt holds the worker for at most UNLEARND_CALLBACK_TIMEOUT_S. The worker also runs RQ's scheduler
(one process of its own; with several workers, one of them holds the lock), which enqueues the callback attempts
that a failed attempt scheduled (unlearnd.callbacks) when they are due.
"""

from __future__ import annotations

import importlib
import os
import socket

from rq import Worker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from service.metrics import serve_worker_metrics
from unlearnd.callbacks import callback_queue
from unlearnd.cli.processes import die_with_parent
from unlearnd.logs import configure_logging
from unlearnd.queue import forget_queue, redis_connection
from unlearnd.settings import get_settings

JOB_MONITORING_INTERVAL_S = 5
"""How often the worker refreshes a running job's heartbeat, seconds; the janitor reads it."""
MAINTENANCE_INTERVAL_S = 60
"""How often the worker cleans RQ's registries and, when the scheduler lock is free (the worker holding it died),
takes the scheduler over, seconds (RQ's default is 600: scheduled callback attempts would wait that long)."""
WORKER_TTL_S = 20
"""A worker's registration expires this long after its last heartbeat, so /readyz stops counting a dead
worker within about this many seconds (RQ's default is 420)."""

PRELOADED_MODULES = ("workers.jobs", "torchvision.models", "safetensors.torch", "sklearn.svm", "torch._dynamo",
                     "boto3", "psycopg")
"""Imported once by the worker so that each forked work-horse starts warm: the job's modules (torch, matplotlib for
each succeeded request's report), torchvision's models (ResNet architectures), safetensors, sklearn's SVC (the
membership-inference figures), torch._dynamo, which torch.optim imports on a process's first optimizer, and the
S3 and PostgreSQL clients. Imported in the work-horse they cost ~4 s a job."""


def preload_job_modules() -> None:
    for name in PRELOADED_MODULES:
        importlib.import_module(name)


def _detach(worker_pid: int, metrics_socket: socket.socket | None) -> None:
    """In a process the worker forked: die with the worker (`worker_pid`, read before the fork, so that a worker
    dying meanwhile is noticed), and let go of the worker's metrics socket (a restarted worker must be able to
    listen there again)."""
    die_with_parent(worker_pid)
    if metrics_socket is not None:
        metrics_socket.close()


class _Scheduler(RQScheduler):
    """RQ's scheduler, whose process (forked by the worker) dies with the worker."""

    worker_pid: int
    metrics_socket: socket.socket | None = None

    def work(self):
        _detach(self.worker_pid, self.metrics_socket)
        super().work()


class _Worker(Worker):
    """RQ's forking worker whose work-horses and scheduler die with it (the worker dies with `unlearnd run`) and do
    not hold its metrics endpoint's socket."""

    metrics_socket: socket.socket | None = None

    def main_work_horse(self, job, queue):
        _detach(self.pid, self.metrics_socket)  # self.pid: the worker's, set before the fork
        super().main_work_horse(job, queue)

    def _start_scheduler(self, burst=False, logging_level="INFO", date_format=DEFAULT_LOGGING_DATE_FORMAT,
                         log_format=DEFAULT_LOGGING_FORMAT):
        """RQ's, with `_Scheduler`: started now if this worker gets the scheduler lock, else by RQ's maintenance
        (every MAINTENANCE_INTERVAL_S) once the lock is free. (Burst mode, which only enqueues what is due, is
        RQ's own.)"""
        if burst:
            super()._start_scheduler(burst, logging_level, date_format, log_format)
            return
        self.scheduler = _Scheduler(self.queues, connection=self.connection, serializer=self.serializer,
                                    logging_level=logging_level if logging_level is not None else self.log.level,
                                    date_format=date_format, log_format=log_format)
        self.scheduler.worker_pid, self.scheduler.metrics_socket = os.getpid(), self.metrics_socket
        self.scheduler.acquire_locks(auto_start=True)


def main() -> None:
    settings = get_settings()
    configure_logging(settings, "worker")
    preload_job_modules()
    metrics_socket = None
    if settings.worker_metrics_port is not None:
        try:
            metrics_socket = serve_worker_metrics(settings.worker_metrics_port, settings.worker_metrics_host)
        except (RuntimeError, OSError) as exc:  # no metrics directory; the port is taken
            raise SystemExit(f"worker metrics on {settings.worker_metrics_host}:{settings.worker_metrics_port}: "
                             f"{exc}") from None
    connection = redis_connection(settings)
    worker = _Worker(
        [forget_queue(connection, settings), callback_queue(connection, settings)],
        connection=connection, serializer=JSONSerializer,
        job_monitoring_interval=JOB_MONITORING_INTERVAL_S, worker_ttl=WORKER_TTL_S,
        maintenance_interval=MAINTENANCE_INTERVAL_S,
    )
    worker.metrics_socket = metrics_socket
    worker.work(logging_level=settings.log_level.upper(), with_scheduler=True)


if __name__ == "__main__":
    main()
