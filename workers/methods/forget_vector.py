"""Forget vectors (Sun et al., arXiv 2412.16780): one δ for everything forgotten on the model; weights unchanged.

Classes: a class vector per class, kept in the state's bank for the current weights, combined by vector arithmetic
for several classes; served gated (δ only on inputs the model assigns to a forgotten class) unless
`UNLEARND_GATED_VECTORS=false`. Samples: one sample-wise vector aimed at a retrained model's forget accuracy.
Every candidate passes the utility guard (`unlearning.guarded`) before it is stored and published.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from models_store import Store
from models_store.state import ServedState
from unlearnd.settings import Settings
from unlearning import InvalidForgetSetError
from unlearning.guard import Candidate, GuardConfig, hold_out_retain, judge, retained_test
from unlearning.guarded import Guarded, guarded_forget_vector, guarded_vector_arithmetic
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
    rejected,
    served_candidate,
)
from workers.publishing import Outcome


def class_vectors(
    store: Store, loaded: ModelUnderEdit, state: ServedState, bank: dict[int, str], classes: list[int],
    request_ids: list[str], progress: Progress, low: float, high: float, settings: Settings,
    before: Candidate | None = None,
) -> tuple[torch.Tensor, list[dict[str, Any]], dict[int, str], dict[str, Any]]:
    """δ that forgets `classes` on the loaded weights, reusing and extending the bank of class vectors.

    One class: its bank vector. Several: the coefficients w of δ = Σ w_k δ_k over their bank vectors
    (Sun et al. 2024, compositional unlearning); if that misses the forget target, a joint vector. Each new vector
    and the final δ pass the guard against `before` (default: the weights without δ), else CandidateRejected.
    Returns (δ, manifests of the artifacts to apply, the bank, what was done, with the guard's figures).
    """
    guard, gate = GuardConfig(max_drop=settings.guard_max_drop), settings.gated_vectors
    before = before or Candidate(loaded.model)
    bank = dict(bank)
    missing = [c for c in classes if c not in bank]
    steps = len(missing) + (1 if len(classes) > 1 else 0)
    step = (high - low) / max(steps, 1)
    checks: dict[str, Any] = {}
    computed: dict[int, Guarded] = {}
    for i, cls in enumerate(missing):
        split = forget_split(loaded.train, replace(state, forgotten_classes=tuple(classes)), classes=[cls])
        guarded = guarded_forget_vector(
            loaded.model, split, loaded.test, classes=[cls], guard=guard, gate=gate,
            progress=progress_span(progress, low + i * step, low + (i + 1) * step, f"class vector {cls}"))
        if not guarded.passed:
            raise rejected(f"the class vector for class {cls}", guarded)
        checks[f"class_vector {cls}"] = guarded.guard_record()
        computed[cls] = guarded
        manifest = store.put_artifact({"delta": guarded.delta}, {
            "kind": "class_vector", "model": loaded.record["name"], "weights_sha256": loaded.weights_sha256,
            "classes": [cls], "request_ids": request_ids, "hyperparameters": guarded.info["config"],
            "epochs": guarded.info["epochs"], "stop_reason": guarded.info["stop_reason"],
            "guard": guarded.guard_record()})
        bank[cls] = manifest["id"]
    info: dict[str, Any] = {"bank_reused": [c for c in classes if c not in missing], "bank_computed": missing,
                            "gated": gate}
    split = forget_split(loaded.train, state, classes=classes)
    if len(classes) == 1:
        tensors, manifest = store.load_artifact(bank[classes[0]])
        delta = tensors["delta"]
        final = computed.get(classes[0]) or _judge_reused(loaded, split, classes, delta, guard, gate, before)
        if not final.passed:
            raise rejected(f"the class vector for class {classes[0]}", final)
        return delta, [manifest], bank, {**info, "strategy": "class_vector", "guard": final.guard_record(),
                                         "guard_checks": checks}

    basis = {c: store.load_artifact(bank[c])[0]["delta"] for c in classes}
    combined = guarded_vector_arithmetic(
        loaded.model, split, loaded.test, basis=basis, classes=classes, guard=guard, gate=gate, before=before,
        progress=progress_span(progress, high - step, high, "vector arithmetic"))
    if not combined.passed:
        raise rejected(f"the forget vector for classes {classes}", combined)
    manifest = store.put_artifact({"delta": combined.delta}, {
        "kind": "forget_vector", "model": loaded.record["name"], "weights_sha256": loaded.weights_sha256,
        "classes": classes, "request_ids": request_ids, "basis": {str(c): bank[c] for c in classes},
        "strategy": combined.info["strategy"], "coefficients": combined.info.get("coefficients"),
        "guard": combined.guard_record()})
    return combined.delta, [manifest], bank, {**info, "strategy": combined.info["strategy"],
                                               "guard": combined.guard_record(), "guard_checks": checks}


def _judge_reused(loaded: ModelUnderEdit, split: Any, classes: list[int], delta: torch.Tensor, guard: GuardConfig,
                  gate: bool, before: Candidate) -> Guarded:
    """The guard's verdict on a bank vector for this request's split (the same held-out samples as when it was
    computed, when the retain set has not changed since)."""
    split, held = hold_out_retain(split, guard)
    candidate = Candidate(loaded.model, delta.to(loaded.device), list(classes) if gate else None)
    verdict = judge(before, candidate, held.guard, retained_test(loaded.test, classes), split.forget, 0.0, guard)
    attempt = {"setting": {"strategy": "bank vector"}, "guard": verdict.as_dict()}
    return Guarded(verdict.passed, delta, None, verdict, [attempt])


def sample_vector(
    store: Store, loaded: ModelUnderEdit, state: ServedState, samples: list[str], request_ids: list[str],
    progress: Progress, low: float, high: float, settings: Settings, before: Candidate | None = None,
) -> tuple[torch.Tensor, list[dict[str, Any]], dict[str, Any]]:
    """A sample-wise forget vector aimed at what a retrained model does: forget-set accuracy ≈ held-out accuracy;
    CandidateRejected when no attempt passes the guard."""
    split = forget_split(loaded.train, state, samples=samples)
    guarded = guarded_forget_vector(loaded.model, split, loaded.test, classes=None,
                                    guard=GuardConfig(max_drop=settings.guard_max_drop), before=before,
                                    progress=progress_span(progress, low, high, "sample vector"))
    if not guarded.passed:
        raise rejected("the sample-wise forget vector", guarded)
    target = guarded.info["target_forget_accuracy"]
    manifest = store.put_artifact({"delta": guarded.delta}, {
        "kind": "forget_vector", "model": loaded.record["name"], "weights_sha256": loaded.weights_sha256,
        "samples": len(samples), "request_ids": request_ids, "target_forget_accuracy": target,
        "hyperparameters": guarded.info["config"], "epochs": guarded.info["epochs"],
        "stop_reason": guarded.info["stop_reason"], "guard": guarded.guard_record()})
    return guarded.delta, [manifest], {"strategy": "sample_vector", "target_forget_accuracy": target,
                                       "stop_reason": guarded.info["stop_reason"], "epochs": guarded.info["epochs"],
                                       "guard": guarded.guard_record()}


def run(store: Store, records: list[dict[str, Any]], settings: Settings, progress: Progress) -> Outcome:
    """One forget vector for everything in force plus the batch; the weights do not change."""
    started = time.monotonic()
    state = store.read_state(records[0]["model"])
    request_ids = covered_request_ids(state, records)
    by_class = records[0]["classes"] is not None
    if by_class and state.vector_samples:
        raise InvalidForgetSetError("a sample-wise forget vector is in force on this model; forget these "
                                    "classes with method zero_shot instead")
    if not by_class and state.forgotten_classes:
        raise InvalidForgetSetError("a class forget vector is in force on this model; forget these samples "
                                    "with method zero_shot (or auto) instead")
    if by_class:
        classes = sorted(set(state.forgotten_classes).union(*(r["classes"] for r in records)))
        if classes == sorted(state.forgotten_classes) and state.artifacts:
            return already_covered(store, state, settings, classes, request_ids, started)
    progress(0.0, "loading", force=True)
    loaded = load_under_edit(store, state, settings)
    progress(0.0, "calibrating", force=True)
    current = applied_delta(store, state.artifacts)
    served = served_candidate(loaded, state, current)
    if by_class:
        split = forget_split(loaded.train, state, classes=classes)
        before = measure(loaded, split, classes, current, _listed(state.gate_classes))
        bank = dict(state.bank)
        delta, applied, bank, info = class_vectors(store, loaded, state, bank, classes, request_ids, progress,
                                                   0.0, 1.0, settings, before=served)
        gate_classes = classes if settings.gated_vectors else None
        progress(0.0, "verifying", force=True)
        after = measure(loaded, split, classes, delta, gate_classes)
        changes = {"forgotten_classes": classes, "bank": bank, "gate_classes": gate_classes}
    else:
        samples = sorted(set(state.vector_samples).union(*(r["samples"] for r in records)))
        split = forget_split(loaded.train, state, samples=samples)
        before = measure(loaded, split, None, current)
        delta, applied, info = sample_vector(store, loaded, state, samples, request_ids, progress, 0.0, 1.0,
                                             settings, before=served)
        progress(0.0, "verifying", force=True)
        after = measure(loaded, split, None, delta)
        changes = {"vector_samples": samples, "gate_classes": None,
                   "forgotten_samples": sorted(set(state.forgotten_samples) | set(samples))}
    progress(0.0, "publishing", force=True)
    result = {"artifact_id": applied[0]["id"], "metrics": {"before": before, "after": after},
              "duration_s": round(time.monotonic() - started, 2), "method": "forget_vector", **info}
    return publish_outcome(store, state, result, applied, artifacts=[m["id"] for m in applied],
                           requests=request_ids, **changes)


def _listed(classes: tuple[int, ...] | None) -> list[int] | None:
    return None if classes is None else list(classes)


def already_covered(store: Store, state: ServedState, settings: Settings, classes: list[int],
                     request_ids: list[str], started: float) -> Outcome:
    """Every requested class is already forgotten by the vector in force: record the requests and measure the
    served state (before = after: nothing is recomputed)."""
    manifests = [store.get_artifact_manifest(a) for a in state.artifacts]
    loaded = load_under_edit(store, state, settings)
    served = measure(loaded, forget_split(loaded.train, state, classes=classes), classes,
                     applied_delta(store, state.artifacts), _listed(state.gate_classes))
    result = {"artifact_id": state.artifacts[0], "metrics": {"before": served, "after": served},
              "duration_s": round(time.monotonic() - started, 2), "method": "forget_vector",
              "strategy": "already_in_force"}
    return publish_outcome(store, state, result, manifests, requests=request_ids)
