from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from models_store.ledger import ACTIVE, TERMINAL
from service.deps import Governance, ServicesDep
from service.errors import Problem
from service.schemas import ForgetRequestCreate, ForgetRequestPublic, ForgetRequestsPublic, Status
from unlearnd.callbacks import notify_terminal
from unlearnd.queue import enqueue_request

log = logging.getLogger(__name__)
IDEMPOTENCY_STALE_S = 60.0
"""A claim on an Idempotency-Key bound to no request after this long belongs to a process that died before
accepting: a retry with the key takes it over instead of answering 409."""
router = APIRouter(tags=["forget requests"])


MAX_LISTED_IDS = 20
"""How many unknown sample ids a 422 lists."""


def _check_samples(samples: list[str], record: dict, services: ServicesDep) -> None:
    """Sample ids must name training samples of the model's training set."""
    limit = services.settings.max_sample_ids
    if len(samples) > limit:
        raise Problem(422, "Too many samples", f"{len(samples)} sample ids; at most {limit} per request "
                      "(UNLEARND_MAX_SAMPLE_IDS)")
    known = set(services.store.get_dataset(record["train_dataset"])["ids_train"])
    unknown = [s for s in samples if s not in known]
    if unknown:
        shown = ", ".join(repr(s) for s in unknown[:MAX_LISTED_IDS])
        more = f" and {len(unknown) - MAX_LISTED_IDS} more" if len(unknown) > MAX_LISTED_IDS else ""
        raise Problem(422, "Unknown sample ids", f"{len(unknown)} ids are not in training set "
                      f"{record['train_dataset']!r}: {shown}{more}", unknown_ids=unknown[:MAX_LISTED_IDS])
    if len(samples) >= len(known):
        raise Problem(422, "Invalid samples", "the request would forget every training sample")


def _accept(model: str, body: ForgetRequestCreate, services: ServicesDep, key_id: str,
            idempotency: tuple[str, str] | None = None) -> ForgetRequestPublic:
    record = services.store.get_model(model)
    if body.classes is not None:
        out_of_range = [c for c in body.classes if not 0 <= c < record["num_classes"]]
        if out_of_range:
            raise Problem(422, "Invalid classes",
                          f"classes {out_of_range} are outside 0..{record['num_classes'] - 1}")
    if body.samples is not None:
        _check_samples(body.samples, record, services)
    request_id = f"fr_{uuid.uuid4().hex}"
    stored = services.ledger.create({
        "id": request_id, "model": model, "classes": body.classes, "samples": body.samples,
        "method": body.method, "reason": body.reason, "key_id": key_id, "callback_url": body.callback_url,
    }, idempotency=idempotency)
    try:
        enqueue_request(services.queue, services.ledger, request_id, services.settings)
    except RedisError as exc:  # the ledger row is durable; the janitor enqueues it when Redis is back
        log.warning("could not enqueue %s now, the janitor will: %s", request_id, exc)
    return ForgetRequestPublic.from_record(stored)


