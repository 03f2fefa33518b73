"""The janitor's pass over the active requests, each matched with its own RQ job (read for all in one round trip)."""

import fakeredis
import pytest
from rq.job import Job

from models_store import open_ledger
from models_store.ledger import NewRequest
from models_store.store import now_iso
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


# ---- callbacks ------------------------------------------------------------------------------------------------
@pytest.fixture
def callbacks_queue(installation, monkeypatch):
    from unlearnd.callbacks import callback_queue

    monkeypatch.setattr(janitor, "CALLBACK_GRACE_S", 0.0)  # every pending callback is old enough to be looked at
    settings, _, queue = installation
    return callback_queue(queue.connection, settings)


def _ended_with_callback(ledger, request_id: str) -> None:
    record = {"id": request_id, "model": "m", "classes": [1], "samples": None, "method": "auto", "reason": None,
              "key_id": "k", "callback_url": "https://hooks.example.com/x", "accepted_by": None}
    ledger.accept([NewRequest(record, job_id=f"{request_id}-job")])
    ledger.mark_failed(request_id, "for the test")


def _message(ledger, request_id: str) -> dict:
    return ledger.get(request_id)["callback"]


def test_a_callback_never_queued_is_queued(installation, callbacks_queue):
    """The request ended, and whoever ended it crashed (or Redis was down) before its message was queued."""
    settings, ledger, _ = installation
    _ended_with_callback(ledger, "fr_a")
    assert _message(ledger, "fr_a")["message_id"] is None

    assert janitor.reconcile_callbacks(ledger, callbacks_queue, settings) == ["queued the callback of fr_a"]
    message_id = _message(ledger, "fr_a")["message_id"]
    assert callbacks_queue.job_ids == [f"cb-{message_id}-1"]
    assert janitor.reconcile_callbacks(ledger, callbacks_queue, settings) == []  # its job is there: nothing to do


def test_an_attempt_the_queue_lost_is_queued_again_for_when_it_was_due(installation, callbacks_queue):
    from unlearnd.callbacks import pending

    settings, ledger, _ = installation
    for request_id in ("fr_now", "fr_later"):
        _ended_with_callback(ledger, request_id)
    ledger.claim_callback("fr_now", "msg_now", now_iso())  # queued, then Redis lost it
    due = "2999-01-01T00:00:00.000+00:00"  # attempt 3 of fr_later was scheduled for then
    ledger.claim_callback("fr_later", "msg_later", now_iso())
    ledger.set_callback("fr_later", pending("msg_later", 2, 503, "answered 503", due))

    actions = janitor.reconcile_callbacks(ledger, callbacks_queue, settings)

    assert actions == ["queued attempt 1 of the callback of fr_now: the queue had lost it",
                       "queued attempt 3 of the callback of fr_later: the queue had lost it"]
    assert callbacks_queue.job_ids == ["cb-msg_now-1"]
    scheduled = callbacks_queue.scheduled_job_registry
    assert scheduled.get_job_ids() == ["cb-msg_later-3"]
    assert scheduled.get_scheduled_time("cb-msg_later-3").year == 2999
    job = Job.fetch("cb-msg_now-1", connection=callbacks_queue.connection, serializer=callbacks_queue.serializer)
    request_id, message_id, payload, attempt = job.args
    assert (request_id, message_id, attempt) == ("fr_now", "msg_now", 1)
    assert '"status": "failed"' in payload and '"id": "fr_now"' in payload
    assert janitor.reconcile_callbacks(ledger, callbacks_queue, settings) == []


def _crashed_for_good(queue, job_id: str) -> None:
    """What RQ leaves of an attempt whose job crashed on every retry: a failed job."""
    job = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    queue.remove(job)
    job.set_status("failed")


def test_an_attempt_whose_job_failed_for_good_counts_as_a_failed_attempt(installation, callbacks_queue):
    """It crashed on every RQ retry (e.g. the database was down for minutes): the next attempt follows while any
    remain; the last one settles the callback as failed."""
    from unlearnd.callbacks import enqueue_attempt, pending

    settings, ledger, _ = installation
    settings = settings.model_copy(update={"callback_attempts": 3})
    _ended_with_callback(ledger, "fr_a")
    ledger.claim_callback("fr_a", "msg_a", now_iso())
    ledger.set_callback("fr_a", pending("msg_a", 1, 500, "answered 500"))
    enqueue_attempt(callbacks_queue, settings, "fr_a", "msg_a", "{}", attempt=2)
    _crashed_for_good(callbacks_queue, "cb-msg_a-2")

    assert janitor.reconcile_callbacks(ledger, callbacks_queue, settings) == [
        "attempt 2 of the callback of fr_a could not run"]
    waiting = _message(ledger, "fr_a")
    assert waiting["pending"] and waiting["attempts"] == 2 and "could not run" in waiting["error"]
    assert callbacks_queue.scheduled_job_registry.get_job_ids() == ["cb-msg_a-3"]

    _crashed_for_good(callbacks_queue, "cb-msg_a-3")
    assert janitor.reconcile_callbacks(ledger, callbacks_queue, settings) == [
        "attempt 3 of the callback of fr_a could not run; gave it up"]
    settled = _message(ledger, "fr_a")
    assert not settled["pending"] and not settled["delivered"] and settled["attempts"] == 3
    assert settled["status"] == 500 and "attempt 3 could not run" in settled["error"]
    assert [e["action"] for e in ledger.audit_entries(request_id="fr_a")][-1] == "callback.failed"
    assert ledger.pending_callbacks() == [] and janitor.reconcile_callbacks(ledger, callbacks_queue, settings) == []


def test_every_pending_callback_is_looked_at_page_by_page(installation, callbacks_queue, monkeypatch):
    """More pending callbacks than one page: the never-queued one behind them is still found."""
    settings, ledger, _ = installation
    real_page = ledger.pending_callbacks
    monkeypatch.setattr(ledger, "pending_callbacks", lambda after_seq=0: real_page(after_seq=after_seq, limit=2))
    for n in range(5):
        _ended_with_callback(ledger, f"fr_{n}")
    assert sorted(janitor.reconcile_callbacks(ledger, callbacks_queue, settings)) == [
        f"queued the callback of fr_{n}" for n in range(5)]
    assert len(callbacks_queue.job_ids) == 5


def test_a_callback_just_recorded_is_left_to_whoever_recorded_it(installation, callbacks_queue, monkeypatch):
    monkeypatch.setattr(janitor, "CALLBACK_GRACE_S", 60.0)
    settings, ledger, _ = installation
    _ended_with_callback(ledger, "fr_a")
    assert janitor.reconcile_callbacks(ledger, callbacks_queue, settings) == []
    assert callbacks_queue.count == 0
