"""The methods a forget job runs. Each takes (store, batch of ledger records, settings, report) and
returns an Outcome after publishing a new served state; nothing is served before that single write.

Served-state fields they maintain (besides weights_sha256, artifacts, requests):
  forgotten_classes  classes suppressed by the forget vector in force
  vector_samples     sample ids suppressed by a sample-wise forget vector in force
  bank               {class: class_vector artifact id} valid for the current weights (vector arithmetic)
  smoothed           zero-shot artifacts that produced the current weights, oldest first
  smoothed_classes   classes forgotten by zero-shot smoothing
  forgotten_samples  every sample id forgotten by either method

Whatever is forgotten never counts as retain data again: a vector's retain term would teach it back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from models_store import Store
from unlearnd.runtime import load_classifier, load_model_data, pick_device
from unlearnd.settings import Settings
from unlearning import (
    ForgetSplit,
    ImageSet,
    InvalidForgetSetError,
    accuracy,
    learn_forget_vector,
    split_by_classes,
    split_by_ids,
)
from unlearning.forget_vector import CLASS_WISE
from unlearning.metrics import unlearning_report
from workers.pipeline import Outcome, publish

Report = Callable[..., None]
VECTOR_KINDS = ("forget_vector", "class_vector")
ARITHMETIC_MAX_FORGET_ACCURACY = 0.02
"""Coefficients over bank vectors are kept when forget accuracy falls to this; otherwise a joint vector is learned."""


@dataclass(frozen=True)
class Loaded:
    record: dict[str, Any]
    weights_sha256: str
    model: torch.nn.Module
    train: ImageSet
    test: ImageSet | None
    device: torch.device


def _load(store: Store, state: dict[str, Any], settings: Settings, weights_sha256: str | None = None) -> Loaded:
    name = state["model"]
    record = store.get_model_version(name, state.get("model_version", store.get_model(name)["version"]))
    device = pick_device(settings.device)
    sha = weights_sha256 or state["weights_sha256"]
    train, test = load_model_data(store, record)
    return Loaded(record, sha, load_classifier(store, record, sha, device), train, test, device)


def _applied_delta(store: Store, artifact_ids: list[str]) -> torch.Tensor | None:
    """Sum of the δ of the vector artifacts in force (what inference applies)."""
    delta = None
    for artifact_id in artifact_ids:
        tensors, manifest = store.load_artifact(artifact_id)
        if manifest["kind"] in VECTOR_KINDS:
            delta = tensors["delta"] if delta is None else delta + tensors["delta"]
    return delta


def _report(loaded: Loaded, split: ForgetSplit, classes: list[int] | None, delta: torch.Tensor | None) -> dict:
    return unlearning_report(loaded.model, split, loaded.test, classes,
                             delta=None if delta is None else delta.to(loaded.device))


def _span(report: Report, low: float, high: float, stage: str) -> Callable[[float, dict], None]:
    """A core progress callback mapped onto [low, high] of the job's progress."""

    def on_epoch(fraction: float, record: dict) -> None:
        extra = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()
                 if k in ("epoch", "step", "forget_acc", "retain_acc", "loss")}
        report(low + (high - low) * fraction, stage, **extra)

    return on_epoch


def _forget_split(train: ImageSet, state: dict[str, Any], classes: list[int] | None = None,
                  samples: list[str] | None = None) -> ForgetSplit:
    """D_f for these classes or samples; D_r = the rest minus everything already forgotten in `state`."""
    split = split_by_classes(train, classes) if classes is not None else split_by_ids(train, samples or [])
    gone_classes = [*state.get("smoothed_classes", []), *state.get("forgotten_classes", [])]
    gone_ids = set(state.get("forgotten_samples", []))
    retain = split.retain
    keep = ~torch.isin(retain.y, torch.tensor(gone_classes, dtype=retain.y.dtype))
    if gone_ids:
        keep &= torch.tensor([i not in gone_ids for i in retain.ids])
    return ForgetSplit(split.forget, retain.subset(keep))