@router.post("/v1/models/{model}/forget-requests", status_code=202, response_model=ForgetRequestPublic)
async def create_forget_request(
    model: str, request: Request, services: ServicesDep, principal: Governance,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Accept a deletion request: record it durably, queue its job, answer 202 with where to poll.

    With an `Idempotency-Key` header, the same key and body replay the first answer, a different body
    answers 422, and a retry while the first is still being accepted answers 409.
    """
    raw = await request.body()
    try:
        body = ForgetRequestCreate.model_validate_json(raw)
    except ValueError as exc:
        errors = getattr(exc, "errors", lambda: [])()
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}".lstrip(": ") for e in errors[:5])
        raise Problem(422, "Invalid request", detail or str(exc)) from None
    if idempotency_key is not None:
        digest = hashlib.sha256(model.encode() + b"\0" + raw).hexdigest()
        existing = services.ledger.idempotency_begin(principal.key_id, idempotency_key, digest)
        if existing is not None:
            if existing["body_sha256"] != digest:
                raise Problem(422, "Idempotency key reused", "this Idempotency-Key was used with another body")
            if existing["status_code"] is None and existing["request_id"] is not None:
                # accepted, but the process that accepted it died before storing its answer: answer now
                public = ForgetRequestPublic.from_record(services.ledger.get(existing["request_id"]))
                existing = _store_answer(services, principal.key_id, idempotency_key, _accepted_answer(public))
            elif existing["status_code"] is None and not services.ledger.idempotency_take_over(
                    principal.key_id, idempotency_key, IDEMPOTENCY_STALE_S):
                raise Problem(409, "Request in progress", "the first request with this Idempotency-Key is "
                              "still being accepted; retry shortly")
            if existing["status_code"] is not None:
                return Response(existing["response"], status_code=existing["status_code"],
                                headers={**json.loads(existing["headers"]), "Idempotent-Replayed": "true"},
                                media_type="application/json")
    try:
        public = _accept(model, body, services, principal.key_id,
                         None if idempotency_key is None else (principal.key_id, idempotency_key))
    except BaseException:
        if idempotency_key is not None:
            services.ledger.idempotency_release(principal.key_id, idempotency_key)
        raise
    answer = _accepted_answer(public)
    if idempotency_key is not None:
        _store_answer(services, principal.key_id, idempotency_key, answer)
    return Response(answer["response"], status_code=202, headers=json.loads(answer["headers"]),
                    media_type="application/json")


def _accepted_answer(public: ForgetRequestPublic) -> dict:
    """The 202 of an accepted request, shaped like an idempotency row (status_code, response, headers)."""
    headers = {"Location": f"/v1/forget-requests/{public.id}"}
    return {"status_code": 202, "response": public.model_dump_json(), "headers": json.dumps(headers)}


def _store_answer(services: ServicesDep, key_id: str, key: str, answer: dict) -> dict:
    """Record `answer` as the Idempotency-Key's replay; returns it."""
    services.ledger.idempotency_finish(key_id, key, answer["status_code"], answer["response"],
                                      json.loads(answer["headers"]))
    return answer


@router.get("/v1/forget-requests")
def list_forget_requests(
    services: ServicesDep, _: Governance, model: str | None = None, status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50, cursor: Annotated[str | None, Query(pattern=r"^\d+$")] = None,
) -> ForgetRequestsPublic:
    """Requests in acceptance order; pass `next_cursor` back as `cursor` for the next page."""
    rows = services.ledger.list(model=model, status=status, limit=limit + 1, after_seq=int(cursor or 0))
    page = rows[:limit]
    next_cursor = str(page[-1]["seq"]) if len(rows) > limit else None
    return ForgetRequestsPublic(data=[ForgetRequestPublic.from_record(r) for r in page], count=len(page),
                                next_cursor=next_cursor)


@router.get("/v1/forget-requests/{request_id}")
def get_forget_request(request_id: str, services: ServicesDep, _: Governance) -> ForgetRequestPublic:
    """Status, progress and result of one request."""
    return ForgetRequestPublic.from_record(services.ledger.get(request_id))


@router.delete("/v1/forget-requests/{request_id}")
def cancel_forget_request(request_id: str, services: ServicesDep, principal: Governance,
                          background: BackgroundTasks) -> JSONResponse:
    """Cancel a request that has not finished: a queued one at once (200), a running one when its worker
    next reports progress (202; it may still finish first). A finished one answers 409. A request that ends
    `cancelled` gets its callback like any other ending (after the answer is sent)."""
    outcome = services.ledger.request_cancel(request_id, principal.key_id)
    if outcome in TERMINAL:
        raise Problem(409, "Already finished", f"the request ended {outcome}; it cannot be cancelled")
    record = ForgetRequestPublic.from_record(services.ledger.get(request_id))
    if outcome == "cancelled-now":
        background.add_task(notify_terminal, services.ledger, request_id, services.settings)
    return JSONResponse(record.model_dump(mode="json"), status_code=200 if outcome == "cancelled-now" else 202,
                        background=background)


@router.get("/v1/forget-requests/{request_id}/receipt")
def get_receipt(request_id: str, services: ServicesDep, _: Governance) -> JSONResponse:
    """The signed receipt of a succeeded request (verify offline with `unlearnd verify-receipt`)."""
    record = services.ledger.get(request_id)
    if record["receipt"] is None:
        state = record["status"]
        raise Problem(409 if state in ACTIVE else 404, "No receipt",
                      f"the request is {state}; receipts exist for succeeded requests only")
    return JSONResponse(record["receipt"])
