"""The API's inference runtime: each model's served state (weights + forget vectors), loaded lazily.

A served state is loaded once, verified (the state's signature, weights and artifact hashes, signed artifact
manifests, artifacts bound to these weights) and kept as one immutable snapshot; a prediction uses a single
snapshot from start to end, so it never sees a mix of two states. A newer state on disk replaces the snapshot
on the next request, no restart. Every prediction checks the signature of state.json; at most
UNLEARND_VERIFY_INTERVAL_S after the last check, the files the snapshot was loaded from are verified again.
Any mismatch drops the snapshot and answers 503 with the reason, counted and audited (`IntegrityRefusals`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from models_store import IntegrityError, Ledger, NotFoundError, Store
from service.errors import Problem
from service.metrics import INTEGRITY_REFUSALS, PREDICT_BATCH, PREDICTIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedState:
    name: str
    model_version: int
    state_version: int
    weights_sha256: str
    artifacts: tuple[str, ...]
    model: Any  # torch.nn.Module, frozen, eval mode
    delta: Any  # torch.Tensor (C, H, W) or None
    device: Any
    input_shape: list[int]
    gate_classes: list[int] | None = None
    """Gated forget vector: δ applies only to inputs the model assigns to these classes (None: to every input)."""
    signature: Any = None
    """The state's signature: a state re-signed under the same version is loaded again."""


class IntegrityRefusals:
    """Predictions refused because what would be served does not verify: a counter per model (in every 503 body,
    in the audit entries and as `unlearnd_integrity_refusals_total`) and one audit entry
    (`model.integrity_failure`) each time a model's reason changes, so a flood of refused requests does not
    flood the audit log."""

    def __init__(self, ledger: Ledger | None):
        self.ledger = ledger
        self.counts: dict[str, int] = {}
        self._last_reason: dict[str, str] = {}
        self._lock = threading.Lock()

    def refuse(self, name: str, reason: str) -> Problem:
        with self._lock:
            count = self.counts[name] = self.counts.get(name, 0) + 1
            INTEGRITY_REFUSALS.labels(name).inc()
            first = self._last_reason.get(name) != reason
            self._last_reason[name] = reason
        log.error("refusing to serve %s: %s (refusal %d)", name, reason, count)
        if first and self.ledger is not None:
            try:
                self.ledger.audit("model.integrity_failure", "system", model=name,
                                  detail={"reason": reason, "refusals": count})
            except Exception:  # the 503 stands even when the audit cannot be written
                log.exception("could not audit the integrity failure of %s", name)
        return Problem(503, "Integrity check failed", f"model {name!r} is not served: {reason}",
                       model=name, reason=reason, integrity_refusals=count)

    def cleared(self, name: str) -> None:
        self._last_reason.pop(name, None)


