"""The API's inference runtime: each model's served state (weights + forget vectors), loaded lazily.

A served state is loaded once, verified (weights and artifact hashes, artifacts bound to these weights)
and kept as one immutable snapshot; a prediction uses a single snapshot from start to end, so it never
sees a mix of two states. A newer state on disk replaces the snapshot on the next request, no restart.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from models_store import IntegrityError, Store
from service.errors import Problem


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


class InferenceRuntime:
    def __init__(self, store: Store, device: str = "auto"):
        self.store, self.device_preference = store, device
        self._served: dict[str, ServedState] = {}
        self._lock = threading.Lock()

    def served(self, name: str) -> ServedState:
        """The current snapshot of `name`, reloading it if the state on disk moved on."""
        state = self.store.read_state(name)
        current = self._served.get(name)
        if current is not None and current.state_version == state["state_version"]:
            return current
        with self._lock:
            current = self._served.get(name)
            if current is None or current.state_version != state["state_version"]:
                current = self._load(name, state)
                self._served[name] = current
            return current

    def _load(self, name: str, state: dict) -> ServedState:
        import torch

        from unlearnd.runtime import load_classifier, pick_device

        device = pick_device(self.device_preference)
        version = state.get("model_version", self.store.get_model(name)["version"])
        record = self.store.get_model_version(name, version)
        model = load_classifier(self.store, record, state["weights_sha256"], device)
        delta = None
        for artifact_id in state["artifacts"]:
            tensors, manifest = self.store.load_artifact(artifact_id)
            if manifest["weights_sha256"] != state["weights_sha256"]:
                raise IntegrityError(f"artifact {artifact_id} was computed for other weights")
            if manifest["kind"] in ("forget_vector", "class_vector"):
                d = tensors["delta"].to(device)
                delta = d if delta is None else delta + d
        if delta is not None and list(delta.shape) != list(record["input_shape"]):
            raise IntegrityError(
                f"forget vector shape {list(delta.shape)} != input shape {record['input_shape']}")
        torch.set_grad_enabled(False)
        return ServedState(name, record["version"], state["state_version"], state["weights_sha256"],
                           tuple(state["artifacts"]), model, delta, device, list(record["input_shape"]),
                           state.get("gate_classes"))

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
