"""The API's inference runtime: each model's served state (weights + forget vectors), loaded lazily, and the
dynamic batching of predictions onto one inference thread (`service.batching`).

A served state is loaded once, verified (the state's signature, weights and artifact hashes, signed artifact
manifests, artifacts bound to these weights) and kept as one immutable snapshot; one batch of predictions uses a
single snapshot from start to end, so no prediction sees a mix of two states. For each batch the runtime reads the
model's state version counter in Redis (`unlearnd.state_versions`; sent when the batch starts, answered after its
forward pass on the last snapshot, which runs again when the state changed); it reads and checks the state itself
(its signature) only when the counter moved, when UNLEARND_VERIFY_INTERVAL_S has passed since the files were last
verified (then it also hashes them again), or on every batch while Redis does not answer or the model has no
counter yet. A newer state replaces the snapshot, no restart. Any mismatch drops the snapshot and answers 503
with the reason, counted and audited (`IntegrityRefusals`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from redis import Redis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from models_store import IntegrityError, Ledger, NotFoundError, Store
from models_store.state import ServedState
from service.batching import Batcher
from service.errors import Problem
from service.metrics import FORWARD_BATCH, INTEGRITY_REFUSALS, PREDICT_BATCH, PREDICTIONS
from unlearnd.settings import Settings
from unlearnd.state_versions import StateVersions

log = logging.getLogger(__name__)

VERSIONS_RETRY_S = 5.0
"""After Redis failed to answer, the state is read for every batch for this long before Redis is asked again."""


def auto_inference_threads(api_workers: int) -> int:
    """Torch threads of each API process's inference thread when UNLEARND_INFERENCE_THREADS is 0: its share of the
    CPUs this process may use (at least one). On two idle cores, two threads served ResNet-18 1.3 to 2 times faster
    than one (bench-serve); on cores that other work keeps busy, a displaced thread stalls the whole forward pass
    (two threads were 2 to 50 times slower per image than one there): set the setting to 1 on such hosts."""
    return max(1, len(os.sched_getaffinity(0)) // api_workers)


def in_serving_layout(x: Any, channels_last_min_batch: int) -> Any:
    """Images x (N, C, H, W) as a torch tensor in the memory layout their forward pass runs in: channels-last
    (N, H, W, C in memory) for batches of at least `channels_last_min_batch` images (0: never), contiguous
    otherwise. On the benchmark's CPU, oneDNN's convolutions ran ResNet-18 17–30 % faster channels-last from 8
    images on, and up to 40 % slower below 4; the digits CNN did not care (docs/operations.md). Decoded PNGs
    arrive channels-last from numpy, tensors and JSON contiguous: both take the batch's layout. The runtime passes
    0 for models that do not take channels-last images (`takes_channels_last`)."""
    import torch

    x = torch.as_tensor(x)
    if x.dim() != 4:
        return x
    layout = torch.channels_last if 0 < channels_last_min_batch <= len(x) else torch.contiguous_format
    return x.contiguous(memory_format=layout)


def takes_channels_last(model: Any, input_shape: list[int], device: Any) -> bool:
    """Whether `model` gives the same logits for images laid out channels-last as for contiguous ones: a model
    that views its input as flat (`x.view(len(x), -1)`) cannot take them. Checked once per loaded snapshot, on two
    random images."""
    import torch

    if len(input_shape) != 3:
        return False
    x = torch.rand(2, *input_shape, device=device)
    with torch.inference_mode():
        try:
            expected, got = model(x), model(x.contiguous(memory_format=torch.channels_last))
        except Exception:  # noqa: BLE001 - whatever a model raises, it does not take channels-last inputs
            return False
    return got.shape == expected.shape and bool(torch.allclose(got, expected, rtol=1e-3, atol=1e-4))


@dataclass(frozen=True)
class LoadedState:
    name: str
    model_version: int
    state_version: int
    weights_sha256: str
    artifacts: tuple[str, ...]
    model: Any  # torch.nn.Module, frozen, eval mode
    delta: Any  # torch.Tensor (C, H, W) or None
    device: Any
    input_shape: list[int]
    num_classes: int
    model_format: str
    """How the model was registered: "safetensors" (an architecture and its weights) or "torchscript"."""
    gate_classes: list[int] | None = None
    """Gated forget vector: δ applies only to inputs the model assigns to these classes (None: to every input)."""
    signature: Any = None
    """The state's signature: a state re-signed under the same version is loaded again."""
    channels_last: bool = False
    """Large batches may run channels-last (`takes_channels_last`; UNLEARND_CHANNELS_LAST_MIN_BATCH)."""


Outcome = tuple[LoadedState, np.ndarray] | Problem
"""What one caller of a batch gets: the snapshot used and its rows of probabilities, or a problem of its own."""


