"""Operator views: `GET /v1/admin/queue`, what waits and what runs, from the ledger and from RQ."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from rq import Queue, Worker

from models_store.ledger import RequestStatus
from service.deps import Admin, LedgerDep, QueueDep, SettingsDep
from unlearnd.callbacks import callback_queue
from unlearnd.settings import Settings

router = APIRouter(prefix="/v1/admin", tags=["operations"])


class ModelDepth(BaseModel):
    model: str
    queued: int = Field(..., description="Requests waiting for a worker (ledger status `queued`).")
    running: int = Field(..., description="Requests being computed (ledger status `running`).")


class RunningRequest(BaseModel):
    request_id: str
    model: str
    started_at: str | None = Field(None, json_schema_extra={"format": "date-time"})
    job_id: str | None = Field(None, description="The RQ job that carries the request.")
    worker: str | None = Field(None, description="The RQ worker running that job; null when the request is "
                                                 "computed in another request's job (coalesced) or RQ is unreachable.")
    stage: str | None = None
    fraction: float | None = None


class OldestWaiting(BaseModel):
    request_id: str
    model: str
    created_at: str = Field(..., json_schema_extra={"format": "date-time"})
    age_s: float = Field(..., description="Seconds since the request was accepted.")


class WorkerView(BaseModel):
    name: str
    state: str = Field(..., description="RQ's worker state: `idle`, `busy`, `started`, `suspended`.")
    current_job_id: str | None = None


class RQView(BaseModel):
    queued_jobs: int = Field(..., description="Jobs waiting on the forget queue.")
    started_jobs: int = Field(..., description="Jobs of the forget queue a worker has started.")
    failed_jobs: int = Field(..., description="Jobs of the forget queue in RQ's failed registry (the janitor "
                                              "retries their requests or ends them failed).")
    scheduled_jobs: int
    callbacks_queued: int = Field(..., description="Callback deliveries waiting on the callbacks queue.")
    workers: list[WorkerView]


class QueueView(BaseModel):
    """What waits and what runs. The ledger's figures are the truth about requests; RQ's show the jobs carrying
    them (`rq` is null, with `redis_error`, when Redis does not answer)."""

    queue: str
    depth: list[ModelDepth] = Field(..., description="Per model with active requests.")
    running: list[RunningRequest]
    oldest_waiting: OldestWaiting | None
    callbacks_pending: int = Field(..., description="Ended requests whose callback is not settled yet (neither "
                                   "delivered nor given up; the ledger's figure).")
    rq: RQView | None
    redis_error: str | None = None


def _age_s(iso: str) -> float:
    return round((datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds(), 1)


def _rq_view(queue: Queue, settings: Settings) -> RQView:
    workers = Worker.all(queue=queue)
    return RQView(
        queued_jobs=queue.count, started_jobs=queue.started_job_registry.count,
        failed_jobs=queue.failed_job_registry.count, scheduled_jobs=queue.scheduled_job_registry.count,
        callbacks_queued=callback_queue(queue.connection, settings).count,
        workers=[WorkerView(name=w.name, state=str(w.get_state()), current_job_id=w.get_current_job_id())
                 for w in workers])


def _running(record: dict[str, Any], worker_of: dict[str, str]) -> RunningRequest:
    progress = record["progress"] or {}
    return RunningRequest(request_id=record["id"], model=record["model"], started_at=record["started_at"],
                          job_id=record["job_id"], worker=worker_of.get(record["job_id"] or ""),
                          stage=progress.get("stage"), fraction=progress.get("fraction"))


@router.get("/queue")
def queue_view(ledger: LedgerDep, queue: QueueDep, settings: SettingsDep, _: Admin) -> QueueView:
    """Queue depth per model, the running requests and their workers, and the oldest waiting request."""
    active = ledger.active()  # in acceptance order
    queued = [r for r in active if r["status"] == RequestStatus.QUEUED.value]
    counts = Counter((r["model"], r["status"]) for r in active)
    depth = [ModelDepth(model=m, queued=counts[m, RequestStatus.QUEUED.value],
                        running=counts[m, RequestStatus.RUNNING.value]) for m in sorted({r["model"] for r in active})]
    rq, redis_error = None, None
    try:
        rq = _rq_view(queue, settings)
    except RedisError as exc:
        redis_error = f"{type(exc).__name__}: {exc}"
    worker_of = {w.current_job_id: w.name for w in (rq.workers if rq else []) if w.current_job_id}
    oldest = queued[0] if queued else None
    return QueueView(
        queue=settings.queue_name, depth=depth,
        running=[_running(r, worker_of) for r in active if r["status"] == RequestStatus.RUNNING.value],
        oldest_waiting=None if oldest is None else OldestWaiting(
            request_id=oldest["id"], model=oldest["model"], created_at=oldest["created_at"],
            age_s=_age_s(oldest["created_at"])),
        callbacks_pending=ledger.count_pending_callbacks(), rq=rq, redis_error=redis_error)
