"""unlearnd.logs: one line per event, ours and the libraries', with the context bound (the request id)."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from unlearnd.logs import configure_logging, current_request_id
from unlearnd.settings import Settings


@pytest.fixture
def restore_logging():
    """configure_logging changes the process's logging; put back what pytest had."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    logging.getLogger("uvicorn.access").disabled = False
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_the_bound_request_id_from_stdlib_and_structlog_loggers(restore_logging):
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), "worker", stream=stream)
    with structlog.contextvars.bound_contextvars(request_id="req-1"):
        assert current_request_id() == "req-1"
        logging.getLogger("rq.worker").info("Job %s: OK", "j1")  # a library's line, %-formatted
        structlog.stdlib.get_logger("workers.jobs").info("forget job ended", status="succeeded", batch=["fr_a"])
    assert current_request_id() is None
    logging.getLogger("x").info("outside")
    library, ours, outside = (json.loads(line) for line in _lines(stream))
    assert library["event"] == "Job j1: OK" and library["logger"] == "rq.worker" and library["level"] == "info"
    assert ours["status"] == "succeeded" and ours["batch"] == ["fr_a"]
    for line in (library, ours):
        assert line["request_id"] == "req-1" and line["process"] == "worker" and isinstance(line["pid"], int)
        assert line["timestamp"].endswith("Z")
    assert "request_id" not in outside
    assert list(library)[:4] == ["timestamp", "level", "process", "event"]


def test_text_lines_are_key_value_pairs_and_exceptions_stay_on_one_line(restore_logging):
    stream = io.StringIO()
    configure_logging(Settings(log_format="text"), "janitor", stream=stream)
    log = structlog.stdlib.get_logger("t")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("pass failed", model="digits cnn")
    (line,) = _lines(stream)
    assert line.startswith("timestamp=") and " level=error process=janitor event=\"pass failed\"" in line
    assert 'model="digits cnn"' in line and "RuntimeError: boom" in line


def test_level_filters_and_uvicorns_access_log_is_off(restore_logging):
    stream = io.StringIO()
    configure_logging(Settings(log_level="warning"), "api", stream=stream)
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    logging.getLogger("uvicorn.access").warning("GET / 200")  # the API writes its own access log
    logging.getLogger("uvicorn.error").warning("shown")
    assert [json.loads(line)["event"] for line in _lines(stream)] == ["shown"]


def test_an_unknown_process_is_refused(restore_logging):
    with pytest.raises(ValueError, match="unknown process"):
        configure_logging(Settings(), "scheduler")
