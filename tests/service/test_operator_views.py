"""What operators read: request ids and the access log, GET /v1/admin/queue (against a real embedded Redis) and
GET /v1/forget-requests/{id}/report.png."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
from pathlib import Path

import pytest
import structlog
from fastapi.testclient import TestClient

from models_store import Store, open_ledger
from service.main import create_app
from tests.service.conftest import KEYS, auth
from unlearnd.cli.processes import redis_child, wait_for_redis
from unlearnd.logs import configure_logging
from unlearnd.queue import enqueue_request
from unlearnd.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.fixture
def log_stream(settings):
    """The API's log lines, as JSON (the process's logging is put back afterwards)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging(settings, "api", stream=stream)
    yield stream
    root.handlers, root.level = handlers, level
    logging.getLogger("uvicorn.access").disabled = False
    structlog.reset_defaults()


def _access_lines(stream: io.StringIO) -> list[dict]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["event"] == "request"]


def test_a_valid_request_id_is_returned_and_logged_with_the_callers_role(client, log_stream):
    response = client.get("/v1/models?x=1", headers={**auth("inference"), "X-Request-ID": "trace-42/a.b"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "trace-42/a.b"
    (line,) = _access_lines(log_stream)
    assert line["request_id"] == "trace-42/a.b" and line["role"] == "inference"
    assert (line["method"], line["path"], line["query"], line["status"]) == ("GET", "/v1/models", "x=1", 200)
    assert line["duration_ms"] >= 0 and line["process"] == "api" and KEYS["inference"] not in json.dumps(line)


@pytest.mark.parametrize("presented", [None, "", "x" * 129, "has space", "tab\there", "é-not-ascii".encode("latin-1")])
def test_an_absent_or_invalid_request_id_is_replaced_by_a_new_one(client, log_stream, presented):
    headers = {} if presented is None else {"X-Request-ID": presented}
    response = client.get("/healthz", headers=headers)
    generated = response.headers["x-request-id"]
    assert generated != presented and len(generated) == 32 and int(generated, 16) >= 0
    (line,) = _access_lines(log_stream)
    assert line["request_id"] == generated and line["role"] is None


def test_errors_carry_the_request_id_too(client, log_stream):
    response = client.get("/v1/forget-requests/fr_nope", headers={**auth("governance"), "X-Request-ID": "r-404"})
    assert response.status_code == 404 and response.headers["x-request-id"] == "r-404"
    response = client.get("/v1/audit", headers={"Authorization": "Bearer wrong", "X-Request-ID": "r-401"})
    assert response.status_code == 401 and response.headers["x-request-id"] == "r-401"
    lines = {line["request_id"]: line for line in _access_lines(log_stream)}
    assert lines["r-404"]["status"] == 404 and lines["r-404"]["role"] == "governance"
    assert lines["r-401"]["status"] == 401 and lines["r-401"]["role"] is None


def test_an_unexpected_error_is_a_500_problem_with_the_request_id_in_its_header_and_log_lines(
        client, log_stream, monkeypatch):
    def fail(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Store, "list_models", fail)
    response = client.get("/v1/models", headers={**auth("admin"), "X-Request-ID": "r-500"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "r-500"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "Internal server error" and "fire" not in response.text
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    (error,) = [line for line in lines if line["event"].startswith("unhandled error")]
    assert error["request_id"] == "r-500" and "disk on fire" in error["exception"]
    (access,) = _access_lines(log_stream)
    assert access["request_id"] == "r-500" and access["status"] == 500


def test_the_access_log_can_be_switched_off(tmp_path, log_stream):
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", access_log=False,
                        api_keys=",".join(f"{role}:{key}" for role, key in KEYS.items()))
    with TestClient(create_app(settings)) as quiet:
        response = quiet.get("/healthz")
    assert response.headers["x-request-id"] and _access_lines(log_stream) == []


# ---- report.png -------------------------------------------------------------------------------------------
def test_report_png_is_served_to_governance_and_404_when_there_is_none(client, settings, model_store):
    ledger = open_ledger(settings)
    ledger.create({"id": "fr_r1", "model": "tiny", "classes": [1], "method": "auto"})
    missing = client.get("/v1/forget-requests/fr_r1/report.png", headers=auth("governance"))
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert "queued" in missing.json()["detail"]
    unknown = client.get("/v1/forget-requests/fr_nope/report.png", headers=auth("governance"))
    assert unknown.status_code == 404
    model_store.put_report("fr_r1", PNG)
    for role in ("governance", "admin"):
        response = client.get("/v1/forget-requests/fr_r1/report.png", headers=auth(role))
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content == PNG
    assert client.get("/v1/forget-requests/fr_r1/report.png", headers=auth("inference")).status_code == 403


# ---- GET /v1/admin/queue -----------------------------------------------------------------------------------
def test_queue_view_without_redis_still_shows_the_ledger(client, settings):
    ledger = open_ledger(settings)
    ledger.create({"id": "fr_q1", "model": "m1", "classes": [1], "method": "auto"})
    ledger.create({"id": "fr_q2", "model": "m1", "classes": [2], "method": "auto", "callback_url": "https://h.test/"})
    ledger.request_cancel("fr_q2", "k")  # ended: its callback is pending
    response = client.get("/v1/admin/queue", headers=auth("admin"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rq"] is None and "ConnectionError" in body["redis_error"] and body["callbacks_pending"] == 1
    assert body["depth"] == [{"model": "m1", "queued": 1, "running": 0}]
    assert body["oldest_waiting"]["request_id"] == "fr_q1" and body["oldest_waiting"]["age_s"] >= 0
    assert client.get("/v1/admin/queue", headers=auth("governance")).status_code == 403


@pytest.fixture
def redis_settings():
    """Settings whose Redis is a real embedded redis-server (short data dir: the socket path must stay short)."""
    data_dir = Path(tempfile.mkdtemp(prefix="ul-q-"))
    settings = Settings(data_dir=data_dir, api_keys=",".join(f"{role}:{key}" for role, key in KEYS.items()))
    redis = redis_child(settings)
    redis.start()
    try:
        wait_for_redis(settings)
        yield settings.model_copy(update={"redis_url": settings.effective_redis_url})
    finally:
        redis.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_queue_view_counts_depth_per_model_running_requests_and_the_oldest_waiting(redis_settings):
    settings = redis_settings
    app = create_app(settings)
    ledger, queue = app.state.ledger, app.state.queue
    for request_id, model in (("fr_1", "m1"), ("fr_2", "m2"), ("fr_3", "m1"), ("fr_4", "m1")):
        record = ledger.create({"id": request_id, "model": model, "classes": [1], "method": "auto"})
        enqueue_request(queue, ledger, record, settings)
    assert ledger.mark_running("fr_1")
    ledger.mark_failed("fr_4", "gone")
    with TestClient(app) as client:
        body = client.get("/v1/admin/queue", headers=auth("admin")).json()
    assert body["redis_error"] is None and body["queue"] == settings.queue_name
    assert body["depth"] == [{"model": "m1", "queued": 1, "running": 1}, {"model": "m2", "queued": 1, "running": 0}]
    (running,) = body["running"]
    assert running["request_id"] == "fr_1" and running["model"] == "m1" and running["started_at"]
    assert running["job_id"] == ledger.get("fr_1")["job_id"] and running["worker"] is None  # no worker runs here
    assert body["oldest_waiting"]["request_id"] == "fr_2"
    assert body["rq"]["queued_jobs"] == 4 and body["rq"]["workers"] == [] and body["rq"]["callbacks_queued"] == 0
