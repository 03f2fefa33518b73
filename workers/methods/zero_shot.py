"""Zero-shot Lipschitz smoothing (JiT; Foster et al., arXiv 2402.01401): new weights from the forget inputs only,
calibrated and guarded (`unlearning.guarded.guarded_zero_shot`)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from models_store import Store
from unlearnd.runtime import load_classifier
from unlearnd.settings import Settings
from unlearning.guard import GuardConfig
from unlearning.guarded import guarded_zero_shot
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
)
from workers.methods.forget_vector import class_vectors, sample_vector
from workers.publishing import Outcome


def run(store: Store, records: list[dict[str, Any]], settings: Settings, progress: Progress) -> Outcome:
    """JiT smoothing on the batch's forget inputs -> new weights, published only if they pass the utility guard;
    then every forget vector in force is recomputed (and guarded) for the new weights, and only then is the new
    state served. CandidateRejected when no attempt passes."""
    started = time.monotonic()
    state = store.read_state(records[0]["model"])
    request_ids = covered_request_ids(state, records)
    progress(0.0, "loading", force=True)
    loaded = load_under_edit(store, state, settings)
    progress(0.0, "calibrating", force=True)
    by_class = records[0]["classes"] is not None
    if by_class:
        classes, samples = sorted(set().union(*(r["classes"] for r in records))), []
        split = forget_split(loaded.train, state, classes=classes)
    else:
        classes, samples = None, sorted(set().union(*(r["samples"] for r in records)))
        split = forget_split(loaded.train, state, samples=samples)
    current = applied_delta(store, state.artifacts)
    gate_classes = None if state.gate_classes is None else list(state.gate_classes)
    before = measure(loaded, split, classes, current, gate_classes)

    has_vectors = bool(state.forgotten_classes or state.vector_samples)
    smoothing_end = 0.6 if has_vectors else 1.0  # of the optimising stage; recomputed vectors take the rest
    gone = sorted({*(classes or []), *state.classes_gone})
    # JiT itself uses no labels; the service uses the forget labels only to decide when to stop.
    guarded = guarded_zero_shot(loaded.model, split, loaded.test, classes=classes,
                                guard=GuardConfig(max_drop=settings.guard_max_drop), forgotten_classes=gone,
                                progress=progress_span(progress, 0.0, smoothing_end, "smoothing"))
    if not guarded.passed:
        raise rejected("the smoothed model", guarded)
    name = loaded.record["name"]
    new_sha = store.put_weights(name, guarded.state_dict)
    new = ModelUnderEdit(loaded.record, new_sha, load_classifier(store, loaded.record, new_sha, loaded.device),
                         loaded.train, loaded.test, loaded.device)

    forgotten_samples = sorted(set(state.forgotten_samples) | set(samples))
    smoothed_classes = sorted(set(state.smoothed_classes) | set(classes or []))
    after_state = replace(state, forgotten_samples=tuple(forgotten_samples), smoothed_classes=tuple(smoothed_classes))
    delta, applied, changes = None, [], {"bank": {}}
    if state.forgotten_classes:  # vectors are bound to weights: recompute them before serving
        delta, applied, bank, _ = class_vectors(store, new, after_state, {}, list(state.forgotten_classes),
                                                request_ids, progress, smoothing_end, 1.0, settings)
        changes["bank"] = bank
    elif state.vector_samples:
        delta, applied, _ = sample_vector(store, new, after_state, list(state.vector_samples), request_ids, progress,
                                          smoothing_end, 1.0, settings)
    progress(0.0, "verifying", force=True)
    after = measure(new, split, classes, delta, gate_classes if delta is not None else None)
    info = guarded.info
    manifest = store.put_artifact({}, {
        "kind": "zero_shot", "model": name, "weights_sha256": new_sha, "parent_weights_sha256": state.weights_sha256,
        "classes": classes, "samples": len(samples) if samples else None, "request_ids": request_ids,
        "hyperparameters": info["config"], "steps": info["steps"], "stop_reason": info["stop_reason"],
        "target_forget_accuracy": info["target_forget_accuracy"], "metrics": {"before": before, "after": after},
        "guard": guarded.guard_record()})
    progress(0.0, "publishing", force=True)
    result = {"artifact_id": manifest["id"], "metrics": {"before": before, "after": after},
              "duration_s": round(time.monotonic() - started, 2), "method": "zero_shot",
              "weights_sha256": new_sha, "parent_weights_sha256": state.weights_sha256,
              "steps": info["steps"], "stop_reason": info["stop_reason"], "guard": guarded.guard_record(),
              "recomputed_vectors": [m["id"] for m in applied]}
    return publish_outcome(
        store, state, result, [manifest, *applied], weights_sha256=new_sha, artifacts=[m["id"] for m in applied],
        requests=request_ids, smoothed=[*state.smoothed, manifest["id"]],
        forgotten_samples=forgotten_samples, smoothed_classes=smoothed_classes, **changes)