def _request_ids(state: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    return [*state["requests"], *(r["id"] for r in records if r["id"] not in state["requests"])]


# ---- forget vectors ---------------------------------------------------------------------------------------
def _class_vectors(
    store: Store, loaded: Loaded, state: dict[str, Any], bank: dict[int, str], classes: list[int],
    request_ids: list[str], report: Report, low: float, high: float,
) -> tuple[torch.Tensor, list[dict[str, Any]], dict[int, str], dict[str, Any]]:
    """δ that forgets `classes` on the loaded weights, reusing and extending the bank of class vectors.

    One class: its bank vector. Several: the coefficients w of δ = Σ w_k δ_k over their bank vectors
    (Sun et al. 2024, compositional unlearning); if that misses the forget target, a joint vector.
    Returns (δ, manifests of the artifacts to apply, the bank, what was done).
    """
    bank = dict(bank)
    missing = [c for c in classes if c not in bank]
    steps = len(missing) + (1 if len(classes) > 1 else 0)
    step = (high - low) / max(steps, 1)
    for i, cls in enumerate(missing):
        split = _forget_split(loaded.train, {**state, "forgotten_classes": classes}, classes=[cls])
        vector = learn_forget_vector(loaded.model, split, CLASS_WISE,
                                     progress=_span(report, low + i * step, low + (i + 1) * step,
                                                    f"class vector {cls}"))
        manifest = store.put_artifact({"delta": vector.delta}, {
            "kind": "class_vector", "model": loaded.record["name"], "weights_sha256": loaded.weights_sha256,
            "classes": [cls], "request_ids": request_ids, "hyperparameters": vector.config,
            "epochs": vector.epochs, "stop_reason": vector.stop_reason})
        bank[cls] = manifest["id"]
    info = {"bank_reused": [c for c in classes if c not in missing], "bank_computed": missing}
    if len(classes) == 1:
        tensors, manifest = store.load_artifact(bank[classes[0]])
        return tensors["delta"], [manifest], bank, {**info, "strategy": "class_vector"}

    from unlearning.arithmetic import CoefficientConfig, learn_coefficients

    split = _forget_split(loaded.train, state, classes=classes)
    basis = {c: store.load_artifact(bank[c])[0]["delta"] for c in classes}
    combined = learn_coefficients(loaded.model, split, basis, CoefficientConfig(),
                                  progress=_span(report, high - step, high, "vector arithmetic"))
    delta, strategy = combined.delta, "arithmetic"
    extra: dict[str, Any] = {"coefficients": {str(c): w for c, w in combined.weights.items()}}
    if accuracy(loaded.model, split.forget.x, split.forget.y, delta.to(loaded.device)) > ARITHMETIC_MAX_FORGET_ACCURACY:
        joint = learn_forget_vector(loaded.model, split, CLASS_WISE,
                                    progress=_span(report, high - step / 2, high, "joint vector"))
        delta, strategy = joint.delta, "joint"
        extra = {**extra, "joint_epochs": joint.epochs, "joint_stop_reason": joint.stop_reason}
    manifest = store.put_artifact({"delta": delta}, {
        "kind": "forget_vector", "model": loaded.record["name"], "weights_sha256": loaded.weights_sha256,
        "classes": classes, "request_ids": request_ids, "basis": {str(c): bank[c] for c in classes},
        "strategy": strategy, **extra})
    return delta, [manifest], bank, {**info, "strategy": strategy}


def _sample_vector(
    store: Store, loaded: Loaded, state: dict[str, Any], samples: list[str], request_ids: list[str],
    report: Report, low: float, high: float,
) -> tuple[torch.Tensor, list[dict[str, Any]], dict[str, Any]]:
    """A sample-wise forget vector aimed at what a retrained model does: forget-set accuracy ≈ held-out accuracy."""
    from unlearning.forget_vector import sample_wise_config

    split = _forget_split(loaded.train, state, samples=samples)
    config = sample_wise_config(loaded.model, split, loaded.test)
    target = config.target_forget_accuracy
    vector = learn_forget_vector(loaded.model, split, config, progress=_span(report, low, high, "optimising"))
    manifest = store.put_artifact({"delta": vector.delta}, {
        "kind": "forget_vector", "model": loaded.record["name"], "weights_sha256": loaded.weights_sha256,
        "samples": len(samples), "request_ids": request_ids, "target_forget_accuracy": target,
        "hyperparameters": vector.config, "epochs": vector.epochs, "stop_reason": vector.stop_reason})
    return vector.delta, [manifest], {"strategy": "sample_vector", "target_forget_accuracy": target,
                                      "stop_reason": vector.stop_reason, "epochs": vector.epochs}


def run_forget_vector(store: Store, records: list[dict[str, Any]], settings: Settings, report: Report) -> Outcome:
    """One forget vector for everything in force plus the batch; the weights do not change."""
    started = time.monotonic()
    state = store.read_state(records[0]["model"])
    request_ids = _request_ids(state, records)
    by_class = records[0]["classes"] is not None
    if by_class and state.get("vector_samples"):
        raise InvalidForgetSetError("a sample-wise forget vector is in force on this model; forget these "
                                    "classes with method zero_shot instead")
    if not by_class and state.get("forgotten_classes"):
        raise InvalidForgetSetError("a class forget vector is in force on this model; forget these samples "
                                    "with method zero_shot (or auto) instead")
    if by_class:
        classes = sorted(set(state.get("forgotten_classes", [])).union(*(r["classes"] for r in records)))
        if classes == sorted(state.get("forgotten_classes", [])) and state["artifacts"]:
            return _already_covered(store, state, settings, classes, request_ids, started)
    report(0.02, "loading", force=True)
    loaded = _load(store, state, settings)
    current = _applied_delta(store, state["artifacts"])
    if by_class:
        split = _forget_split(loaded.train, state, classes=classes)
        before = _report(loaded, split, classes, current)
        bank = {int(k): v for k, v in state.get("bank", {}).items()}
        delta, applied, bank, info = _class_vectors(store, loaded, state, bank, classes, request_ids, report,
                                                    0.05, 0.9)
        report(0.92, "evaluating", force=True)
        after = _report(loaded, split, classes, delta)
        changes = {"forgotten_classes": classes, "bank": {str(c): a for c, a in bank.items()}}
    else:
        samples = sorted(set(state.get("vector_samples", [])).union(*(r["samples"] for r in records)))
        split = _forget_split(loaded.train, state, samples=samples)
        before = _report(loaded, split, None, current)
        delta, applied, info = _sample_vector(store, loaded, state, samples, request_ids, report, 0.05, 0.9)
        report(0.92, "evaluating", force=True)
        after = _report(loaded, split, None, delta)
        changes = {"vector_samples": samples,
                   "forgotten_samples": sorted(set(state.get("forgotten_samples", [])) | set(samples))}
    report(0.97, "publishing", force=True)
    result = {"artifact_id": applied[0]["id"], "metrics": {"before": before, "after": after},
              "duration_s": round(time.monotonic() - started, 2), "method": "forget_vector", **info}
    return _published(store, state, result, applied, artifacts=[m["id"] for m in applied], requests=request_ids,
                      **changes)


def _published(store: Store, state: dict[str, Any], result: dict[str, Any], manifests: list[dict[str, Any]],
               **changes: Any) -> Outcome:
    """Publish the next served state with the result recorded in it; the Outcome of the batch."""
    new_state = publish(store, state["model"], state,
                        outcome={**result, "artifact_ids": [m["id"] for m in manifests]}, **changes)
    return Outcome({**result, "state_version": new_state["state_version"]}, state, new_state, manifests)


def _already_covered(store: Store, state: dict[str, Any], settings: Settings, classes: list[int],
                     request_ids: list[str], started: float) -> Outcome:
    """Every requested class is already forgotten by the vector in force: record the requests and measure the
    served state (before = after: nothing is recomputed)."""
    manifests = [store.get_artifact_manifest(a) for a in state["artifacts"]]
    loaded = _load(store, state, settings)
    served = _report(loaded, _forget_split(loaded.train, state, classes=classes), classes,
                     _applied_delta(store, state["artifacts"]))
    result = {"artifact_id": state["artifacts"][0], "metrics": {"before": served, "after": served},
              "duration_s": round(time.monotonic() - started, 2), "method": "forget_vector",
              "strategy": "already_in_force"}
    return _published(store, state, result, manifests, requests=request_ids)


# ---- zero-shot Lipschitz smoothing --------------------------------------------------------------------------
def run_zero_shot(store: Store, records: list[dict[str, Any]], settings: Settings, report: Report) -> Outcome:
    """JiT smoothing on the batch's forget inputs (no labels, no retain data) -> new weights; then every forget
    vector in force is recomputed for the new weights, and only then is the new state served."""
    from unlearning.forget_vector import random_forget_target
    from unlearning.smoothing import CLASS_FORGET_TARGET, SmoothingConfig, accuracy_at_most, lipschitz_smoothing

    started = time.monotonic()
    state = store.read_state(records[0]["model"])
    request_ids = _request_ids(state, records)
    report(0.02, "loading", force=True)
    loaded = _load(store, state, settings)
    by_class = records[0]["classes"] is not None
    if by_class:
        classes, samples = sorted(set().union(*(r["classes"] for r in records))), []
        split = _forget_split(loaded.train, state, classes=classes)
    else:
        classes, samples = None, sorted(set().union(*(r["samples"] for r in records)))
        split = _forget_split(loaded.train, state, samples=samples)
    before = _report(loaded, split, classes, _applied_delta(store, state["artifacts"]))

    has_vectors = bool(state.get("forgotten_classes") or state.get("vector_samples"))
    smoothing_end = 0.6 if has_vectors else 0.9
    # JiT itself uses no labels; the service uses the forget labels only to decide when to stop.
    target = CLASS_FORGET_TARGET if by_class else random_forget_target(loaded.model, split, loaded.test)
    smoothed = lipschitz_smoothing(loaded.model, split.forget.x, SmoothingConfig(),
                                   progress=_span(report, 0.05, smoothing_end, "smoothing"),
                                   stop=accuracy_at_most(split.forget.x, split.forget.y, target))
    name = loaded.record["name"]
    new_sha = store.put_weights(name, smoothed.state_dict)
    new = Loaded(loaded.record, new_sha, load_classifier(store, loaded.record, new_sha, loaded.device),
                 loaded.train, loaded.test, loaded.device)

    forgotten_samples = sorted(set(state.get("forgotten_samples", [])) | set(samples))
    smoothed_classes = sorted(set(state.get("smoothed_classes", [])) | set(classes or []))
    after_state = {**state, "forgotten_samples": forgotten_samples, "smoothed_classes": smoothed_classes}
    delta, applied, changes = None, [], {"bank": {}}
    if state.get("forgotten_classes"):  # vectors are bound to weights: recompute them before serving
        delta, applied, bank, _ = _class_vectors(store, new, after_state, {}, state["forgotten_classes"],
                                                 request_ids, report, smoothing_end, 0.9)
        changes["bank"] = {str(c): a for c, a in bank.items()}
    elif state.get("vector_samples"):
        delta, applied, _ = _sample_vector(store, new, after_state, state["vector_samples"], request_ids, report,
                                           smoothing_end, 0.9)
    report(0.92, "evaluating", force=True)
    after = _report(new, split, classes, delta)
    manifest = store.put_artifact({}, {
        "kind": "zero_shot", "model": name, "weights_sha256": new_sha, "parent_weights_sha256": state["weights_sha256"],
        "classes": classes, "samples": len(samples) if samples else None, "request_ids": request_ids,
        "hyperparameters": smoothed.config, "steps": smoothed.steps, "stop_reason": smoothed.stop_reason,
        "target_forget_accuracy": target, "metrics": {"before": before, "after": after}})
    report(0.97, "publishing", force=True)
    result = {"artifact_id": manifest["id"], "metrics": {"before": before, "after": after},
              "duration_s": round(time.monotonic() - started, 2), "method": "zero_shot",
              "weights_sha256": new_sha, "parent_weights_sha256": state["weights_sha256"],
              "steps": smoothed.steps, "stop_reason": smoothed.stop_reason,
              "recomputed_vectors": [m["id"] for m in applied]}
    return _published(
        store, state, result, [manifest, *applied], weights_sha256=new_sha, artifacts=[m["id"] for m in applied],
        requests=request_ids, smoothed=[*state.get("smoothed", []), manifest["id"]],
        forgotten_samples=forgotten_samples, smoothed_classes=smoothed_classes, **changes)

METHODS = {"forget_vector": run_forget_vector, "zero_shot": run_zero_shot}
