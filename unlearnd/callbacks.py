"""Callbacks: POST a request's final record to its `callback_url`, signed, with bounded retries.

Delivery happens after the request reached its terminal state, so it never delays or changes that state;
the outcome (delivered or not, attempts, last error) is recorded on the request.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

from models_store import Ledger
from models_store.store import now_iso
from unlearnd.security.receipts import load_or_create_receipt_key, signature_header
from unlearnd.settings import Settings

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0
"""Per-attempt timeout of a callback POST, seconds."""
PUBLIC_FIELDS = ("id", "model", "classes", "samples", "method", "reason", "status", "progress", "created_at",
                 "started_at", "finished_at", "error", "result", "attempts")


def notify_terminal(ledger: Ledger, request_id: str, settings: Settings) -> None:
    record = ledger.get(request_id)
    url = record.get("callback_url")
    if not url:
        return
    payload = json.dumps({k: record[k] for k in PUBLIC_FIELDS}, sort_keys=True).encode()
    key = load_or_create_receipt_key(settings)
    headers = {"Content-Type": "application/json", "X-Unlearnd-Signature": signature_header(payload, key),
               "X-Unlearnd-Request-Id": request_id}
    error = None
    for attempt in range(1, settings.callback_attempts + 1):
        try:
            req = urllib.request.Request(url, data=payload, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as response:  # noqa: S310 (http/https only, checked on input)
                status = response.status
            ledger.set_callback(request_id, {"delivered": True, "status": status, "attempts": attempt,
                                             "at": now_iso()})
            return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            error = str(exc)[:300]
            log.warning("callback for %s failed (attempt %d): %s", request_id, attempt, error)
            if attempt < settings.callback_attempts:
                time.sleep(0.5 * 2 ** (attempt - 1))
    ledger.set_callback(request_id, {"delivered": False, "attempts": settings.callback_attempts,
                                     "error": error, "at": now_iso()})
    ledger.audit("callback.failed", "system", request_id, record["model"], {"error": error})
