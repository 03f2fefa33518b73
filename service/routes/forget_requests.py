from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, Response
from redis.exceptions import RedisError

from service.deps import Governance, ServicesDep
from service.errors import Problem
from service.schemas import ForgetRequestCreate, ForgetRequestPublic
from unlearnd.queue import enqueue_request

log = logging.getLogger(__name__)
router = APIRouter(tags=["forget requests"])


def _check_available(body: ForgetRequestCreate) -> None:
    """Methods this version computes; the request shape is final, the rest answers 501 for now."""
    if body.samples is not None:
        raise Problem(501, "Not implemented", "sample-wise forgetting is not available yet; forget classes")
    if body.method == "zero_shot":
        raise Problem(501, "Not implemented", "the zero_shot method is not available yet; use forget_vector")


@router.post("/v1/models/{model}/forget-requests", status_code=202)
def create_forget_request(
    model: str, body: ForgetRequestCreate, response: Response, services: ServicesDep, principal: Governance
) -> ForgetRequestPublic:
    """Accept a deletion request: record it durably, queue its job, answer 202 with where to poll."""
    record = services.store.get_model(model)
    if body.classes is not None:
        out_of_range = [c for c in body.classes if not 0 <= c < record["num_classes"]]
        if out_of_range:
            raise Problem(422, "Invalid classes",
                          f"classes {out_of_range} are outside 0..{record['num_classes'] - 1}")
    _check_available(body)
    request_id = f"fr_{uuid.uuid4().hex}"
    stored = services.ledger.create({
        "id": request_id, "model": model, "classes": body.classes, "samples": body.samples,
        "method": body.method, "reason": body.reason, "key_id": principal.key_id,
    })
    try:
        enqueue_request(services.queue, services.ledger, request_id, services.settings)
    except RedisError as exc:  # the ledger row is durable; the janitor enqueues it when Redis is back
        log.warning("could not enqueue %s now, the janitor will: %s", request_id, exc)
    response.headers["Location"] = f"/v1/forget-requests/{request_id}"
    return ForgetRequestPublic.from_record(stored)


@router.get("/v1/forget-requests/{request_id}")
def get_forget_request(request_id: str, services: ServicesDep, _: Governance) -> ForgetRequestPublic:
    """Status, progress and result of one request."""
    return ForgetRequestPublic.from_record(services.ledger.get(request_id))
