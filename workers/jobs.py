"""Job functions the RQ workers run. They take a request id; the ledger row says the rest."""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from typing import Any

import structlog
from redis.exceptions import RedisError
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job

from models_store import Ledger, Store, StoreError, open_database
from models_store.errors import StaleStateError
from models_store.ledger import TERMINAL, RequestStatus
from models_store.store import now_iso
from service.metrics import GUARD_REFUSALS, observe_job
from unlearnd.callbacks import notify_terminal
from unlearnd.logs import REQUEST_ID
from unlearnd.queue import forget_queue
from unlearnd.security.receipts import sign
from unlearnd.security.signing import load_signer, open_store
from unlearnd.settings import Settings, get_settings
from unlearning.errors import CandidateRejected, UnlearningError
from workers.errors import MethodNotAvailable, RequestCancelled
from workers.methods import AUTO, MethodEntry, method_plan
from workers.progress import ProgressReporter
from workers.publishing import Outcome, published_outcome
from workers.report import save_report

log = structlog.stdlib.get_logger(__name__)

MAX_COALESCED = 500
"""Most requests computed together in one job."""


def _coalescable(ledger: Ledger, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Other queued requests of the same model that the same computation answers: the same requested method
    (so `auto` requests share their fallbacks) and the same forget kind."""
    batch = []
    for other in ledger.queued_for_model(record["model"], exclude=record["id"])[:MAX_COALESCED]:
        same_kind = (other["classes"] is None) == (record["classes"] is None)
        if same_kind and other["method"] == record["method"] and ledger.mark_running(other["id"]):
            batch.append(ledger.get(other["id"]))
    return batch


class AllCandidatesRejected(Exception):
    """Every method of the plan had its candidates refused by the utility guard."""

    def __init__(self, refusals: list[dict[str, Any]]):
        super().__init__("; ".join(f"{r['method']}: {r['reason']}" for r in refusals))
        self.refusals = refusals


def _run_plan(plan: list[MethodEntry], store: Store, batch: list[dict[str, Any]], settings: Settings,
              progress: ProgressReporter) -> Outcome:
    """The first method of `plan` whose candidate passes the guard; `auto` says in the result what it chose."""
    refusals: list[dict[str, Any]] = []
    for entry in plan:
        try:
            outcome = entry.load()(store, batch, settings, progress)
        except CandidateRejected as exc:
            log.warning("%s refused by the utility guard: %s", entry.name, exc)
            GUARD_REFUSALS.labels(entry.name).inc()
            refusals.append({"method": entry.name, "reason": str(exc), "guard": exc.guard})
            continue
        if batch[0]["method"] == AUTO:
            why = ("first choice for this forget kind; it passed the utility guard" if not refusals else
                   f"{', '.join(r['method'] for r in refusals)} failed the utility guard")
            auto = {"chosen": entry.name, "why": why, "refused": refusals}
            outcome = replace(outcome, result={**outcome.result, "auto": auto})
        return outcome
    raise AllCandidatesRejected(refusals)


def _receipt(record: dict[str, Any], outcome: Outcome, batch_ids: list[str]) -> dict[str, Any]:
    return {
        "request_id": record["id"], "model": record["model"], "method": outcome.result["method"],
        "classes": record["classes"], "samples": record["samples"],
        "weights_sha256_before": outcome.state_before.weights_sha256,
        "weights_sha256_after": outcome.state_after.weights_sha256,
        "state_version": outcome.state_after.state_version,
        "artifacts": [{"id": m["id"], "kind": m["kind"], "file_sha256": m["file_sha256"],
                       "manifest_sha256": m["manifest_sha256"]} for m in outcome.artifacts],
        "metrics": outcome.result.get("metrics", {}), "guard": outcome.result.get("guard"),
        "computed_with": batch_ids,
        "accepted_at": record["created_at"], "finished_at": now_iso(),
    }


def process_forget_request(request_id: str) -> dict[str, Any]:
    """Compute one forget request, plus every queued request of the same model it can answer too, under the
    model's lock, and record how each ended in the ledger.

    Safe to run twice: a request that already ended is skipped. Expected errors (bad forget set, missing
    data, unavailable method) end the batch `failed`; anything else propagates so that the janitor can
    retry within `max_attempts`. Every line it logs carries the forget request's id and the id of the HTTP request
    that accepted it (`request_id`, from the job's meta).
    """
    job = get_current_job()
    accepted_by = job.meta.get(REQUEST_ID) if job is not None else None
    with structlog.contextvars.bound_contextvars(forget_request_id=request_id,
                                                 **({REQUEST_ID: accepted_by} if accepted_by else {})):
        started = time.monotonic()
        log.info("forget job started")
        summary = _process(request_id)
        log.info("forget job ended", status=RequestStatus(summary["status"]).value, batch=summary.get("batch"),
                 duration_s=round(time.monotonic() - started, 2))
        return summary


def _process(request_id: str) -> dict[str, Any]:
    settings = get_settings()
    database = open_database(settings)
    ledger = Ledger(database)
    record = ledger.get(request_id)
    if record["status"] in TERMINAL:  # e.g. answered by another request's batch: done before the store is opened
        return {"request_id": request_id, "status": record["status"], "skipped": True}
    store = open_store(settings, database)
    with store.model_lock(record["model"]):
        summary, ended = _compute_locked(ledger, store, settings, record)
    _notify(ledger, ended, settings)  # only queues the deliveries (callbacks queue); workers send them later
    _drop_answered_jobs(ledger, ended, settings)
    return summary


def _compute_locked(ledger: Ledger, store: Store, settings: Settings,
                    record: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The job under the model's lock: (summary, ids of the requests that ended and get a callback)."""
    request_id = record["id"]
    if not ledger.mark_running(request_id):  # cancelled or finished while we waited for the lock
        return {"request_id": request_id, "status": ledger.get(request_id)["status"], "skipped": True}, []
    batch = [ledger.get(request_id)]
    earlier = published_outcome(store, record["model"], request_id)
    if earlier is not None:  # an earlier attempt published it and died before recording it: no recompute
        return _finish(ledger, store, settings, batch, *earlier)
    try:
        plan = method_plan(record)
    except MethodNotAvailable as exc:
        return _fail(ledger, batch, f"{type(exc).__name__}: {exc}")
    batch += _coalescable(ledger, record)
    try:
        return _compute_batch(ledger, store, settings, plan, batch)
    except (AllCandidatesRejected, UnlearningError) as exc:
        if len(batch) == 1:
            return _fail(ledger, batch, _failure_text(exc), _failure_result(exc))
        # One member may make the whole batch impossible: the others go back in line, computed without it,
        # and this request is computed alone, so only a request that fails on its own ends `failed`.
        log.warning("batch of %s failed (%s); computing its members on their own", request_id, exc)
        for member in batch[1:]:
            ledger.mark_queued(member["id"], not_before=time.time(), actor="worker", refund_attempt=True,
                               reason="its batch failed; it is computed without the others")
        try:
            return _compute_batch(ledger, store, settings, plan, batch[:1])
        except (AllCandidatesRejected, UnlearningError) as alone:
            return _fail(ledger, batch[:1], _failure_text(alone), _failure_result(alone))


def _compute_batch(ledger: Ledger, store: Store, settings: Settings, plan: list[MethodEntry],
                   batch: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Run the plan for the batch and record how it ended; expected failures propagate to the caller."""
    ids = [r["id"] for r in batch]
    started, method, ended = time.monotonic(), str(batch[0]["method"]), "error"  # metrics: duration by outcome
    try:
        outcome = _run_plan(plan, store, batch, settings, ProgressReporter(ledger, ids))
        method, ended = str(outcome.result.get("method", method)), "succeeded"
    except RequestCancelled:
        ended = "cancelled"
        return _after_cancel(ledger, batch)
    except StaleStateError as exc:  # another host published on this model meanwhile: compute again on its state
        ended = "stale"
        log.warning("forget request %s computed on a stale state (%s): back in line", ids[0], exc)
        for member in batch:
            ledger.mark_queued(member["id"], not_before=time.time(), actor="worker", refund_attempt=True,
                               reason="the served state changed while it was computed; computed again on the new one")
        return {"request_id": ids[0], "status": "queued", "batch": ids}, []
    except StoreError as exc:
        ended = "failed"
        return _fail(ledger, batch, f"{type(exc).__name__}: {exc}")
    except AllCandidatesRejected:
        ended = "guard_refused"
        raise
    except UnlearningError:
        ended = "failed"
        raise
    finally:
        observe_job(method, ended, started)
    return _finish(ledger, store, settings, batch, outcome, ids)


def _failure_text(exc: Exception) -> str:
    if isinstance(exc, AllCandidatesRejected):
        return f"UtilityGuardRefused: nothing was published; {exc}"
    return f"{type(exc).__name__}: {exc}"


def _failure_result(exc: Exception) -> dict[str, Any] | None:
    return {"guard_refusals": exc.refusals} if isinstance(exc, AllCandidatesRejected) else None


def _fail(ledger: Ledger, batch: list[dict[str, Any]], error: str,
          result: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    log.warning("forget request %s failed: %s", batch[0]["id"], error)
    for member in batch:
        ledger.mark_failed(member["id"], error, result=result)
    return {"request_id": batch[0]["id"], "status": "failed"}, [r["id"] for r in batch]


def _finish(ledger: Ledger, store: Store, settings: Settings, batch: list[dict[str, Any]], outcome: Outcome,
            ids: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Record every member of the batch `succeeded` with the shared result and its own receipt, once its report
    is stored (a report that cannot be rendered is logged and skipped)."""
    save_report(store, settings, outcome, batch)
    key = load_signer(settings)
    for member in batch:
        result = {**outcome.result, "coalesced_with": [i for i in ids if i != member["id"]]}
        ledger.mark_succeeded(member["id"], result, receipt=sign(_receipt(member, outcome, ids), key))
    summary = {"request_id": batch[0]["id"], "status": "succeeded", "batch": ids,
               "artifact_id": outcome.result["artifact_id"]}
    return summary, [r["id"] for r in batch]


def _after_cancel(ledger: Ledger, batch: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Cancelled members end `cancelled`; the others go back in line to be computed without them."""
    cancelled = set(ledger.cancel_requested([r["id"] for r in batch]))
    for member in batch:
        if member["id"] in cancelled:
            ledger.mark_cancelled(member["id"], actor="worker")
        else:
            ledger.mark_queued(member["id"], not_before=time.time(), actor="worker", refund_attempt=True,
                               reason="a request computed with it was cancelled")
    return {"request_id": batch[0]["id"], "status": "cancelled", "cancelled": sorted(cancelled)}, sorted(cancelled)


def _drop_answered_jobs(ledger: Ledger, request_ids: list[str], settings: Settings) -> None:
    """Take the queued jobs of the requests this job answered off the queue and delete them: each would only
    start, find its request ended and return (a coalesced burst of 200 requests left about 150 of them, seconds
    each on PostgreSQL and S3). Best effort: a job a worker has taken already does just that."""
    job = get_current_job()
    if job is None or not request_ids:
        return
    queue = forget_queue(job.connection, settings)
    try:
        for job_id in ledger.job_ids(request_ids).values():
            if job_id == job.id or not queue.remove(job_id):  # this job, or one a worker took
                continue
            with contextlib.suppress(NoSuchJobError):  # expired or deleted meanwhile
                Job.fetch(job_id, connection=job.connection, serializer=queue.serializer).delete(
                    remove_from_queue=False)
    except RedisError as exc:
        log.warning("could not take the answered requests' jobs off the queue: %s", exc)


def _notify(ledger: Ledger, request_ids: list[str], settings: Settings) -> None:
    for request_id in request_ids:
        try:
            notify_terminal(ledger, request_id, settings)
        except Exception:  # a callback must never fail the request
            log.exception("callback for %s", request_id)