class InferenceRuntime:
    def __init__(self, store: Store, device: str = "auto", *, ledger: Ledger | None = None,
                 verify_interval_s: float = 60.0):
        self.store, self.device_preference = store, device
        self.verify_interval_s = verify_interval_s
        self.refusals = IntegrityRefusals(ledger)
        self._served: dict[str, ServedState] = {}
        self._verified_at: dict[str, float] = {}
        self._highest: dict[str, int] = {}
        self._lock = threading.Lock()

    def served(self, name: str) -> ServedState:
        """The current snapshot of `name`, reloading it if the state on disk moved on; a 503 problem (counted
        and audited) when the state, its weights or its artifacts do not verify."""
        try:
            return self._served_verified(name)
        except IntegrityError as exc:
            with self._lock:
                self._served.pop(name, None)
            raise self.refusals.refuse(name, str(exc)) from None

    def _served_verified(self, name: str) -> ServedState:
        state = self.store.read_state(name)  # verifies its signature
        version = state["state_version"]
        if version < self._highest.get(name, 0):  # an older signed state put back in place
            raise IntegrityError(f"served state went back from version {self._highest[name]} to {version}")
        current = self._served.get(name)
        if current is None or current.state_version != version or current.signature != state.get("signature"):
            with self._lock:
                current = self._served.get(name)
                if (current is None or current.state_version != version
                        or current.signature != state.get("signature")):
                    try:
                        current = self._load(name, state)
                    except NotFoundError as exc:  # the state names weights, a record or an artifact not there
                        raise IntegrityError(f"what the served state names is missing: {exc}") from None
                    self._served[name] = current
                    self._verified_at[name] = time.monotonic()
                    self._highest[name] = max(version, self._highest.get(name, 0))
        elif time.monotonic() - self._verified_at.get(name, 0.0) >= self.verify_interval_s:
            self._reverify(name, state)
        self.refusals.cleared(name)
        return current

    def _reverify(self, name: str, state: dict) -> None:
        """Hash the served weights and artifacts again and check their signatures (no tensors loaded)."""
        try:
            self.store.verify_state_files(name, state)
        except NotFoundError as exc:
            raise IntegrityError(str(exc)) from None
        self._verified_at[name] = time.monotonic()

    def _load(self, name: str, state: dict) -> ServedState:
        import torch

        from unlearnd.runtime import load_classifier, pick_device

        device = pick_device(self.device_preference)
        version = state.get("model_version", self.store.get_model(name)["version"])
        record = self.store.get_model_version(name, version)
        model = load_classifier(self.store, record, state["weights_sha256"], device)
        delta = None
        for artifact_id in state["artifacts"]:
            tensors, manifest = self.store.load_artifact(artifact_id)  # signed manifest, file sha256
            if manifest["weights_sha256"] != state["weights_sha256"] or manifest.get("model", name) != name:
                raise IntegrityError(f"artifact {artifact_id} was computed for another model or other weights")
            if manifest["kind"] in ("forget_vector", "class_vector"):
                d = tensors["delta"].to(device)
                delta = d if delta is None else delta + d
        if delta is not None and list(delta.shape) != list(record["input_shape"]):
            raise IntegrityError(
                f"forget vector shape {list(delta.shape)} != input shape {record['input_shape']}")
        torch.set_grad_enabled(False)
        return ServedState(name, record["version"], state["state_version"], state["weights_sha256"],
                           tuple(state["artifacts"]), model, delta, device, list(record["input_shape"]),
                           state.get("gate_classes"), state.get("signature"))

    def predict(self, name: str, inputs: list[Any], max_batch: int) -> tuple[ServedState, np.ndarray]:
        """Class probabilities (N, K) for images in [0, 1], with every forget vector in force applied (gated when the
        state names `gate_classes`)."""
        import torch

        from unlearning.evaluation import perturbed_logits

        served = self.served(name)
        x = validate_images(inputs, served.input_shape, max_batch)
        with torch.no_grad():
            logits = perturbed_logits(served.model, torch.from_numpy(x).to(served.device), served.delta,
                                      served.gate_classes)
            probabilities = torch.softmax(logits, dim=1).cpu().numpy()
        PREDICTIONS.labels(name).inc(len(x))
        PREDICT_BATCH.labels(name).observe(len(x))
        return served, probabilities


def validate_images(inputs: list[Any], input_shape: list[int], max_batch: int) -> np.ndarray:
    """(N, C, H, W) float32 array, or a 422/413 problem saying what is wrong with the inputs."""
    if len(inputs) > max_batch:
        raise Problem(413, "Too many inputs", f"{len(inputs)} images; at most {max_batch} per call "
                      "(UNLEARND_MAX_PREDICT_BATCH)")
    try:
        x = np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError):
        raise Problem(
            422, "Invalid inputs", "inputs must be equally shaped nested lists of numbers") from None
    expected = (len(inputs), *input_shape)
    if x.shape != expected:
        raise Problem(422, "Invalid inputs", f"inputs have shape {list(x.shape)}; expected "
                      f"[N, {', '.join(map(str, input_shape))}]")
    if not np.isfinite(x).all():
        raise Problem(422, "Invalid inputs", "inputs contain NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0 or math.isnan(low):
        raise Problem(422, "Invalid inputs", f"pixel values must lie in [0, 1]; got [{low:g}, {high:g}]")
    return x
