from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from models_store import Ledger
from models_store.ledger import ACTIVE, TERMINAL, IdempotencyClaim, RequestStatus
from service.deps import Governance, IntakeDep, LedgerDep, QueueDep, SettingsDep
from service.errors import Problem, describe_errors, problem_responses
from service.idempotency import claim_of, earlier_answer
from service.schemas import (
    FORGET_REQUEST_EXAMPLES,
    STORE_NAME,
    ForgetRequestCreate,
    ForgetRequestPublic,
    ForgetRequestsPublic,
    ModelName,
    Receipt,
)
from unlearnd.callbacks import CallbackRefused, check_callback_url_at_intake, notify_terminal
from unlearnd.settings import Settings

router = APIRouter(tags=["forget requests"])

_STATUS = f"(?:{'|'.join(s.value for s in RequestStatus)})"
_STATUSES = f"^{_STATUS}(?:,{_STATUS})*$"

RETRY_AFTER_DEFAULT_S = 2
"""Retry-After of a request whose ETA is not known yet (queued, or no rate measured), seconds."""
RETRY_AFTER_MAX_S = 60
"""Most seconds a Retry-After asks a poller to wait, however far the ETA, so that progress stays visible."""


def _retry_after_doc(when: str) -> dict[str, Any]:
    """The OpenAPI description of the Retry-After header, sent `when`."""
    return {"Retry-After": {
        "description": f"{when}: seconds to wait before reading the request again: its `progress.eta_s` rounded "
                       f"up (1 to {RETRY_AFTER_MAX_S}), or {RETRY_AFTER_DEFAULT_S} while no rate is measured",
        "schema": {"type": "integer", "minimum": 1}}}


def retry_after(request: ForgetRequestPublic) -> dict[str, str]:
    """The Retry-After header for a request that has not finished; none for one that has."""
    if request.status not in ACTIVE:
        return {}
    eta = request.progress.eta_s
    seconds = RETRY_AFTER_DEFAULT_S if eta is None else min(RETRY_AFTER_MAX_S, max(1, math.ceil(eta)))
    return {"Retry-After": str(seconds)}


def _record(description: str) -> dict[str, Any]:
    """An OpenAPI response whose body is a forget request record."""
    return {"model": ForgetRequestPublic, "description": description}


@router.post("/v1/models/{model}/forget-requests", status_code=202, response_model=ForgetRequestPublic,
             responses={202: {"description": "Accepted: poll `Location`", "headers": {
                 **_retry_after_doc("Always"), "Location": {"description": "Where to poll the request",
                                                            "schema": {"type": "string"}}}},
                        **problem_responses(409, descriptions={
                            409: "The Idempotency-Key holds a claim an older version left while accepting (60 s)"})},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/ForgetRequestCreate"},
                 "examples": FORGET_REQUEST_EXAMPLES}}}})
async def create_forget_request(
    model: ModelName, request: Request, principal: Governance, intake: IntakeDep, settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Response:
    """Accept a deletion request: record it durably, queue its job, answer 202 with where to poll.

    With an `Idempotency-Key` header, the same key and body replay the first answer, and a different body
    answers 422. `Retry-After` says when to poll first.
    """
    raw = await request.body()
    try:
        body = ForgetRequestCreate.model_validate_json(raw)
    except ValidationError as exc:
        raise Problem(422, "Invalid request", describe_errors(exc.errors())) from None
    claim = None if idempotency_key is None else claim_of(principal.key_id, idempotency_key, model, body, raw)
    response = await _replay_if_callback_refused(body, claim, intake.ledger, settings) or await intake.submit(
        model, body, claim, principal.key_id)
    response.headers["Retry-After"] = str(RETRY_AFTER_DEFAULT_S)  # just queued: no rate measured yet
    return response


async def _replay_if_callback_refused(body: ForgetRequestCreate, claim: IdempotencyClaim | None, ledger: Ledger,
                            settings: Settings) -> Response | None:
    """None when the request has no callback_url or may call it back; else its key's earlier answer (a retry of an
    accepted request is replayed, wherever its callback host points now), or raises the 422."""
    if body.callback_url is None:
        return None
    try:
        await run_in_threadpool(check_callback_url_at_intake, body.callback_url, settings)
        return None
    except CallbackRefused as exc:
        refusal = Problem(422, "Callback refused", f"callback_url: {exc}")
    earlier = None if claim is None else await run_in_threadpool(earlier_answer, ledger, claim,
                                                                 settings.idempotency_key_ttl_s)
    if earlier is None:
        raise refusal
    return earlier


@router.get("/v1/forget-requests")
def list_forget_requests(
    ledger: LedgerDep, _: Governance,
    model: Annotated[str | None, Query(max_length=64, pattern=STORE_NAME, description="Only this model's")] = None,
    status: Annotated[str | None, Query(max_length=200, json_schema_extra={"pattern": _STATUSES}, description=(
        "One status or several, comma-separated (e.g. `queued,running`)"))] = None,  # checked by _statuses
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


@router.get("/v1/forget-requests/{request_id}", response_model=ForgetRequestPublic, responses={
    200: {"description": "The request", "headers": _retry_after_doc("While it is queued or running")}})
def get_forget_request(request_id: str, ledger: LedgerDep, _: Governance) -> JSONResponse:
    """Status, progress and result of one request; while it is queued or running, `Retry-After` says when to
    read it again."""
    record = ForgetRequestPublic.from_record(ledger.get(request_id))
    return JSONResponse(record.model_dump(mode="json"), headers=retry_after(record))


@router.delete("/v1/forget-requests/{request_id}", responses={
    200: _record("Cancelled: it was queued"),
    202: _record("Cancel requested: it is running and stops at its next progress report (`cancel_requested`)"),
    **problem_responses(409, descriptions={409: "The request has finished already"})})
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


@router.get("/v1/forget-requests/{request_id}/receipt", responses={
    200: {"model": Receipt, "description": "The signed receipt, as issued"},
    **problem_responses(404, 409, descriptions={
        404: "No such request, or it ended without a receipt", 409: "The request has not finished yet"})})
def get_receipt(request_id: str, ledger: LedgerDep, _: Governance) -> JSONResponse:
    """The signed receipt of a succeeded request (verify offline with `unlearnd verify-receipt`)."""
    record = ledger.get(request_id)
    if record["receipt"] is None:
        state = record["status"]
        raise Problem(409 if state in ACTIVE else 404, "No receipt",
                      f"the request is {state}; receipts exist for succeeded requests only")
    return JSONResponse(record["receipt"])
