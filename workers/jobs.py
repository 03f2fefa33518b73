"""Job functions the RQ workers run. They take a request id; the ledger row says the rest."""

from __future__ import annotations

import logging
from typing import Any

from models_store import Ledger, Store, StoreError
from models_store.ledger import TERMINAL
from unlearnd.settings import get_settings
from unlearning import UnlearningError
from workers.pipeline import METHODS, MethodNotAvailable, ProgressReporter, resolve_method

log = logging.getLogger(__name__)


def process_forget_request(request_id: str) -> dict[str, Any]:
    """Compute one forget request under its model's lock and record how it ended in the ledger.

    Safe to run twice: a request that already ended is skipped. Expected errors (bad forget set,
    missing data, unavailable method) end the request `failed`; anything else propagates so that the
    janitor can retry it within `max_attempts`.
    """
    settings = get_settings()
    ledger, store = Ledger(settings.ledger_path), Store(settings.store_dir)
    record = ledger.get(request_id)
    if record["status"] in TERMINAL:
        return {"request_id": request_id, "status": record["status"], "skipped": True}
    with store.model_lock(record["model"]):
        if not ledger.mark_running(request_id):  # cancelled or finished while we waited for the lock
            return {"request_id": request_id, "status": ledger.get(request_id)["status"], "skipped": True}
        try:
            method = resolve_method(record)
            result = METHODS[method](store, record, settings, ProgressReporter(ledger, request_id))
        except (UnlearningError, StoreError, MethodNotAvailable) as exc:
            log.warning("forget request %s failed: %s", request_id, exc)
            ledger.mark_failed(request_id, f"{type(exc).__name__}: {exc}")
            return {"request_id": request_id, "status": "failed"}
        ledger.mark_succeeded(request_id, result)
    return {"request_id": request_id, "status": "succeeded", "artifact_id": result["artifact_id"]}
