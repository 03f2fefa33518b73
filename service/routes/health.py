from __future__ import annotations

from fastapi import APIRouter
from redis.exceptions import RedisError
from rq import Worker

from service.deps import ServicesDep
from service.errors import Problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(services: ServicesDep) -> dict[str, object]:
    """Redis answers and at least one worker is registered on it; 503 with the reason otherwise."""
    try:
        services.redis.ping()
        workers = Worker.count(connection=services.redis)
    except RedisError as exc:
        raise Problem(503, "Not ready", f"Redis does not answer: {exc}") from None
    if workers == 0:
        raise Problem(503, "Not ready", "no worker is alive")
    return {"status": "ready", "workers": workers}
