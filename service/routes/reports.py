from __future__ import annotations

from fastapi import APIRouter, Response

from models_store import NotFoundError
from models_store.ledger import RequestStatus
from service.deps import Governance, LedgerDep, StoreDep
from service.errors import Problem, problem_responses

router = APIRouter(tags=["forget requests"])


@router.get("/v1/forget-requests/{request_id}/report.png", response_class=Response, responses={
    200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
          "description": "The report: δ as an image (or a note for weight edits), a few forget and retain images "
                         "as served before and after, per-class accuracy before and after"},
    **problem_responses(404, descriptions={404: "No such request, or it has no report (not succeeded, or the "
                                                "worker could not render one)"})})
def get_report(request_id: str, ledger: LedgerDep, store: StoreDep, _: Governance) -> Response:
    """The PNG report the worker rendered when the request succeeded."""
    status = RequestStatus(ledger.get(request_id)["status"]).value
    try:
        png = store.get_report(request_id)
    except NotFoundError:
        raise Problem(404, "No report", f"the request is {status}; a report is rendered when a request "
                      "succeeds") from None
    return Response(png, media_type="image/png")
