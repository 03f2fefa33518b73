"""What a forget job computes: load the served state, run the method for a batch of requests, store the
artifact, then flip the served state in one atomic write."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from models_store import Ledger, Store
from models_store.store import now_iso


class MethodNotAvailable(Exception):
    """The request asks for a method or forget-set kind this version does not compute yet."""


class RequestCancelled(Exception):
    """Someone cancelled a request of the batch while it ran; nothing was published."""


def resolve_method(record: dict[str, Any]) -> str:
    """The method a request runs: `auto` means `forget_vector` for classes and `zero_shot` for samples.

    Classes: a forget vector suppresses a whole class at the input without touching the weights and is
    reused (vector arithmetic) as more classes are forgotten. Samples: zero-shot smoothing needs only the
    forget inputs and edits the weights, so the samples' influence is removed from the model itself.
    """
    method = record["method"]
    if method == "auto":
        return "forget_vector" if record.get("classes") is not None else "zero_shot"
    if method in ("forget_vector", "zero_shot"):
        return method
    raise MethodNotAvailable(f"unknown method {method!r}")


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


@dataclass(frozen=True)
class Outcome:
    """What one computation published, shared by every request of its batch."""

    result: dict[str, Any]
    state_before: dict[str, Any]
    state_after: dict[str, Any]
    artifacts: list[dict[str, Any]]  # manifests of the artifacts in force after


def publish(store: Store, model: str, state: dict[str, Any], outcome: dict[str, Any] | None = None,
            **changes: Any) -> dict[str, Any]:
    """Write the next served state (state_version + 1) in one atomic replace; returns it.

    `outcome` (the job's result and its artifact ids) is kept in the new state, so a job that crashes after this
    write and before recording its requests can finish from it instead of computing again (`published_outcome`).
    """
    kept = {k: v for k, v in state.items() if k not in ("rolled_back_to", "outcome")}
    version = state["state_version"] + 1
    new_state = {**kept, **changes, "state_version": version, "updated_at": now_iso()}
    if outcome is not None:
        new_state["outcome"] = {**outcome, "state_version": version}
    store.write_state(model, new_state)
    return new_state


def published_outcome(store: Store, model: str, request_id: str) -> tuple[Outcome, list[str]] | None:
    """If an earlier attempt published `request_id`: the Outcome of the state that first covered it and the ids
    of the batch computed with it."""
    if request_id not in store.read_state(model).get("requests", []):
        return None
    history = store.state_history(model)
    for before, after in zip(history, history[1:]):
        if request_id in after.get("requests", []) and "outcome" in after:
            stored = dict(after["outcome"])
            manifests = [store.get_artifact_manifest(a) for a in stored.pop("artifact_ids", [])]
            batch = [r for r in after["requests"] if r not in before.get("requests", [])]
            return Outcome(stored, before, after, manifests), batch
    return None
