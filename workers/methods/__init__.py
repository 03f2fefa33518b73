"""The methods a forget job can run, by name: the one registry the API's accepted names and `auto` come from.

A method is a module in this package with a `run` function following the `Method` protocol. This module imports
no torch (the API reads the names), so each method module is imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from workers.errors import MethodNotAvailable

if TYPE_CHECKING:
    from models_store import Store
    from unlearnd.settings import Settings
    from workers.publishing import Outcome


class Method(Protocol):
    """What a forget method does for one batch of requests of one model, under the model's lock.

    Receives: the store, the batch's ledger records (same model, same forget kind: all `classes` or all
    `samples`), the settings, and `progress(stage_fraction, stage, force=False, **extra)` (stages in
    `workers.progress.STAGES` order, each from 0 to 1), which records progress for
    every request of the batch and raises `RequestCancelled` if one was cancelled: call it often, and publish
    nothing after it raised.
    Must: write its artifacts (and any new weights) to the store, then publish the next served state exactly
    once (`workers.methods.common.publish_outcome`), and return that `Outcome`. Raises an `UnlearningError`
    (the batch ends `failed` with its message) when the request cannot be answered.
    """

    def __call__(self, store: Store, records: list[dict[str, Any]], settings: Settings,
                 progress: Callable[..., None]) -> Outcome: ...


@dataclass(frozen=True)
class MethodEntry:
    """One method a request may name."""

    name: str
    module: str
    """Module in this package whose `run` implements the `Method` protocol."""
    auto_for: str | None
    """The forget kind ("classes" or "samples") that `auto` sends to this method, if any."""

    def load(self) -> Method:
        return importlib.import_module(self.module).run


METHODS: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
        MethodEntry("forget_vector", "workers.methods.forget_vector", auto_for="classes"),
        MethodEntry("zero_shot", "workers.methods.zero_shot", auto_for="samples"),
    )
}
AUTO = "auto"
REQUESTABLE = (AUTO, *METHODS)
"""Every value of a request's `method` field."""


def method_plan(record: dict[str, Any]) -> list[MethodEntry]:
    """The methods a request may run, in order: its own; or for `auto`, the one registered for its forget kind,
    then the others as fallbacks when the utility guard refuses every candidate of the first.

    Classes go first to forget vectors: a class is suppressed at the input without touching the weights, and
    class vectors are reused (vector arithmetic) as more classes are forgotten. Samples go first to zero-shot
    smoothing: it needs only the forget inputs and removes the samples' influence from the weights themselves;
    when it cannot do so without breaking the model, a sample-wise forget vector is tried.
    """
    name = record["method"]
    if name != AUTO:
        if name not in METHODS:
            raise MethodNotAvailable(f"unknown method {name!r}")
        return [METHODS[name]]
    kind = "classes" if record.get("classes") is not None else "samples"
    return sorted(METHODS.values(), key=lambda entry: entry.auto_for != kind)
