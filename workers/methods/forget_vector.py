"""Forget vectors (Sun et al., arXiv 2412.16780): one δ for everything forgotten on the model; weights unchanged.

Classes: a class vector per class, kept in the state's bank for the current weights, combined by vector arithmetic
for several classes. Samples: one sample-wise vector aimed at a retrained model's forget accuracy.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from models_store import Store
from unlearnd.settings import Settings
from unlearning import InvalidForgetSetError, accuracy, learn_forget_vector
from unlearning.forget_vector import CLASS_WISE
from workers.methods.common import (
    ModelUnderEdit,
    Progress,
    applied_delta,
    covered_request_ids,
    forget_split,
    load_under_edit,
    measure,
    progress_span,
    publish_outcome,
)
from workers.publishing import Outcome

ARITHMETIC_MAX_FORGET_ACCURACY = 0.02
"""Coefficients over bank vectors are kept when forget accuracy falls to this; otherwise a joint vector is learned."""


def class_vectors(
    store: Store, loaded: ModelUnderEdit, state: dict[str, Any], bank: dict[int, str], classes: list[int],
    request_ids: list[str], progress: Progress, low: float, high: float,
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
        split = forget_split(loaded.train, {**state, "forgotten_classes": classes}, classes=[cls])
        vector = learn_forget_vector(loaded.model, split, CLASS_WISE,
                                     progress=progress_span(progress, low + i * step, low + (i + 1) * step,
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

    split = forget_split(loaded.train, state, classes=classes)
    basis = {c: store.load_artifact(bank[c])[0]["delta"] for c in classes}
    combined = learn_coefficients(loaded.model, split, basis, CoefficientConfig(),
                                  progress=progress_span(progress, high - step, high, "vector arithmetic"))
    delta, strategy = combined.delta, "arithmetic"
    extra: dict[str, Any] = {"coefficients": {str(c): w for c, w in combined.weights.items()}}
    if accuracy(loaded.model, split.forget.x, split.forget.y, delta.to(loaded.device)) > ARITHMETIC_MAX_FORGET_ACCURACY:
        joint = learn_forget_vector(loaded.model, split, CLASS_WISE,
                                    progress=progress_span(progress, high - step / 2, high, "joint vector"))
        delta, strategy = joint.delta, "joint"
        extra = {**extra, "joint_epochs": joint.epochs, "joint_stop_reason": joint.stop_reason}
    manifest = store.put_artifact({"delta": delta}, {
        "kind": "forget_vector", "model": loaded.record["name"], "weights_sha256": loaded.weights_sha256,
        "classes": classes, "request_ids": request_ids, "basis": {str(c): bank[c] for c in classes},
        "strategy": strategy, **extra})
    return delta, [manifest], bank, {**info, "strategy": strategy}


def sample_vector(
    store: Store, loaded: ModelUnderEdit, state: dict[str, Any], samples: list[str], request_ids: list[str],
    progress: Progress, low: float, high: float,
) -> tuple[torch.Tensor, list[dict[str, Any]], dict[str, Any]]:
    """A sample-wise forget vector aimed at what a retrained model does: forget-set accuracy ≈ held-out accuracy."""
    from unlearning.forget_vector import sample_wise_config

    split = forget_split(loaded.train, state, samples=samples)
    config = sample_wise_config(loaded.model, split, loaded.test)
    target = config.target_forget_accuracy
    vector = learn_forget_vector(loaded.model, split, config, progress=progress_span(progress, low, high, "optimising"))
    manifest = store.put_artifact({"delta": vector.delta}, {
        "kind": "forget_vector", "model": loaded.record["name"], "weights_sha256": loaded.weights_sha256,
        "samples": len(samples), "request_ids": request_ids, "target_forget_accuracy": target,
        "hyperparameters": vector.config, "epochs": vector.epochs, "stop_reason": vector.stop_reason})
    return vector.delta, [manifest], {"strategy": "sample_vector", "target_forget_accuracy": target,
                                      "stop_reason": vector.stop_reason, "epochs": vector.epochs}


def run(store: Store, records: list[dict[str, Any]], settings: Settings, progress: Progress) -> Outcome:
    """One forget vector for everything in force plus the batch; the weights do not change."""
    started = time.monotonic()
    state = store.read_state(records[0]["model"])
    request_ids = covered_request_ids(state, records)
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
            return already_covered(store, state, settings, classes, request_ids, started)
    progress(0.02, "loading", force=True)
    loaded = load_under_edit(store, state, settings)
    current = applied_delta(store, state["artifacts"])
    if by_class:
        split = forget_split(loaded.train, state, classes=classes)
        before = measure(loaded, split, classes, current)
        bank = {int(k): v for k, v in state.get("bank", {}).items()}
        delta, applied, bank, info = class_vectors(store, loaded, state, bank, classes, request_ids, progress,
                                                    0.05, 0.9)
        progress(0.92, "evaluating", force=True)
        after = measure(loaded, split, classes, delta)
        changes = {"forgotten_classes": classes, "bank": {str(c): a for c, a in bank.items()}}
    else:
        samples = sorted(set(state.get("vector_samples", [])).union(*(r["samples"] for r in records)))
        split = forget_split(loaded.train, state, samples=samples)
        before = measure(loaded, split, None, current)
        delta, applied, info = sample_vector(store, loaded, state, samples, request_ids, progress, 0.05, 0.9)
        progress(0.92, "evaluating", force=True)
        after = measure(loaded, split, None, delta)
        changes = {"vector_samples": samples,
                   "forgotten_samples": sorted(set(state.get("forgotten_samples", [])) | set(samples))}
    progress(0.97, "publishing", force=True)
    result = {"artifact_id": applied[0]["id"], "metrics": {"before": before, "after": after},
              "duration_s": round(time.monotonic() - started, 2), "method": "forget_vector", **info}
    return publish_outcome(store, state, result, applied, artifacts=[m["id"] for m in applied], requests=request_ids,
                      **changes)


def already_covered(store: Store, state: dict[str, Any], settings: Settings, classes: list[int],
                     request_ids: list[str], started: float) -> Outcome:
    """Every requested class is already forgotten by the vector in force: record the requests and measure the
    served state (before = after: nothing is recomputed)."""
    manifests = [store.get_artifact_manifest(a) for a in state["artifacts"]]
    loaded = load_under_edit(store, state, settings)
    served = measure(loaded, forget_split(loaded.train, state, classes=classes), classes,
                     applied_delta(store, state["artifacts"]))
    result = {"artifact_id": state["artifacts"][0], "metrics": {"before": served, "after": served},
              "duration_s": round(time.monotonic() - started, 2), "method": "forget_vector",
              "strategy": "already_in_force"}
    return publish_outcome(store, state, result, manifests, requests=request_ids)
