"""Structured logs for every process: structlog rendering the standard library's logging, so the lines of uvicorn,
RQ and every other library come out in the same format, with the same context (the request id), as our own.

Each process calls `configure_logging` once at start. A line is one JSON object (`UNLEARND_LOG_FORMAT=json`) or
`key=value` pairs (`text`), on stderr, with at least `timestamp` (UTC, ISO 8601), `level`, `logger`, `process`
(api, worker, janitor, launcher), `pid` and `event`; what is bound with
`structlog.contextvars.bound_contextvars` (the request id) is added to every line logged in that context, by any
logger. Our modules log with `structlog.stdlib.get_logger(__name__)`, fields as keyword arguments.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from unlearnd.settings import Settings

PROCESSES = ("api", "worker", "janitor", "launcher")
FIRST_KEYS = ("timestamp", "level", "process", "event")
"""The keys a line starts with, for whoever reads it."""
REQUEST_ID = "request_id"
"""The log key of the HTTP request id (X-Request-ID), carried from the API into the job it enqueued; also where
the API keeps it in a request's ASGI scope state."""
REQUEST_ID_HEADER = "X-Request-ID"


def _process_fields(process: str) -> structlog.types.Processor:
    def add(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("process", process)
        event.setdefault("pid", os.getpid())  # a forked work-horse logs its own pid
        return event

    return add


def _first_keys_first(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return {key: event[key] for key in FIRST_KEYS if key in event} | dict(event)


def configure_logging(settings: Settings, process: str, stream: TextIO | None = None) -> None:
    """Send every log line of this process, ours and the libraries', to `stream` (stderr) as `settings.log_format`
    at `settings.log_level` and above. uvicorn's own access log is switched off: the API logs one line per request
    itself (service/request_id.py), with the request id and the caller's role."""
    if process not in PROCESSES:
        raise ValueError(f"unknown process {process!r}; known: {PROCESSES}")
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _process_fields(process),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if settings.log_format == "json"
        else structlog.processors.LogfmtRenderer(bool_as_flag=False))
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, _first_keys_first, renderer]))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "rq.worker", "rq.job"):  # libraries that bring their own handlers
        library = logging.getLogger(name)
        library.handlers, library.propagate = [], True
        library.setLevel(logging.NOTSET)
    logging.getLogger("uvicorn.access").disabled = True
    logging.captureWarnings(True)  # Python warnings become log lines too
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.PositionalArgumentsFormatter(),
                    structlog.processors.StackInfoRenderer(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # configure_logging may run again (tests): loggers follow it
    )


def current_request_id() -> str | None:
    """The request id bound in this context (the HTTP request being served), if any."""
    return structlog.contextvars.get_contextvars().get(REQUEST_ID)
