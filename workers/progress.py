"""Progress of a running job, written to the ledger for every request of its batch."""

from __future__ import annotations

import time
from typing import Any

from models_store import Ledger
from workers.errors import RequestCancelled


class ProgressReporter:
    """Writes {fraction, stage, elapsed_s, eta_s, ...} for every request of the batch, at most every
    `min_interval_s`, and raises RequestCancelled when one of them was cancelled meanwhile."""

    def __init__(self, ledger: Ledger, request_ids: list[str], min_interval_s: float = 0.5):
        self.ledger, self.request_ids, self.min_interval_s = ledger, request_ids, min_interval_s
        self.started = time.monotonic()
        self.last_write = 0.0

    def __call__(self, fraction: float, stage: str, force: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < self.min_interval_s:
            return
        cancelled = self.ledger.cancel_requested(self.request_ids)
        if cancelled:
            raise RequestCancelled(", ".join(cancelled))
        elapsed = now - self.started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        progress = {"fraction": round(min(max(fraction, 0.0), 1.0), 4), "stage": stage,
                    "elapsed_s": round(elapsed, 2), "eta_s": None if eta is None else round(eta, 1), **extra}
        for request_id in self.request_ids:
            self.ledger.set_progress(request_id, progress)
        self.last_write = now
