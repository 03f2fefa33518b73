"""What a forget job computes: load the served state, run the method for a batch of requests, store the
artifact, then flip the served state in one atomic write."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models_store import Ledger, Store
from models_store.store import now_iso
from unlearnd.runtime import load_classifier, load_image_sets, pick_device
from unlearnd.settings import Settings
from unlearning import ForgetVectorConfig, learn_forget_vector, split_by_classes
from unlearning.metrics import unlearning_report


class MethodNotAvailable(Exception):
    """The request asks for a method or forget-set kind this version does not compute yet."""


class RequestCancelled(Exception):
    """Someone cancelled a request of the batch while it ran; nothing was published."""


def resolve_method(record: dict[str, Any]) -> str:
    """`auto` -> `forget_vector` for class deletions. Sample deletions and `zero_shot` are not built yet."""
    method = record["method"]
    if record.get("samples") is not None:
        raise MethodNotAvailable("sample-wise forgetting is not available yet")
    if method in ("auto", "forget_vector"):
        return "forget_vector"
    raise MethodNotAvailable(f"method {method!r} is not available yet")


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


def _publish(store: Store, model: str, state: dict[str, Any], **changes: Any) -> dict[str, Any]:
    kept = {k: v for k, v in state.items() if k != "rolled_back_to"}
    new_state = {**kept, **changes, "state_version": state["state_version"] + 1, "updated_at": now_iso()}
    store.write_state(model, new_state)
    return new_state


def run_forget_vector(
    store: Store, records: list[dict[str, Any]], settings: Settings, report: Callable[..., None]
) -> Outcome:
    """One class-wise forget vector for every class in force plus the batch's classes, then a new served state.

    When every requested class is already forgotten, the current vector already covers the batch: the state
    only records the new requests.
    """
    started = time.monotonic()
    model_name = records[0]["model"]
    state = store.read_state(model_name)
    request_ids = [*state["requests"], *(r["id"] for r in records if r["id"] not in state["requests"])]
    classes = sorted(set(state["forgotten_classes"]).union(*(r["classes"] for r in records)))
    if classes == sorted(state["forgotten_classes"]) and state["artifacts"]:
        manifests = [store.get_artifact_manifest(a) for a in state["artifacts"]]
        after = _publish(store, model_name, state, requests=request_ids)
        result = {"artifact_id": state["artifacts"][0], "metrics": manifests[0].get("metrics", {}),
                  "duration_s": round(time.monotonic() - started, 2), "method": "forget_vector",
                  "note": "the classes were already forgotten by the vector in force", "state_version":
                  after["state_version"]}
        return Outcome(result, state, after, manifests)

    model_record = store.get_model_version(model_name, state.get("model_version", store.get_model(model_name)["version"]))
    report(0.02, "loading", force=True)
    device = pick_device(settings.device)
    model = load_classifier(store, model_record, state["weights_sha256"], device)
    train, test = load_image_sets(store, model_record["train_dataset"])
    split = split_by_classes(train, classes)
    before = unlearning_report(model, split, test, classes)

    def on_epoch(fraction: float, epoch_record: dict) -> None:
        report(0.05 + 0.85 * fraction, "optimising", epoch=epoch_record["epoch"],
               forget_acc=round(epoch_record["forget_acc"], 4), retain_acc=round(epoch_record["retain_acc"], 4))

    vector = learn_forget_vector(model, split, ForgetVectorConfig(), progress=on_epoch)
    report(0.92, "evaluating", force=True)
    after_metrics = unlearning_report(model, split, test, classes, delta=vector.delta.to(device))
    metrics = {"before": before, "after": after_metrics}
    manifest = store.put_artifact(
        {"delta": vector.delta},
        {"kind": "forget_vector", "model": model_name, "weights_sha256": state["weights_sha256"],
         "request_ids": request_ids, "classes": classes, "hyperparameters": vector.config,
         "epochs": vector.epochs, "stop_reason": vector.stop_reason, "metrics": metrics},
    )
    report(0.97, "publishing", force=True)
    after = _publish(store, model_name, state, artifacts=[manifest["id"]], requests=request_ids,
                     forgotten_classes=classes)
    result = {"artifact_id": manifest["id"], "metrics": metrics, "duration_s": round(time.monotonic() - started, 2),
              "method": "forget_vector", "stop_reason": vector.stop_reason, "epochs": vector.epochs,
              "state_version": after["state_version"]}
    return Outcome(result, state, after, [manifest])


METHODS = {"forget_vector": run_forget_vector}
