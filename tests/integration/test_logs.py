"""Structured logs over the real processes: the id of the HTTP request that accepted a forget request is in the
API's access log and in the worker's log lines of its job, so a client that sends the same X-Request-ID with a
prediction finds both; the job's progress and report, and the admin queue view while it runs."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from workers.progress import STAGES


def _json_lines(path: Path) -> list[dict]:
    """The log lines of a file, parsed. Lines that do not start a JSON object are what the interpreter writes to
    stderr itself, past logging (a traceback printed while a fault test kills the process); the session's stack
    shares its log files with those tests, so they are skipped here."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _lines_with(path: Path, request_id: str, want: set[str], timeout_s: float = 20) -> list[dict]:
    """The lines carrying `request_id`, once their events include `want` (a process writes a line just after
    the ledger moved)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [line for line in _json_lines(path) if line.get("request_id") == request_id]
        if want <= {line["event"] for line in lines} or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def test_a_prediction_and_the_job_of_a_forget_request_share_the_clients_request_id(embedded_stack):
    stack = embedded_stack
    model = stack.clone_demo_model("digits-logs")
    request_id = f"it-{uuid.uuid4().hex}"
    traced = {"X-Request-ID": request_id}
    with stack.client("inference") as c:
        response = c.post(f"/v1/models/{model}/predict", json={"inputs": [[[[0.0] * 8] * 8]]}, headers=traced)
    assert response.status_code == 200 and response.headers["x-request-id"] == request_id
    with stack.client("governance") as c:
        response = c.post(f"/v1/models/{model}/forget-requests", json={"classes": [2]}, headers=traced)
    assert response.status_code == 202, response.text
    forget_id = response.json()["id"]
    assert stack.ledger.get(forget_id)["accepted_by"] == request_id  # what a retry by the janitor carries too
    assert response.json()["accepted_by"] == request_id

    progress, views, deadline = [], [], time.monotonic() + 150
    with stack.client("admin") as admin:
        while time.monotonic() < deadline:
            record = admin.get(f"/v1/forget-requests/{forget_id}").json()
            progress.append(record["progress"])
            views.append(admin.get("/v1/admin/queue").json())
            if record["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.1)
        assert record["status"] == "succeeded" and record["accepted_by"] == request_id, record
        report = admin.get(f"/v1/forget-requests/{forget_id}/report.png")
    assert report.status_code == 200 and report.content.startswith(b"\x89PNG")

    logs = stack.settings.data_dir / "logs"
    api = _lines_with(logs / "api.log", request_id, {"request", "forget request enqueued"})
    access = [line for line in api if line["event"] == "request"]
    assert {(line["method"], line["path"], line["status"], line["role"]) for line in access} == {
        ("POST", f"/v1/models/{model}/predict", 200, "inference"),
        ("POST", f"/v1/models/{model}/forget-requests", 202, "governance")}
    assert all(line["process"] == "api" and line["duration_ms"] >= 0 for line in access)
    (enqueued,) = [line for line in api if line["event"] == "forget request enqueued"]
    assert enqueued["forget_request_id"] == forget_id
    job = _lines_with(logs / "worker-0.log", request_id, {"forget job started", "forget job ended"})
    assert {"forget job started", "forget job ended"} <= {line["event"] for line in job}
    assert all(line["forget_request_id"] == forget_id and line["process"] == "worker" for line in job)
    ended = next(line for line in job if line["event"] == "forget job ended")
    assert ended["status"] == "succeeded" and forget_id in ended["batch"]

    running = [p for p in progress if p.get("elapsed_s") is not None]  # what the worker's reporter wrote
    assert running and {p["stage"] for p in running} <= set(STAGES), progress
    assert all(0 <= p["stage_fraction"] <= 1 and p["elapsed_s"] >= 0 for p in running)
    assert all(p["eta_s"] is None for p in running if p["stage"] == "loading")
    assert [p["fraction"] for p in progress] == sorted(p["fraction"] for p in progress)
    seen_running = [r for view in views for r in view["running"] if r["request_id"] == forget_id]
    assert seen_running and any(r["worker"] for r in seen_running), seen_running
