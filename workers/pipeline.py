"""What a forget job computes: load the served state, run the method, store the artifact, flip the state."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from models_store import Ledger, Store
from models_store.store import now_iso
from unlearnd.runtime import load_classifier, load_image_sets, pick_device
from unlearnd.settings import Settings
from unlearning import ForgetVectorConfig, learn_forget_vector, split_by_classes
from unlearning.metrics import unlearning_report


class MethodNotAvailable(Exception):
    """The request asks for a method or forget-set kind this version does not compute yet."""


def resolve_method(record: dict[str, Any]) -> str:
    """`auto` -> `forget_vector` for class deletions. Sample deletions and `zero_shot` are not built yet."""
    method = record["method"]
    if record.get("samples") is not None:
        raise MethodNotAvailable("sample-wise forgetting is not available yet")
    if method in ("auto", "forget_vector"):
        return "forget_vector"
    raise MethodNotAvailable(f"method {method!r} is not available yet")


class ProgressReporter:
    """Writes {fraction, stage, eta_s, ...} into the ledger, at most every `min_interval_s` seconds."""

    def __init__(self, ledger: Ledger, request_id: str, min_interval_s: float = 0.5):
        self.ledger, self.request_id, self.min_interval_s = ledger, request_id, min_interval_s
        self.started = time.monotonic()
        self.last_write = 0.0

    def __call__(self, fraction: float, stage: str, force: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < self.min_interval_s:
            return
        elapsed = now - self.started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        progress = {"fraction": round(min(max(fraction, 0.0), 1.0), 4), "stage": stage,
                    "elapsed_s": round(elapsed, 2), "eta_s": None if eta is None else round(eta, 1), **extra}
        self.ledger.set_progress(self.request_id, progress)
        self.last_write = now


def run_forget_vector(
    store: Store, record: dict[str, Any], settings: Settings, report: Callable[..., None]
) -> dict[str, Any]:
    """Class-wise forget vector covering every class in force plus this request's, then a new served state."""
    started = time.monotonic()
    model_name = record["model"]
    model_record = store.get_model(model_name)
    state = store.read_state(model_name)
    report(0.02, "loading", force=True)
    device = pick_device(settings.device)
    model = load_classifier(store, model_record, state["weights_sha256"], device)
    train, test = load_image_sets(store, model_record["train_dataset"])

    classes = sorted(set(state["forgotten_classes"]) | set(record["classes"]))
    split = split_by_classes(train, classes)
    before = unlearning_report(model, split, test, classes)
    config = ForgetVectorConfig()

    def on_epoch(fraction: float, epoch_record: dict) -> None:
        report(0.05 + 0.85 * fraction, "optimising", epoch=epoch_record["epoch"],
               forget_acc=round(epoch_record["forget_acc"], 4), retain_acc=round(epoch_record["retain_acc"], 4))

    result = learn_forget_vector(model, split, config, progress=on_epoch)
    report(0.92, "evaluating", force=True)
    after = unlearning_report(model, split, test, classes, delta=result.delta.to(device))
    request_ids = [*state["requests"], record["id"]] if record["id"] not in state["requests"] else state["requests"]
    metrics = {"before": before, "after": after}
    manifest = store.put_artifact(
        {"delta": result.delta},
        {"kind": "forget_vector", "model": model_name, "weights_sha256": state["weights_sha256"],
         "request_ids": request_ids, "classes": classes, "hyperparameters": result.config,
         "epochs": result.epochs, "stop_reason": result.stop_reason, "metrics": metrics},
    )
    report(0.97, "publishing", force=True)
    store.write_state(model_name, {
        **state, "state_version": state["state_version"] + 1, "artifacts": [manifest["id"]],
        "requests": request_ids, "forgotten_classes": classes, "updated_at": now_iso(),
    })
    return {"artifact_id": manifest["id"], "metrics": metrics, "duration_s": round(time.monotonic() - started, 2),
            "method": "forget_vector", "stop_reason": result.stop_reason, "epochs": result.epochs}


METHODS = {"forget_vector": run_forget_vector}
