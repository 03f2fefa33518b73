"""Accepted work is never lost: kill -9 the work-horse, the whole worker, Redis, or the API, and every
accepted request still ends in a terminal state, recorded exactly once in the ledger."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
from rq.job import Job

from unlearnd.queue import forget_queue, redis_connection


def _submit(stack, model: str, classes: list[int]) -> str:
    with stack.client("governance") as c:
        response = c.post(f"/v1/models/{model}/forget-requests", json={"classes": classes})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _horse_pids(stack) -> list[int]:
    return [p.pid for p in psutil.Process(stack.worker.process.pid).children()]


def _count(stack, model: str) -> int:
    return len(stack.ledger.list(model=model, limit=10_000))


def test_kill_work_horse_mid_job(stack):
    model = stack.clone_demo_model("digits-kill-horse")
    request_id = _submit(stack, model, [7])
    stack.wait_for(request_id, lambda r: r["status"] == "running" and r["progress"]["fraction"] > 0.05)
    horses = _horse_pids(stack)
    assert horses, "no work-horse found"
    for pid in horses:
        os.kill(pid, signal.SIGKILL)
    record = stack.wait_terminal(request_id)
    assert record["status"] == "succeeded" and record["attempts"] == 2, record
    assert _count(stack, model) == 1
    assert stack.state(model)["requests"] == [request_id]


def test_kill_whole_worker_mid_job(stack):
    model = stack.clone_demo_model("digits-kill-worker")
    request_id = _submit(stack, model, [8])
    stack.wait_for(request_id, lambda r: r["status"] == "running" and r["progress"]["fraction"] > 0.05)
    victims = [stack.worker.process.pid, *_horse_pids(stack)]
    for pid in victims:
        # the supervisor restarts the worker; the janitor sees the stale heartbeat
        os.kill(pid, signal.SIGKILL)
    record = stack.wait_terminal(request_id, timeout_s=120)
    assert record["status"] == "succeeded" and record["attempts"] >= 2, record
    assert _count(stack, model) == 1


def test_kill_and_restart_redis(stack):
    model = stack.clone_demo_model("digits-kill-redis")
    accepted = [_submit(stack, model, [c]) for c in (1, 2, 1)]
    os.kill(stack.redis.process.pid, signal.SIGKILL)  # the supervisor restarts it from its append-only file
    records = [stack.wait_terminal(request_id, timeout_s=150) for request_id in accepted]
    assert [r["status"] for r in records] == ["succeeded"] * 3, records
    assert _count(stack, model) == 3
    assert sorted(stack.state(model)["forgotten_classes"]) == [1, 2]


def test_redis_down_while_accepting(stack):
    """The API still answers 202 (the ledger row is durable) and the janitor enqueues once Redis is back."""
    model = stack.clone_demo_model("digits-redis-down")
    stack.paused.add(stack.redis.name)
    stack.redis.stop()
    try:
        request_id = _submit(stack, model, [4])
    finally:
        stack.paused.discard(stack.redis.name)
    record = stack.wait_terminal(request_id, timeout_s=150)
    assert record["status"] == "succeeded", record
    assert _count(stack, model) == 1


def test_kill_api_right_after_202(stack):
    model = stack.clone_demo_model("digits-kill-api")
    request_id = _submit(stack, model, [0])
    os.kill(stack.api.process.pid, signal.SIGKILL)  # the supervisor restarts it
    stack.wait_ready()
    record = stack.wait_terminal(request_id)
    assert record["status"] == "succeeded", record
    assert _count(stack, model) == 1


def test_kill_api_during_a_burst_loses_no_202(stack):
    """kill -9 the API while 16 callers post: every request answered 202 is a row of the ledger (each group of
    requests is committed before any of them is answered)."""
    import httpx

    model = stack.clone_demo_model("digits-kill-burst")
    answered: list[str] = []
    killed = threading.Event()

    def caller() -> None:
        with stack.client("governance") as c:
            while not killed.is_set():
                try:
                    response = c.post(f"/v1/models/{model}/forget-requests", json={"classes": [1]})
                except httpx.HTTPError:  # the API went down mid-request: no answer, no promise
                    continue
                if response.status_code == 202:
                    answered.append(response.json()["id"])

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(answered) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(stack.api.process.pid, signal.SIGKILL)  # the supervisor restarts it
    killed.set()
    for t in threads:
        t.join()
    stack.wait_ready()
    assert len(answered) >= 40
    recorded = {r["id"] for r in stack.ledger.list(model=model, limit=10_000)}
    assert set(answered) <= recorded, sorted(set(answered) - recorded)[:5]
    for request_id in sorted(recorded):  # leave nothing running for the next test
        stack.wait_terminal(request_id, timeout_s=300)


def test_200_concurrent_requests_are_all_accounted_for_and_coalesced(stack):
    model = stack.clone_demo_model("digits-concurrent")
    accepted: list[str] = []
    lock = threading.Lock()

    def client_thread(offset: int) -> None:
        with stack.client("governance") as c:
            for i in range(25):
                response = c.post(f"/v1/models/{model}/forget-requests", json={"classes": [(offset + i) % 3]})
                assert response.status_code == 202, response.text
                with lock:
                    accepted.append(response.json()["id"])

    threads = [threading.Thread(target=client_thread, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == len(set(accepted)) == 200
    records = [stack.wait_terminal(request_id, timeout_s=300) for request_id in accepted]
    unfinished = [r for r in records if r["status"] != "succeeded"]
    assert not unfinished, unfinished[:2]
    assert _count(stack, model) == 200
    computations = {r["result"]["state_version"] for r in records}
    assert len(computations) < 50, f"{len(computations)} computations for 200 requests: not coalesced"
    state = stack.state(model)
    assert sorted(state["forgotten_classes"]) == [0, 1, 2] and sorted(state["requests"]) == sorted(accepted)
    # The jobs of requests another job answered were taken off the queue and deleted, not run (a job that runs is
    # kept with its result): once none is queued, only about one job per computation exists.
    job_ids = {stack.ledger.get(request_id)["job_id"] for request_id in accepted}
    queue = forget_queue(redis_connection(stack.settings), stack.settings)
    deadline = time.monotonic() + 300
    while job_ids & set(queue.get_job_ids()) and time.monotonic() < deadline:
        time.sleep(0.2)
    kept = [job_id for job_id in job_ids if Job.exists(job_id, connection=queue.connection)]
    assert len(kept) < 50, f"{len(kept)} of 200 jobs ran"


def test_readyz_reports_a_dead_worker_and_recovers(embedded_stack):
    """Worker liveness lives in Redis's worker registry, whatever the database: tested once."""
    import httpx

    stack = embedded_stack

    stack.paused.add(stack.worker.name)
    try:
        os.kill(stack.worker.process.pid, signal.SIGKILL)
        deadline, status = time.monotonic() + 60, 200
        while time.monotonic() < deadline and status == 200:
            response = httpx.get(f"{stack.base_url}/readyz", timeout=5)
            status = response.status_code
            time.sleep(1)
        assert status == 503 and "worker" in response.json()["detail"]
        assert httpx.get(f"{stack.base_url}/healthz", timeout=5).status_code == 200
    finally:
        stack.paused.discard(stack.worker.name)
    stack.wait_ready()
