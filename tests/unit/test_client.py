"""unlearnd.client against scripted answers (httpx.MockTransport): retries that honour Retry-After, errors that
carry the problem document, waiting with progress, and what each call sends."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from unlearnd.client import Client, RetryPolicy, UnlearndError

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra) -> httpx.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return httpx.Response(status, json=body, headers={"content-type": PROBLEM, **(headers or {})})


def record(status: str = "queued", fraction: float = 0.0, eta_s: float | None = None, **extra) -> dict:
    return {"id": "fr_1", "model": "m", "status": status, "method": "auto",
            "progress": {"stage": "queued" if status == "queued" else "optimising", "fraction": fraction,
                         "eta_s": eta_s}, "created_at": "2026-03-01T12:00:00.000+00:00", **extra}


class Script:
    """Answers requests in order and records them; an exception in the list is raised instead of answering."""

    def __init__(self, *answers):
        self.answers, self.requests = list(answers), []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(script: Script, sleeps: list[float], **kwargs) -> Client:
    return Client("http://api.test/", "key-1", transport=httpx.MockTransport(script), sleep=sleeps.append, **kwargs)


def test_429_and_503_are_retried_after_their_retry_after_seconds():
    script = Script(problem(429, "Too Many Requests", "slow down", {"Retry-After": "3"}),
                    problem(503, "Shutting down", "send it again", {"Retry-After": "1"}),
                    httpx.Response(200, json={"data": [], "count": 0}))
    sleeps: list[float] = []
    assert client(script, sleeps).models() == []
    assert sleeps == [3.0, 1.0]
    assert [r.url.path for r in script.requests] == ["/v1/models"] * 3
    assert all(r.headers["Authorization"] == "Bearer key-1" for r in script.requests)


def test_retry_after_as_an_http_date_and_capped_at_max_wait():
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=20), usegmt=True)
    script = Script(problem(503, "Unavailable", "busy", {"Retry-After": later}),
                    problem(503, "Unavailable", "busy", {"Retry-After": "3600"}),
                    httpx.Response(200, json={"status": "ok"}))
    sleeps: list[float] = []
    assert client(script, sleeps, retry=RetryPolicy(max_wait_s=60)).health() == {"status": "ok"}
    assert 15 < sleeps[0] <= 20 and sleeps[1] == 60


def test_without_retry_after_the_wait_doubles_and_the_last_answer_is_raised_with_its_problem():
    script = Script(*[problem(503, "Integrity check failed", "weights do not match", reason="sha256")] * 4)
    sleeps: list[float] = []
    with pytest.raises(UnlearndError) as error:
        client(script, sleeps, retry=RetryPolicy(attempts=4, backoff_s=0.5)).predict("m", [[[0.0]]])
    assert sleeps == [0.5, 1.0, 2.0]
    assert error.value.status == 503 and error.value.title == "Integrity check failed"
    assert error.value.detail == "weights do not match" and error.value.problem["reason"] == "sha256"


def test_an_error_answer_is_raised_at_once_carrying_the_problem():
    script = Script(problem(422, "Unknown sample ids", "2 ids are not in training set 'digits': 'x', 'y'",
                            unknown_ids=["x", "y"]))
    sleeps: list[float] = []
    with pytest.raises(UnlearndError) as error:
        client(script, sleeps).submit("m", samples=["x", "y"])
    assert sleeps == [] and len(script.requests) == 1
    assert error.value.status == 422 and error.value.problem["unknown_ids"] == ["x", "y"]
    assert "Unknown sample ids" in str(error.value) and "'digits'" in str(error.value)


def test_an_error_that_is_not_a_problem_document_keeps_what_it_said():
    script = Script(httpx.Response(502, text="<html>bad gateway</html>"))
    with pytest.raises(UnlearndError) as error:
        client(script, []).models()
    assert error.value.status == 502 and error.value.title == "Bad Gateway"
    assert "bad gateway" in error.value.detail


def test_connection_errors_are_retried_and_end_as_an_error_without_status():
    refused = httpx.ConnectError("connection refused")
    script = Script(refused, httpx.Response(200, json={"status": "ok"}))
    sleeps: list[float] = []
    assert client(script, sleeps).health() == {"status": "ok"} and sleeps == [0.5]
    with pytest.raises(UnlearndError) as error:
        client(Script(refused, refused), [], retry=RetryPolicy(attempts=2)).health()
    assert error.value.status is None and "connection refused" in error.value.detail


def test_a_lost_answer_is_retried_only_when_repeating_is_safe():
    lost = httpx.ReadTimeout("timed out")
    get = Script(lost, httpx.Response(200, json={"keys": []}))
    assert client(get, []).keys() == {"keys": []} and len(get.requests) == 2
    rollback = Script(lost, httpx.Response(200, json={}))  # a POST without an Idempotency-Key: not repeated
    with pytest.raises(UnlearndError) as error:
        client(rollback, []).rollback("m", 1, reason="r")
    assert error.value.status is None and len(rollback.requests) == 1


def test_submit_sends_one_idempotency_key_so_a_retry_cannot_record_twice():
    accepted = httpx.Response(202, json=record(), headers={"Location": "/v1/forget-requests/fr_1"})
    script = Script(httpx.ReadTimeout("lost"), accepted)
    sleeps: list[float] = []
    assert client(script, sleeps).submit("m", classes=[3], reason="DSR-1")["id"] == "fr_1"
    first, second = script.requests
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.url.path == "/v1/models/m/forget-requests"
    assert json.loads(first.content) == {"method": "auto", "classes": [3], "reason": "DSR-1"}
    other = Script(accepted)
    client(other, []).submit("m", classes=[3])
    assert other.requests[0].headers["Idempotency-Key"] != first.headers["Idempotency-Key"]


def test_wait_polls_as_retry_after_says_reports_progress_and_returns_the_final_record():
    script = Script(httpx.Response(200, json=record(), headers={"Retry-After": "2"}),
                    httpx.Response(200, json=record("running", 0.4, eta_s=30.0), headers={"Retry-After": "30"}),
                    httpx.Response(200, json=record("succeeded", 1.0, result={"method": "forget_vector"})))
    sleeps: list[float] = []
    seen: list[tuple[str, float]] = []
    final = client(script, sleeps).wait("fr_1", max_poll_s=5,
                                        on_progress=lambda r: seen.append((r["status"], r["progress"]["fraction"])))
    assert final["status"] == "succeeded" and final["result"] == {"method": "forget_vector"}
    assert sleeps == [2.0, 5.0]  # the server's word, at most max_poll_s
    assert seen == [("queued", 0.0), ("running", 0.4), ("succeeded", 1.0)]


def test_wait_gives_up_after_its_timeout():
    script = Script(*[httpx.Response(200, json=record("running"), headers={"Retry-After": "1"})] * 50)
    with pytest.raises(TimeoutError, match="still running"):
        Client("http://api.test", transport=httpx.MockTransport(script)).wait("fr_1", timeout_s=0.05)


def test_list_requests_sends_the_filters_and_iter_requests_follows_the_cursor():
    pages = Script(httpx.Response(200, json={"data": [record()], "count": 1, "next_cursor": "7"}),
                   httpx.Response(200, json={"data": [record("running")], "count": 1, "next_cursor": None}))
    found = list(client(pages, []).iter_requests(model="m", status=["queued", "running"], order="desc", limit=1))
    assert [r["status"] for r in found] == ["queued", "running"]
    first, second = (dict(r.url.params) for r in pages.requests)
    assert first == {"model": "m", "status": "queued,running", "order": "desc", "limit": "1"}
    assert second == {**first, "cursor": "7"}


def test_predict_images_sends_the_files_in_order_as_one_multipart_body(tmp_path):
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(name.encode())
    script = Script(httpx.Response(200, json={"predictions": [{"label": 1}, {"label": 2}]}))
    client(script, []).predict_images("m", [tmp_path / "a.png", tmp_path / "b.jpg"])
    sent = script.requests[0]
    assert sent.url.path == "/v1/models/m/predict"
    assert sent.headers["content-type"].startswith("multipart/form-data")
    body = sent.content
    assert body.index(b'filename="a.png"') < body.index(b'filename="b.jpg"')
    assert b"Content-Type: image/png" in body and b"Content-Type: image/jpeg" in body


def test_report_png_returns_the_bytes_and_receipt_the_document():
    script = Script(httpx.Response(200, content=b"\x89PNG...", headers={"content-type": "image/png"}),
                    httpx.Response(200, json={"receipt": {"request_id": "fr_1"}, "signature": {}}))
    api = client(script, [])
    assert api.report_png("fr_1") == b"\x89PNG..."
    assert api.receipt("fr_1")["receipt"]["request_id"] == "fr_1"
    assert [r.url.path for r in script.requests] == ["/v1/forget-requests/fr_1/report.png",
                                                     "/v1/forget-requests/fr_1/receipt"]
