"""Unlearning methods by name: what each one needs and produces, so callers can dispatch without importing
every module (each entry is imported on first use)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unlearning.exceptions import UnknownMethodError


@dataclass(frozen=True)
class MethodSpec:
    """One registered method."""

    name: str
    module: str
    """Module holding the function and its config class (imported lazily)."""
    function: str
    config: str | None
    """Name of its frozen config dataclass in `module` (None: takes a `TrainConfig`)."""
    produces: str
    """"delta": an input perturbation (C, H, W), weights unchanged; "weights": a new model."""
    needs_retain: bool
    """Whether it reads D_r (zero-shot methods only see the forget inputs)."""
    needs_labels: bool
    """Whether it reads the forget labels."""
    served: bool
    """Offered by the service; False = a measurement-only baseline."""

    def load(self) -> Callable[..., Any]:
        """The method's function."""
        return getattr(importlib.import_module(self.module), self.function)

    def config_class(self) -> type:
        """The method's config dataclass."""
        if self.config is None:
            from unlearning.training import TrainConfig

            return TrainConfig
        return getattr(importlib.import_module(self.module), self.config)


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("forget_vector", "unlearning.forget_vector", "learn_forget_vector", "ForgetVectorConfig",
                   "delta", needs_retain=True, needs_labels=True, served=True),
        MethodSpec("vector_arithmetic", "unlearning.arithmetic", "learn_coefficients", "CoefficientConfig",
                   "delta", needs_retain=True, needs_labels=True, served=True),
        MethodSpec("zero_shot", "unlearning.smoothing", "lipschitz_smoothing", "SmoothingConfig",
                   "weights", needs_retain=False, needs_labels=False, served=True),
        MethodSpec("retrain", "unlearning.baselines", "retrain", None,
                   "weights", needs_retain=True, needs_labels=True, served=False),
        MethodSpec("fine_tune", "unlearning.baselines", "fine_tune", None,
                   "weights", needs_retain=True, needs_labels=True, served=False),
        MethodSpec("gradient_ascent", "unlearning.baselines", "gradient_ascent", "GradientAscentConfig",
                   "weights", needs_retain=False, needs_labels=True, served=False),
    )
}
ALIASES = {"jit": "zero_shot", "arithmetic": "vector_arithmetic", "fv": "forget_vector"}


def get_method(name: str) -> MethodSpec:
    """The spec registered under `name` (or an alias); UnknownMethodError otherwise."""
    spec = METHODS.get(ALIASES.get(name, name))
    if spec is None:
        raise UnknownMethodError(f"unknown unlearning method {name!r}; known: {', '.join(METHODS)}")
    return spec


def served_methods() -> list[str]:
    """Names of the methods the service offers (baselines excluded)."""
    return [name for name, spec in METHODS.items() if spec.served]
