from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import Admin, LedgerDep
from service.schemas import AuditEntry, AuditPublic

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("")
def list_audit(
    ledger: LedgerDep, _: Admin, action: str | None = None, request_id: str | None = None,
    model: str | None = None, actor: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,18}$", description="next_cursor of the previous page")] = None,
) -> AuditPublic:
    """The append-only audit log (state changes, admin actions), oldest first; `actor` is a key id, never a
    key."""
    rows = ledger.audit_entries(action=action, request_id=request_id, model=model, actor=actor,
                                limit=limit + 1, after_seq=int(cursor or 0))
    page = rows[:limit]
    return AuditPublic(data=[AuditEntry(**r) for r in page], count=len(page),
                       next_cursor=str(page[-1]["seq"]) if len(rows) > limit else None)