@dataclass(frozen=True)
class _Checked:
    """A snapshot and what was known when it was last checked against the store."""

    snapshot: LoadedState
    counter: int | None
    """The model's state version counter, read before the state was (None: unknown)."""
    verified_at: float
    """When the snapshot's weights and artifacts were last verified (time.monotonic())."""


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
                 verify_interval_s: float = 60.0, versions: StateVersions | None = None, batch_max_size: int = 128,
                 batch_max_wait_ms: float = 2.0, batch_wait_share: float = 0.0, torch_threads: int | None = None,
                 channels_last_min_batch: int = 0):
        self.store, self.device_preference = store, device
        self.channels_last_min_batch = channels_last_min_batch
        self.verify_interval_s = verify_interval_s
        self.versions = versions
        self.torch_threads = torch_threads or len(os.sched_getaffinity(0))
        self.refusals = IntegrityRefusals(ledger)
        self.batcher = Batcher(self._run_batch, max_size=batch_max_size, max_wait_s=batch_max_wait_ms / 1000,
                               wait_share=batch_wait_share,
                               prepare_thread=self._prepare_inference_thread)
        self._checked: dict[str, _Checked] = {}
        self._highest: dict[str, int] = {}
        self._lock = threading.Lock()
        self._versions_retry_at = 0.0
        self._versions_down = False

    @classmethod
    def from_settings(cls, settings: Settings, store: Store, *, ledger: Ledger, redis: Redis) -> InferenceRuntime:
        """The API's runtime: state version counters in `redis`, batching and torch threads per the settings."""
        return cls(store, settings.device, ledger=ledger, verify_interval_s=settings.verify_interval_s,
                   versions=StateVersions(redis, settings.queue_name), batch_max_size=settings.batch_max_size,
                   batch_max_wait_ms=settings.batch_max_wait_ms, batch_wait_share=settings.batch_wait_share,
                   channels_last_min_batch=settings.channels_last_min_batch,
                   torch_threads=settings.inference_threads or auto_inference_threads(settings.api_workers))

    async def predict(self, name: str, x: np.ndarray) -> tuple[LoadedState, np.ndarray]:
        """Class probabilities (N, K) for images x (N, C, H, W) in [0, 1], with every forget vector in force
        applied (gated when the state names `gate_classes`), computed in a batch with concurrent callers."""
        served, probabilities = await self.batcher.submit(name, x)
        PREDICTIONS.labels(name).inc(len(x))
        PREDICT_BATCH.labels(name).observe(len(x))
        return served, probabilities

    async def snapshot(self, name: str) -> LoadedState:
        """The snapshot last served for `name`, unchecked (what a route needs to decode inputs: the input shape);
        the first time, the checked one, loaded off the event loop."""
        checked = self._checked.get(name)
        if checked is not None:
            return checked.snapshot
        return await run_in_threadpool(self.served, name)

    def close(self) -> None:
        """Answer the predictions under way, then stop the inference thread."""
        self.batcher.close()

    def served(self, name: str) -> LoadedState:
        """The current snapshot of `name`, reloaded if its state moved on; a 503 problem (counted and audited)
        when the state, its weights or its artifacts do not verify."""
        return self._served(name, self._ask_counter(name)())

    def _served(self, name: str, counter: int | None) -> LoadedState:
        """`served` with the counter read."""
        checked = self._checked.get(name)
        if (checked is not None and counter is not None and counter == checked.counter
                and time.monotonic() - checked.verified_at < self.verify_interval_s):
            return checked.snapshot
        try:
            with self._lock:
                return self._check(name, counter)
        except IntegrityError as exc:
            with self._lock:
                self._checked.pop(name, None)
            raise self.refusals.refuse(name, str(exc)) from None

    def _ask_counter(self, name: str) -> Callable[[], int | None]:
        """Send the read of the model's state version counter; the returned call reads it: None when it has none
        or Redis does not answer (said once in the log per outage; Redis is asked again VERSIONS_RETRY_S later).
        Call it exactly once."""
        if self.versions is None or time.monotonic() < self._versions_retry_at:
            return lambda: None
        try:
            answer = self.versions.ask(name)
        except RedisError as exc:
            self._versions_unavailable(exc)
            return lambda: None

        def counter() -> int | None:
            try:
                value = answer()
            except RedisError as exc:
                self._versions_unavailable(exc)
                return None
            if self._versions_down:
                self._versions_down = False
                log.info("state version counters available again")
            return value

        return counter

    def _versions_unavailable(self, exc: RedisError) -> None:
        self._versions_retry_at = time.monotonic() + VERSIONS_RETRY_S
        if not self._versions_down:
            self._versions_down = True
            log.warning("state version counters unavailable (%s): reading the served state for every batch until "
                        "Redis answers", exc)

    def _check(self, name: str, counter: int | None) -> LoadedState:
        """Read the state (its signature verified); load it when it is not the snapshot's, else verify the
        snapshot's files again when they are due. Called under the lock."""
        state = self.store.read_state(name)
        version = state.state_version
        if version < self._highest.get(name, 0):  # an older signed state put back in place
            raise IntegrityError(f"served state went back from version {self._highest[name]} to {version}")
        checked = self._checked.get(name)
        now = time.monotonic()
        if (checked is None or checked.snapshot.state_version != version
                or checked.snapshot.signature != state.signature):
            try:
                checked = _Checked(self._load(name, state), counter, now)
            except NotFoundError as exc:  # the state names weights, a record or an artifact not there
                raise IntegrityError(f"what the served state names is missing: {exc}") from None
            self._highest[name] = max(version, self._highest.get(name, 0))
        elif now - checked.verified_at >= self.verify_interval_s:
            self._reverify(name, state)
            checked = _Checked(checked.snapshot, counter, time.monotonic())
        else:
            checked = replace(checked, counter=counter)
        self._checked[name] = checked
        self.refusals.cleared(name)
        return checked.snapshot

    def _reverify(self, name: str, state: ServedState) -> None:
        """Hash the served weights and artifacts again and check their signatures (no tensors loaded)."""
        try:
            self.store.verify_state_files(name, state)
        except NotFoundError as exc:
            raise IntegrityError(str(exc)) from None

    def _load(self, name: str, state: ServedState) -> LoadedState:
        from unlearnd.runtime import load_classifier, pick_device

        device = pick_device(self.device_preference)
        record = self.store.get_model_version(name, state.model_version)
        model = load_classifier(self.store, record, state.weights_sha256, device)
        delta = None
        for artifact_id in state.artifacts:
            tensors, manifest = self.store.load_artifact(artifact_id)  # signed manifest, file sha256
            if manifest["weights_sha256"] != state.weights_sha256 or manifest.get("model", name) != name:
                raise IntegrityError(f"artifact {artifact_id} was computed for another model or other weights")
            if manifest["kind"] in ("forget_vector", "class_vector"):
                d = tensors["delta"].to(device)
                delta = d if delta is None else delta + d
        if delta is not None and list(delta.shape) != list(record["input_shape"]):
            raise IntegrityError(
                f"forget vector shape {list(delta.shape)} != input shape {record['input_shape']}")
        gate = None if state.gate_classes is None else list(state.gate_classes)
        channels_last = self.channels_last_min_batch > 0 and takes_channels_last(model, record["input_shape"], device)
        return LoadedState(name=name, model_version=record["version"], state_version=state.state_version,
                           weights_sha256=state.weights_sha256, artifacts=state.artifacts, model=model, delta=delta,
                           device=device, input_shape=list(record["input_shape"]),
                           num_classes=int(record["num_classes"]),
                           model_format=record.get("format", "safetensors"), gate_classes=gate,
                           signature=state.signature, channels_last=channels_last)

    # ---- on the inference thread --------------------------------------------------------------------------
    def _prepare_inference_thread(self) -> None:
        import torch

        torch.set_num_threads(self.torch_threads)
        torch.set_grad_enabled(False)

    def _run_batch(self, name: str, inputs: list[np.ndarray]) -> list[Outcome]:
        """One forward pass over every caller's images with one snapshot; each caller gets its own rows (or a 422
        when its images do not have the snapshot's input shape, e.g. the model changed since they were decoded).
        The state version counter is read while the pass runs on the last snapshot (the read was sent after every
        caller of the batch arrived); when the counter moved on and the state read then is a new one, the batch runs
        again on it."""
        counter = self._ask_counter(name)
        guess = self._checked.get(name)
        try:
            outcomes = None if guess is None else self._outcomes(guess.snapshot, inputs)
        finally:
            read = counter()  # always: the read holds a connection until it is answered
        served = self._served(name, read)
        if guess is not None and served is guess.snapshot:  # the usual case: the pass already ran on it
            return outcomes
        return self._outcomes(served, inputs)

    def _outcomes(self, served: LoadedState, inputs: list[np.ndarray]) -> list[Outcome]:
        shape = tuple(served.input_shape)
        fitting = [x for x in inputs if x.shape[1:] == shape]
        probabilities = None
        if fitting:
            batch = fitting[0] if len(fitting) == 1 else np.concatenate(fitting)
            FORWARD_BATCH.labels(served.name).observe(len(batch))
            probabilities = self._forward(served, batch)
        outcomes: list[Outcome] = []
        start = 0
        for x in inputs:
            if x.shape[1:] == shape:
                outcomes.append((served, probabilities[start:start + len(x)]))
                start += len(x)
            else:
                outcomes.append(Problem(422, "Invalid inputs", f"inputs have shape {list(x.shape)}; expected "
                                        f"[N, {', '.join(map(str, shape))}]"))
        return outcomes

    def _forward(self, served: LoadedState, x: np.ndarray) -> np.ndarray:
        import torch

        from unlearning.evaluation import perturbed_logits

        with torch.inference_mode():
            inputs = in_serving_layout(x, self.channels_last_min_batch if served.channels_last else 0)
            inputs = inputs.to(served.device)
            logits = perturbed_logits(served.model, inputs, served.delta, served.gate_classes)
            return torch.softmax(logits, dim=1).cpu().numpy()
