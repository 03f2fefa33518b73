"""What every method of a forget job shares: loading the served model, the forget/retain split that excludes
everything already forgotten, measuring, progress spans and publishing the next served state.

Served-state fields the methods maintain (besides weights_sha256, artifacts, requests):
  forgotten_classes  classes suppressed by the forget vector in force
  vector_samples     sample ids suppressed by a sample-wise forget vector in force
  bank               {class: class_vector artifact id} valid for the current weights (vector arithmetic)
  smoothed           zero-shot artifacts that produced the current weights, oldest first
  smoothed_classes   classes forgotten by zero-shot smoothing
  forgotten_samples  every sample id forgotten by either method

Whatever is forgotten never counts as retain data again: a vector's retain term would teach it back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from models_store import Store
from unlearnd.runtime import load_classifier, load_model_data, pick_device
from unlearnd.settings import Settings
from unlearning import ForgetSplit, ImageSet, split_by_classes, split_by_ids
from unlearning.errors import CandidateRejected
from unlearning.guard import Candidate
from unlearning.guarded import Guarded
from unlearning.metrics import unlearning_report
from workers.publishing import Outcome, publish

Progress = Callable[..., None]
"""progress(fraction, stage, force=False, **extra): see `workers.progress.ProgressReporter`."""
VECTOR_KINDS = ("forget_vector", "class_vector")


@dataclass(frozen=True)
class ModelUnderEdit:
    """The served weights of a model, loaded for a job, with the data its record names."""

    record: dict[str, Any]
    weights_sha256: str
    model: torch.nn.Module
    train: ImageSet
    test: ImageSet | None
    device: torch.device


def load_under_edit(store: Store, state: dict[str, Any], settings: Settings) -> ModelUnderEdit:
    """The weights of `state` and the train/test data of the model version it belongs to."""
    name = state["model"]
    record = store.get_model_version(name, state.get("model_version", store.get_model(name)["version"]))
    device = pick_device(settings.device)
    sha = state["weights_sha256"]
    train, test = load_model_data(store, record)
    return ModelUnderEdit(record, sha, load_classifier(store, record, sha, device), train, test, device)


def applied_delta(store: Store, artifact_ids: list[str]) -> torch.Tensor | None:
    """Sum of the δ of the vector artifacts in force (what inference applies)."""
    delta = None
    for artifact_id in artifact_ids:
        tensors, manifest = store.load_artifact(artifact_id)
        if manifest["kind"] in VECTOR_KINDS:
            delta = tensors["delta"] if delta is None else delta + tensors["delta"]
    return delta


def measure(loaded: ModelUnderEdit, split: ForgetSplit, classes: list[int] | None, delta: torch.Tensor | None,
            gate_classes: list[int] | None = None) -> dict:
    """UA, RA, TA and MIA of the loaded model with δ applied as served (`unlearning.metrics.unlearning_report`)."""
    return unlearning_report(loaded.model, split, loaded.test, classes,
                             delta=None if delta is None else delta.to(loaded.device), gate_classes=gate_classes)


def served_candidate(loaded: ModelUnderEdit, state: dict[str, Any], delta: torch.Tensor | None) -> Candidate:
    """What `state` serves on the loaded weights: the guard's baseline."""
    return Candidate(loaded.model, None if delta is None else delta.to(loaded.device), state.get("gate_classes"))


def rejected(what: str, guarded: Guarded) -> CandidateRejected:
    """The error that ends a batch whose candidates all failed the guard, saying what was measured."""
    reason = guarded.verdict.reason if guarded.verdict is not None else "no candidate"
    return CandidateRejected(f"{what} was not published: the utility guard refused all {len(guarded.attempts)} "
                             f"attempts; last: {reason}", guarded.guard_record())


def progress_span(progress: Progress, low: float, high: float, stage: str) -> Callable[[float, dict], None]:
    """A core progress callback mapped onto [low, high] of the job's progress."""

    def on_epoch(fraction: float, record: dict) -> None:
        extra = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()
                 if k in ("epoch", "step", "forget_acc", "retain_acc", "loss")}
        progress(low + (high - low) * fraction, stage, **extra)

    return on_epoch


def forget_split(train: ImageSet, state: dict[str, Any], classes: list[int] | None = None,
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


def covered_request_ids(state: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """The requests the next state covers: those of `state`, then the batch's new ones."""
    return [*state["requests"], *(r["id"] for r in records if r["id"] not in state["requests"])]


def publish_outcome(store: Store, state: dict[str, Any], result: dict[str, Any], manifests: list[dict[str, Any]],
               **changes: Any) -> Outcome:
    """Publish the next served state with the result recorded in it; the Outcome of the batch."""
    new_state = publish(store, state["model"], state,
                        outcome={**result, "artifact_ids": [m["id"] for m in manifests]}, **changes)
    return Outcome({**result, "state_version": new_state["state_version"]}, state, new_state, manifests)
