from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from rq import Worker

from service.deps import RedisDep, SettingsDep
from service.errors import Problem, problem_responses

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field("ok", examples=["ok"])


class Readiness(BaseModel):
    status: str = Field("ready", examples=["ready"])
    workers: int = Field(..., ge=1, description="Workers that heartbeated within UNLEARND_WORKER_STALE_S.")


@router.get("/healthz")
def healthz() -> Health:
    """The process is up."""
    return Health()


@router.get("/readyz", responses=problem_responses(503, descriptions={
    503: "Not ready: Redis does not answer or no worker is alive (the detail says which)"}))
def readyz(redis: RedisDep, settings: SettingsDep) -> Readiness:
    """Redis answers and at least one worker heartbeated within UNLEARND_WORKER_STALE_S; else 503 with the
    reason."""
    try:
        redis.ping()
        now = datetime.now(timezone.utc)
        workers = sum(
            1 for w in Worker.all(connection=redis)
            if w is not None and w.last_heartbeat is not None
            and (now - w.last_heartbeat.replace(tzinfo=timezone.utc)).total_seconds()
            < settings.worker_stale_s
        )
    except RedisError as exc:
        raise Problem(503, "Not ready", f"Redis does not answer: {exc}") from None
    if workers == 0:
        raise Problem(503, "Not ready", "no worker is alive")
    return Readiness(workers=workers)
