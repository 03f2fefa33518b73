from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from models_store.ledger import ACTIVE, TERMINAL, RequestStatus
from service import idempotency
from service.deps import Governance, LedgerDep, QueueDep, SettingsDep, StoreDep
from service.domain import accept_forget_request
from service.errors import Problem, describe_errors, problem_responses
from service.idempotency import Answer, Claim
from service.schemas import (
    FORGET_REQUEST_EXAMPLES,
    ForgetRequestCreate,
    ForgetRequestPublic,
    ForgetRequestsPublic,
)
from unlearnd.callbacks import CallbackRefused, check_callback_url_at_intake, notify_terminal

router = APIRouter(tags=["forget requests"])


@router.post("/v1/models/{model}/forget-requests", status_code=202, response_model=ForgetRequestPublic,
             responses=problem_responses(409, descriptions={
                 409: "A retry with the same Idempotency-Key while the first is still being accepted"}),
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/ForgetRequestCreate"},
                 "examples": FORGET_REQUEST_EXAMPLES}}}})
async def create_forget_request(
    model: str, request: Request, principal: Governance, store: StoreDep, ledger: LedgerDep, queue: QueueDep,
    settings: SettingsDep, idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Accept a deletion request: record it durably, queue its job, answer 202 with where to poll.

    With an `Idempotency-Key` header, the same key and body replay the first answer, a different body
    answers 422, and a retry while the first is still being accepted answers 409.
    """
    raw = await request.body()
    try:
        body = ForgetRequestCreate.model_validate_json(raw)
    except ValidationError as exc:
        raise Problem(422, "Invalid request", describe_errors(exc.errors())) from None
    if body.callback_url is not None:
        try:
            await run_in_threadpool(check_callback_url_at_intake, body.callback_url, settings)
        except CallbackRefused as exc:
            raise Problem(422, "Callback refused", f"callback_url: {exc}") from None
    claim = None if idempotency_key is None else Claim.of(principal.key_id, idempotency_key, model, raw)
    if claim is not None and (first_answer := idempotency.begin(ledger, claim)) is not None:
        return idempotency.replay(first_answer)
    try:
        accepted = accept_forget_request(model=model, body=body, actor=principal.key_id, claim=claim,
                                         store=store, ledger=ledger, queue=queue, settings=settings)
    except BaseException:
        if claim is not None:
            idempotency.release(ledger, claim)
        raise
    answer = Answer.accepted(accepted)
    if claim is not None:
        idempotency.finish(ledger, claim, answer)
    return answer.response()


@router.get("/v1/forget-requests")
def list_forget_requests(
    ledger: LedgerDep, _: Governance, model: str | None = None,
    status: Annotated[str | None, Query(max_length=200, pattern=r"^[a-z]+(,[a-z]+)*$", description=(
        "One status or several, comma-separated (e.g. `queued,running`)"))] = None,
    order: Annotated[Literal["asc", "desc"], Query(description="`asc`: oldest first; `desc`: newest first")] = "asc",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,18}$", description="next_cursor of the previous page")] = None,
) -> ForgetRequestsPublic:
    """Requests in acceptance order (`order=desc`: newest first); pass `next_cursor` back as `cursor` (with the
    same filters and order) for the next page."""
    rows = ledger.list(model=model, statuses=_statuses(status), limit=limit + 1, after_seq=int(cursor or 0),
                       newest_first=order == "desc")
    page = rows[:limit]
    next_cursor = str(page[-1]["seq"]) if len(rows) > limit else None
    return ForgetRequestsPublic(data=[ForgetRequestPublic.from_record(r) for r in page], count=len(page),
                                next_cursor=next_cursor)


def _statuses(value: str | None) -> list[RequestStatus]:
    """`queued,running` -> the statuses; 422 naming any that is not one."""
    names = [] if value is None else value.split(",")
    unknown = [n for n in names if n not in {s.value for s in RequestStatus}]
    if unknown:
        raise Problem(422, "Invalid status", f"unknown status {unknown}; known: "
                      f"{', '.join(s.value for s in RequestStatus)}")
    return [RequestStatus(n) for n in dict.fromkeys(names)]


@router.get("/v1/forget-requests/{request_id}")
def get_forget_request(request_id: str, ledger: LedgerDep, _: Governance) -> ForgetRequestPublic:
    """Status, progress and result of one request."""
    return ForgetRequestPublic.from_record(ledger.get(request_id))


@router.delete("/v1/forget-requests/{request_id}", responses=problem_responses(409, descriptions={
    409: "The request has finished already"}))
def cancel_forget_request(request_id: str, ledger: LedgerDep, settings: SettingsDep, queue: QueueDep,
                          principal: Governance) -> JSONResponse:
    """Cancel a request that has not finished: a queued one at once (200), a running one when its worker
    next reports progress (202; it may still finish first). A finished one answers 409. A request that ends
    `cancelled` gets its callback like any other ending (queued for delivery by a worker)."""
    outcome = ledger.request_cancel(request_id, principal.key_id)
    if outcome in TERMINAL:
        raise Problem(409, "Already finished", f"the request ended {outcome}; it cannot be cancelled")
    record = ForgetRequestPublic.from_record(ledger.get(request_id))
    if outcome == "cancelled-now":
        notify_terminal(ledger, request_id, settings, queue.connection)
    return JSONResponse(record.model_dump(mode="json"), status_code=200 if outcome == "cancelled-now" else 202)


@router.get("/v1/forget-requests/{request_id}/receipt", responses=problem_responses(404, 409, descriptions={
    404: "No such request, or it ended without a receipt", 409: "The request has not finished yet"}))
def get_receipt(request_id: str, ledger: LedgerDep, _: Governance) -> JSONResponse:
    """The signed receipt of a succeeded request (verify offline with `unlearnd verify-receipt`)."""
    record = ledger.get(request_id)
    if record["receipt"] is None:
        state = record["status"]
        raise Problem(409 if state in ACTIVE else 404, "No receipt",
                      f"the request is {state}; receipts exist for succeeded requests only")
    return JSONResponse(record["receipt"])
