"""The janitor's pass over the active requests, each matched with its own RQ job (read for all in one round trip)."""

import fakeredis
import pytest
from rq.job import Job

from models_store import open_ledger
from models_store.ledger import NewRequest
from unlearnd.logs import REQUEST_ID
from unlearnd.queue import JobToEnqueue, enqueue_jobs, forget_queue
from unlearnd.settings import Settings
from workers import janitor


@pytest.fixture
def installation(tmp_path, monkeypatch):
    monkeypatch.setattr(janitor, "ENQUEUE_GRACE_S", 0.0)  # every request is old enough to be looked at
    settings = Settings(data_dir=tmp_path, redis_url=None, database_url=None, store_url=None, demo_model=False)
    return settings, open_ledger(settings), forget_queue(fakeredis.FakeRedis(), settings)


def _accept(ledger, request_id: str) -> str:
    job_id = f"{request_id}-job"
    record = {"id": request_id, "model": "m", "classes": [1], "samples": None, "method": "auto", "reason": None,
              "key_id": "k", "callback_url": None, "accepted_by": f"http-{request_id}"}
    ledger.accept([NewRequest(record, job_id=job_id)])
    return job_id


def test_each_request_is_judged_by_its_own_job(installation):
    settings, ledger, queue = installation
    jobs = {name: _accept(ledger, f"fr_{name}") for name in ("waiting", "lost", "failed", "waiting2")}
    enqueue_jobs(queue, [JobToEnqueue(f"fr_{name}", jobs[name]) for name in ("waiting", "failed", "waiting2")],
                 settings)
    failed = Job.fetch(jobs["failed"], connection=queue.connection, serializer=queue.serializer)
    queue.remove(failed)
    failed.set_status("failed")

    actions = janitor.reconcile_once(ledger, queue, settings)

    # a job that failed before it could mark its request running used an attempt; a lost one did not
    assert sorted(action.split(":")[0] for action in actions) == ["will retry fr_failed in 2 s (attempt 2)",
                                                                  "will retry fr_lost in 0 s (attempt 1)"]
    assert "the queue lost the job" in next(a for a in actions if "fr_lost" in a)
    assert "job ended failed" in next(a for a in actions if "fr_failed" in a)
    assert {r["id"]: r["job_id"] for r in ledger.active()} == {
        "fr_waiting": jobs["waiting"], "fr_waiting2": jobs["waiting2"], "fr_lost": None, "fr_failed": None}
    # the next pass enqueues the lost one again with a new job; the failed one waits out its backoff
    assert janitor.reconcile_once(ledger, queue, settings) == ["enqueued fr_lost"]
    retry = ledger.get("fr_lost")["job_id"]
    assert retry not in (None, jobs["lost"])
    # the retry carries the id of the HTTP request that accepted the request, as the first job did
    assert Job.fetch(retry, connection=queue.connection, serializer=queue.serializer).meta == {
        REQUEST_ID: "http-fr_lost"}
