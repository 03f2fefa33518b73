"""What every method of a forget job shares: loading the served model, the forget/retain split that excludes
everything already forgotten, measuring, progress spans and publishing the next served state.

The served-state fields the methods maintain are declared in `models_store.state.ServedState`.
Whatever is forgotten never counts as retain data again: a vector's retain term would teach it back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from models_store import Store
from models_store.state import ServedState
from unlearnd.runtime import load_classifier, load_model_data, pick_device
from unlearnd.settings import Settings
from unlearning import ForgetSplit, ImageSet, split_by_classes, split_by_ids
from unlearning.errors import CandidateRejected
from unlearning.guard import Candidate
from unlearning.guarded import Guarded
from unlearning.metrics import unlearning_report
from workers.publishing import Outcome, publish

Progress = Callable[..., None]
"""progress(stage_fraction, stage, force=False, **extra): see `workers.progress.ProgressReporter`."""
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


def load_under_edit(store: Store, state: ServedState, settings: Settings) -> ModelUnderEdit:
    """The weights of `state` and the train/test data of the model version it belongs to."""
    record = store.get_model_version(state.model, state.model_version)
    device = pick_device(settings.device)
    sha = state.weights_sha256
    train, test = load_model_data(store, record)
    return ModelUnderEdit(record, sha, load_classifier(store, record, sha, device), train, test, device)


def applied_delta(store: Store, artifact_ids: tuple[str, ...]) -> torch.Tensor | None:
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


def served_candidate(loaded: ModelUnderEdit, state: ServedState, delta: torch.Tensor | None) -> Candidate:
    """What `state` serves on the loaded weights: the guard's baseline."""
    gate = None if state.gate_classes is None else list(state.gate_classes)
    return Candidate(loaded.model, None if delta is None else delta.to(loaded.device), gate)


def rejected(what: str, guarded: Guarded) -> CandidateRejected:
    """The error that ends a batch whose candidates all failed the guard, saying what was measured."""
    reason = guarded.verdict.reason if guarded.verdict is not None else "no candidate"
    return CandidateRejected(f"{what} was not published: the utility guard refused all {len(guarded.attempts)} "
                             f"attempts; last: {reason}", guarded.guard_record())


def progress_span(progress: Progress, low: float, high: float, detail: str) -> Callable[[float, dict], None]:
    """A core progress callback mapped onto [low, high] of the `optimising` stage; `detail` says what is computed
    (e.g. "class vector 3")."""

    def on_epoch(fraction: float, record: dict) -> None:
        extra = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()
                 if k in ("attempt", "epoch", "step", "forget_acc", "retain_acc", "loss")}
        progress(low + (high - low) * fraction, "optimising", detail=detail, **extra)

    return on_epoch


def forget_split(train: ImageSet, state: ServedState, classes: list[int] | None = None,
                 samples: list[str] | None = None) -> ForgetSplit:
    """D_f for these classes or samples; D_r = the rest minus everything already forgotten in `state`."""
    split = split_by_classes(train, classes) if classes is not None else split_by_ids(train, samples or [])
    gone_classes = sorted(state.classes_gone)
    gone_ids = set(state.forgotten_samples)
    retain = split.retain
    keep = ~torch.isin(retain.y, torch.tensor(gone_classes, dtype=retain.y.dtype))
    if gone_ids:
        keep &= torch.tensor([i not in gone_ids for i in retain.ids])
    return ForgetSplit(split.forget, retain.subset(keep))


def covered_request_ids(state: ServedState, records: list[dict[str, Any]]) -> list[str]:
    """The requests the next state covers: those of `state`, then the batch's new ones."""
    return [*state.requests, *(r["id"] for r in records if not state.covers(r["id"]))]


def publish_outcome(store: Store, state: ServedState, result: dict[str, Any], manifests: list[dict[str, Any]],
                    **changes: Any) -> Outcome:
    """Publish the next served state with the result recorded in it; the Outcome of the batch."""
    new_state = publish(store, state, outcome={**result, "artifact_ids": [m["id"] for m in manifests]}, **changes)
    return Outcome({**result, "state_version": new_state.state_version}, state, new_state, manifests)
